"""The ledger on both event stores, SQLite and PostgreSQL (a real server): same outcomes, same state,
optimistic concurrency between two writers, notification order for the relay."""

from __future__ import annotations

import msgspec
import pytest
from eventsourcing.persistence import IntegrityError

from ledger.account import AccountState
from ledger.application import InboundRecord, Ledger
from tests import builders as b

# The scenario's shorthand over the suite's fact builders: Kafka records, recorded on 2026-03-01 unless told.


def envelope(envelope_id: str, kind: str, data: dict, customer_id: str = "C1",
             time: str = "2026-03-01T10:00:00Z") -> InboundRecord:
    return b.record(b.fact(kind, data, customer_id=customer_id, id=envelope_id, time=time))


def registered(customer_id: str = "C1", limit: int = 100_000) -> InboundRecord:
    return b.record(b.registered(limit=limit, on="2026-03-01", customer_id=customer_id, id=f"reg-{customer_id}",
                                 name=customer_id))


SCENARIO = [
    registered("C1"),
    registered("C2"),
    envelope("s1", "sale.recorded", {"invoice_id": "I1", "amount": 30_000, "currency": "EUR",
                                     "issued_on": "2026-03-01"}),
    envelope("p1", "payment.received", {"payment_id": "P1", "amount": 40_000, "currency": "EUR",
                                        "received_on": "2026-03-10"}),
    envelope("s2", "sale.recorded", {"invoice_id": "I2", "amount": 20_000, "currency": "EUR",
                                     "issued_on": "2026-03-12"}),
    envelope("r1", "payment.reversed", {"payment_id": "P1", "reason": "bounced"}, time="2026-03-20T09:00:00Z"),
    envelope("s1", "sale.recorded", {"invoice_id": "I1", "amount": 30_000, "currency": "EUR",
                                     "issued_on": "2026-03-01"}),
    envelope("x1", "sale.recorded", {"invoice_id": "I9", "amount": 1, "currency": "USD",
                                     "issued_on": "2026-03-01"}),
]


def test_a_scenario_gives_the_same_outcomes_and_state_on_every_store(store_url: str) -> None:
    ledger = Ledger(store_url)
    outcomes = ledger.process_batch(SCENARIO[:4]) + ledger.process_batch(SCENARIO[4:])

    assert [(o.status, o.reason) for o in outcomes] == [
        ("accepted", None), ("accepted", None), ("accepted", None), ("accepted", None), ("accepted", None),
        ("accepted", None), ("duplicate", None), ("rejected", "currency_mismatch")]
    state = Ledger(store_url).account("C1")  # a fresh instance: read back from the store
    assert state is not None
    assert {key: item.open for key, item in state.items.items()} == {"I1#1": 30_000, "I2#1": 20_000}
    assert state.unapplied() == 0
    replayed = AccountState(customer_id="C1")
    for stored in ledger.stored_events("C1"):
        replayed.fold(stored.event)
    assert msgspec.to_builtins(replayed) == msgspec.to_builtins(state)


def test_two_writers_on_one_customer_never_corrupt_it(store_url: str) -> None:
    first, second = Ledger(store_url), Ledger(store_url)
    first.process_batch([registered("C1")])
    first.account("C1")  # cached at version 1 in `first`
    second.process_batch([envelope("s1", "sale.recorded", {"invoice_id": "I1", "amount": 500, "currency": "EUR",
                                                           "issued_on": "2026-03-01"})])

    sale = envelope("s2", "sale.recorded", {"invoice_id": "I2", "amount": 700, "currency": "EUR",
                                            "issued_on": "2026-03-02"})
    with pytest.raises(IntegrityError):
        first.process_batch([sale])  # optimistic concurrency: its cached account is stale
    first.forget_cache()  # what the ingest worker does before it retries
    assert first.process_batch([sale])[0].status == "accepted"

    state = Ledger(store_url).account("C1")
    assert sorted(state.invoices) == ["I1", "I2"]
    versions = [event.version for event in first.stored_events("C1")]
    assert versions == list(range(1, len(versions) + 1))


def test_the_relay_reads_account_events_in_commit_order(store_url: str) -> None:
    ledger = Ledger(store_url)
    ledger.process_batch(SCENARIO[:3])
    ledger.process_batch(SCENARIO[3:6])

    events = ledger.read_ledger(0, 1000)
    notification_ids = [notification_id for notification_id, _ in events]
    assert notification_ids == sorted(notification_ids)
    assert [(e.customer_id, e.kind) for _, e in events][:4] == [
        ("C1", "customer.registered"), ("C2", "customer.registered"), ("C1", "sale.recorded"),
        ("C1", "item.opened")]
    per_customer: dict[str, list[int]] = {}
    for _, event in events:
        per_customer.setdefault(event.customer_id, []).append(event.version)
    assert all(versions == list(range(1, len(versions) + 1)) for versions in per_customer.values())
