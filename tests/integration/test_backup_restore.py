"""`arledger backup` while the workers run, `arledger restore` into an empty home, then `verify`; the read
models rebuilt from either copy (the restored store, ar.ledger) equal the original's; on SQLite and on
PostgreSQL (pg_dump / pg_restore)."""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from pathlib import Path

import pytest

from arledger.generate import write_jsonl
from tests.integration.helpers import cli, ingest_wait, report, running_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
AS_OF = "2026-03-31"
REPORTS = ("aging", "balances", "exposure", "allowance")


def workload(tmp_path: Path, name: str, seed: int) -> Path:
    path = tmp_path / f"{name}.jsonl"
    write_jsonl(path, customers=15, months=3, seed=seed, start=dt.date(2026, 1, 1))
    return path


def reports_of(env: dict[str, str]) -> dict[str, dict]:
    return {name: report(env, name, "--as-of", AS_OF) for name in REPORTS}


def restored_env(env: dict[str, str], home: Path, store_url: str | None = None) -> dict[str, str]:
    """The same topics, a new empty home and store."""
    home.mkdir()
    return {**env, "ARLEDGER_HOME": str(home), "ARLEDGER_STORE": store_url or f"sqlite:///{home / 'ledger.sqlite'}"}


def test_an_online_backup_restores_into_an_empty_home_and_verifies(kafka_env: dict[str, str],
                                                                   tmp_path: Path) -> None:
    """The backup is taken while `ingest --wait` of a second workload is being processed; the restored home
    holds a consistent prefix: its store verifies, and its read model is a fold of events it holds."""
    first, second = workload(tmp_path, "first", 3), workload(tmp_path, "second", 4)
    backup_dir = tmp_path / "backup"
    with running_workers(kafka_env, log_path=tmp_path / "run.log"):
        ingest_wait(kafka_env, first)
        loading = threading.Thread(target=ingest_wait, args=(kafka_env, second))
        loading.start()
        try:
            made = cli(kafka_env, "backup", str(backup_dir), "--format", "json")
        finally:
            loading.join()
    manifest = json.loads(made.stdout)
    assert manifest == json.loads((backup_dir / "manifest.json").read_text())
    assert manifest["store"]["kind"] == "sqlite" and manifest["ledger"]["exact"]
    assert manifest["ledger"]["position"] > 0 and manifest["ingest_committed_offsets"]
    [model] = manifest["read_models"]
    assert model["last_position"] <= manifest["ledger"]["position"]  # the snapshot was copied first

    final = json.loads(cli(kafka_env, "verify", "--format", "json", "--no-progress").stdout)
    env = restored_env(kafka_env, tmp_path / "restored")
    restored = cli(env, "restore", str(backup_dir), "--verify")
    assert f"ledger position {manifest['ledger']['position']}" in restored.stdout
    # Events recorded after the backup are on ar.ledger only: restore says so.
    ahead = final["chain_length"] > manifest["ledger"]["position"]
    assert ("WARNING: ar.ledger holds positions up to" in restored.stderr) == ahead
    # The read models rebuilt from the restored store verify too.
    cli(env, "rebuild", "--from-store", "--no-progress")
    cli(env, "verify", "--skip", "topic", "--no-progress")


def test_a_quiescent_backup_restores_the_same_reports_from_either_copy(kafka_env: dict[str, str],
                                                                       tmp_path: Path) -> None:
    with running_workers(kafka_env, log_path=tmp_path / "run.log"):
        ingest_wait(kafka_env, workload(tmp_path, "facts", 5))
        original = reports_of(kafka_env)
        cli(kafka_env, "backup", str(tmp_path / "backup"))
    env = restored_env(kafka_env, tmp_path / "restored")
    assert "WARNING" not in cli(env, "restore", str(tmp_path / "backup")).stderr
    cli(env, "verify", "--no-progress")  # ar.ledger did not move on: every check, the topic's included
    assert reports_of(env) == original  # the restored snapshot
    cli(env, "rebuild", "--from-store", "--no-progress")
    assert reports_of(env) == original
    cli(env, "rebuild", "--no-progress")  # from ar.ledger
    assert reports_of(env) == original
    cli(env, "verify", "--no-progress")


def test_restore_refuses_a_damaged_backup_and_a_home_in_use(kafka_env: dict[str, str], tmp_path: Path) -> None:
    with running_workers(kafka_env, log_path=tmp_path / "run.log"):
        ingest_wait(kafka_env, workload(tmp_path, "facts", 6))
    cli(kafka_env, "backup", str(tmp_path / "backup"), "--no-kafka")
    refused = cli(kafka_env, "restore", str(tmp_path / "backup"), check=False)  # the original home
    assert refused.returncode == 2 and "not empty" in refused.stderr
    again = cli(kafka_env, "backup", str(tmp_path / "backup"), check=False)
    assert again.returncode == 2 and "not empty" in again.stderr
    store = tmp_path / "backup" / "ledger.sqlite"
    data = bytearray(store.read_bytes())
    data[len(data) // 2] ^= 0xFF
    store.write_bytes(bytes(data))
    env = restored_env(kafka_env, tmp_path / "restored")
    damaged = cli(env, "restore", str(tmp_path / "backup"), check=False)
    assert damaged.returncode == 2 and "checksum" in damaged.stderr
    assert not (tmp_path / "restored" / "ledger.sqlite").exists()


def test_postgresql_backup_with_pg_dump_restores_with_pg_restore(kafka_env: dict[str, str], postgres_server,
                                                                 tmp_path: Path) -> None:
    home = tmp_path / "pg"
    env = restored_env(kafka_env, home, postgres_server.create_database("bk" + uuid.uuid4().hex[:8]))
    with running_workers(env, log_path=home / "run.log"):
        ingest_wait(env, workload(tmp_path, "facts", 7))
        original = reports_of(env)
        manifest = json.loads(cli(env, "backup", str(tmp_path / "backup"), "--format", "json").stdout)
    assert manifest["store"] == {"kind": "postgresql", "file": "ledger.pgdump",
                                 "sha256": manifest["store"]["sha256"]}
    target = postgres_server.create_database("rs" + uuid.uuid4().hex[:8])
    restored = restored_env(kafka_env, tmp_path / "restored", target)
    out = cli(restored, "restore", str(tmp_path / "backup"), "--verify")
    assert f"ledger position {manifest['ledger']['position']}" in out.stdout
    cli(restored, "verify", "--no-progress")
    assert reports_of(restored) == original
    cli(restored, "rebuild", "--from-store", "--no-progress")
    assert reports_of(restored) == original
    # A database that is not empty is refused.
    again = cli({**restored, "ARLEDGER_HOME": str(tmp_path / "third")}, "restore", str(tmp_path / "backup"),
                check=False)
    assert again.returncode == 2 and "not empty" in again.stderr
