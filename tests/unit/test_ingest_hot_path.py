"""The shortcuts of the ingest hot path give what the slow path gave: snapshots taken from the in-memory
aggregates equal a replay from the store, and duplicates found in the receipt cache equal those found in
the store."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.builders import order_placed, payment, process, record, registered, sale
from ledger.account import AccountState
from ledger.aggregate import CustomerAccount, LedgerChain, account_id
from ledger.application import InboundRecord, Ledger


class SmallIntervalLedger(Ledger):
    snapshotting_intervals = {CustomerAccount: 5, LedgerChain: 200}


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


def replayed_state(ledger: Ledger, customer_id: str) -> AccountState:
    state = AccountState(customer_id=customer_id)
    for stored in ledger.stored_events(customer_id):
        state.fold(stored.event)
    return state


def test_snapshots_are_taken_at_the_batch_end_version_and_reload_to_the_replayed_state(store_url: str) -> None:
    ledger = SmallIntervalLedger(store_url)
    process(ledger, registered(limit=10_000_000), registered(limit=10_000_000, customer_id="C2"))
    for batch in range(4):  # each batch moves C1 past a multiple of 5 and on, and C2 less often
        process(ledger, *[sale(f"I{batch}-{n}", 100 + n, issued_on="2026-03-01") for n in range(3)],
                payment(f"P{batch}", 150, received_on="2026-03-02"),
                order_placed(f"O{batch}", 10, on="2026-03-03"),
                sale(f"J{batch}", 70, issued_on="2026-03-01", customer_id="C2"))

    snapshots = list(ledger.snapshots.get(account_id("C1")))
    versions = [event.version for event in ledger.stored_events("C1")]
    assert snapshots and all(snapshot.originator_version in versions for snapshot in snapshots)
    assert any(snapshot.originator_version % 5 for snapshot in snapshots)  # the batch end, past the multiple
    reloaded = SmallIntervalLedger(store_url)  # each account rebuilt from its last snapshot + later events
    for customer_id in ("C1", "C2"):
        expected = msgspec.to_builtins(replayed_state(ledger, customer_id))
        assert msgspec.to_builtins(reloaded.account(customer_id)) == expected
        assert msgspec.to_builtins(ledger.account(customer_id)) == expected


def test_a_duplicate_from_the_receipt_cache_equals_one_from_the_store(store_url: str) -> None:
    fact = sale("I1", 100, issued_on="2026-03-01")
    warm = Ledger(store_url)
    process(warm, registered())
    first = warm.process_batch([InboundRecord(record(fact).value, b"C1", "ar.inbound:0:7")])[0]

    again = [InboundRecord(record(fact).value, b"C1", "ar.inbound:0:7"),  # the same offset: redelivered
             InboundRecord(record(fact).value, b"C1", "ar.inbound:0:9")]  # an upstream re-send
    from_cache = warm.process_batch(again)
    from_store = Ledger(store_url).process_batch(again)

    assert from_cache == from_store
    assert [(o.status, o.redelivered) for o in from_cache] == [("duplicate", True), ("duplicate", False)]
    assert {(o.envelope_id, o.customer_id, o.type, o.recorded_at, o.first_version, o.last_version)
            for o in from_cache} == {(first.envelope_id, "C1", "sale.recorded", first.recorded_at,
                                      first.first_version, first.last_version)}
