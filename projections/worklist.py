"""The collections worklist, promises to pay and per-salesperson collection figures (docs/contract.md §5, §8 "Worklist").

Worklist as of D (known at T): for each open overdue item (open amount > 0,
D − due_on ≥ 1), the due step is the highest ladder step whose offset ≤ days
past due; the item is listed unless that step or a later one was recorded
(`collection_actions`, action_on in [due_on, D]) for the item (its invoice) or
for its customer as a whole (no invoice named). Disputed items (as of D) are
skipped, and so are items covered by a promise whose date has not passed.
Rows: items covered by a broken promise (on its date) first, then by open
amount descending, customer id, invoice id, installment.

Promises (§8): a promise covers the items it names, or the customer's oldest
open items up to its amount, until its date (made_on ≤ D ≤ promised_on); it
is kept when the payments received from its date of making through
`promised_on` (not reversed as of D) reach its amount, partly kept if some
arrived, broken if none — decided once the promised date has passed.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import duckdb

from ledger.policy import (
    PROMISE_BROKEN,
    PROMISE_KEPT,
    PROMISE_OPEN,
    PROMISE_PARTLY_KEPT,
    Ladder,
    OpenItem,
    promise_cover,
    promise_status,
)
from projections.reports import OPEN_ITEMS_AS_OF, _rows as _all_rows, format_known_at, params

_PARAMETER = re.compile(r"\$([a-z_]+)")


def bound(sql: str, values: dict[str, Any]) -> dict[str, Any]:
    """Only the named parameters `sql` uses (DuckDB refuses extra ones)."""
    used = set(_PARAMETER.findall(sql))
    return {name: value for name, value in values.items() if name in used}


def _rows(connection: duckdb.DuckDBPyConnection, sql: str, values: dict[str, Any]) -> list[dict[str, Any]]:
    return _all_rows(connection, sql, bound(sql, values))

OPEN_ITEMS_SQL = f"""
    WITH open_items AS ({OPEN_ITEMS_AS_OF}),
    disputes AS (
        SELECT customer_id, invoice_id, arg_max(kind, (effective_on, position)) = 'opened' AS disputed
        FROM dispute_events WHERE effective_on <= $as_of AND recorded_at <= $known_at GROUP BY ALL)
    SELECT o.customer_id, o.invoice_id, o.installment, o.issued_on, o.due_on, o.open_amount::BIGINT AS open_amount,
           coalesce(d.disputed, false) AS disputed
    FROM open_items o LEFT JOIN disputes d USING (customer_id, invoice_id)
    WHERE o.open_amount > 0"""

ACTIONS_SQL = """
    SELECT customer_id, invoice_id, action, action_on FROM collection_actions
    WHERE action_on <= $as_of AND recorded_at <= $known_at
    ORDER BY action_on, position"""

# Payments count for a promise when received in [made_on, promised_on] and not reversed as of D.
PROMISES_SQL = """
    WITH paid AS (
        SELECT p.position, sum(y.amount)::BIGINT AS paid
        FROM promises p JOIN payments y ON y.customer_id = p.customer_id
             AND y.received_on BETWEEN p.made_on AND least(p.promised_on, $as_of)
        WHERE y.recorded_at <= $known_at
          AND NOT coalesce(y.reversed_on <= $as_of AND y.reversed_recorded_at <= $known_at, false)
        GROUP BY p.position)
    SELECT p.customer_id, p.promise_id, p.amount, p.promised_on, p.invoice_id, p.made_on,
           coalesce(paid.paid, 0) AS paid
    FROM promises p LEFT JOIN paid USING (position)
    WHERE p.made_on <= $as_of AND p.recorded_at <= $known_at
    ORDER BY p.customer_id, p.promised_on, p.position"""

# The items open on each passed promise's date: what a broken promise was about (its cover on its last day).
COVER_AT_PROMISE_DATE_SQL = """
    SELECT p.customer_id, p.promise_id, m.invoice_id, m.installment, i.due_on, sum(m.amount)::BIGINT AS open_amount
    FROM promises p
    JOIN item_movements m ON m.customer_id = p.customer_id AND m.effective_on <= p.promised_on
    JOIN items i ON i.customer_id = m.customer_id AND i.invoice_id = m.invoice_id AND i.installment = m.installment
    WHERE p.promised_on < $as_of AND p.made_on <= $as_of AND p.recorded_at <= $known_at
      AND m.recorded_at <= $known_at
    GROUP BY ALL HAVING sum(m.amount) > 0"""

CUSTOMERS_SQL = """
    SELECT customer_id, name, currency, coalesce(salesperson, '') AS salesperson FROM customers
    WHERE recorded_at <= $known_at"""


@dataclass(frozen=True)
class Promise:
    customer_id: str
    promise_id: str
    amount: int
    made_on: dt.date
    promised_on: dt.date
    invoice_id: str | None
    paid: int
    status: str

    def row(self) -> dict[str, Any]:
        return {"customer_id": self.customer_id, "promise_id": self.promise_id, "amount": self.amount,
                "made_on": self.made_on.isoformat(), "promised_on": self.promised_on.isoformat(),
                "invoice_id": self.invoice_id, "paid": self.paid, "status": self.status}


def promises(connection: duckdb.DuckDBPyConnection, as_of: dt.date,
             known_at: dt.datetime | None = None) -> list[Promise]:
    """Every promise made by `as_of`, with what was paid towards it and its status as of then."""
    return [Promise(customer_id=row["customer_id"], promise_id=row["promise_id"], amount=row["amount"],
                    made_on=row["made_on"], promised_on=row["promised_on"], invoice_id=row["invoice_id"],
                    paid=row["paid"], status=promise_status(row["amount"], row["paid"], row["promised_on"], as_of))
            for row in _rows(connection, PROMISES_SQL, params(as_of, known_at))]


def worklist_rows(connection: duckdb.DuckDBPyConnection, ladder: Ladder, as_of: dt.date,
                  known_at: dt.datetime | None = None, salesperson: str | None = None) -> list[dict[str, Any]]:
    """The worklist rows of §8 as of `as_of` (optionally one registered salesperson's customers, "" = none)."""
    query = params(as_of, known_at)
    customers = {row["customer_id"]: row for row in _rows(connection, CUSTOMERS_SQL, query)}
    items_by_customer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in _rows(connection, OPEN_ITEMS_SQL, query):
        if item["customer_id"] in customers:
            items_by_customer[item["customer_id"]].append(item)
    actions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for action in _rows(connection, ACTIONS_SQL, query):
        actions[action["customer_id"]].append(action)
    promises_by_customer: dict[str, list[Promise]] = defaultdict(list)
    for promise in promises(connection, as_of, known_at):
        promises_by_customer[promise.customer_id].append(promise)
    items_at_promise_date: dict[tuple[str, str], list[OpenItem]] = defaultdict(list)
    if any(p.status == PROMISE_BROKEN for ps in promises_by_customer.values() for p in ps):
        for row in _rows(connection, COVER_AT_PROMISE_DATE_SQL, query):
            items_at_promise_date[(row["customer_id"], row["promise_id"])].append(
                OpenItem(key=(row["invoice_id"], row["installment"]), due_on=row["due_on"],
                         open_amount=row["open_amount"]))

    rows = []
    for customer_id, items in items_by_customer.items():
        customer = customers[customer_id]
        if salesperson is not None and customer["salesperson"] != salesperson:
            continue
        pending, broken = _promise_cover(items, promises_by_customer.get(customer_id, []), as_of,
                                         items_at_promise_date)
        for item in items:
            days_past_due = (as_of - item["due_on"]).days
            if days_past_due < 1 or item["disputed"]:
                continue
            key = (item["invoice_id"], item["installment"])
            if key in pending:
                continue
            due_index = ladder.due_step(days_past_due)
            if due_index is None:
                continue
            recorded = [a for a in actions.get(customer_id, ())
                        if a["action_on"] >= item["due_on"]
                        and (a["invoice_id"] is None or a["invoice_id"] == item["invoice_id"])]
            if ladder.done(due_index, (a["action"] for a in recorded)):
                continue
            step = ladder.steps[due_index]
            last = recorded[-1] if recorded else None
            rows.append({
                "customer_id": customer_id, "name": customer["name"], "salesperson": customer["salesperson"],
                "currency": customer["currency"], "invoice_id": item["invoice_id"],
                "installment": item["installment"], "due_on": item["due_on"].isoformat(),
                "days_past_due": days_past_due, "open_amount": item["open_amount"],
                "step": step.action, "step_offset_days": step.offset_days, "channel": step.channel,
                "owner": step.owner, "broken_promise": key in broken, "promise_id": broken.get(key),
                "last_action": last["action"] if last else None,
                "last_action_on": last["action_on"].isoformat() if last else None,
            })
    rows.sort(key=lambda r: (not r["broken_promise"], -r["open_amount"], r["customer_id"], r["invoice_id"],
                             r["installment"]))
    return rows


def _promise_cover(items: list[dict[str, Any]], customer_promises: list[Promise], as_of: dt.date,
                   items_at_promise_date: dict[tuple[str, str], list[OpenItem]],
                   ) -> tuple[set[tuple[str, int]], dict[tuple[str, int], str]]:
    """(items covered by a promise still running — its cover as of `as_of` —, {item: id of a broken promise that
    covered it on its date})."""
    open_items = [OpenItem(key=(i["invoice_id"], i["installment"]), due_on=i["due_on"], open_amount=i["open_amount"])
                  for i in items]
    pending: set[tuple[str, int]] = set()
    broken: dict[tuple[str, int], str] = {}
    for promise in customer_promises:
        if promise.made_on <= as_of <= promise.promised_on:
            pending |= promise_cover(promise.invoice_id, promise.amount, open_items)
        elif promise.status == PROMISE_BROKEN:
            at_date = items_at_promise_date.get((promise.customer_id, promise.promise_id), [])
            for key in promise_cover(promise.invoice_id, promise.amount, at_date):
                broken.setdefault(key, promise.promise_id)  # the earliest broken promise names the row
    return pending, broken


def worklist(connection: duckdb.DuckDBPyConnection, ladder: Ladder, as_of: dt.date,
             known_at: dt.datetime | None = None, salesperson: str | None = None) -> dict[str, Any]:
    """`arledger worklist --format json`: the query echoed, the ladder, the rows."""
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at), "salesperson": salesperson,
            "ladder": [{"action": s.action, "offset_days": s.offset_days, "channel": s.channel, "owner": s.owner}
                       for s in ladder.steps],
            "rows": worklist_rows(connection, ladder, as_of, known_at, salesperson)}


