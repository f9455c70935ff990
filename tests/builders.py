"""The one set of fact builders of the test suite, and a given → when → then harness over `AccountState`.

Each fact builder returns the envelope as a JSON-ready dict, so a test can
tweak any field before encoding it; `record()` turns it into the raw Kafka
record the `Ledger` takes, `envelope()` into the decoded `Envelope` the pure
rules take, `encode()` into the bytes a producer sends. Business dates are ISO
strings ("2026-03-01"); the envelope `time` is that day at 10:00 UTC unless the
test says otherwise (`hour=`, or `time=` for a full instant). Every builder
takes `id=` (the envelope id; default a fresh `env-N`) and `customer_id=`, so
the unit tests (one customer, generated ids) and the integration tests (several
customers, ids they look up on the topics) use the same functions.

    from tests import builders as b
    b.sale("INV-1", 10_000, issued_on="2026-03-01", customer_id="C2", id="c2-s1")
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable
from typing import Any

import msgspec

from ledger import contract as c
from ledger import events as e
from ledger.account import AccountState, CreditPolicy
from ledger.application import InboundRecord, Ledger, Outcome

CUSTOMER = "C1"
CURRENCY = "EUR"
START = "2026-01-01"

_envelope_ids = itertools.count(1)


def day(iso: str) -> dt.date:
    return dt.date.fromisoformat(iso)


def fact(type_: str, data: dict[str, Any], *, on: str = START, customer_id: str = CUSTOMER,
         id: str | None = None, time: str | None = None, hour: int = 10, source: str = "test") -> dict[str, Any]:
    """One inbound envelope (docs/contract.md §3); `on` is the business date carried by `time` (`hour`:00 UTC)."""
    return {"id": id or f"env-{next(_envelope_ids)}", "type": type_, "source": source,
            "time": time or f"{on}T{hour:02d}:00:00Z", "customer_id": customer_id, "data": data}


# -- Fact builders, one per inbound type --------------------------------------------------------
# Every one takes `id=` (the envelope id) and `customer_id=`; `**extra` adds (or overrides) `data` fields.

Installments = list[tuple[str, int]] | list[dict[str, Any]]


def registered(*, limit: int = 100_000, terms: int = 30, currency: str = CURRENCY, on: str = START,
               customer_id: str = CUSTOMER, id: str | None = None, **extra: Any) -> dict[str, Any]:
    return fact("customer.registered", {"name": f"Customer {customer_id}", "currency": currency,
                                        "credit_limit": limit, "payment_terms_days": terms, **extra},
                on=on, customer_id=customer_id, id=id)


def limit_changed(limit: int, *, on: str, customer_id: str = CUSTOMER, id: str | None = None,
                  **extra: Any) -> dict[str, Any]:
    return fact("credit_limit.changed", {"credit_limit": limit, "reason": "review", **extra},
                on=on, customer_id=customer_id, id=id)


def terms_changed(days: int, *, on: str, customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    return fact("payment_terms.changed", {"payment_terms_days": days}, on=on, customer_id=customer_id, id=id)


def grade_assigned(grade: str, *, on: str, customer_id: str = CUSTOMER, id: str | None = None,
                   **extra: Any) -> dict[str, Any]:
    return fact("credit_grade.assigned", {"grade": grade, **extra}, on=on, customer_id=customer_id, id=id)


def hold_placed(*, on: str, customer_id: str = CUSTOMER, id: str | None = None,
                reason: str = "late payer") -> dict[str, Any]:
    return fact("credit_hold.placed", {"reason": reason}, on=on, customer_id=customer_id, id=id)


def hold_released(*, on: str, customer_id: str = CUSTOMER, id: str | None = None,
                  reason: str = "paid up") -> dict[str, Any]:
    return fact("credit_hold.released", {"reason": reason}, on=on, customer_id=customer_id, id=id)


def order_placed(order_id: str, amount: int, *, on: str, currency: str = CURRENCY,
                 customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    return fact("order.placed", {"order_id": order_id, "amount": amount, "currency": currency},
                on=on, customer_id=customer_id, id=id)


def order_cancelled(order_id: str, *, on: str, customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    return fact("order.cancelled", {"order_id": order_id}, on=on, customer_id=customer_id, id=id)


def order_released(order_id: str, *, on: str, customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    return fact("order.released", {"order_id": order_id, "by": "controller", "reason": "good payer"},
                on=on, customer_id=customer_id, id=id)


def sale(invoice_id: str, amount: int, *, issued_on: str, due_on: str | None = None,
         installments: Installments | None = None, order_id: str | None = None,
         currency: str = CURRENCY, customer_id: str = CUSTOMER, id: str | None = None,
         **extra: Any) -> dict[str, Any]:
    """`installments` as (due_on, amount) pairs, or as the JSON objects themselves."""
    data: dict[str, Any] = {"invoice_id": invoice_id, "amount": amount, "currency": currency, "issued_on": issued_on}
    if due_on is not None:
        data["due_on"] = due_on
    if installments is not None:
        data["installments"] = [part if isinstance(part, dict) else {"due_on": part[0], "amount": part[1]}
                                for part in installments]
    if order_id is not None:
        data["order_id"] = order_id
    return fact("sale.recorded", {**data, **extra}, on=issued_on, customer_id=customer_id, id=id)


def credit_note(credit_note_id: str, invoice_id: str, amount: int, *, on: str,
                customer_id: str = CUSTOMER, id: str | None = None, **extra: Any) -> dict[str, Any]:
    return fact("credit_note.issued", {"credit_note_id": credit_note_id, "invoice_id": invoice_id,
                                       "amount": amount, "reason": "returned goods", **extra},
                on=on, customer_id=customer_id, id=id)


def payment(payment_id: str, amount: int, *, received_on: str,
            allocations: list[tuple[str, int]] | list[dict[str, Any]] | None = None,
            currency: str = CURRENCY, customer_id: str = CUSTOMER, id: str | None = None,
            **extra: Any) -> dict[str, Any]:
    """`allocations` as (invoice_id, amount) pairs, or as the JSON objects themselves."""
    data: dict[str, Any] = {"payment_id": payment_id, "amount": amount, "currency": currency,
                            "received_on": received_on}
    if allocations is not None:
        data["allocations"] = [part if isinstance(part, dict) else {"invoice_id": part[0], "amount": part[1]}
                               for part in allocations]
    return fact("payment.received", {**data, **extra}, on=received_on, customer_id=customer_id, id=id)


def reversal(payment_id: str, *, on: str, customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    return fact("payment.reversed", {"payment_id": payment_id, "reason": "bounced"},
                on=on, customer_id=customer_id, id=id)


def write_off(invoice_id: str, *, on: str, amount: int | None = None, customer_id: str = CUSTOMER,
              id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"invoice_id": invoice_id, "reason": "insolvent"}
    if amount is not None:
        data["amount"] = amount
    return fact("invoice.written_off", data, on=on, customer_id=customer_id, id=id)


def dispute_opened(invoice_id: str, *, on: str, customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    return fact("dispute.opened", {"invoice_id": invoice_id, "reason": "damaged"}, on=on, customer_id=customer_id,
                id=id)


def dispute_resolved(invoice_id: str, *, on: str, customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    return fact("dispute.resolved", {"invoice_id": invoice_id, "resolution": "accepted"},
                on=on, customer_id=customer_id, id=id)


def collection_action(action: str, *, on: str, invoice_id: str | None = None,
                      customer_id: str = CUSTOMER, id: str | None = None, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"action": action, **extra}
    if invoice_id is not None:
        data["invoice_id"] = invoice_id
    return fact("collection.action", data, on=on, customer_id=customer_id, id=id)


def promise(promise_id: str, amount: int, *, promised_on: str, on: str, invoice_id: str | None = None,
            customer_id: str = CUSTOMER, id: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"promise_id": promise_id, "amount": amount, "promised_on": promised_on}
    if invoice_id is not None:
        data["invoice_id"] = invoice_id
    return fact("promise.made", data, on=on, customer_id=customer_id, id=id)


# -- Encodings -----------------------------------------------------------------------------------

def encode(envelope: dict[str, Any]) -> bytes:
    return msgspec.json.encode(envelope)


def record(envelope: dict[str, Any], *, key: str | None = "") -> InboundRecord:
    """The raw Kafka record; the key defaults to the envelope's customer_id (None: no key)."""
    if key == "":
        key = envelope.get("customer_id")
    return InboundRecord(value=encode(envelope), key=None if key is None else key.encode())


