"""The live tables from the clients analysts use while `arledger run` runs (issue 14): the DuckDB CLI as
PyPI serves it (1.5.x), Python (duckdb, pandas when installed) and `psql` through `arledger sql-server`
(read-only enforced by the server, password from a file)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from arledger.generate import generate
from helpers import ARLEDGER, ingest_wait, running_workers, wait_until

DUCKDB_CLI = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
PSQL = shutil.which("psql")
BALANCE_SUM = "SELECT sum(balance) FROM customer_balances"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def psql(port: int, password: str, *sql: str) -> subprocess.CompletedProcess[str]:
    args = [PSQL, "-h", "127.0.0.1", "-p", str(port), "-U", "arledger", "-d", "arledger", "-X", "-A", "-t",
            "-v", "ON_ERROR_STOP=0"]
    for statement in sql:
        args += ["-c", statement]
    return subprocess.run(args, env={**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "10"},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.slow
@pytest.mark.kafka
@pytest.mark.skipif(DUCKDB_CLI is None or PSQL is None, reason="needs the duckdb CLI (test extra) and psql")
def test_duckdb_cli_python_and_psql_read_the_live_tables_while_run_runs(kafka_env: dict[str, str], kafka_settings,
                                                                          tmp_path: Path) -> None:
    env = kafka_env
    lines = list(generate(customers=20, months=3, seed=5, bad_share=0.0))
    half = len(lines) // 2
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_bytes(b"".join(line + b"\n" for line in lines[:half]))
    second.write_bytes(b"".join(line + b"\n" for line in lines[half:]))
    password_file = tmp_path / "sql-password"
    password_file.write_text("correct horse battery\n")
    password_file.chmod(0o600)
    port = free_port()
    with running_workers(env, log_path=tmp_path / "workers.log"):
        ingest_wait(env, first)
        server = subprocess.Popen([*ARLEDGER, "sql-server", "--port", str(port), "--password-file",
                                   str(password_file)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True)
        try:
            assert "listening" in server.stdout.readline()
            snapshot = kafka_settings.snapshot_path

            # The DuckDB CLI from PyPI (1.5.x) opens the published snapshot.
            cli = subprocess.run([DUCKDB_CLI, "-readonly", "-csv", "-noheader", str(snapshot), "-c",
                                  "SELECT count(*) > 0 FROM ledger_events; " + BALANCE_SUM],
                                 capture_output=True, text=True, timeout=60)
            assert cli.returncode == 0, cli.stderr
            assert cli.stdout.split()[0] == "true"

            # psql through the endpoint: the same figures; writes and file access refused by the server.
            result = psql(port, "correct horse battery", BALANCE_SUM, "SELECT count(*) FROM open_items")
            assert result.returncode == 0, result.stderr
            refused = psql(port, "correct horse battery", "DELETE FROM items", "CREATE TABLE t (a INTEGER)",
                           "SELECT * FROM read_csv('/etc/hostname')")
            assert refused.stdout.strip() == ""
            assert refused.stderr.count("ERROR") == 3, refused.stderr
            assert "read-only" in refused.stderr
            wrong = psql(port, "not the password", "SELECT 1")
            assert wrong.returncode != 0 and "password authentication failed" in wrong.stderr

            # More events while everything runs: every client sees them once published.
            ingest_wait(env, second)
            import duckdb

            def python_sum() -> int:
                connection = duckdb.connect(str(snapshot), read_only=True)
                try:
                    return connection.execute(BALANCE_SUM).fetchone()[0]
                finally:
                    connection.close()

            expected = python_sum()
            wait_until(lambda: psql(port, "correct horse battery", BALANCE_SUM).stdout.strip() == str(expected),
                       timeout_s=30, what="psql sees the published snapshot")
            cli = subprocess.run([DUCKDB_CLI, "-readonly", "-csv", "-noheader", str(snapshot), "-c", BALANCE_SUM],
                                 capture_output=True, text=True, timeout=60)
            assert cli.returncode == 0 and cli.stdout.strip() == str(expected), cli.stderr
            try:
                import pandas
            except ImportError:  # optional for arledger; `make venv` installs it with the test extras
                pandas = None
            if pandas is not None:
                connection = duckdb.connect(str(snapshot), read_only=True)
                try:
                    frame = connection.execute("SELECT * FROM customer_balances").df()
                finally:
                    connection.close()
                assert int(frame["balance"].sum()) == expected
        finally:
            server.terminate()
            server.wait(timeout=30)
