"""Analysts while projecting: `arledger sql` and plain DuckDB clients on the published snapshot.

The first tests need no broker: a projection file is folded from a scenario
run through the ledger in memory (as the relay would publish it). The last
one runs the real workers and checks that an analyst process reading the
snapshot over and over during ingestion only ever sees whole batches.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from arledger.settings import TOPIC_LEDGER
from consumers.project import publish_snapshot
from consumers.relay import ledger_record
from helpers import ARLEDGER, cli, ingest_wait, running_workers, wait_until
from ledger.application import InboundRecord, Ledger
from ledger.hashing import GENESIS_HASH
from ledger.records import record_encoder
from projections import schema
from projections.fold import apply_batch
from test_rebuild import every_event_type_facts

ANALYST_READS_MIN = 20


def folded_home(home: Path, *, snapshot: bool = True) -> dict[str, str]:
    """A home whose projection holds the every-event-type scenario; returns the env to run the CLI on it."""
    ledger = Ledger("memory://")
    facts = every_event_type_facts("an")
    outcomes = ledger.process_batch([InboundRecord(value=json.dumps(f).encode(), key=f["customer_id"].encode())
                                     for f in facts])
    assert all(o.status == "accepted" for o in outcomes)
    records, prev_hash = [], GENESIS_HASH
    for position, (notification_id, stored) in enumerate(ledger.read_ledger(0, 10_000), start=1):
        record = ledger_record(position, notification_id, stored, prev_hash)
        prev_hash = record.hash_global
        records.append(record_encoder.encode(record))
    connection = schema.connect(str(home / "projections.duckdb"))
    schema.create_schema(connection)
    apply_batch(connection, records, {(TOPIC_LEDGER, 0): len(records)}, staging_dir=home)
    if snapshot:
        publish_snapshot(connection, home / "projections.duckdb", home / "snapshot.duckdb")
    connection.close()
    return {**os.environ, "ARLEDGER_HOME": str(home)}


@pytest.fixture
def home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    return tmp_path, folded_home(tmp_path)


def test_sql_json_has_columns_and_rows_with_integer_money(home) -> None:
    _, env = home
    out = json.loads(cli(env, "sql", "--format", "json",
                         "SELECT customer_id, invoice_id, installment, open_amount, due_on FROM items "
                         "ORDER BY ALL").stdout)
    assert out["columns"] == ["customer_id", "invoice_id", "installment", "open_amount", "due_on"]
    assert [(r["customer_id"], r["invoice_id"], r["installment"]) for r in out["rows"]] == [
        ("C1", "INV1", 1), ("C1", "INV2", 1), ("C1", "INV2", 2), ("C1", "INV3", 1), ("C2", "INV4", 1)]
    assert all(isinstance(row["open_amount"], int) for row in out["rows"])
    assert out["rows"][1]["due_on"] == "2026-02-10"  # dates as ISO-8601 strings
    dt.date.fromisoformat(out["rows"][0]["due_on"])
    total = json.loads(cli(env, "sql", "--format", "json", "SELECT sum(amount) AS s FROM item_movements").stdout)
    assert isinstance(total["rows"][0]["s"], int)  # HUGEINT sums stay integers, never floats


def test_sql_csv_is_rfc_4180(home) -> None:
    _, env = home

    def csv_bytes(query: str) -> bytes:  # bytes: text mode would turn the CRLF line ends into LF
        return subprocess.run([*ARLEDGER, "sql", "--format", "csv", query], env=env, capture_output=True,
                              check=True, timeout=60).stdout

    assert csv_bytes("SELECT 'a,\"b\"' AS text, 1 AS n UNION ALL SELECT NULL, 2 ORDER BY n") == (
        b'text,n\r\n"a,""b""",1\r\n,2\r\n')
    assert csv_bytes("SELECT customer_id FROM customers WHERE false") == b"customer_id\r\n"  # header, no rows


def test_sql_table_lists_the_rows(home) -> None:
    _, env = home
    out = cli(env, "sql", "SELECT customer_id, name FROM customers ORDER BY 1").stdout
    assert "Alpha" in out and "Beta" in out


def test_sql_is_read_only_and_reports_errors(home) -> None:
    path, env = home
    result = cli(env, "sql", "DELETE FROM items", check=False)
    assert result.returncode == 1 and "read-only" in result.stderr
    bad = cli(env, "sql", "SELECT nope FROM items", check=False)
    assert bad.returncode == 1 and "nope" in bad.stderr
    assert json.loads(cli(env, "sql", "--format", "json", "SELECT count(*) AS n FROM items").stdout)["rows"] == [
        {"n": 5}]


def test_sql_reads_the_projection_file_when_no_snapshot_was_ever_published(tmp_path: Path) -> None:
    env = folded_home(tmp_path, snapshot=False)
    out = json.loads(cli(env, "sql", "--format", "json", "SELECT count(*) AS n FROM customers").stdout)
    assert out["rows"] == [{"n": 2}]


