"""Collection KPIs for a period (docs/contract.md §7 "KPIs", §8 "KPIs" and "Countback DSO"), per customer, salesperson, overall.

For a period [from, to], with AR(D) = aging `total` as of D (open − unapplied),
"current AR" = the aging `current` bucket as of `to`, sales = sale amounts
issued in the period − credit notes dated in it, days = to − from + 1:

    dso               = AR(to) / sales × days
    countback_dso     = the month-by-month walk of §8 (`countback_dso` below)
    best_possible_dso = current AR(to) / sales × days
    add               = dso − best_possible_dso
    cei               = (AR(from−1) + sales − AR(to)) / (AR(from−1) + sales − current AR(to)) × 100
    turnover          = sales / ((AR(from−1) + AR(to)) / 2)
    collection_rate   = (AR(from−1) + sales − AR(to)) / (AR(from−1) + sales) × 100

A ratio whose denominator is 0 is None (JSON null). Groups never add
currencies; every per-salesperson figure uses the customer's registered
salesperson ("" when none). Every figure comes from SQL over the projected
tables, as of business dates and known at `known_at`.
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import duckdb

from projections.reports import _rows, format_known_at, known_at_param
from projections.statements import balances_at

KPI_FIELDS = ("ar_start", "ar_end", "current_end", "sales", "days", "dso", "countback_dso", "best_possible_dso",
              "add", "cei", "turnover", "collection_rate")


def month_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    """First and last day of `day`'s calendar month."""
    return day.replace(day=1), day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _previous_month(first_day: dt.date) -> dt.date:
    return (first_day - dt.timedelta(days=1)).replace(day=1)


def countback_dso(ar_end: int, monthly_sales: Mapping[dt.date, int], earliest_sale_month: dt.date | None,
                  date_to: dt.date) -> float | None:
    """§8: steps [first day of `to`'s month, `to`], then whole earlier months, walked back from `to`.

    A step whose sales ≤ the remaining AR adds its days and subtracts its sales; otherwise it adds
    remaining ÷ sales × its days and stops; the walk stops as soon as the remaining AR is 0; a step
    with sales ≤ 0 adds its full days (and, its sales being subtracted, a negative month raises the
    remaining AR). 0.0 when AR ≤ 0; None once the walk passes the group's
    earliest sale month. `monthly_sales` maps each month's first day to its sales (the `to` month
    counting only sales up to `to`).
    """
    if ar_end <= 0:
        return 0.0
    remaining = ar_end
    days = 0
    month = date_to.replace(day=1)
    step_days = date_to.day
    while True:
        if earliest_sale_month is None or month < earliest_sale_month:
            return None
        sales = monthly_sales.get(month, 0)
        if sales > remaining:
            return days + remaining / sales * step_days
        # sales ≤ remaining: the full step, and its sales come off the remaining AR; a month whose net
        # sales are negative (credit notes above sales) makes the remaining AR grow (§8).
        days += step_days
        remaining -= sales
        if remaining == 0:
            return float(days)
        month = _previous_month(month)
        step_days = calendar.monthrange(month.year, month.month)[1]


@dataclass
class _Group:
    """Sums of one group (a customer, a salesperson in one currency, a currency) before the ratios."""

    ar_start: int = 0
    ar_end: int = 0
    current_end: int = 0
    sales: int = 0
    monthly_sales: dict[dt.date, int] = field(default_factory=dict)
    earliest_sale_month: dt.date | None = None

    def add(self, other: "_Group") -> None:
        self.ar_start += other.ar_start
        self.ar_end += other.ar_end
        self.current_end += other.current_end
        self.sales += other.sales
        for month, amount in other.monthly_sales.items():
            self.monthly_sales[month] = self.monthly_sales.get(month, 0) + amount
        if other.earliest_sale_month is not None and (
                self.earliest_sale_month is None or other.earliest_sale_month < self.earliest_sale_month):
            self.earliest_sale_month = other.earliest_sale_month

    def figures(self, days: int, date_to: dt.date) -> dict[str, Any]:
        ar_start, ar_end, current_end, sales = self.ar_start, self.ar_end, self.current_end, self.sales
        dso = None if sales == 0 else ar_end / sales * days
        best = None if sales == 0 else current_end / sales * days
        collected = ar_start + sales - ar_end
        figures = {
            "ar_start": ar_start, "ar_end": ar_end, "current_end": current_end, "sales": sales, "days": days,
            "dso": dso,
            "countback_dso": countback_dso(ar_end, self.monthly_sales, self.earliest_sale_month, date_to),
            "best_possible_dso": best,
            "add": None if dso is None or best is None else dso - best,
            "cei": None if ar_start + sales - current_end == 0
            else collected / (ar_start + sales - current_end) * 100,
            "turnover": None if ar_start + ar_end == 0 else sales / ((ar_start + ar_end) / 2),
            "collection_rate": None if ar_start + sales == 0 else collected / (ar_start + sales) * 100,
        }
        # x + 0.0 turns a negative zero (0 / negative AR) into 0.0, so JSON never shows -0.0.
        return {key: value + 0.0 if isinstance(value, float) else value for key, value in figures.items()}


