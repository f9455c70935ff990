"""Exposure list and open items as of a business date, known at a recorded instant (docs/contract.md §5, §7, §8).

- exposure: per customer, balance (= aging total) + approved open orders vs the credit limit in force,
  with the breaches recorded so far; customers over their limit first, then by utilisation.
- open items: one row per installment issued on or before as_of, with its open amount, days past due
  and status (`open`, `paid`, `disputed`, `written_off`) as of that date.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from projections.reports import _rows, balances, format_known_at, params


def exposure(connection: duckdb.DuckDBPyConnection, as_of: dt.date,
             known_at: dt.datetime | None = None) -> dict[str, Any]:
    """`report exposure`: {"as_of", "known_at", "rows"}; one row per registered customer (as `balances`)."""
    breaches = dict(connection.execute(
        "SELECT customer_id, count(*) FROM breaches WHERE breached_on <= $as_of AND recorded_at <= $known_at "
        "GROUP BY customer_id", params(as_of, known_at)).fetchall())
    crossings = dict(connection.execute(
        "SELECT customer_id, count(*) FROM breaches WHERE crossing AND breached_on <= $as_of "
        "AND recorded_at <= $known_at GROUP BY customer_id", params(as_of, known_at)).fetchall())
    rows = []
    for row in balances(connection, as_of, known_at)["rows"]:
        rows.append({
            "customer_id": row["customer_id"], "name": row["name"], "currency": row["currency"],
            "salesperson": row["salesperson"], "balance": row["balance"], "open_orders": row["open_orders"],
            "exposure": row["exposure"], "credit_limit": row["credit_limit"], "available": row["available"],
            "utilisation": row["utilisation"], "over_limit": row["exposure"] > row["credit_limit"],
            "breaches": breaches.get(row["customer_id"], 0), "crossings": crossings.get(row["customer_id"], 0),
            "on_hold": row["on_hold"], "grade": row["grade"], "overdue": row["overdue"],
        })
    rows.sort(key=_exposure_order)
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at), "rows": rows}


def _exposure_order(row: dict[str, Any]) -> tuple:
    """Over the limit first; then utilisation descending (a zero limit with exposure counts as infinite)."""
    if row["utilisation"] is not None:
        utilisation = row["utilisation"]
    elif row["exposure"] > 0:
        utilisation = float("inf")
    else:
        utilisation = float("-inf")
    return (not row["over_limit"], -utilisation, -row["exposure"], row["customer_id"])


OPEN_ITEMS_SQL = """
    WITH moved AS (
        SELECT customer_id, invoice_id, installment, sum(amount)::BIGINT AS open_amount,
               arg_max(kind, (effective_on, position)) FILTER (WHERE kind <> 'opened') AS last_reduction_kind,
               bool_or(kind = 'written_off') AS has_write_off
        FROM item_movements
        WHERE effective_on <= $as_of AND recorded_at <= $known_at
        GROUP BY ALL),
    disputes AS (
        SELECT customer_id, invoice_id, arg_max(kind, (effective_on, position)) = 'opened' AS disputed
        FROM dispute_events WHERE effective_on <= $as_of AND recorded_at <= $known_at
        GROUP BY ALL)
    SELECT i.customer_id, c.name, i.currency, coalesce(c.salesperson, '') AS salesperson,
           i.invoice_id, i.installment, i.issued_on, i.due_on, i.amount, m.open_amount,
           greatest($as_of - i.due_on, 0) AS days_past_due,
           CASE WHEN m.open_amount = 0 AND m.last_reduction_kind = 'written_off' THEN 'written_off'
                WHEN coalesce(d.disputed, false) THEN 'disputed'
                WHEN m.open_amount = 0 THEN 'paid' ELSE 'open' END AS status,
           coalesce(d.disputed, false) AS disputed,
           (i.amount - m.open_amount)::BIGINT AS settled_amount
    FROM items i JOIN customers c USING (customer_id) JOIN moved m USING (customer_id, invoice_id, installment)
    LEFT JOIN disputes d USING (customer_id, invoice_id)
    WHERE i.issued_on <= $as_of AND i.recorded_at <= $known_at
      AND ($customer_id IS NULL OR i.customer_id = $customer_id)
      AND ($include_settled OR m.open_amount <> 0)
    ORDER BY i.customer_id, i.due_on, i.invoice_id, i.installment"""


def open_items(connection: duckdb.DuckDBPyConnection, as_of: dt.date, known_at: dt.datetime | None = None,
               customer_id: str | None = None, include_settled: bool = True) -> dict[str, Any]:
    """`report open-items`: every installment issued ≤ as_of (optionally one customer's) with its status as of then.

    days_past_due = max(as_of − due_on, 0). Status as of `as_of`: `written_off` when a write-off took the
    item to zero, else `disputed` while its invoice is in dispute, else `paid` at zero, else `open`.
    """
    query = {**params(as_of, known_at), "customer_id": customer_id, "include_settled": include_settled}
    rows = _rows(connection, OPEN_ITEMS_SQL, query)
    for row in rows:
        row["issued_on"] = row["issued_on"].isoformat()
        row["due_on"] = row["due_on"].isoformat()
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at), "customer_id": customer_id,
            "rows": rows}