def test_sql_session_runs_statements_ending_with_semicolons_and_dot_commands(home) -> None:
    _, env = home
    script = textwrap.dedent("""\
        .mode json
        SELECT 'a;b' AS text, -- a ; in a comment
               2 AS n;
        CREATE TEMP TABLE mine AS SELECT customer_id FROM customers;
        SELECT count(*) AS customers FROM mine;
        .tables
        .schema promises
        .status
        SELECT nope;
        .quit
        SELECT 'never run';
        """)
    result = subprocess.run([*ARLEDGER, "sql"], input=script, env=env, capture_output=True, text=True, timeout=60)
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["rows"] == [{"text": "a;b", "n": 2}]
    assert lines[2]["rows"] == [{"customers": 2}]  # the temp table lives for the session
    tables = {row["name"]: row["kind"] for row in lines[3]["rows"]}
    assert tables["items"] == "base table" and tables["customer_balances"] == "view"
    assert {row["column_name"] for row in lines[4]["rows"]} >= {"promise_id", "promised_on", "amount"}
    assert "ledger events" in result.stdout  # .status
    assert "nope" in result.stderr and "never run" not in result.stdout
    assert result.returncode == 1  # a failed statement in a script fails it


# -- While the projector writes --------------------------------------------------------------------

ANALYST = textwrap.dedent("""\
    import json, sys, time, duckdb
    from pathlib import Path
    snapshot, stop, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    # Every figure comes from one connection, i.e. one snapshot file, in one query.
    INVARIANTS = '''
        SELECT (SELECT count(*) FROM ledger_events),
               (SELECT coalesce(sum(next_offset), 0) FROM projection_offsets),
               (SELECT coalesce(sum(open_amount), 0) FROM items),
               (SELECT coalesce(sum(amount), 0) FROM item_movements),
               (SELECT coalesce(sum(amount), 0) FROM unapplied_movements),
               (SELECT coalesce(sum(balance), 0) FROM customer_balances),
               (SELECT count(*) FROM allocations),
               (SELECT count(*) FROM item_movements WHERE kind = 'allocated'),
               (SELECT coalesce(max(position), 0) FROM ledger_events),
               (SELECT coalesce(max(value::BIGINT), 0) FROM projection_meta WHERE key = 'max_position')
    '''
    reads = []
    while not stop.exists():
        if not snapshot.exists():
            time.sleep(0.01)
            continue
        connection = duckdb.connect(str(snapshot), read_only=True)
        try:
            reads.append(list(connection.execute(INVARIANTS).fetchone()))
        finally:
            connection.close()
        time.sleep(0.02)
    out.write_text(json.dumps(reads))
    """)


@pytest.mark.slow
def test_an_analyst_reading_while_the_projector_writes_never_sees_half_a_batch(
        kafka_env: dict[str, str], kafka_settings, tmp_path: Path) -> None:
    from arledger.generate import generate

    env = kafka_env
    lines = list(generate(customers=60, months=6, seed=9, bad_share=0.0))
    stop, out = tmp_path / "stop", tmp_path / "reads.json"
    (tmp_path / "analyst.py").write_text(ANALYST)
    with running_workers(env, log_path=tmp_path / "workers.log"):
        analyst = subprocess.Popen([sys.executable, str(tmp_path / "analyst.py"), str(kafka_settings.snapshot_path),
                                    str(stop), str(out)], stderr=subprocess.PIPE, text=True)
        try:
            sql_reads = []
            parts = [lines[i: i + len(lines) // 4 + 1] for i in range(0, len(lines), len(lines) // 4 + 1)]
            for number, part in enumerate(parts):
                path = tmp_path / f"part{number}.jsonl"
                path.write_bytes(b"".join(line + b"\n" for line in part))
                ingesting = subprocess.Popen([*ARLEDGER, "ingest", str(path)], env=env,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                while ingesting.poll() is None:  # `arledger sql` too, from its own processes, meanwhile
                    if kafka_settings.snapshot_path.exists():
                        sql_reads.append(json.loads(cli(env, "sql", "--format", "json",
                                                        "SELECT (SELECT sum(open_amount) FROM items) "
                                                        "- (SELECT coalesce(sum(amount), 0) FROM unapplied_movements) "
                                                        "- (SELECT sum(balance) FROM customer_balances) AS gap").stdout))
                    time.sleep(0.1)
                assert ingesting.returncode == 0, ingesting.stderr.read()
            ingest_wait(env, path)  # the last part again: all duplicates; returns once everything is projected
        finally:
            stop.touch()
            assert analyst.wait(timeout=60) == 0, analyst.stderr.read()
    reads = json.loads(out.read_text())
    assert len(reads) >= ANALYST_READS_MIN
    for (events, offsets, open_items, movements, unapplied, balances, allocations, allocated_movements,
         max_position, meta_position) in reads:
        assert events == offsets  # rows and offsets of the same transactions (no relay re-publish here)
        assert open_items == movements  # items.open_amount is folded from the movements in the same batch
        assert open_items - unapplied == balances
        assert allocations == allocated_movements
        assert max_position == meta_position
    assert len({read[0] for read in reads}) >= 3, "the analyst should have seen the projection grow"
    assert all(read["rows"][0]["gap"] in (0, None) for read in sql_reads)
