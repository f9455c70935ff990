"""Reports over the read models, as of a business date and as known at a recorded instant (docs/contract.md §7, §8).

Every as-of/known-at figure is a sum of signed movements filtered by
`effective_on <= as_of` and `recorded_at <= known_at`: the events carry the
effective dates, so no ledger replay happens per query.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import duckdb

FAR_FUTURE = dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
DEFAULT_BOUNDS = (0, 30, 60, 90)


@dataclass(frozen=True)
class Buckets:
    """Aging buckets from upper bounds in days past due: (0, 30, 60, 90) → current, 1-30, 31-60, 61-90, 90+."""

    bounds: tuple[int, ...] = DEFAULT_BOUNDS

    def __post_init__(self) -> None:
        if not self.bounds or list(self.bounds) != sorted(set(self.bounds)) or self.bounds[0] < 0:
            raise ValueError(f"bucket bounds must be increasing and >= 0, got {self.bounds}")

    @classmethod
    def parse(cls, text: str) -> "Buckets":
        """'0,15,30,60,90,180' (or '30,60,90': current is always ≤ 0 days) → Buckets."""
        bounds = tuple(int(part) for part in text.split(",") if part.strip())
        if bounds and bounds[0] != 0:
            bounds = (0, *bounds)
        return cls(bounds)

    @property
    def names(self) -> list[str]:
        names = ["current"]
        for lower, upper in zip(self.bounds, self.bounds[1:]):
            names.append(f"{lower + 1}-{upper}")
        names.append(f"{self.bounds[-1]}+")
        return names

    def case_sql(self, days: str) -> str:
        """SQL CASE giving the bucket index (0 = current) of `days` past due."""
        parts = [f"WHEN {days} <= {bound} THEN {index}" for index, bound in enumerate(self.bounds)]
        return f"CASE {' '.join(parts)} ELSE {len(self.bounds)} END"


def known_at_param(known_at: dt.datetime | None) -> dt.datetime:
    return FAR_FUTURE if known_at is None else known_at.astimezone(dt.UTC)


def format_known_at(known_at: dt.datetime | None) -> str | None:
    if known_at is None:
        return None
    return known_at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    cursor = connection.execute(sql, params)
    columns = [column[0] for column in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


# Items open as of $as_of as known at $known_at, with their dates (named parameters).
OPEN_ITEMS_AS_OF = """
    SELECT m.customer_id, m.invoice_id, m.installment, i.issued_on, i.due_on, sum(m.amount) AS open_amount
    FROM item_movements m JOIN items i USING (customer_id, invoice_id, installment)
    WHERE m.effective_on <= $as_of AND m.recorded_at <= $known_at
    GROUP BY ALL HAVING sum(m.amount) <> 0"""
UNAPPLIED_AS_OF = """
    SELECT customer_id, sum(amount)::BIGINT AS unapplied FROM unapplied_movements
    WHERE effective_on <= $as_of AND recorded_at <= $known_at GROUP BY customer_id"""


# Fast path: when nothing is known at a later effective date than as_of, the items' current open
# amounts (kept by the fold) are their amounts as of that date — no movement scan needed.
OPEN_ITEMS_NOW = """
    SELECT customer_id, invoice_id, installment, issued_on, due_on, open_amount
    FROM items WHERE open_amount <> 0"""


def everything_effective_by(connection: duckdb.DuckDBPyConnection, as_of: dt.date) -> bool:
    """True when no item movement is effective after `as_of` (then "as of" equals "now")."""
    latest = connection.execute("SELECT max(effective_on) FROM item_movements").fetchone()[0]
    return latest is None or latest <= as_of


def params(as_of: dt.date, known_at: dt.datetime | None) -> dict[str, Any]:
    return {"as_of": as_of, "known_at": known_at_param(known_at)}


def aging(connection: duckdb.DuckDBPyConnection, as_of: dt.date, known_at: dt.datetime | None = None,
          buckets: Buckets = Buckets(), basis: str = "due_date") -> dict[str, Any]:
    """The aging report of §7 as a JSON-ready dict."""
    if basis not in ("due_date", "invoice_date"):
        raise ValueError(f"basis must be due_date or invoice_date, got {basis!r}")
    date_column = "due_on" if basis == "due_date" else "issued_on"
    names = buckets.names
    bucket_columns = ", ".join(
        f"coalesce(sum(open_amount) FILTER (WHERE bucket = {index}), 0)::BIGINT AS \"{name}\""
        for index, name in enumerate(names))
    open_items = OPEN_ITEMS_NOW if known_at is None and everything_effective_by(connection, as_of) \
        else OPEN_ITEMS_AS_OF
    sql = f"""
        WITH open_items AS ({open_items}),
        aged AS (SELECT customer_id, open_amount, {buckets.case_sql(f"($as_of - {date_column})")} AS bucket
                 FROM open_items),
        by_customer AS (SELECT customer_id, {bucket_columns}, sum(open_amount)::BIGINT AS open
                        FROM aged GROUP BY customer_id),
        unapplied AS ({UNAPPLIED_AS_OF})
        SELECT c.customer_id, c.name, c.currency, coalesce(c.salesperson, '') AS salesperson,
               {", ".join(f'coalesce(b."{name}", 0) AS "{name}"' for name in names)},
               coalesce(b.open, 0) AS open, coalesce(u.unapplied, 0) AS unapplied,
               coalesce(b.open, 0) - coalesce(u.unapplied, 0) AS total
        FROM customers c LEFT JOIN by_customer b USING (customer_id) LEFT JOIN unapplied u USING (customer_id)
        WHERE c.recorded_at <= $known_at AND (coalesce(b.open, 0) <> 0 OR coalesce(u.unapplied, 0) <> 0)
        ORDER BY c.customer_id"""
    rows = _rows(connection, sql, params(as_of, known_at))
    totals: dict[str, dict[str, int]] = {}
    for row in rows:
        total = totals.setdefault(row["currency"], {name: 0 for name in [*names, "open", "unapplied", "total"]})
        for name in total:
            total[name] += row[name]
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at), "basis": basis,
            "buckets": names, "rows": rows, "totals": dict(sorted(totals.items()))}


def latest_credit_value_sql(attribute: str, value_column: str) -> str:
    """Per customer, the value of a credit attribute in force as of $as_of and known at $known_at (§8)."""
    return f"""SELECT customer_id, arg_max({value_column}, (effective_on, position)) AS value
               FROM credit_history
               WHERE attribute = '{attribute}' AND effective_on <= $as_of AND recorded_at <= $known_at
               GROUP BY customer_id"""


# `report balances` and the `customer_balances` view (as of today, known now): one row per registered customer.
BALANCES_SQL = f"""
        WITH open_items AS ({OPEN_ITEMS_AS_OF}),
        open_by_customer AS (SELECT customer_id, sum(open_amount)::BIGINT AS open,
                                    (sum(open_amount) FILTER (WHERE $as_of - due_on >= 1))::BIGINT AS overdue
                             FROM open_items GROUP BY customer_id),
        unapplied AS ({UNAPPLIED_AS_OF}),
        orders AS (SELECT customer_id, sum(exposure_delta)::BIGINT AS open_orders FROM order_events
                   WHERE effective_on <= $as_of AND recorded_at <= $known_at GROUP BY customer_id),
        limits AS ({latest_credit_value_sql('credit_limit', 'value_int')}),
        holds AS ({latest_credit_value_sql('on_hold', 'value_int')}),
        grades AS ({latest_credit_value_sql('grade', 'value_text')}),
        last_payment AS (SELECT customer_id, max(received_on) AS last_payment_on FROM payments
                         WHERE received_on <= $as_of AND recorded_at <= $known_at
                           AND NOT coalesce(reversed_on <= $as_of AND reversed_recorded_at <= $known_at, false)
                         GROUP BY customer_id)
        SELECT c.customer_id, c.name, c.currency, coalesce(c.salesperson, '') AS salesperson,
               coalesce(o.open, 0) - coalesce(u.unapplied, 0) AS balance,
               coalesce(u.unapplied, 0) AS unapplied, coalesce(o.overdue, 0) AS overdue,
               coalesce(l.value, 0)::BIGINT AS credit_limit, coalesce(r.open_orders, 0) AS open_orders,
               coalesce(o.open, 0) - coalesce(u.unapplied, 0) + coalesce(r.open_orders, 0) AS exposure,
               coalesce(l.value, 0) - (coalesce(o.open, 0) - coalesce(u.unapplied, 0)
                                       + coalesce(r.open_orders, 0)) AS available,
               CASE WHEN coalesce(l.value, 0) = 0 THEN NULL
                    ELSE (coalesce(o.open, 0) - coalesce(u.unapplied, 0) + coalesce(r.open_orders, 0))::DOUBLE
                         / l.value END AS utilisation,
               coalesce(h.value, 0) = 1 AS on_hold, g.value AS grade, p.last_payment_on
        FROM customers c
        LEFT JOIN open_by_customer o USING (customer_id) LEFT JOIN unapplied u USING (customer_id)
        LEFT JOIN orders r USING (customer_id) LEFT JOIN limits l USING (customer_id)
        LEFT JOIN holds h USING (customer_id) LEFT JOIN grades g USING (customer_id)
        LEFT JOIN last_payment p USING (customer_id)
        WHERE c.recorded_at <= $known_at
        ORDER BY c.customer_id"""


def balances(connection: duckdb.DuckDBPyConnection, as_of: dt.date,
             known_at: dt.datetime | None = None) -> dict[str, Any]:
    """`report balances` (§7, §8): one row per registered customer, zeros included."""
    rows = _rows(connection, BALANCES_SQL, params(as_of, known_at))
    for row in rows:
        if row["last_payment_on"] is not None:
            row["last_payment_on"] = row["last_payment_on"].isoformat()
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at), "rows": rows}


GROUP_DIMENSIONS = ("customer", "salesperson", "grade", "currency")


def dimension_keys(connection: duckdb.DuckDBPyConnection, by: str, as_of: dt.date,
                   known_at: dt.datetime | None = None) -> dict[str, str]:
    """{customer_id: its group key} for `--by`: the registered salesperson ("" if none), the grade in force
    as of `as_of` ("" if none), the currency, or the customer itself."""
    if by not in GROUP_DIMENSIONS:
        raise ValueError(f"--by must be one of {', '.join(GROUP_DIMENSIONS)}, got {by!r}")
    column = {"customer": "customer_id", "salesperson": "coalesce(salesperson, '')", "currency": "currency",
              "grade": "coalesce(g.value, '')"}[by]
    sql = f"""WITH grades AS ({latest_credit_value_sql('grade', 'value_text')})
              SELECT c.customer_id, {column} AS key FROM customers c LEFT JOIN grades g USING (customer_id)
              WHERE c.recorded_at <= $known_at"""
    return dict(connection.execute(sql, params(as_of, known_at)).fetchall())


def group_rows(rows: list[dict[str, Any]], keys: dict[str, str], by: str,
               sum_columns: list[str]) -> list[dict[str, Any]]:
    """Per-customer rows summed per (group key, currency), never adding currencies; `customers` counts rows."""
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = keys.get(row["customer_id"], "")
        name = "customer_id" if by == "customer" else by
        head = {"currency": row["currency"]} if by == "currency" else {name: key, "currency": row["currency"]}
        group = groups.setdefault((key, row["currency"]), {**head, "customers": 0, **dict.fromkeys(sum_columns, 0)})
        group["customers"] += 1
        for column in sum_columns:
            group[column] += row[column]
    return [groups[key] for key in sorted(groups)]
