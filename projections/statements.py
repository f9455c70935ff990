"""Customer statement, balance history and the AR roll-forward (docs/contract.md §5, §7, §8), in SQL over the movements.

AR (= aging `total` = open items − unapplied cash) as of D is the sum of the
signed movements effective on or before D. Every movement changes AR by one
of five kinds, which is what the statement lists and the roll-forward sums:

| kind          | AR effect | from                                                                   |
|---------------|-----------|------------------------------------------------------------------------|
| `sale`        | +         | item opened (at `issued_on`)                                           |
| `credit_note` | −         | credit note applied to an item, or its excess put on account          |
| `payment`     | −         | payment received (at `received_on`), unapplied until allocated         |
| `reversal`    | +         | allocation reversed, unapplied cash removed (− cash returned, §7 rule) |
| `write_off`   | −         | item written off                                                       |

An allocation (cash or credit moved from unapplied to an item) lowers the item
and the unapplied cash by the same amount on the same effective date: AR does
not move, so it is not a line. Each line is dated by the effective business
date the ledger gave the movement, which is why the identities
opening + Σ lines = closing hold exactly for every as-of date.
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import Any

import duckdb

from projections.reports import _rows, format_known_at, known_at_param

MOVEMENT_KINDS = ("sale", "credit_note", "payment", "reversal", "write_off")

# One row per raw movement that changes AR: (customer_id, effective_on, recorded_at, position, kind,
# document_id, invoice_id, ar_amount). Known-at filtered; the as-of filter is the caller's.
AR_MOVEMENTS = """
    SELECT customer_id, effective_on, recorded_at, position,
           CASE kind WHEN 'opened' THEN 'sale' WHEN 'credit_note' THEN 'credit_note'
                     WHEN 'reopened' THEN 'reversal' ELSE 'write_off' END AS kind,
           CASE WHEN kind IN ('opened', 'written_off') THEN invoice_id ELSE source_id END AS document_id,
           CASE WHEN kind = 'reopened' THEN NULL ELSE invoice_id END AS invoice_id,
           amount AS ar_amount
    FROM item_movements
    WHERE kind IN ('opened', 'credit_note', 'reopened', 'written_off') AND recorded_at <= $known_at
    UNION ALL
    SELECT customer_id, effective_on, recorded_at, position,
           CASE kind WHEN 'received' THEN 'payment' WHEN 'credit' THEN 'credit_note' ELSE 'reversal' END,
           source_id, NULL, -amount
    FROM unapplied_movements
    WHERE kind IN ('received', 'credit', 'reversed', 'returned') AND recorded_at <= $known_at"""

# Per customer and date in $dates: open items (and their current / overdue parts), unapplied cash and the
# balance (= aging total), as of that date and known at $known_at. One row per known customer and date.
BALANCES_AT = """
    WITH dates AS (SELECT DISTINCT unnest($dates::DATE[]) AS as_of),
    items_at AS (
        SELECT d.as_of, m.customer_id, sum(m.amount) AS open,
               sum(m.amount) FILTER (WHERE i.due_on >= d.as_of) AS current,
               sum(m.amount) FILTER (WHERE i.due_on < d.as_of) AS overdue
        FROM item_movements m JOIN items i USING (customer_id, invoice_id, installment)
        JOIN dates d ON m.effective_on <= d.as_of
        WHERE m.recorded_at <= $known_at GROUP BY ALL),
    unapplied_at AS (
        SELECT d.as_of, u.customer_id, sum(u.amount) AS unapplied
        FROM unapplied_movements u JOIN dates d ON u.effective_on <= d.as_of
        WHERE u.recorded_at <= $known_at GROUP BY ALL)
    SELECT c.customer_id, c.currency, coalesce(c.salesperson, '') AS salesperson, d.as_of,
           coalesce(i.open, 0)::BIGINT AS open, coalesce(i.current, 0)::BIGINT AS current,
           coalesce(i.overdue, 0)::BIGINT AS overdue, coalesce(u.unapplied, 0)::BIGINT AS unapplied,
           (coalesce(i.open, 0) - coalesce(u.unapplied, 0))::BIGINT AS balance
    FROM customers c CROSS JOIN dates d
    LEFT JOIN items_at i ON i.customer_id = c.customer_id AND i.as_of = d.as_of
    LEFT JOIN unapplied_at u ON u.customer_id = c.customer_id AND u.as_of = d.as_of
    WHERE c.recorded_at <= $known_at
    ORDER BY c.customer_id, d.as_of"""


def balances_at(connection: duckdb.DuckDBPyConnection, dates: list[dt.date],
                known_at: dt.datetime | None = None) -> dict[tuple[str, dt.date], dict[str, Any]]:
    """{(customer_id, date): {currency, salesperson, open, current, overdue, unapplied, balance}} for known customers."""
    rows = _rows(connection, BALANCES_AT, {"dates": list(dates), "known_at": known_at_param(known_at)})
    return {(row["customer_id"], row["as_of"]): row for row in rows}


def month_end(day: dt.date) -> dt.date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def _customer(connection: duckdb.DuckDBPyConnection, customer_id: str,
              known_at: dt.datetime | None) -> dict[str, Any]:
    rows = _rows(connection, """SELECT customer_id, name, currency, coalesce(salesperson, '') AS salesperson
                                FROM customers WHERE customer_id = $customer_id AND recorded_at <= $known_at""",
                 {"customer_id": customer_id, "known_at": known_at_param(known_at)})
    if not rows:
        raise LookupError(f"unknown customer {customer_id!r}" + (" at that known-at instant" if known_at else ""))
    return rows[0]


def statement(connection: duckdb.DuckDBPyConnection, customer_id: str, date_from: dt.date, date_to: dt.date,
              known_at: dt.datetime | None = None) -> dict[str, Any]:
    """What is mailed to a customer: balance as of from−1, every movement in [from, to] by date, closing balance."""
    if date_to < date_from:
        raise ValueError(f"--to {date_to} is before --from {date_from}")
    customer = _customer(connection, customer_id, known_at)
    opening_on = date_from - dt.timedelta(days=1)
    balances = balances_at(connection, [opening_on, date_to], known_at)
    opening = balances[(customer_id, opening_on)]["balance"]
    closing = balances[(customer_id, date_to)]["balance"]
    sql = f"""
        WITH movements AS ({AR_MOVEMENTS})
        SELECT effective_on, kind, document_id, max(invoice_id) AS invoice_id, sum(ar_amount)::BIGINT AS amount,
               min(position) AS position
        FROM movements
        WHERE customer_id = $customer_id AND effective_on BETWEEN $date_from AND $date_to
        GROUP BY effective_on, kind, document_id
        HAVING sum(ar_amount) <> 0
        ORDER BY effective_on, position"""
    lines = _rows(connection, sql, {"customer_id": customer_id, "date_from": date_from, "date_to": date_to,
                                    "known_at": known_at_param(known_at)})
    running = opening
    rows = []
    for line in lines:
        running += line["amount"]
        rows.append({"effective_on": line["effective_on"].isoformat(), "kind": line["kind"],
                     "document_id": line["document_id"], "invoice_id": line["invoice_id"],
                     "debit": max(line["amount"], 0), "credit": max(-line["amount"], 0),
                     "amount": line["amount"], "balance": running})
    # The lines are the very movements the balance is made of: they must add up (a broken fold would show here).
    assert running == closing, f"statement of {customer_id}: opening {opening} + lines ≠ closing {closing}"
    return {"customer_id": customer_id, "name": customer["name"], "currency": customer["currency"],
            "from": date_from.isoformat(), "to": date_to.isoformat(), "known_at": format_known_at(known_at),
            "opening_balance": opening, "closing_balance": closing, "rows": rows}


def month_ends_between(date_from: dt.date, date_to: dt.date) -> list[dt.date]:
    """End of each month from `date_from`'s to `date_to`'s; the last one is `date_to` itself if earlier."""
    dates, day = [], month_end(date_from)
    while day < date_to:
        dates.append(day)
        day = month_end(day + dt.timedelta(days=1))
    dates.append(date_to)
    return dates


def history(connection: duckdb.DuckDBPyConnection, customer_id: str, date_from: dt.date, date_to: dt.date,
            known_at: dt.datetime | None = None) -> dict[str, Any]:
    """A customer's balance and exposure as of each month end in [from, to] (the last row as of `to`)."""
    if date_to < date_from:
        raise ValueError(f"--to {date_to} is before --from {date_from}")
    customer = _customer(connection, customer_id, known_at)
    dates = month_ends_between(date_from, date_to)
    balances = balances_at(connection, dates, known_at)
    sql = """
        WITH dates AS (SELECT unnest($dates::DATE[]) AS as_of)
        SELECT d.as_of,
               (SELECT coalesce(sum(exposure_delta), 0) FROM order_events o
                WHERE o.customer_id = $customer_id AND o.effective_on <= d.as_of
                  AND o.recorded_at <= $known_at)::BIGINT AS open_orders,
               (SELECT coalesce(arg_max(value_int, (effective_on, position)), 0) FROM credit_history h
                WHERE h.customer_id = $customer_id AND h.attribute = 'credit_limit' AND h.effective_on <= d.as_of
                  AND h.recorded_at <= $known_at)::BIGINT AS credit_limit,
               (SELECT count(*) FROM breaches b
                WHERE b.customer_id = $customer_id AND b.breached_on <= d.as_of
                  AND b.recorded_at <= $known_at) AS breaches
        FROM dates d ORDER BY d.as_of"""
    extra = _rows(connection, sql, {"dates": dates, "customer_id": customer_id,
                                    "known_at": known_at_param(known_at)})
    rows = []
    for figures in extra:
        as_of = figures["as_of"]
        balance = balances[(customer_id, as_of)]
        exposure = balance["balance"] + figures["open_orders"]
        limit = figures["credit_limit"]
        rows.append({"as_of": as_of.isoformat(), "month_end": as_of == month_end(as_of),
                     "open": balance["open"], "unapplied": balance["unapplied"], "balance": balance["balance"],
                     "overdue": balance["overdue"], "open_orders": figures["open_orders"], "exposure": exposure,
                     "credit_limit": limit, "available": limit - exposure,
                     "utilisation": None if limit == 0 else exposure / limit,
                     "over_limit": exposure > limit, "breaches": figures["breaches"]})
    return {"customer_id": customer_id, "name": customer["name"], "currency": customer["currency"],
            "from": date_from.isoformat(), "to": date_to.isoformat(), "known_at": format_known_at(known_at),
            "rows": rows}


