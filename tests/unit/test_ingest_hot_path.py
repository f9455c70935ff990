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


def test_the_msgspec_mapper_writes_and_reads_exactly_what_eventsourcing_s_json_mapper_does(store_url: str):
    from eventsourcing.persistence import Mapper

    ledger = Ledger(store_url)
    try:
        process(ledger, registered(), sale("I1", 1_000, issued_on="2026-01-02"),
                payment("P1", 400, received_on="2026-01-05"), order_placed("O1", 300, on="2026-01-06"))
        plain = Mapper(transcoder=ledger.mapper.transcoder)
        notifications = ledger.recorder.select_notifications(start=1, limit=1_000)
        assert {n.topic.rsplit(":", 1)[1] for n in notifications} >= {"CustomerAccount.Opened",
                                                                      "CustomerAccount.Recorded",
                                                                      "EnvelopeReceipt.Accepted"}
        for notification in notifications:
            slow = plain.to_domain_event(notification)
            fast = ledger.mapper.to_domain_event(notification)
            assert type(fast) is type(slow) and vars(fast) == vars(slow)
            assert ledger.mapper.to_stored_event(slow).state == plain.to_stored_event(slow).state
    finally:
        ledger.close()


class _Idle:
    """Stands in for the Kafka clients: the batch sizing under test never talks to the broker."""

    def close(self, **_: object) -> None:
        pass


def test_an_ingest_batch_closes_at_its_latency_bound_or_its_size_whichever_comes_first(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    from arledger.settings import INGEST_BATCH_RECORDS_MAX, INGEST_BATCH_RECORDS_MIN, Settings
    from consumers.ingest import IngestWorker

    monkeypatch.setenv("ARLEDGER_INGEST_BATCH_MS", "20")
    settings = Settings(home=tmp_path, broker_port=1, kafka_bootstrap="unused:1",
                        store_url=f"sqlite:///{tmp_path / 'l.sqlite'}")
    worker = IngestWorker(settings, Ledger("memory://"), consumer=_Idle(), producer=_Idle())
    assert worker.batch_records() == INGEST_BATCH_RECORDS_MIN  # the first batch measures the cost
    for _ in range(30):
        worker._measured(100, 0.1)  # 1 ms per record: 20 records fit 20 ms
    assert worker.batch_records() == 20
    for _ in range(30):
        worker._measured(1_000, 0.002)  # 2 µs per record: 10,000 would fit; the size bound closes the batch
    assert worker.batch_records() == INGEST_BATCH_RECORDS_MAX
    for _ in range(30):
        worker._measured(200, 0.04)  # 0.2 ms per record: 100 records fit
    assert 99 <= worker.batch_records() <= 100


def test_a_receipt_event_made_directly_is_the_one_eventsourcing_would_make():
    import datetime as dt

    from ledger.aggregate import EnvelopeReceipt, receipt_accepted

    claims = {"envelope_id": "e-1", "digest": "d" * 64, "customer_id": "C1", "type": "sale.recorded",
              "first_version": 3, "last_version": 4, "recorded_at": "2026-01-02T03:04:05.000006Z", "origin": None}
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    (made,) = EnvelopeReceipt(**claims, hash="h" * 64).collect_events()
    direct = receipt_accepted(claims, "h" * 64, stamp)
    assert type(direct) is type(made)
    assert list(vars(direct)) == list(vars(made))
    assert {**vars(direct), "timestamp": None} == {**vars(made), "timestamp": None}
    rebuilt = direct.mutate(None)
    assert (rebuilt.id, rebuilt.version, rebuilt.digest, rebuilt.hash) == (made.originator_id, 1, "d" * 64, "h" * 64)
