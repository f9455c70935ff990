"""The Ledger application service (docs/contract.md §3, §4, §8): reason codes, check order, idempotency, durability,
hash chain and known-at replay, through `Ledger.process_batch` on memory:// or a tmp SQLite file."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.builders import (
    collection_action,
    credit_note,
    dispute_opened,
    dispute_resolved,
    encode,
    fact,
    hold_released,
    order_cancelled,
    order_placed,
    order_released,
    payment,
    process,
    promise,
    record,
    registered,
    reversal,
    sale,
    write_off,
)
from ledger.account import AccountState
from ledger.aggregate import account_id
from ledger.application import InboundRecord, Ledger
from ledger.errors import REASON_CODES
from ledger.hashing import GENESIS_HASH, chain_hash, customer_hash_body


@pytest.fixture
def ledger() -> Ledger:
    return Ledger("memory://")


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ledger.sqlite'}"


def with_data(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**raw, "data": {**raw["data"], **changes}}


def statuses(outcomes) -> list[str]:
    return [o.status if o.status != "rejected" else o.reason for o in outcomes]


def state_of(ledger: Ledger, customer_id: str = "C1") -> Any:
    return msgspec.to_builtins(ledger.account(customer_id))


def event_count(ledger: Ledger, customer_id: str = "C1") -> int:
    return sum(1 for _ in ledger.stored_events(customer_id))


# -- Every reason code, through the application --------------------------------------------------

SETUP = [
    registered(),
    registered(customer_id="C2"),
    sale("I1", 100, issued_on="2026-03-01"),
    sale("I2", 100, issued_on="2026-03-01"),
    sale("X1", 100, issued_on="2026-03-01", customer_id="C2"),
    payment("P1", 100, received_on="2026-03-02", allocations=[("I1", 100)]),
    reversal("P1", on="2026-03-03"),
    order_placed("O1", 10, on="2026-03-03"),
]
ACCEPTED_ID = "accepted-envelope"

REJECTIONS: dict[str, Any] = {
    "invalid_json": b'{"id": "j1", "type": ',
    "invalid_envelope": {k: v for k, v in sale("I9", 1, issued_on="2026-03-01").items() if k != "time"},
    "invalid_field": with_data(sale("I9", 1, issued_on="2026-03-01"), amount="1"),
    "unknown_type": fact("sale.deleted", {"invoice_id": "I1"}),
    "invalid_amount": with_data(sale("I9", 1, issued_on="2026-03-01"), amount=-1),
    "unknown_customer": sale("I9", 1, issued_on="2026-03-01", customer_id="C404"),
    "customer_exists": registered(),
    "unknown_invoice": credit_note("CN1", "X1", 10, on="2026-03-04"),  # C2's invoice
    "unknown_payment": reversal("P404", on="2026-03-04"),
    "unknown_order": order_cancelled("O404", on="2026-03-04"),
    "duplicate_reference": sale("I1", 5, issued_on="2026-03-04"),
    "currency_mismatch": payment("P9", 5, received_on="2026-03-04", currency="USD"),
    "allocation_exceeds_open": payment("P9", 500, received_on="2026-03-04", allocations=[("I2", 101)]),
    "credit_note_exceeds_invoice": credit_note("CN1", "I1", 101, on="2026-03-04"),
    "already_reversed": reversal("P1", on="2026-03-04"),
    "duplicate_conflict": {**sale("I7", 7, issued_on="2026-03-04"), "id": ACCEPTED_ID},
    "invalid_state": order_released("O1", on="2026-03-04"),  # approved, not blocked
}


@pytest.fixture
def set_up_ledger(ledger: Ledger) -> Ledger:
    outcomes = process(ledger, *SETUP, {**sale("I5", 5, issued_on="2026-03-01"), "id": ACCEPTED_ID})
    assert {o.status for o in outcomes} == {"accepted"}, [(o.reason, o.message) for o in outcomes]
    return ledger


@pytest.mark.parametrize("code", REJECTIONS)
def test_each_reason_code_is_produced(set_up_ledger: Ledger, code: str) -> None:
    raw = REJECTIONS[code]
    inbound = InboundRecord(value=raw, key=b"C1") if isinstance(raw, bytes) else record(raw)
    before = event_count(set_up_ledger)

    (outcome,) = set_up_ledger.process_batch([inbound])

    assert (outcome.status, outcome.reason) == ("rejected", code), outcome.message
    assert outcome.message and outcome.events == []
    assert event_count(set_up_ledger) == before


def test_the_rejection_table_covers_every_reason_code() -> None:
    assert set(REJECTIONS) == set(REASON_CODES)


@pytest.mark.parametrize("setup, raw, code", [
    ([sale("I1", 100, issued_on="2026-03-01"), dispute_opened("I1", on="2026-03-02")],
     dispute_opened("I1", on="2026-03-03"), "invalid_state"),
    ([sale("I1", 100, issued_on="2026-03-01")], dispute_resolved("I1", on="2026-03-03"), "invalid_state"),
    ([], hold_released(on="2026-03-03"), "invalid_state"),
    ([sale("I1", 100, issued_on="2026-03-01"), payment("P1", 100, received_on="2026-03-02")],
     write_off("I1", on="2026-03-03"), "invalid_state"),
    ([sale("I1", 100, issued_on="2026-03-01")], write_off("I1", on="2026-03-03", amount=101), "invalid_amount"),
    ([], sale("I1", 100, issued_on="2026-03-01", installments=[("2026-04-01", 50), ("2026-05-01", 49)]),
     "invalid_amount"),
    ([], payment("P1", 10, received_on="2026-03-01", allocations=[("I1", 11)]), "invalid_amount"),
    ([], registered(), "customer_exists"),
    ([], with_data(registered(), credit_limit=-1), "invalid_amount"),  # data fields before business rules
    ([], with_data(registered(), payment_terms_days=-1), "invalid_field"),
    ([promise("PR1", 10, promised_on="2026-04-01", on="2026-03-01")],
     promise("PR1", 10, promised_on="2026-04-01", on="2026-03-02"), "duplicate_reference"),
    ([], collection_action("call", on="2026-03-01", invoice_id="I404"), "unknown_invoice"),
    ([], payment("P1", 10, received_on="2026-03-01", allocations=[("I404", 10)]), "unknown_invoice"),
    ([], order_released("O404", on="2026-03-01"), "unknown_order"),
    ([order_placed("O1", 10, on="2026-03-01"), order_cancelled("O1", on="2026-03-02")],
     order_cancelled("O1", on="2026-03-03"), "invalid_state"),
])
def test_business_rule_rejections(ledger: Ledger, setup, raw, code: str) -> None:
    process(ledger, registered(), *setup)

    (outcome,) = process(ledger, raw)

    assert outcome.reason == code, outcome.message


@pytest.mark.parametrize("raw, code", [
    (with_data(sale("I9", 1, issued_on="2026-03-01"), amount=100.0), "invalid_field"),
    (with_data(sale("I9", 1, issued_on="2026-03-01"), amount="100"), "invalid_field"),
    (with_data(sale("I9", 1, issued_on="2026-03-01"), amount=True), "invalid_field"),
    (with_data(payment("P9", 1, received_on="2026-03-01"), amount=-100), "invalid_amount"),
    (with_data(payment("P9", 1, received_on="2026-03-01"), amount=0), "invalid_amount"),
    (with_data(registered(customer_id="C7"), credit_limit=-1), "invalid_amount"),
    (with_data(registered(customer_id="C7"), credit_limit=1000.0), "invalid_field"),
    (with_data(registered(customer_id="C7"), payment_terms_days=-1), "invalid_field"),
    (with_data(sale("I9", 1, issued_on="2026-03-01"), issued_on="01/03/2026"), "invalid_field"),
    (with_data(payment("P9", 1, received_on="2026-03-01"), received_on="2026-3-1"), "invalid_field"),
    ({**sale("I9", 1, issued_on="2026-03-01"), "time": "2026-03-01"}, "invalid_envelope"),
], ids=["amount 100.0", "amount '100'", "amount true", "negative amount", "zero amount", "negative limit",
        "limit 1000.0", "negative terms", "date dd/mm/yyyy", "date without zero padding", "time without a clock"])
def test_field_validation_through_the_service(ledger: Ledger, raw, code: str) -> None:
    process(ledger, registered())

    (outcome,) = process(ledger, raw)

    assert (outcome.status, outcome.reason) == ("rejected", code), outcome.message


@pytest.mark.parametrize("time, decided_on", [
    ("2026-03-01T23:30:00", "2026-03-01"),  # no offset: UTC
    ("2026-03-01T23:30:00Z", "2026-03-01"),
    ("2026-03-02T01:30:00+02:00", "2026-03-01"),  # 23:30 UTC the day before
    ("2026-03-01T23:30:00-02:00", "2026-03-02"),
])
def test_business_date_is_the_utc_date_of_the_time(ledger: Ledger, time: str, decided_on: str) -> None:
    process(ledger, registered())

    (outcome,) = process(ledger, {**order_placed("O1", 10, on="2026-03-01"), "time": time})

    assert outcome.events[-1].decided_on == dt.date.fromisoformat(decided_on)


def test_negative_terms_on_registration_are_invalid_field(ledger: Ledger) -> None:
    (outcome,) = process(ledger, with_data(registered(), payment_terms_days=-1))

    assert outcome.reason == "invalid_field"


def test_record_key_must_equal_the_customer_id(ledger: Ledger) -> None:
    raw = registered()

    (outcome,) = ledger.process_batch([record(raw, key="C2")])

    assert (outcome.reason, outcome.envelope_id, outcome.customer_id) == ("invalid_envelope", raw["id"], "C1")
    assert ledger.process_batch([record(raw, key=None)])[0].status == "accepted"  # no key (a file): fine


def test_a_kafka_record_without_a_key_is_invalid_envelope(ledger: Ledger) -> None:
    raw = registered()

    (outcome,) = ledger.process_batch([InboundRecord(value=encode(raw), key=None, origin="ar.inbound:0:7")])

    assert outcome.reason == "invalid_envelope"
    assert ledger.account("C1") is None


@pytest.mark.parametrize("raw, code", [
    ({**payment("P1", 100, received_on="2026-01-01"), "time": "9999-12-31T23:59:59-05:00"}, "invalid_envelope"),
    ({**payment("P1", 100, received_on="2026-01-01"), "time": "0001-01-01T00:00:00+05:00"}, "invalid_envelope"),
    (sale("I1", 100, issued_on="9999-12-31"), "invalid_field"),  # + 30 days of terms: no such date
], ids=["time after year 9999 in UTC", "time before year 1 in UTC", "default due date after year 9999"])
def test_dates_at_the_edge_of_the_calendar_are_rejected_not_raised(ledger: Ledger, raw, code: str) -> None:
    """A record that raised would be retried forever: a poison record stalling its partition."""
    process(ledger, registered(terms=30))

    (outcome,) = process(ledger, raw)

    assert outcome.reason == code, outcome.message
    assert process(ledger, sale("I2", 100, issued_on="9999-12-31", due_on="9999-12-31"))[0].status == "accepted"


def test_rejected_outcome_of_bad_json_names_nothing(ledger: Ledger) -> None:
    (outcome,) = ledger.process_batch([InboundRecord(value=b"nope", key=b"C1")])

    assert (outcome.reason, outcome.envelope_id, outcome.customer_id, outcome.type) == (
        "invalid_json", None, None, None)


# -- Check order: first failure wins -------------------------------------------------------------


def _two_failures() -> dict[str, tuple[list[Any], Any]]:
    accepted = sale("I1", 100, issued_on="2026-03-01")
    return {
        "envelope shape before duplicate id": (
            [accepted], {k: v for k, v in accepted.items() if k != "time"}, "invalid_envelope"),
        "record key before duplicate id": ([accepted], ("key", accepted, "C9"), "invalid_envelope"),
        "duplicate id before unknown type": ([accepted], {**accepted, "type": "sale.deleted"}, "duplicate_conflict"),
        "duplicate id before data fields": ([accepted], with_data(accepted, amount="100"), "duplicate_conflict"),
        "unknown type before data fields": ([], fact("sale.deleted", {"amount": "x"}), "unknown_type"),
        "data fields before installments sum": (
            [], with_data(sale("I2", 100, issued_on="2026-03-01",
                               installments=[("2026-04-01", 10), ("2026-05-01", 10)]), currency="eur"),
            "invalid_field"),
        "installments sum before unknown customer": (
            [], sale("I2", 100, issued_on="2026-03-01", installments=[("2026-04-01", 10)], customer_id="C9"),
            "invalid_amount"),
        "unknown customer before currency": (
            [], sale("I2", 100, issued_on="2026-03-01", currency="USD", customer_id="C9"), "unknown_customer"),
        "currency before business rules": (
            [accepted], sale("I1", 100, issued_on="2026-03-01", currency="USD"), "currency_mismatch"),
        "currency before unknown invoice": (
            [], payment("P1", 10, received_on="2026-03-01", currency="USD", allocations=[("I404", 10)]),
            "currency_mismatch"),
    }


TWO_FAILURES = _two_failures()


@pytest.mark.parametrize("setup, raw, code", TWO_FAILURES.values(), ids=TWO_FAILURES.keys())
def test_check_order_first_failure_wins(ledger: Ledger, setup, raw, code: str) -> None:
    process(ledger, registered(), *setup)
    if isinstance(raw, tuple):  # ("key", envelope, key): same id as an accepted one, wrong record key
        _, envelope, key = raw
        (outcome,) = ledger.process_batch([record(envelope, key=key)])
    else:
        (outcome,) = process(ledger, raw)

    assert outcome.reason == code, outcome.message


# -- Idempotency ---------------------------------------------------------------------------------


def test_exact_duplicate_is_a_no_op(ledger: Ledger) -> None:
    first = sale("I1", 100, issued_on="2026-03-01")
    process(ledger, registered(), first)
    before, state = event_count(ledger), state_of(ledger)

    (outcome,) = process(ledger, first)

    assert (outcome.status, outcome.reason, outcome.envelope_id, outcome.events) == (
        "duplicate", None, first["id"], [])
    assert outcome.first_version is not None  # points at the events of the original
    assert event_count(ledger) == before and state_of(ledger) == state


@pytest.mark.parametrize("variant", ["nulls", "unknown fields", "empty lists", "time notation", "source null"])
def test_duplicate_spelled_differently_is_still_a_duplicate(ledger: Ledger, variant: str) -> None:
    first = {k: v for k, v in sale("I1", 100, issued_on="2026-03-01").items() if k != "source"}
    process(ledger, registered(), first)
    again = {
        "nulls": with_data(first, due_on=None, order_id=None, salesperson=None, installments=None),
        "unknown fields": {**with_data(first, colour="blue"), "trace": "abc"},
        "empty lists": with_data(first, installments=[]),
        "time notation": {**first, "time": "2026-03-01T11:00:00+01:00"},
        "source null": {**first, "source": None},
    }[variant]
    before = event_count(ledger)

    (outcome,) = process(ledger, again)

    assert outcome.status == "duplicate", outcome.message
    assert event_count(ledger) == before


def test_same_id_with_different_content_is_a_duplicate_conflict(ledger: Ledger) -> None:
    first = sale("I1", 100, issued_on="2026-03-01")
    process(ledger, registered(), first)
    before = event_count(ledger)

    (outcome,) = process(ledger, with_data(first, amount=101))

    assert outcome.reason == "duplicate_conflict"
    assert event_count(ledger) == before


def test_envelope_ids_are_global_across_customers(ledger: Ledger) -> None:
    process(ledger, registered(), registered(customer_id="C2"))
    first = sale("I1", 100, issued_on="2026-03-01")
    process(ledger, first)

    (outcome,) = process(ledger, {**sale("I1", 100, issued_on="2026-03-01", customer_id="C2"), "id": first["id"]})

    assert outcome.reason == "duplicate_conflict"


def test_a_rejected_id_may_be_sent_again_fixed(ledger: Ledger) -> None:
    broken = sale("I1", 100, issued_on="2026-03-01", currency="USD")
    process(ledger, registered())
    assert process(ledger, broken)[0].reason == "currency_mismatch"

    (outcome,) = process(ledger, with_data(broken, currency="EUR"))

    assert outcome.status == "accepted"


def test_a_duplicate_within_one_batch_is_detected(ledger: Ledger) -> None:
    first = sale("I1", 100, issued_on="2026-03-01")

    outcomes = process(ledger, registered(), first, first, with_data(first, amount=5))

    assert statuses(outcomes) == ["accepted", "accepted", "duplicate", "duplicate_conflict"]


def test_duplicates_are_detected_across_ledger_instances_on_the_same_store(store_url: str) -> None:
    facts = [registered(), sale("I1", 100, issued_on="2026-03-01"), payment("P1", 40, received_on="2026-03-02")]
    first = Ledger(store_url)
    assert statuses(process(first, *facts)) == ["accepted"] * 3
    state = state_of(first)

    second = Ledger(store_url)
    outcomes = process(second, *facts, with_data(facts[1], amount=7))

    assert statuses(outcomes) == ["duplicate"] * 3 + ["duplicate_conflict"]
    assert state_of(second) == state
    assert event_count(second) == event_count(first)


def test_the_same_batch_applied_twice_changes_nothing(store_url: str) -> None:
    batch = [registered(), sale("I1", 100, issued_on="2026-03-01"), sale("I1", 5, issued_on="2026-03-01"),
             payment("P1", 150, received_on="2026-03-02"), b"garbage"]
    records = [InboundRecord(value=raw) if isinstance(raw, bytes) else record(raw) for raw in batch]
    ledger = Ledger(store_url)
    first = ledger.process_batch(records)
    state, events = state_of(ledger), event_count(ledger)

    again = Ledger(store_url).process_batch(records)

    assert statuses(first) == ["accepted", "accepted", "duplicate_reference", "accepted", "invalid_json"]
    assert statuses(again) == ["duplicate", "duplicate", "duplicate_reference", "duplicate", "invalid_json"]
    reloaded = Ledger(store_url)
    assert state_of(reloaded) == state and event_count(reloaded) == events


def test_a_failed_save_writes_nothing_and_the_retry_gives_the_same_outcomes(
        store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger(store_url)
    process(ledger, registered(), sale("I1", 100, issued_on="2026-03-01"))
    state, events = state_of(ledger), event_count(ledger)
    batch = [record(payment("P1", 60, received_on="2026-03-02")), record(registered(customer_id="C2"))]

    def broken_save(*_: Any, **__: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(ledger, "_record", broken_save)  # where the batch is written
    with pytest.raises(OSError):
        ledger.process_batch(batch)
    monkeypatch.undo()

    assert state_of(ledger) == state and event_count(ledger) == events
    assert ledger.account("C2") is None
    assert statuses(ledger.process_batch(batch)) == ["accepted", "accepted"]
    assert ledger.account("C1").items["I1#1"].open == 40


# -- Outcomes, events and the store ----------------------------------------------------------------


def test_accepted_outcome_carries_versions_and_events(ledger: Ledger) -> None:
    (registration,) = process(ledger, registered())
    (outcome,) = process(ledger, sale("I1", 100, issued_on="2026-03-01"))

    assert (registration.first_version, registration.last_version) == (1, 1)
    assert (outcome.first_version, outcome.last_version) == (2, 3)
    assert [type(event).__name__ for event in outcome.events] == ["SaleRecorded", "ItemOpened"]
    assert outcome.recorded_at.endswith("Z")


def test_stored_events_replay_to_the_same_state(store_url: str) -> None:
    ledger = Ledger(store_url)
    process(ledger, registered(), sale("I1", 100, issued_on="2026-03-01", installments=[("2026-04-01", 40),
                                                                                       ("2026-05-01", 60)]),
            payment("P1", 70, received_on="2026-03-02"), credit_note("CN1", "I1", 50, on="2026-03-03"),
            reversal("P1", on="2026-03-04"), order_placed("O1", 10, on="2026-03-05"))

    replayed = AccountState(customer_id="C1")
    for stored in ledger.stored_events("C1"):
        replayed.fold(stored.event)

    assert msgspec.to_builtins(replayed) == state_of(ledger)
    assert msgspec.to_builtins(Ledger(store_url).account("C1")) == state_of(ledger)


def test_snapshot_reload_gives_the_same_state(store_url: str) -> None:
    ledger = Ledger(store_url)
    process(ledger, registered(), sale("I1", 100, issued_on="2026-03-01"), payment("P1", 30, received_on="2026-03-02"),
            dispute_opened("I1", on="2026-03-03"), order_placed("O1", 10, on="2026-03-05"))
    ledger.take_snapshot(account_id("C1"))
    process(ledger, dispute_resolved("I1", on="2026-03-06"), payment("P2", 80, received_on="2026-03-07"))

    reloaded = Ledger(store_url)

    assert reloaded.snapshots is not None and list(reloaded.snapshots.get(account_id("C1")))
    assert state_of(reloaded) == state_of(ledger)


# -- Hash chain ----------------------------------------------------------------------------------------


def test_customer_hash_chain_links_every_event_and_recomputes(ledger: Ledger) -> None:
    process(ledger, registered(), sale("I1", 100, issued_on="2026-03-01"))
    process(ledger, payment("P1", 150, received_on="2026-03-02"), sale("I2", 30, issued_on="2026-03-03"))

    previous = GENESIS_HASH
    stored = list(ledger.stored_events("C1"))
    for version, event in enumerate(stored, start=1):
        assert event.version == version
        assert event.prev_hash == previous
        body = customer_hash_body(kind=event.kind, customer_id="C1", envelope_id=event.envelope_id,
                                  version=event.version, recorded_at=event.recorded_at,
                                  schema_version=event.schema_version, data=event.data)
        assert event.hash == chain_hash(previous, body)
        previous = event.hash
    assert len(stored) == 8


def assert_chain_intact(ledger: Ledger, customer_id: str = "C1") -> int:
    previous = GENESIS_HASH
    stored = list(ledger.stored_events(customer_id))
    for event in stored:
        body = customer_hash_body(kind=event.kind, customer_id=customer_id, envelope_id=event.envelope_id,
                                  version=event.version, recorded_at=event.recorded_at,
                                  schema_version=event.schema_version, data=event.data)
        assert (event.prev_hash, event.hash) == (previous, chain_hash(previous, body)), f"version {event.version}"
        previous = event.hash
    return len(stored)


def test_the_chain_continues_across_a_snapshot_and_a_new_process(store_url: str) -> None:
    first = Ledger(store_url)
    process(first, registered(), sale("I1", 100, issued_on="2026-03-01"))
    first.take_snapshot(account_id("C1"))

    second = Ledger(store_url)  # loads the account from the snapshot, last hash included
    process(second, payment("P1", 60, received_on="2026-03-02"), sale("I2", 10, issued_on="2026-03-03"))

    assert assert_chain_intact(Ledger(store_url)) == 7


def test_a_changed_event_breaks_the_chain(ledger: Ledger) -> None:
    process(ledger, registered(), sale("I1", 100, issued_on="2026-03-01"))
    first, second, *_ = ledger.stored_events("C1")

    tampered = customer_hash_body(kind=second.kind, customer_id="C1", envelope_id=second.envelope_id,
                                  version=second.version, recorded_at=second.recorded_at,
                                  schema_version=second.schema_version, data={**second.data, "amount": 1})

    assert chain_hash(first.hash, tampered) != second.hash


# -- Bitemporal: known_at ------------------------------------------------------------------------------


def ticking_clock(start: dt.datetime) -> Iterator[dt.datetime]:
    instant = start
    while True:
        yield instant
        instant += dt.timedelta(days=1)


def test_known_at_replays_only_what_was_recorded_by_then() -> None:
    clock = ticking_clock(dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC))
    ledger = Ledger("memory://", clock=lambda: next(clock))
    process(ledger, registered(), sale("I1", 100, issued_on="2026-06-01"))  # recorded 1 and 2 July
    process(ledger, payment("P1", 100, received_on="2026-06-15"))  # late: recorded 3 July

    june_30 = dt.date(2026, 6, 30)
    known_july_2 = ledger.account_known_at("C1", dt.datetime(2026, 7, 2, 23, 59, tzinfo=dt.UTC))
    known_now = ledger.account_known_at("C1")

    assert known_july_2.balance_as_of(june_30) == 100
    assert known_now.balance_as_of(june_30) == 0
    assert ledger.account_known_at("C1", dt.datetime(2026, 6, 1, tzinfo=dt.UTC)) is None
    assert msgspec.to_builtins(known_now) == state_of(ledger)
    payment_recorded_at = dt.datetime.fromisoformat(list(ledger.stored_events("C1"))[-1].recorded_at)
    assert ledger.account_known_at("C1", payment_recorded_at).balance_as_of(june_30) == 0  # inclusive


def test_a_naive_known_at_means_utc_whatever_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    clock = ticking_clock(dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC))
    ledger = Ledger("memory://", clock=lambda: next(clock))
    process(ledger, registered())  # recorded 2026-07-01T12:00Z
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert ledger.account_known_at("C1", dt.datetime(2026, 7, 1, 11, 0)) is None  # 11:00 UTC: not yet
        assert ledger.account_known_at("C1", dt.datetime(2026, 7, 1, 12, 0)) is not None
    finally:
        monkeypatch.undo()
        time.tzset()


def test_recorded_times_strictly_increase_even_if_the_clock_stands_still() -> None:
    instant = dt.datetime(2026, 7, 1, 12, tzinfo=dt.UTC)
    ledger = Ledger("memory://", clock=lambda: instant)

    process(ledger, registered(), sale("I1", 100, issued_on="2026-06-01"), sale("I2", 100, issued_on="2026-06-01"))

    recorded = [event.recorded_at for event in ledger.stored_events("C1")]
    distinct = list(dict.fromkeys(recorded))
    assert distinct == sorted(distinct) and len(distinct) == 3
