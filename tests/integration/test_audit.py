"""Auditors: verify catches tampering (store, ar.ledger, snapshot), replay equals past reports, trace, export.

One system is built per module on the real broker: `arledger run` and three
`arledger ingest --wait` of a generated workload, with `report aging` and
`report balances` captured after each batch. Every tampering test works on a
copy (of the store, the snapshot, or ar.ledger copied into fresh topics) and
expects `arledger verify` to name the position it damaged.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import pytest
from kafka import KafkaProducer

from consumers import audit
from consumers.topics import ensure_topics
from helpers import cli, env_of, ingest_wait, query, read_topic, report, running_workers, settings_on
from ledger.events import EVENT_TYPES, SCHEMA_VERSION
from ledger.records import LedgerRecord, record_encoder
from projections import audit as projection_audit
from projections import reports, schema
from projections.fold import apply_batch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
VERIFY_EXPORT = REPO / "tools" / "verify_export.py"
AS_OF_DATES = ("2025-01-31", "2025-02-28", "2025-03-31")
BATCHES = 3


@dataclass
class Instant:
    known_at: str  # after batch n was projected, before batch n+1 was recorded
    aging: dict[str, dict[str, Any]] = field(default_factory=dict)  # as_of → report
    balances: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class System:
    settings: Any
    env: dict[str, str]
    home: Path
    instants: list[Instant]
    events: int


@pytest.fixture(scope="module")
def system(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> System:
    home = tmp_path_factory.mktemp("audit")
    settings = settings_on(kafka_bootstrap, home, f"t{uuid.uuid4().hex[:8]}.")
    env = env_of(settings)
    workload = home / "workload.jsonl"
    cli(env, "generate", "--customers", "25", "--months", "3", "--seed", "11", "--bad-share", "0",
        "--out", str(workload))
    lines = workload.read_bytes().splitlines(keepends=True)
    instants = []
    with running_workers(env, log_path=home / "workers.log"):
        for batch in range(BATCHES):
            part = home / f"batch{batch}.jsonl"
            part.write_bytes(b"".join(lines[batch * len(lines) // BATCHES:(batch + 1) * len(lines) // BATCHES]))
            ingest_wait(env, part)
            instant = Instant(dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
            for as_of in AS_OF_DATES:
                instant.aging[as_of] = report(env, "aging", "--as-of", as_of)
                instant.balances[as_of] = report(env, "balances", "--as-of", as_of)
            instants.append(instant)
            time.sleep(0.002)  # recorded times have microseconds: "after known_at" is then unambiguous
    (events,) = query(settings.snapshot_path, "SELECT count(*) FROM ledger_events")[0]
    return System(settings, env, home, instants, events)


def verify_json(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    result = cli(env, "verify", "--format", "json", "--no-progress", *args, check=False)
    assert result.returncode in (0, 1), result.stderr
    return result.returncode, json.loads(result.stdout)


def store_copy(system: System, tmp_path: Path) -> Path:
    """A consistent copy of the event store (SQLite's backup API, so nothing in the WAL is missed)."""
    copy = tmp_path / "ledger-copy.sqlite"
    source = sqlite3.connect(Path(system.settings.store_url.removeprefix("sqlite:///")))
    target = sqlite3.connect(copy)
    source.backup(target)
    source.close()
    target.close()
    return copy


def with_store(env: dict[str, str], store: Path) -> dict[str, str]:
    return {**env, "ARLEDGER_STORE": f"sqlite:///{store}"}


def event_at(system: System, kind: str, nth: int = 0) -> tuple[int, int, str, int]:
    """(position, notification id, customer, version) of the nth event of `kind`, from the snapshot."""
    rows = query(system.settings.snapshot_path,
                 f"SELECT position, notification_id, customer_id, version FROM ledger_events "
                 f"WHERE kind = '{kind}' ORDER BY position")
    return rows[len(rows) // 2 + nth]


def first_problem(body: dict[str, Any]) -> dict[str, Any]:
    assert body["ok"] is False and body["first_problem"], body
    return body["first_problem"]


# -- A clean system verifies -------------------------------------------------------------------------

@pytest.mark.slow
def test_verify_passes_on_the_untouched_system(system: System):
    status, body = verify_json(system.env)
    assert status == 0, body["problems"][:5]
    assert body["ok"] and body["problems_total"] == 0
    assert body["chain_length"] == body["events"] == system.events
    assert body["topic_records"] >= system.events and body["projected_events"] == system.events
    assert set(body["checked"]) >= {"store", "chain", "receipts", "topic", "projection"}
    assert "ledger_events" in body["tables_compared"] and "items" in body["tables_compared"]


@pytest.mark.slow
def test_verify_prints_the_head_and_exits_zero_in_text(system: System):
    result = cli(system.env, "verify", "--no-progress")
    assert "VERIFIED: head position" in result.stdout


# -- Tampering with a copy of the event store -------------------------------------------------------

def tamper_state(store: Path, notification_id: int, change) -> None:
    connection = sqlite3.connect(store)
    (state,) = connection.execute("SELECT state FROM stored_events WHERE rowid = ?", [notification_id]).fetchone()
    connection.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", [change(bytes(state)), notification_id])
    connection.commit()
    connection.close()


@pytest.mark.slow
@pytest.mark.parametrize("target", ["amount", "hash", "envelope_id", "recorded_at", "kind", "json"])
def test_verify_finds_one_altered_byte_in_a_stored_event(system: System, tmp_path: Path, target: str):
    position, notification_id, customer, version = event_at(system, "cash.allocated")
    store = store_copy(system, tmp_path)

    def flip(state: bytes) -> bytes:
        anchor = {"amount": b'"amount":', "hash": b'"hash":"', "envelope_id": b'"envelope_id":"',
                  "recorded_at": b'"recorded_at":"20', "kind": b'"kind":"', "json": b'"data":'}[target]
        index = state.index(anchor) + len(anchor) + (-1 if target == "json" else 1)
        replacement = {ord("0"): b"1"}.get(state[index], b"0") if target != "json" else b"["
        return state[:index] + replacement + state[index + 1:]

    tamper_state(store, notification_id, flip)
    status, body = verify_json(with_store(system.env, store))
    problem = first_problem(body)
    assert status == 1
    assert problem["position"] == position, problem["text"]


@pytest.mark.slow
def test_verify_names_the_customer_version_and_reason_of_an_altered_amount(system: System, tmp_path: Path):
    position, notification_id, customer, version = event_at(system, "payment.received")
    store = store_copy(system, tmp_path)
    tamper_state(store, notification_id, lambda state: state.replace(b'"amount":', b'"amount":9', 1))
    status, body = verify_json(with_store(system.env, store), "--skip", "topic", "--skip", "projection")
    problem = first_problem(body)
    assert (problem["position"], problem["customer_id"], problem["version"]) == (position, customer, version)
    assert problem["check"] == "store" and "altered" in problem["reason"]


@pytest.mark.slow
def test_verify_finds_a_deleted_event(system: System, tmp_path: Path):
    position, notification_id, customer, version = event_at(system, "item.opened")
    store = store_copy(system, tmp_path)
    connection = sqlite3.connect(store)
    connection.execute("DELETE FROM stored_events WHERE rowid = ?", [notification_id])
    connection.commit()
    connection.close()
    status, body = verify_json(with_store(system.env, store))
    problem = first_problem(body)
    assert status == 1 and problem["position"] == position, problem["text"]
    texts = " ".join(p["text"] for p in body["problems"])
    assert "missing from the store" in texts and f"stream version {version} is missing" in texts


@pytest.mark.slow
def test_verify_finds_two_swapped_events(system: System, tmp_path: Path):
    first, first_nid, _, _ = event_at(system, "sale.recorded")
    second, second_nid, _, _ = event_at(system, "payment.received")
    store = store_copy(system, tmp_path)
    connection = sqlite3.connect(store)
    states = {nid: connection.execute("SELECT state FROM stored_events WHERE rowid = ?", [nid]).fetchone()[0]
              for nid in (first_nid, second_nid)}
    connection.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", [states[second_nid], first_nid])
    connection.execute("UPDATE stored_events SET state = ? WHERE rowid = ?", [states[first_nid], second_nid])
    connection.commit()
    connection.close()
    status, body = verify_json(with_store(system.env, store), "--skip", "projection")
    problem = first_problem(body)
    assert status == 1 and problem["position"] == min(first, second), problem["text"]
    assert {p["position"] for p in body["problems"]} >= {first, second}


@pytest.mark.slow
def test_verify_finds_a_truncated_chain_against_a_checkpoint(system: System, tmp_path: Path):
    """A checkpoint noted earlier must still be the stored head at its position; after it, checks resume."""
    report_ = audit.verify(system.settings, skip=frozenset({"topic", "projection"}))
    position = system.events // 2
    ledger = audit.open_ledger(system.settings.store_url)
    chain = audit.load_chain(ledger)
    ledger.close()
    good = f"{position}:{chain.hashes[position - 1]}"
    status, body = verify_json(system.env, "--from-checkpoint", good, "--skip", "projection")
    assert report_.ok and status == 0 and body["from_checkpoint"]["position"] == position
    status, body = verify_json(system.env, "--from-checkpoint", f"{position}:{'ab' * 32}", "--skip", "projection")
    assert status == 1 and first_problem(body)["check"] == "checkpoint" and first_problem(body)["position"] == position


@pytest.mark.slow
def test_verify_records_checkpoints_every_interval_after_a_clean_run(system: System, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(audit, "CHECKPOINT_INTERVAL_EVENTS", 100)
    report_ = audit.verify(system.settings, skip=frozenset({"topic", "projection"}))
    assert report_.ok
    assert [c.position for c in report_.checkpoints] == list(range(100, system.events + 1, 100))
    path = tmp_path / "checkpoints.jsonl"
    assert audit.append_checkpoints(path, report_.checkpoints) == len(report_.checkpoints)
    assert audit.append_checkpoints(path, report_.checkpoints) == 0  # never twice
    latest = audit.read_checkpoints(path)[-1]
    status, body = verify_json(system.env, "--from-checkpoint", "--checkpoints", str(path), "--skip", "projection")
    assert status == 0 and body["from_checkpoint"]["position"] == latest.position


# -- Tampering with a copy of the snapshot -------------------------------------------------------

def snapshot_copy(system: System, tmp_path: Path) -> Path:
    copy = tmp_path / "snapshot-copy.duckdb"
    shutil.copyfile(system.settings.snapshot_path, copy)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("edit", [
    "UPDATE items SET open_amount = open_amount + 1 WHERE position = {position}",
    "DELETE FROM ledger_events WHERE position = {position}",
    "UPDATE ledger_events SET data = json_object('amount', 1) WHERE position = {position}",
    "INSERT INTO allocations SELECT position + 1000000, customer_id, source_kind, source_id, invoice_id, "
    "installment, amount, explicit, effective_on, recorded_at FROM allocations WHERE position = {allocation}",
])
def test_verify_finds_an_edited_projected_row(system: System, tmp_path: Path, edit: str):
    position, *_ = event_at(system, "item.opened")
    allocation, *_ = event_at(system, "cash.allocated")
    copy = snapshot_copy(system, tmp_path)
    connection = duckdb.connect(str(copy))
    connection.execute(edit.format(position=position, allocation=allocation))
    connection.close()
    status, body = verify_json(system.env, "--snapshot", str(copy))
    problem = first_problem(body)
    assert status == 1 and problem["check"] == "projection"
    expected = allocation + 1_000_000 if "INSERT" in edit else position
    assert problem["position"] == expected, problem["text"]


# -- Tampering with a copy of ar.ledger ------------------------------------------------------------

def copy_ledger_topic(system: System, change, extra: list[bytes] = ()) -> Any:
    """ar.ledger copied record by record (same partition, key) into fresh topics; `change` may edit or drop;
    `extra` records are appended to partition 0."""
    target = settings_on(system.settings.kafka_bootstrap, system.home, f"t{uuid.uuid4().hex[:8]}.")
    ensure_topics(target)
    producer = KafkaProducer(bootstrap_servers=target.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        for record in read_topic(system.settings, "ar.ledger", at_least=system.events):
            value = change(record.value)
            if value is not None:
                producer.send(target.topic("ar.ledger"), key=record.key, value=value, partition=record.partition)
        for value in extra:
            producer.send(target.topic("ar.ledger"), key=json.loads(value)["customer_id"].encode(), value=value,
                          partition=0)
        producer.flush()
    finally:
        producer.close(timeout=10)
    return target


@pytest.mark.slow
def test_verify_finds_an_edited_a_dropped_and_an_injected_record_on_ar_ledger(system: System):
    edited, *_ = event_at(system, "cash.allocated")
    dropped, *_ = event_at(system, "sale.recorded", nth=1)

    def change(value: bytes) -> bytes | None:
        record = msgspec.json.decode(value, type=LedgerRecord)
        if record.position == dropped:
            return None
        if record.position == edited:
            return value.replace(b'"amount":', b'"amount":1', 1)
        return value

    last = json.loads(read_topic(system.settings, "ar.ledger", at_least=system.events)[0].value)
    forged = json.dumps({**last, "position": system.events + 1}).encode()
    target = copy_ledger_topic(system, change, extra=[forged])
    status, body = verify_json(env_of(target) | {"ARLEDGER_STORE": system.settings.store_url},
                               "--skip", "projection")
    assert status == 1
    by_position = {p["position"]: p for p in body["problems"]}
    assert set(by_position) == {edited, dropped, system.events + 1}, body["problems"]
    assert "injected" in by_position[system.events + 1]["reason"]
    assert by_position[edited]["check"] == "topic" and "amount" in by_position[edited]["reason"]
    assert "missing from" in by_position[dropped]["reason"]


# -- Replay ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_replay_at_each_instant_equals_the_reports_taken_then(system: System, tmp_path: Path):
    for number, instant in enumerate(system.instants):
        out = tmp_path / f"replay{number}.duckdb"
        result = cli(system.env, "replay", "--known-at", instant.known_at, "--out", str(out))
        assert "replayed" in result.stderr
        for as_of in AS_OF_DATES:
            connection = schema.connect(str(out), read_only=True)
            try:
                replayed_aging = reports.aging(connection, dt.date.fromisoformat(as_of))
                replayed_balances = reports.balances(connection, dt.date.fromisoformat(as_of))
            finally:
                connection.close()
            assert json.loads(json.dumps(replayed_aging, default=str)) == instant.aging[as_of], (number, as_of)
            replayed_balances_json = json.loads(json.dumps(replayed_balances, default=str))
            assert replayed_balances_json["rows"] == instant.balances[as_of]["rows"], (number, as_of)


@pytest.mark.slow
def test_replay_with_as_of_prints_the_aging_known_at_that_instant(system: System, tmp_path: Path):
    instant = system.instants[0]
    result = cli(system.env, "replay", "--known-at", instant.known_at, "--as-of", AS_OF_DATES[0],
                 "--out", str(tmp_path / "first.duckdb"), "--format", "json")
    printed = json.loads(result.stdout)
    assert printed["rows"] == instant.aging[AS_OF_DATES[0]]["rows"]
    assert printed["totals"] == instant.aging[AS_OF_DATES[0]]["totals"]
    assert printed["known_at"] is not None
    # The bitemporal report of the live model agrees with the replay.
    live = report(system.env, "aging", "--as-of", AS_OF_DATES[0], "--known-at", instant.known_at)
    assert live["rows"] == printed["rows"]


@pytest.mark.slow
def test_replay_never_overwrites(system: System, tmp_path: Path):
    out = tmp_path / "exists.duckdb"
    out.write_bytes(b"")
    result = cli(system.env, "replay", "--known-at", system.instants[0].known_at, "--out", str(out), check=False)
    assert result.returncode != 0 and "exists" in result.stderr
    result = cli(system.env, "replay", "--known-at", "2026-01-01", "--out", str(system.settings.snapshot_path),
                 check=False)
    assert result.returncode != 0


# -- Trace ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_trace_of_an_invoice_lists_its_sale_items_and_the_cash_applied_with_valid_hashes(system: System):
    (customer, invoice, payment), = query(
        system.settings.snapshot_path,
        "SELECT customer_id, data->>'$.invoice_id', data->>'$.source_id' FROM ledger_events "
        "WHERE kind = 'cash.allocated' AND data->>'$.source_kind' = 'payment' ORDER BY position LIMIT 1")
    body = json.loads(cli(system.env, "trace", "--invoice", invoice, "--format", "json").stdout)
    kinds = [row["kind"] for row in body["rows"]]
    assert kinds.index("sale.recorded") < kinds.index("item.opened")
    assert all(kind.startswith("order.") for kind in kinds[:kinds.index("sale.recorded")])  # the order it closed
    assert "cash.allocated" in kinds and "payment.received" in kinds
    assert [row["position"] for row in body["rows"]] == sorted(row["position"] for row in body["rows"])
    assert all(row["hashes_ok"] and row["customer_id"] == customer for row in body["rows"])
    received = next(row for row in body["rows"] if row["kind"] == "payment.received")
    assert received["data"]["payment_id"] == payment and received["business_date"] == received["data"]["received_on"]
    by_payment = json.loads(cli(system.env, "trace", "--payment", payment, "--format", "json").stdout)
    assert by_payment["rows"][0]["kind"] == "payment.received"
    by_customer = json.loads(cli(system.env, "trace", "--customer", customer, "--format", "json").stdout)
    assert [row["version"] for row in by_customer["rows"]] == list(range(1, len(by_customer["rows"]) + 1))


@pytest.mark.slow
def test_trace_of_an_unknown_invoice_says_so(system: System):
    result = cli(system.env, "trace", "--invoice", "NO-SUCH-INVOICE", check=False)
    assert result.returncode == 1 and "no ledger event" in result.stderr


# -- Export and the stand-alone verifier ----------------------------------------------------------

def run_verifier(*args: str) -> subprocess.CompletedProcess[str]:
    """tools/verify_export.py with `-I` (isolated: no site-packages, no arledger on the path)."""
    return subprocess.run([sys.executable, "-I", str(VERIFY_EXPORT), *args], capture_output=True, text=True,
                          timeout=120)


@pytest.mark.slow
def test_export_of_a_range_verifies_stand_alone_and_a_changed_byte_does_not(system: System, tmp_path: Path):
    out = tmp_path / "middle.jsonl"
    result = cli(system.env, "export", "--from-position", "100", "--to-position", "400", "--out", str(out))
    anchor = next(line.split()[-1] for line in result.stderr.splitlines() if line.startswith("anchor"))
    lines = out.read_bytes().splitlines()
    assert len(lines) == 301 and json.loads(lines[0])["position"] == 100
    check = run_verifier(str(out), "--anchor", anchor)
    assert check.returncode == 0 and "VERIFIED: 301 records" in check.stdout, check.stdout + check.stderr
    lines[150] = lines[150].replace(b'"version":', b'"version":1', 1)
    (tmp_path / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    check = run_verifier(str(tmp_path / "bad.jsonl"))
    assert check.returncode == 1 and "position 250" in check.stdout.splitlines()[0], check.stdout
    dropped = lines[:10] + lines[11:150]
    (tmp_path / "gap.jsonl").write_bytes(b"\n".join(dropped) + b"\n")
    check = run_verifier(str(tmp_path / "gap.jsonl"))
    assert check.returncode == 1 and "position 111" in check.stdout and "gap" in check.stdout


@pytest.mark.slow
def test_export_by_recorded_time_holds_what_was_recorded_between_two_instants(system: System, tmp_path: Path):
    first, second = system.instants[0].known_at, system.instants[1].known_at
    out = tmp_path / "second-batch.jsonl"
    cli(system.env, "export", "--from", first, "--to", second, "--out", str(out))
    records = [json.loads(line) for line in out.read_bytes().splitlines()]
    assert records and all(first < record["recorded_at"] <= second for record in records)
    (expected,) = query(system.settings.snapshot_path,
                        f"SELECT count(*) FROM ledger_events WHERE recorded_at > '{first}' "
                        f"AND recorded_at <= '{second}'")[0]
    assert len(records) == expected
    assert run_verifier(str(out)).returncode == 0


@pytest.mark.slow
def test_export_as_parquet_holds_the_same_records(system: System, tmp_path: Path):
    jsonl, parquet = tmp_path / "all.jsonl", tmp_path / "all.parquet"
    cli(system.env, "export", "--out", str(jsonl))
    cli(system.env, "export", "--out", str(parquet))
    rows = duckdb.connect().execute("SELECT * FROM read_parquet(?) ORDER BY position", [str(parquet)]).fetchall()
    assert len(rows) == len(jsonl.read_bytes().splitlines()) == system.events
    check = subprocess.run([sys.executable, str(VERIFY_EXPORT), str(parquet)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


# -- Schema evolution: the frozen samples fold like their current form (DuckDB, no Kafka) ---------------

def fold_tables(records: list[bytes], path: Path) -> dict[str, list[tuple]]:
    connection = schema.connect(str(path))
    schema.create_schema(connection)
    apply_batch(connection, records, {})
    tables = {}
    for table in schema.TABLES:
        if table.startswith("projection_"):
            continue
        columns = [c for c in projection_audit._columns(connection, path.stem, table)
                   if not (table == "ledger_events" and c in ("data", "schema_version"))]
        select = ", ".join(f'"{c}"' for c in columns)
        tables[table] = sorted(connection.execute(f"SELECT {select} FROM {table}").fetchall(), key=repr)
    connection.close()
    return tables


def test_frozen_samples_fold_to_the_same_tables_as_their_current_form(tmp_path: Path):
    from ledger.events import event_from_data, event_to_data
    from ledger.upcasting import upcast

    samples = [json.loads(path.read_text()) for path in sorted(FIXTURES.glob("events_v*/*.json"))]
    samples.sort(key=lambda record: (record["schema_version"], record["position"]))
    current = []
    for record in samples:
        event = event_from_data(record["kind"], upcast(record["kind"], record["data"], record["schema_version"]))
        current.append({**record, "data": event_to_data(event), "schema_version": SCHEMA_VERSION})
    as_frozen = fold_tables([json.dumps(r).encode() for r in samples], tmp_path / "frozen.duckdb")
    as_current = fold_tables([json.dumps(r).encode() for r in current], tmp_path / "current.duckdb")
    assert as_frozen == as_current
    assert {table for table, rows in as_frozen.items() if rows} >= {
        "customers", "credit_history", "invoices", "items", "item_movements", "unapplied_movements", "payments",
        "allocations", "credit_notes", "write_offs", "order_events", "dispute_events", "collection_actions",
        "promises", "breaches"}


def test_a_record_of_an_older_version_folds_like_the_current_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The projector upcasts before folding: a test-only v1 (`limit`) folds like v2 (`credit_limit`)."""
    import ledger.upcasting

    def limit_renamed(kind: str, data: dict[str, Any]) -> dict[str, Any]:
        if kind == "credit_limit.changed":
            data = dict(data)
            data["credit_limit"] = data.pop("limit")
        return data

    monkeypatch.setattr(ledger.upcasting, "SCHEMA_VERSION", 2)
    monkeypatch.setitem(ledger.upcasting.UPCASTERS, 1, limit_renamed)
    registered = json.loads((FIXTURES / "events_v1" / "customer.registered.json").read_text())
    changed = json.loads((FIXTURES / "events_v1" / "credit_limit.changed.json").read_text())
    old = {**changed, "data": {("limit" if k == "credit_limit" else k): v for k, v in changed["data"].items()}}
    new = {**changed, "schema_version": 2}
    as_old = fold_tables([json.dumps(registered).encode(), json.dumps(old).encode()], tmp_path / "old.duckdb")
    as_new = fold_tables([json.dumps(registered).encode(), json.dumps(new).encode()], tmp_path / "new.duckdb")
    assert as_old == as_new
    assert any(row[3] == changed["data"]["credit_limit"] for row in as_old["credit_history"])


def test_every_event_type_has_a_business_date_for_traces():
    assert set(projection_audit.BUSINESS_DATE_FIELD) == set(EVENT_TYPES)
    for kind, name in projection_audit.BUSINESS_DATE_FIELD.items():
        assert name in EVENT_TYPES[kind].__struct_fields__, (kind, name)


# -- The store alone: Ledger + the relay's chaining, no Kafka ---------------------------------------

def test_verify_of_a_store_alone_reports_unrelayed_events_without_failing(tmp_path: Path):
    from arledger.settings import Settings
    from consumers.relay import ledger_record
    from ledger.application import Ledger
    from tests import builders as b

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    b.process(ledger, b.registered(), b.sale("I1", 1_000, issued_on="2026-01-02"),
              b.payment("P1", 400, received_on="2026-01-05"))
    chain = ledger.chain()
    records, prev = [], chain.last_hash
    for offset, (notification_id, stored) in enumerate(ledger.read_ledger(0, 100)):
        records.append(ledger_record(offset + 1, notification_id, stored, prev))
        prev = records[-1].hash_global
    chain.extend(1, [r.notification_id for r in records], [r.hash_global for r in records])
    ledger.save(chain)
    b.process(ledger, b.payment("P2", 100, received_on="2026-01-06"))
    settings = Settings(home=tmp_path, broker_port=1, kafka_bootstrap="unused:1",
                        store_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    report_ = audit.verify(settings, skip=frozenset({"topic", "projection"}))
    assert report_.ok, [p.describe() for p in report_.problems]
    assert (report_.chain_length, report_.not_relayed, report_.streams) == (len(records), 2, 1)
    exported = list(audit.stored_records(ledger))
    assert [record_encoder.encode(r) for r in exported] == [record_encoder.encode(r) for r in records]


# -- Corrections without deletion (docs/auditors.md): a new event corrects, the mistake stays in history ----

@pytest.fixture
def corrected(tmp_path: Path):
    """Mistakes recorded on 2026-03-10 and corrected by new facts recorded on 2026-03-12."""
    from ledger_fixture import LedgerFixture
    from tests import builders as b

    fx = LedgerFixture(tmp_path / "corrections.duckdb")
    fx.batch(b.registered(limit=100_000), b.sale("I1", 50_000, issued_on="2026-03-01", due_on="2026-03-31"),
             at="2026-03-01T12:00:00Z")
    fx.batch(b.sale("I2", 12_000, issued_on="2026-03-05", due_on="2026-04-04"),  # should have been 10,000
             b.payment("P1", 9_000, received_on="2026-03-06"),  # was 900, keyed wrongly
             b.limit_changed(10_000, on="2026-03-07"),  # meant 100,000 → 110,000
             b.dispute_opened("I1", on="2026-03-08"),  # opened on the wrong invoice
             b.hold_placed(on="2026-03-08"),
             b.order_placed("O1", 1_000, on="2026-03-09"),  # placed twice upstream
             at="2026-03-10T12:00:00Z")
    fx.batch(b.credit_note("CN1", "I2", 2_000, on="2026-03-11"),
             b.reversal("P1", on="2026-03-11"),
             b.payment("P1-fixed", 900, received_on="2026-03-06"),
             b.limit_changed(110_000, on="2026-03-07"),  # same business date: later recorded wins
             b.dispute_resolved("I1", on="2026-03-11"),
             b.hold_released(on="2026-03-11"),
             b.order_cancelled("O1", on="2026-03-11"),
             at="2026-03-12T12:00:00Z")
    yield fx
    fx.close()


def test_each_mistake_is_corrected_by_a_new_event_and_the_mistake_stays_on_record(corrected):
    connection = corrected.connection
    as_of = dt.date(2026, 3, 31)
    after = {row["customer_id"]: row for row in reports.balances(connection, as_of)["rows"]}["C1"]
    # 50,000 + 12,000 − 2,000 credit note − 900 re-keyed payment (the 9,000 was reversed)
    assert after["balance"] == 59_100 and after["credit_limit"] == 110_000 and after["on_hold"] is False
    assert after["open_orders"] == 0
    before = {row["customer_id"]: row for row in
              reports.balances(connection, as_of, dt.datetime(2026, 3, 11, tzinfo=dt.UTC))["rows"]}["C1"]
    assert before["balance"] == 53_000 and before["credit_limit"] == 10_000 and before["on_hold"] is True
    kinds = [row[0] for row in connection.execute("SELECT kind FROM ledger_events ORDER BY position").fetchall()]
    for mistake, correction in [("sale.recorded", "credit_note.issued"), ("payment.received", "payment.reversed"),
                                ("credit_limit.changed", "credit_limit.changed"),
                                ("dispute.opened", "dispute.resolved"), ("credit_hold.placed", "credit_hold.released"),
                                ("order.placed", "order.cancelled")]:
        assert mistake in kinds and correction in kinds[kinds.index(mistake) + 1:], (mistake, correction)
    (positions, highest) = connection.execute("SELECT count(*), max(position) FROM ledger_events").fetchone()
    assert positions == highest  # nothing removed: positions 1..N all present