def envelope(raw: dict[str, Any]) -> c.Envelope:
    return c.decode(encode(raw))


def process(ledger: Ledger, *envelopes: dict[str, Any]) -> list[Outcome]:
    """One batch through the application service."""
    return ledger.process_batch([record(raw) for raw in envelopes])


# -- given → when → then over the pure rules ----------------------------------------------------

class Account:
    """An AccountState driven fact by fact, as the aggregate drives it (every emitted event folded at once)."""

    def __init__(self, customer_id: str = CUSTOMER, policy: CreditPolicy = CreditPolicy()) -> None:
        self.state = AccountState(customer_id=customer_id)
        self.policy = policy
        self.history: list[e.DomainEvent] = []

    def when(self, raw: dict[str, Any]) -> list[e.DomainEvent]:
        """Handle one fact; returns the events it produced (a Rejection propagates)."""
        emitted: list[e.DomainEvent] = []

        def emit(event: e.DomainEvent) -> None:
            self.state.fold(event)
            emitted.append(event)

        self.state.handle(envelope(raw), emit, self.policy)
        self.history.extend(emitted)
        return emitted

    def item(self, invoice_id: str, installment: int = 1):  # -> Item
        return self.state.items[f"{invoice_id}#{installment}"]

    def open(self, invoice_id: str, installment: int = 1) -> int:
        return self.item(invoice_id, installment).open


def given(*facts: dict[str, Any], policy: CreditPolicy = CreditPolicy(), customer_id: str = CUSTOMER) -> Account:
    """An account after the given facts (a registration first, if the test gives none)."""
    account = Account(customer_id=customer_id, policy=policy)
    if not facts or facts[0]["type"] != "customer.registered":
        account.when(registered(customer_id=customer_id))
    for raw in facts:
        account.when(raw)
    return account


def of_kind(events: Iterable[e.DomainEvent], kind: type[e.DomainEvent]) -> list[Any]:
    return [event for event in events if type(event) is kind]


def allocations(events: Iterable[e.DomainEvent]) -> list[tuple[str, int, int]]:
    """(invoice_id, installment, amount) of each CashAllocated, in order."""
    return [(event.invoice_id, event.installment, event.amount) for event in of_kind(events, e.CashAllocated)]


def eligible_open_items(state: AccountState) -> list[str]:
    """Keys of open items that automatic application may use: undisputed, not written off."""
    return [key for key, item in state.items.items()
            if item.open > 0 and not item.written_off and not state.invoices[item.invoice_id].disputed]


def assert_cash_invariant(state: AccountState) -> None:
    """§7: no unapplied cash while an undisputed, not written-off open item exists."""
    if state.unapplied() > 0:
        assert eligible_open_items(state) == [], (
            f"unapplied {state.unapplied()} while {eligible_open_items(state)} are open")
