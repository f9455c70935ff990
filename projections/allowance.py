"""Bad-debt allowance (docs/contract.md §7 "Allowance", §8 "Allowance", "Historical loss rate", "Rates").

Provision matrix: per customer, Σ aging bucket amount × the bucket's rate,
in exact decimal arithmetic, rounded half-even to the minor unit once per
customer; unapplied cash does not reduce it; totals per currency are the sum
of the rounded rows. Rates are fractions configured as decimal strings
("current=0.01,1-30=0.03,..."); their names define the buckets.

Historical loss rate of a bucket with lower bound L days past due (current:
from `issued_on`): over the items whose entry day e = `due_on` + L (current:
`issued_on`) is ≤ as_of, Σ written off on days in [e, as_of] ÷ Σ open at the
end of day e; None when the denominator is 0. Per currency.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

import duckdb

from projections.reports import Buckets, _rows, aging, format_known_at, known_at_param

DEFAULT_RATES: dict[str, Decimal] = {
    "current": Decimal("0.01"), "1-30": Decimal("0.03"), "31-60": Decimal("0.10"),
    "61-90": Decimal("0.25"), "90+": Decimal("0.50"),
}


def parse_rates(text: str) -> dict[str, Decimal]:
    """'current=0.01,1-30=0.03,31-60=0.1,61-90=0.25,90+=0.5' → {bucket: Decimal}, in the order given."""
    rates: dict[str, Decimal] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            raise ValueError(f"rate {part!r} is not BUCKET=RATE")
        try:
            rate = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"rate of bucket {name.strip()!r} is not a decimal number: {value!r}") from None
        if not rate.is_finite() or rate < 0 or rate > 1:
            raise ValueError(f"rate of bucket {name.strip()!r} must be a fraction in [0, 1], got {value!r}")
        rates[name.strip()] = rate
    buckets_for(rates)  # the names must make a bucket ladder
    return rates


def buckets_for(rates: dict[str, Decimal]) -> Buckets:
    """The aging buckets the rate names describe: current, a-b ..., N+ (each a-b starting after the last bound)."""
    names = list(rates)
    if len(names) < 2 or names[0] != "current" or not names[-1].endswith("+"):
        raise ValueError(f"rates must name 'current', then 'A-B' buckets, then 'N+'; got {names}")
    bounds = [0]
    try:
        for name in names[1:-1]:
            bounds.append(int(name.split("-", 1)[1]))
        bounds_text = names[-1][:-1]
        last = int(bounds_text)
    except (IndexError, ValueError):
        raise ValueError(f"cannot read bucket names {names}: use current, A-B ..., N+") from None
    buckets = Buckets(tuple(bounds))
    if buckets.names != names or last != bounds[-1]:
        raise ValueError(f"bucket names {names} do not chain; expected names like {buckets.names}")
    return buckets


def provision(amounts: dict[str, int], rates: dict[str, Decimal]) -> int:
    """Σ amount × rate, exact, rounded half-even to the minor unit once."""
    exact = sum((Decimal(amounts[name]) * rate for name, rate in rates.items()), Decimal(0))
    return int(exact.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))


def allowance(connection: duckdb.DuckDBPyConnection, as_of: dt.date, known_at: dt.datetime | None = None,
              rates: dict[str, Decimal] | None = None) -> dict[str, Any]:
    """`report allowance` (§8): rates, rows per customer with open items, totals per currency, loss rates."""
    rates = dict(DEFAULT_RATES if rates is None else rates)
    buckets = buckets_for(rates)
    aged = aging(connection, as_of, known_at, buckets)
    rows, totals = [], {}
    for row in aged["rows"]:
        if row["open"] == 0:
            continue  # only unapplied cash: nothing to provide for
        amount = provision(row, rates)
        rows.append({"customer_id": row["customer_id"], "name": row["name"], "currency": row["currency"],
                     "salesperson": row["salesperson"], **{name: row[name] for name in rates},
                     "open": row["open"], "allowance": amount})
        totals[row["currency"]] = totals.get(row["currency"], 0) + amount
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at),
            "rates": {name: float(rate) for name, rate in rates.items()},
            "rows": rows, "totals": dict(sorted(totals.items())),
            "historical_loss_rates": historical_loss_rates(connection, as_of, known_at, buckets)}


def historical_loss_rates(connection: duckdb.DuckDBPyConnection, as_of: dt.date, known_at: dt.datetime | None,
                          buckets: Buckets) -> dict[str, dict[str, float | None]]:
    """{currency: {bucket: written off after entering ÷ open on entering, or None}} for every known currency."""
    names = buckets.names
    lower_days = ["NULL::INTEGER"] + [str(bound + 1) for bound in buckets.bounds]
    bucket_values = ", ".join(f"({index}, {lower})" for index, lower in enumerate(lower_days))
    sql = f"""
        WITH ladder AS (SELECT * FROM (VALUES {bucket_values}) AS ladder(bucket, lower_days)),
        entered AS (
            SELECT c.currency, l.bucket, i.customer_id, i.invoice_id, i.installment,
                   CASE WHEN l.lower_days IS NULL THEN i.issued_on ELSE i.due_on + l.lower_days END AS entry_on
            FROM items i JOIN customers c USING (customer_id) CROSS JOIN ladder l
            WHERE i.recorded_at <= $known_at AND c.recorded_at <= $known_at AND i.issued_on <= $as_of)
        SELECT e.currency, e.bucket,
               coalesce(sum(m.amount) FILTER (WHERE m.effective_on <= e.entry_on), 0)::BIGINT AS open_on_entry,
               coalesce(-sum(m.amount) FILTER (WHERE m.kind = 'written_off'
                                               AND m.effective_on BETWEEN e.entry_on AND $as_of), 0)::BIGINT
                   AS written_off
        FROM entered e JOIN item_movements m USING (customer_id, invoice_id, installment)
        WHERE e.entry_on <= $as_of AND m.recorded_at <= $known_at
        GROUP BY ALL"""
    figures = {(row["currency"], row["bucket"]): row for row in _rows(
        connection, sql, {"as_of": as_of, "known_at": known_at_param(known_at)})}
    currencies = [row[0] for row in connection.execute(
        "SELECT DISTINCT currency FROM customers WHERE recorded_at <= ? ORDER BY currency",
        [known_at_param(known_at)]).fetchall()]
    result: dict[str, dict[str, float | None]] = {}
    for currency in currencies:
        result[currency] = {}
        for index, name in enumerate(names):
            row = figures.get((currency, index))
            denominator = row["open_on_entry"] if row else 0
            result[currency][name] = None if denominator == 0 else row["written_off"] / denominator
    return result