ROLLFORWARD_COLUMNS = ("opening", "sales", "credit_notes", "cash", "reversed_cash", "write_offs", "closing", "check")


def rollforward(connection: duckdb.DuckDBPyConnection, date_from: dt.date, date_to: dt.date,
                known_at: dt.datetime | None = None, by: str = "currency") -> dict[str, Any]:
    """opening AR + sales − credit notes − cash + reversed cash − write-offs = closing AR, per currency or customer.

    `opening` = AR as of from−1 and `closing` = AR as of `to` are read independently of the movements (the
    aging total), so `check` = opening + movements − closing is a real proof, and must be 0.
    """
    if by not in ("currency", "customer", "salesperson"):
        raise ValueError(f"rollforward --by must be currency, customer or salesperson, got {by!r}")
    if date_to < date_from:
        raise ValueError(f"--to {date_to} is before --from {date_from}")
    opening_on = date_from - dt.timedelta(days=1)
    balances = balances_at(connection, [opening_on, date_to], known_at)
    sql = f"""
        WITH movements AS ({AR_MOVEMENTS})
        SELECT customer_id,
               coalesce(sum(ar_amount) FILTER (WHERE kind = 'sale'), 0)::BIGINT AS sales,
               coalesce(-sum(ar_amount) FILTER (WHERE kind = 'credit_note'), 0)::BIGINT AS credit_notes,
               coalesce(-sum(ar_amount) FILTER (WHERE kind = 'payment'), 0)::BIGINT AS cash,
               coalesce(sum(ar_amount) FILTER (WHERE kind = 'reversal'), 0)::BIGINT AS reversed_cash,
               coalesce(-sum(ar_amount) FILTER (WHERE kind = 'write_off'), 0)::BIGINT AS write_offs
        FROM movements WHERE effective_on BETWEEN $date_from AND $date_to
        GROUP BY customer_id"""
    movements = {row["customer_id"]: row for row in _rows(
        connection, sql, {"date_from": date_from, "date_to": date_to, "known_at": known_at_param(known_at)})}
    groups: dict[tuple[str, ...], dict[str, Any]] = {}
    for (customer_id, as_of), balance in balances.items():
        if as_of != date_to:
            continue
        if by == "customer":
            key: tuple[str, ...] = (customer_id, balance["currency"])
            head: dict[str, Any] = {"customer_id": customer_id, "currency": balance["currency"]}
        elif by == "salesperson":
            key = (balance["salesperson"], balance["currency"])
            head = {"salesperson": balance["salesperson"], "currency": balance["currency"]}
        else:
            key = (balance["currency"],)
            head = {"currency": balance["currency"]}
        row = groups.setdefault(key, {**head, **dict.fromkeys(ROLLFORWARD_COLUMNS, 0)})
        row["opening"] += balances[(customer_id, opening_on)]["balance"]
        row["closing"] += balance["balance"]
        for column in ("sales", "credit_notes", "cash", "reversed_cash", "write_offs"):
            row[column] += movements.get(customer_id, {}).get(column, 0)
    rows = []
    for key in sorted(groups):
        row = groups[key]
        row["check"] = (row["opening"] + row["sales"] - row["credit_notes"] - row["cash"] + row["reversed_cash"]
                        - row["write_offs"] - row["closing"])
        if any(row[column] for column in ROLLFORWARD_COLUMNS):
            rows.append(row)
    return {"from": date_from.isoformat(), "to": date_to.isoformat(), "known_at": format_known_at(known_at),
            "by": by, "rows": rows}