def promise_report(connection: duckdb.DuckDBPyConnection, as_of: dt.date, known_at: dt.datetime | None = None,
                   salesperson: str | None = None) -> dict[str, Any]:
    """Every promise made by `as_of` with its status (open, kept, partly_kept, broken)."""
    customers = {row["customer_id"]: row for row in _rows(connection, CUSTOMERS_SQL, params(as_of, known_at))}
    rows = []
    for promise in promises(connection, as_of, known_at):
        customer = customers.get(promise.customer_id)
        if customer is None or (salesperson is not None and customer["salesperson"] != salesperson):
            continue
        rows.append({**promise.row(), "salesperson": customer["salesperson"], "currency": customer["currency"]})
    return {"as_of": as_of.isoformat(), "known_at": format_known_at(known_at), "salesperson": salesperson,
            "rows": rows}


COLLECTED_SQL = """
    SELECT p.customer_id, sum(p.amount)::BIGINT AS collected FROM payments p
    WHERE p.received_on BETWEEN $date_from AND $date_to AND p.recorded_at <= $known_at
      AND NOT coalesce(p.reversed_on <= $date_to AND p.reversed_recorded_at <= $known_at, false)
    GROUP BY p.customer_id"""

OVERDUE_SQL = f"""
    WITH open_items AS ({OPEN_ITEMS_AS_OF})
    SELECT customer_id, sum(open_amount)::BIGINT AS overdue FROM open_items
    WHERE $as_of - due_on >= 1 GROUP BY customer_id"""

