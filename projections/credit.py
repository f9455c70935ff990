"""`arledger check`: the credit question answered from the read model with the rules of docs/contract.md §7/§8.

Same order as the ledger's decision: `on_hold` (hold in force as of D) → `overdue_beyond_tolerance`
(an item open as of D, not disputed as of D, more than the tolerance past due: 30 days pass, 31 block)
→ `over_limit` (exposure + amount > limit). Figures as of D, exposure without the order. The read model
is the published snapshot (a few seconds old): the authoritative answer is the decision on ar.decisions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

from projections.reports import OPEN_ITEMS_AS_OF, balances, format_known_at, params
from projections.worklist import _rows

OVERDUE_SQL = f"""
    WITH open_items AS ({OPEN_ITEMS_AS_OF}),
    disputes AS (
        SELECT customer_id, invoice_id, arg_max(kind, (effective_on, position)) = 'opened' AS disputed
        FROM dispute_events WHERE effective_on <= $as_of AND recorded_at <= $known_at GROUP BY ALL)
    SELECT o.invoice_id, o.installment, o.due_on, o.open_amount::BIGINT AS open_amount,
           ($as_of - o.due_on) AS days_past_due, coalesce(d.disputed, false) AS disputed
    FROM open_items o LEFT JOIN disputes d USING (customer_id, invoice_id)
    WHERE o.customer_id = $customer_id AND o.open_amount > 0 AND o.issued_on <= $as_of
    ORDER BY o.due_on, o.invoice_id, o.installment"""


class UnknownCustomer(LookupError):
    pass


def credit_check(connection: duckdb.DuckDBPyConnection, customer_id: str, amount: int, as_of: dt.date,
                 tolerance_days: int = 30, known_at: dt.datetime | None = None) -> dict[str, Any]:
    """The decision an order of `amount` would get as of `as_of`, with the figures behind it."""
    rows = [row for row in balances(connection, as_of, known_at)["rows"] if row["customer_id"] == customer_id]
    if not rows:
        raise UnknownCustomer(f"unknown customer {customer_id!r}")
    account = rows[0]
    items = _rows(connection, OVERDUE_SQL, {**params(as_of, known_at), "customer_id": customer_id})
    beyond = [item for item in items if not item["disputed"] and item["days_past_due"] > tolerance_days]
    undisputed = [item for item in items if not item["disputed"]]
    if account["on_hold"]:
        reason = "on_hold"
    elif beyond:
        reason = "overdue_beyond_tolerance"
    elif account["exposure"] + amount > account["credit_limit"]:
        reason = "over_limit"
    else:
        reason = None
    return {
        "customer_id": customer_id, "as_of": as_of.isoformat(), "known_at": format_known_at(known_at),
        "amount": amount, "currency": account["currency"],
        "decision": "approved" if reason is None else "blocked", "reason": reason,
        "credit_limit": account["credit_limit"], "exposure": account["exposure"], "available": account["available"],
        "available_after": account["available"] - amount, "balance": account["balance"],
        "open_orders": account["open_orders"], "on_hold": account["on_hold"],
        "overdue_tolerance_days": tolerance_days,
        "max_days_past_due": max((max(item["days_past_due"], 0) for item in undisputed), default=0),
        "overdue_beyond_tolerance": sum(item["open_amount"] for item in beyond),
        "oldest_overdue_invoice": beyond[0]["invoice_id"] if beyond else None,
        "grade": account["grade"],
    }
