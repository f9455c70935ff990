"""Schema evolution: every event type at every version still reads, hashes and re-encodes (STYLE §4).

tests/fixtures/events_vN/<kind>.json holds one ar.ledger record per event type
as it was recorded at schema version N (frozen by tests/fixtures/freeze_events.py,
never rewritten). The fold of those samples is checked in
tests/integration/test_audit.py (it needs DuckDB). The upcasting path itself is
exercised with a test-only older shape of `credit_limit.changed`.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests import builders as b
import ledger.aggregate
import ledger.upcasting
from ledger.application import Ledger
from ledger.events import EVENT_TYPES, SCHEMA_VERSION, CreditLimitChanged, event_from_data, event_to_data
from ledger.hashing import chain_hash, customer_hash_body
from ledger.records import LedgerRecord, global_hash_body, record_encoder
from ledger.upcasting import upcast, upcast_record

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
SAMPLES = sorted(FIXTURES.glob("events_v*/*.json"))


def version_of(path: Path) -> int:
    return int(path.parent.name.removeprefix("events_v"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_every_event_type_has_a_frozen_sample_at_the_current_version():
    current = FIXTURES / f"events_v{SCHEMA_VERSION}"
    frozen = {path.stem for path in current.glob("*.json")}
    missing = sorted(set(EVENT_TYPES) - frozen)
    assert not missing, f"freeze a sample of {missing}: .venv/bin/python tests/fixtures/freeze_events.py"


def test_every_version_up_to_the_current_one_has_a_sample_folder():
    versions = {version_of(path) for path in SAMPLES}
    assert versions == set(range(1, SCHEMA_VERSION + 1))


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: f"v{version_of(path)}/{path.stem}")
def test_frozen_event_decodes_into_the_current_type(path: Path):
    record = load(path)
    assert record["kind"] == path.stem and record["schema_version"] == version_of(path)
    event = event_from_data(record["kind"], upcast(record["kind"], record["data"], record["schema_version"]))
    assert type(event) is EVENT_TYPES[record["kind"]]
    # The current form round-trips: what a reader builds from old data is a valid current event.
    assert event_from_data(record["kind"], event_to_data(event)) == event


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: f"v{version_of(path)}/{path.stem}")
def test_frozen_event_hashes_still_recompute(path: Path):
    """The canonical JSON and the chain rule must never change: old hashes have to verify forever."""
    record = load(path)
    body = customer_hash_body(kind=record["kind"], customer_id=record["customer_id"],
                              envelope_id=record["envelope_id"], version=record["version"],
                              recorded_at=record["recorded_at"], schema_version=record["schema_version"],
                              data=record["data"])
    assert chain_hash(record["prev_hash_customer"], body) == record["hash_customer"]
    ledger_record = msgspec.convert(record, LedgerRecord)
    assert chain_hash(record["prev_hash_global"], global_hash_body(ledger_record)) == record["hash_global"]


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: f"v{version_of(path)}/{path.stem}")
def test_frozen_event_reads_as_a_ledger_record(path: Path):
    raw = json.dumps(load(path)).encode()
    record = msgspec.json.decode(upcast_record(raw), type=LedgerRecord)
    assert record.schema_version == version_of(path)


def test_current_records_pass_through_upcast_record_unchanged():
    raw = record_encoder.encode(msgspec.convert(load(SAMPLES[0]), LedgerRecord))
    assert upcast_record(raw) is raw


# -- A test-only schema change: pretend version 1 of credit_limit.changed called the limit `limit` ------

def limit_renamed(kind: str, data: dict[str, Any]) -> dict[str, Any]:
    """The upcaster from the pretend version 1 to version 2: `limit` became `credit_limit`."""
    if kind != "credit_limit.changed":
        return data
    data = dict(data)
    data["credit_limit"] = data.pop("limit")
    return data


def old_shape(event: Any) -> dict[str, Any]:
    """How the pretend version 1 wrote its data."""
    data = event_to_data(event)
    if isinstance(event, CreditLimitChanged):
        data["limit"] = data.pop("credit_limit")
    return data


@pytest.fixture
def version_2(monkeypatch: pytest.MonkeyPatch):
    """The code as it would be after the change: version 2 with the upcaster from 1."""
    monkeypatch.setattr(ledger.upcasting, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(ledger.upcasting.UPCASTERS, 1, limit_renamed)
    monkeypatch.setattr(ledger.aggregate, "SCHEMA_VERSION", 2)


OLD_DATA = {"limit": 75_000, "previous_credit_limit": 100_000, "reason": "review", "approved_by": None,
            "effective_on": "2026-02-01"}


def test_old_version_is_upcast_on_read(version_2):
    event = event_from_data("credit_limit.changed", upcast("credit_limit.changed", OLD_DATA, 1))
    assert event == CreditLimitChanged(credit_limit=75_000, previous_credit_limit=100_000, reason="review",
                                       effective_on=dt.date(2026, 2, 1))
    assert upcast("credit_limit.changed", {"credit_limit": 1, "x": 2}, 2) == {"credit_limit": 1, "x": 2}


def test_old_version_without_its_upcaster_does_not_decode():
    with pytest.raises(msgspec.ValidationError):
        event_from_data("credit_limit.changed", OLD_DATA)


def test_upcast_record_brings_old_data_to_the_current_names_and_keeps_the_recorded_version(version_2):
    record = {**load(FIXTURES / "events_v1" / "credit_limit.changed.json"), "data": OLD_DATA}
    upcast_json = json.loads(upcast_record(json.dumps(record).encode()))
    assert upcast_json["data"]["credit_limit"] == 75_000 and "limit" not in upcast_json["data"]
    assert upcast_json["schema_version"] == 1
    assert upcast_json["hash_customer"] == record["hash_customer"]


def test_event_from_the_future_is_refused():
    with pytest.raises(AssertionError, match="from the future"):
        upcast("credit_limit.changed", {}, SCHEMA_VERSION + 1)


def test_account_recorded_in_the_old_version_loads_with_the_new_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    with monkeypatch.context() as old_code:
        old_code.setattr(ledger.aggregate, "event_to_data", old_shape)
        writer = Ledger(store)
        b.process(writer, b.registered(limit=100_000), b.limit_changed(75_000, on="2026-02-01"))
        writer.close()
    stored = {event.kind: event for event in Ledger(store).stored_events(b.CUSTOMER)}
    assert "limit" in stored["credit_limit.changed"].data and stored["credit_limit.changed"].schema_version == 1

    monkeypatch.setattr(ledger.upcasting, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(ledger.upcasting.UPCASTERS, 1, limit_renamed)
    monkeypatch.setattr(ledger.aggregate, "SCHEMA_VERSION", 2)
    reader = Ledger(store)
    assert reader.account(b.CUSTOMER).credit_limit_as_of(dt.date(2026, 2, 1)) == 75_000
    assert reader.account(b.CUSTOMER).credit_limit_as_of(dt.date(2026, 1, 31)) == 100_000
    events = [stored.event for stored in reader.stored_events(b.CUSTOMER)]
    assert events[-1] == CreditLimitChanged(credit_limit=75_000, previous_credit_limit=100_000, reason="review",
                                            effective_on=dt.date(2026, 2, 1))
    # New facts are recorded in the new version, after the old ones, in the same hash chain.
    b.process(reader, b.limit_changed(90_000, on="2026-03-01"))
    versions = [(event.kind, event.schema_version) for event in Ledger(store).stored_events(b.CUSTOMER)]
    assert versions == [("customer.registered", 1), ("credit_limit.changed", 1), ("credit_limit.changed", 2)]
