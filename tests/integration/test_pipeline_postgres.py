"""The whole pipeline with the event store on PostgreSQL equals the same run on SQLite, report for report."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.integration.helpers import ingest_wait, report, running_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "small.jsonl"


def run_pipeline(env: dict[str, str], home: Path) -> tuple[dict, dict, dict]:
    with running_workers(env, log_path=home / "run.log"):
        counts = ingest_wait(env, EXAMPLES)
        aging = report(env, "aging", "--as-of", "2026-06-30")
        balances = report(env, "balances", "--as-of", "2026-06-30")
    return counts, aging, balances


def test_postgresql_store_gives_the_reports_of_sqlite(kafka_env: dict[str, str], postgres_server,
                                                      tmp_path: Path) -> None:
    on_sqlite = run_pipeline(kafka_env, tmp_path)

    pg_home = tmp_path / "pg"
    pg_home.mkdir()
    pg_env = {**kafka_env, "ARLEDGER_HOME": str(pg_home),
              "ARLEDGER_TOPIC_PREFIX": f"pg{uuid.uuid4().hex[:8]}.",
              "ARLEDGER_STORE": postgres_server.create_database("pipe" + uuid.uuid4().hex[:8])}
    on_postgres = run_pipeline(pg_env, pg_home)

    assert on_sqlite[0]["accepted"] == 19 and on_sqlite[0]["rejected"] == 1
    assert on_postgres == on_sqlite
    assert on_postgres[2]["rows"][0]["customer_id"] == "C0001"
