"""`arledger run --workers 2` (two ingest processes, one relay, two projector shards) equals one process."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from arledger.generate import write_jsonl
from tests.integration.helpers import cli, ingest_wait, report, running_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def run_and_report(env: dict[str, str], home: Path, workload: Path, *run_args: str) -> tuple[dict, ...]:
    with running_workers(env, *run_args, log_path=home / "run.log"):
        counts = ingest_wait(env, workload)
        aging = report(env, "aging", "--as-of", "2026-06-30")
        balances = report(env, "balances", "--as-of", "2026-06-30")
        known = report(env, "aging", "--as-of", "2026-06-30", "--known-at", "2000-01-01")
    return counts, aging, balances, known


def test_many_processes_give_the_reports_of_one(kafka_env: dict[str, str], tmp_path: Path) -> None:
    import datetime as dt

    workload = tmp_path / "workload.jsonl"
    write_jsonl(workload, customers=40, months=6, seed=5, start=dt.date(2026, 1, 1))

    single = run_and_report(kafka_env, tmp_path, workload)

    many_home = tmp_path / "many"
    many_home.mkdir()
    many_env = {**kafka_env, "ARLEDGER_HOME": str(many_home), "ARLEDGER_STORE": f"sqlite:///{many_home / 'ledger.sqlite'}",
                "ARLEDGER_TOPIC_PREFIX": f"m{uuid.uuid4().hex[:8]}."}
    many = run_and_report(many_env, many_home, workload, "--workers", "2")

    assert sorted(path.name for path in many_home.glob("snapshot-*.duckdb")) == [
        "snapshot-0-of-2.duckdb", "snapshot-1-of-2.duckdb"]
    assert many[0] == single[0]  # the same outcome for every record
    assert many[1] == single[1] and many[2] == single[2]
    assert single[1]["rows"], "the workload produced open items"
    assert many[3]["rows"] == []  # nothing was known in 2000
    shard_counts = [int(cli(many_env, "sql", f"SELECT count(*) AS n FROM shard{i}.main.ledger_events",
                            "--format", "csv").stdout.splitlines()[1]) for i in range(2)]
    assert all(count > 0 for count in shard_counts)  # both shards folded a share