# Sales per customer and calendar month up to $date_to (the last month only up to $date_to):
# sale amounts by issued_on minus credit notes by their date, known at $known_at.
MONTHLY_SALES = """
    WITH sales AS (
        SELECT customer_id, issued_on AS day, amount FROM invoices
        WHERE issued_on <= $date_to AND recorded_at <= $known_at
        UNION ALL
        SELECT customer_id, issued_on, -amount FROM credit_notes
        WHERE issued_on <= $date_to AND recorded_at <= $known_at)
    SELECT customer_id, date_trunc('month', day)::DATE AS month,
           sum(amount) FILTER (WHERE day >= $date_from)::BIGINT AS period_sales,
           sum(amount)::BIGINT AS month_sales
    FROM sales GROUP BY ALL"""
EARLIEST_SALE = """
    SELECT customer_id, date_trunc('month', min(issued_on))::DATE AS earliest_sale_month FROM invoices
    WHERE issued_on <= $date_to AND recorded_at <= $known_at GROUP BY customer_id"""


def kpis(connection: duckdb.DuckDBPyConnection, date_from: dt.date, date_to: dt.date,
         known_at: dt.datetime | None = None) -> dict[str, Any]:
    """`report kpis` (§8): {"from", "to", "known_at", "customers", "salespeople", "overall"}."""
    if date_to < date_from:
        raise ValueError(f"--to {date_to} is before --from {date_from}")
    start_on = date_from - dt.timedelta(days=1)
    balances = balances_at(connection, [start_on, date_to], known_at)
    query = {"date_from": date_from, "date_to": date_to, "known_at": known_at_param(known_at)}
    per_customer: dict[str, _Group] = {}
    meta: dict[str, tuple[str, str]] = {}
    for (customer_id, as_of), row in balances.items():
        group = per_customer.setdefault(customer_id, _Group())
        meta[customer_id] = (row["currency"], row["salesperson"])
        if as_of == start_on:
            group.ar_start = row["balance"]
        if as_of == date_to:
            group.ar_end, group.current_end = row["balance"], row["current"]
    for row in _rows(connection, MONTHLY_SALES, query):
        group = per_customer.get(row["customer_id"])
        if group is None:
            continue  # not registered as known at known_at
        group.sales += row["period_sales"] or 0
        group.monthly_sales[row["month"]] = row["month_sales"]
    for row in _rows(connection, EARLIEST_SALE, {"date_to": date_to, "known_at": query["known_at"]}):
        if row["customer_id"] in per_customer:
            per_customer[row["customer_id"]].earliest_sale_month = row["earliest_sale_month"]
    days = (date_to - date_from).days + 1
    salespeople: dict[str, dict[str, _Group]] = {}
    overall: dict[str, _Group] = {}
    for customer_id, group in per_customer.items():
        currency, salesperson = meta[customer_id]
        salespeople.setdefault(salesperson, {}).setdefault(currency, _Group()).add(group)
        overall.setdefault(currency, _Group()).add(group)
    return {
        "from": date_from.isoformat(), "to": date_to.isoformat(), "known_at": format_known_at(known_at),
        "customers": {customer_id: per_customer[customer_id].figures(days, date_to)
                      for customer_id in sorted(per_customer)},
        "salespeople": {name: {currency: groups[currency].figures(days, date_to) for currency in sorted(groups)}
                        for name, groups in sorted(salespeople.items())},
        "overall": {currency: overall[currency].figures(days, date_to) for currency in sorted(overall)},
    }


def kpi_rows(connection: duckdb.DuckDBPyConnection, report: dict[str, Any]) -> list[dict[str, Any]]:
    """The KPI report flattened for CSV/Parquet/table: one row per customer, salesperson × currency, currency."""
    currencies = dict(connection.execute("SELECT customer_id, currency FROM customers").fetchall())
    rows = []
    for customer_id, figures in report["customers"].items():
        rows.append({"level": "customer", "key": customer_id, "currency": currencies.get(customer_id), **figures})
    for name, by_currency in report["salespeople"].items():
        for currency, figures in by_currency.items():
            rows.append({"level": "salesperson", "key": name, "currency": currency, **figures})
    for currency, figures in report["overall"].items():
        rows.append({"level": "overall", "key": "", "currency": currency, **figures})
    return rows