KPI_COLUMNS = ("customers", "collected", "overdue", "worklist_items", "worklist_amount", "promises_due",
               "promises_kept", "promises_partly_kept", "promises_broken", "broken_promise_amount",
               "open_promises", "open_promise_amount")


def salesperson_kpis(connection: duckdb.DuckDBPyConnection, ladder: Ladder, date_from: dt.date, date_to: dt.date,
                     known_at: dt.datetime | None = None) -> dict[str, Any]:
    """Collection figures per registered salesperson and currency for [from, to]:
    collected = payments received in the period and not reversed by `to`; overdue, worklist and open promises
    as of `to`; promises due in the period (promised_on in it) by outcome as of `to`."""
    if date_from > date_to:
        raise ValueError(f"--from {date_from} is after --to {date_to}")
    query = params(date_to, known_at)
    customers = {row["customer_id"]: row for row in _rows(connection, CUSTOMERS_SQL, query)}
    collected = dict(connection.execute(COLLECTED_SQL, bound(COLLECTED_SQL, {
        **query, "date_from": date_from, "date_to": date_to})).fetchall())
    overdue = dict(connection.execute(OVERDUE_SQL, bound(OVERDUE_SQL, query)).fetchall())
    groups: dict[tuple[str, str], dict[str, Any]] = {}

    def group(customer_id: str) -> dict[str, Any]:
        customer = customers[customer_id]
        key = (customer["salesperson"], customer["currency"])
        if key not in groups:
            groups[key] = {"salesperson": key[0], "currency": key[1], **dict.fromkeys(KPI_COLUMNS, 0)}
        return groups[key]

    for customer_id in customers:
        row = group(customer_id)
        row["customers"] += 1
        row["collected"] += collected.get(customer_id, 0)
        row["overdue"] += overdue.get(customer_id, 0)
    for item in worklist_rows(connection, ladder, date_to, known_at):
        row = group(item["customer_id"])
        row["worklist_items"] += 1
        row["worklist_amount"] += item["open_amount"]
    outcome_columns = {PROMISE_KEPT: "promises_kept", PROMISE_PARTLY_KEPT: "promises_partly_kept",
                       PROMISE_BROKEN: "promises_broken"}
    for promise in promises(connection, date_to, known_at):
        if promise.customer_id not in customers:
            continue
        row = group(promise.customer_id)
        if date_from <= promise.promised_on <= date_to:
            row["promises_due"] += 1
            if promise.status in outcome_columns:
                row[outcome_columns[promise.status]] += 1
            if promise.status == PROMISE_BROKEN:
                row["broken_promise_amount"] += promise.amount
        if promise.status == PROMISE_OPEN:
            row["open_promises"] += 1
            row["open_promise_amount"] += promise.amount
    return {"from": date_from.isoformat(), "to": date_to.isoformat(), "known_at": format_known_at(known_at),
            "by": "salesperson", "rows": [groups[key] for key in sorted(groups)]}
