"""`arledger recover-store`: a lost event store rebuilt from ar.ledger, every hash checked. The recovered store
holds the original's account events row for row (same notification ids, versions and stored bytes), `verify`
passes on it, the reports are the original's, `run` continues from it and a re-sent envelope is a duplicate;
a forged record on ar.ledger stops the recovery naming it, and a store that is not empty is refused."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import uuid
from pathlib import Path

import msgspec
import pytest

from arledger.generate import write_jsonl
from arledger.settings import TOPIC_LEDGER, Settings
from ledger.hashing import chain_hash
from ledger.records import global_hash_body, record_decoder, record_encoder
from tests.integration.helpers import cli, ingest_wait, produce, read_topic, report, running_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
AS_OF = "2026-03-31"
REPORTS = ("aging", "balances", "exposure", "allowance")
ACCOUNT_TOPICS = ("ledger.aggregate:CustomerAccount.Opened", "ledger.aggregate:CustomerAccount.Recorded")


def workload(tmp_path: Path, name: str, seed: int, customers: int = 12) -> Path:
    path = tmp_path / f"{name}.jsonl"
    write_jsonl(path, customers=customers, months=2, seed=seed, start=dt.date(2026, 1, 1))
    return path


def reports_of(env: dict[str, str]) -> dict[str, dict]:
    return {name: report(env, name, "--as-of", AS_OF) for name in REPORTS}


def account_rows(store: Path) -> list[tuple]:
    """The stored account events, as rows of the events table (notification id, stream, version, topic, bytes)."""
    with sqlite3.connect(store) as connection:
        return connection.execute(
            "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
            f"WHERE topic IN {ACCOUNT_TOPICS!r} ORDER BY rowid").fetchall()


def lose_store(store: Path) -> None:
    for path in (store, Path(f"{store}-wal"), Path(f"{store}-shm")):
        path.unlink(missing_ok=True)


def verified(env: dict[str, str], *args: str) -> dict:
    out = cli(env, "verify", "--format", "json", "--no-progress", *args, check=False)
    body = json.loads(out.stdout)
    assert out.returncode == 0 and body["ok"], body["problems"][:5]
    return body


def test_a_lost_store_is_recovered_from_ar_ledger_and_run_continues(kafka_env: dict[str, str],
                                                                   kafka_settings: Settings, tmp_path: Path) -> None:
    facts = workload(tmp_path, "facts", 11)
    with running_workers(kafka_env, log_path=tmp_path / "run.log"):
        ingest_wait(kafka_env, facts)
        original = reports_of(kafka_env)
    store = Path(kafka_settings.store_url[len("sqlite:///"):])
    before = account_rows(store)
    head = verified(kafka_env)
    assert head["chain_length"] == len(before) > 0

    lose_store(store)
    out = cli(kafka_env, "recover-store", "--format", "json", "--no-progress")
    result = json.loads(out.stdout)
    assert result["positions"] == len(before) and result["chain_head"] == head["chain_head"]
    assert result["receipts"] > 0 and result["customers"] == 12
    assert account_rows(store) == before  # the same events at the same notification ids, byte for byte
    after = verified(kafka_env)  # every check: store, chains, receipts, ar.ledger, the read model
    assert (after["chain_length"], after["chain_head"], after["receipts"]) == \
        (head["chain_length"], head["chain_head"], head["receipts"])
    assert any("recovered from ar.ledger" in note for note in after["notes"])
    cli(kafka_env, "rebuild", "--from-store", "--no-progress")
    assert reports_of(kafka_env) == original

    # `run` continues: a re-sent envelope is a duplicate (not applied twice), new facts chain on from the head.
    resent = tmp_path / "resent.jsonl"
    resent.write_bytes(facts.read_bytes().splitlines(keepends=True)[0])
    more = workload(tmp_path, "more", 12, customers=3)
    # other customers than the first workload's
    more.write_text(more.read_text().replace('"customer_id":"C', '"customer_id":"N'))
    with running_workers(kafka_env, log_path=tmp_path / "run2.log"):
        counts = ingest_wait(kafka_env, resent)
        assert counts["duplicate"] == 1 and counts["accepted"] == 0
        added = ingest_wait(kafka_env, more)
        assert added["accepted"] > 0
    final = verified(kafka_env)
    assert final["chain_length"] > head["chain_length"]
    assert reports_of(kafka_env) != original


def test_a_forged_record_on_ar_ledger_stops_the_recovery_naming_it(kafka_env: dict[str, str],
                                                                   kafka_settings: Settings, tmp_path: Path) -> None:
    with running_workers(kafka_env, log_path=tmp_path / "run.log"):
        ingest_wait(kafka_env, workload(tmp_path, "facts", 13, customers=5))
    store = Path(kafka_settings.store_url[len("sqlite:///"):])
    # A store that is not empty is refused.
    refused = cli(kafka_env, "recover-store", "--no-progress", check=False)
    assert refused.returncode == 2 and "not empty" in refused.stderr
    lose_store(store)

    records = read_topic(kafka_settings, TOPIC_LEDGER)
    last = max((record_decoder.decode(r.value) for r in records), key=lambda record: record.position)
    # A forged next position: it links to the head, but its hash was not computed over its (altered) content.
    forged = msgspec.structs.replace(last, position=last.position + 1, notification_id=last.notification_id + 5,
                                     version=last.version + 1, prev_hash_customer=last.hash_customer,
                                     prev_hash_global=last.hash_global)
    forged = msgspec.structs.replace(forged, hash_global=chain_hash(last.hash_global, global_hash_body(last)))
    partition, offset = produce(kafka_settings, TOPIC_LEDGER, last.customer_id.encode(),
                                record_encoder.encode(forged))
    failed = cli(kafka_env, "recover-store", "--no-progress", check=False)
    assert failed.returncode == 2, failed.stdout
    assert f"position {forged.position} (" in failed.stderr and f"partition {partition} offset {offset}" in failed.stderr
    assert "hash_global does not match" in failed.stderr
    assert not store.exists()  # nothing written
    assert not list(store.parent.glob(".recovering-*"))


def test_a_conflicting_copy_of_a_position_stops_the_recovery(kafka_env: dict[str, str], kafka_settings: Settings,
                                                            tmp_path: Path) -> None:
    with running_workers(kafka_env, log_path=tmp_path / "run.log"):
        ingest_wait(kafka_env, workload(tmp_path, "facts", 14, customers=4))
    lose_store(Path(kafka_settings.store_url[len("sqlite:///"):]))
    records = read_topic(kafka_settings, TOPIC_LEDGER)
    original = next(r for r in records if record_decoder.decode(r.value).position == 3)
    # A re-published copy byte for byte is skipped; an altered one is not.
    produce(kafka_settings, TOPIC_LEDGER, original.key, original.value)
    altered = json.loads(original.value)
    altered["recorded_at"] = "2026-01-01T00:00:00.000000Z"
    partition, offset = produce(kafka_settings, TOPIC_LEDGER, original.key,
                                json.dumps(altered, separators=(",", ":")).encode())
    failed = cli(kafka_env, "recover-store", "--no-progress", check=False)
    assert failed.returncode == 2
    assert (f"position 3: {kafka_settings.topic(TOPIC_LEDGER)} partition {partition} offset {offset} differs from "
            f"the record of the same position at partition {original.partition} offset {original.offset}"
            in failed.stderr)


def test_recovery_into_postgresql(kafka_env: dict[str, str], postgres_server, tmp_path: Path) -> None:
    home = tmp_path / "pg"
    home.mkdir()
    env = {**kafka_env, "ARLEDGER_HOME": str(home),
           "ARLEDGER_STORE": postgres_server.create_database("rc" + uuid.uuid4().hex[:8])}
    with running_workers(env, log_path=home / "run.log"):
        ingest_wait(env, workload(tmp_path, "facts", 15, customers=6))
        original = reports_of(env)
    head = verified(env)
    refused = cli(env, "recover-store", "--no-progress", check=False)
    assert refused.returncode == 2 and "not empty" in refused.stderr
    recovered = {**env, "ARLEDGER_STORE": postgres_server.create_database("rd" + uuid.uuid4().hex[:8])}
    result = json.loads(cli(recovered, "recover-store", "--format", "json", "--no-progress").stdout)
    assert (result["positions"], result["chain_head"]) == (head["chain_length"], head["chain_head"])
    assert verified(recovered)["receipts"] == head["receipts"]
    cli(recovered, "rebuild", "--from-store", "--no-progress")
    assert reports_of(recovered) == original
    with running_workers(recovered, log_path=home / "run2.log"):
        more = workload(tmp_path, "more", 16, customers=2)
        more.write_text(more.read_text().replace('"customer_id":"C', '"customer_id":"N'))
        assert ingest_wait(recovered, more)["accepted"] > 0
    assert verified(recovered)["chain_length"] > head["chain_length"]
