"""Publication without whole copies (issue 14): changed blocks into a generation file, then an atomic link.

Readers (the DuckDB 1.5 CLI from PyPI included) see every published state whole; a generation a reader
holds open is never written.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from ledger_fixture import LedgerFixture, builders as b
from projections import publication, schema

DUCKDB_CLI = shutil.which("duckdb", path=str(Path(sys.executable).parent)) or shutil.which("duckdb")
FIGURES = "SELECT (SELECT count(*) FROM ledger_events), (SELECT coalesce(sum(open_amount), 0) FROM items)"


def _figures(path: Path) -> tuple:
    connection = schema.connect(str(path), read_only=True)
    try:
        return connection.execute(FIGURES).fetchone()
    finally:
        connection.close()


def _sales(fx: LedgerFixture, start: int, count: int) -> None:
    fx.batch(*[b.sale(f"I{n}", 1_000 + n, issued_on="2026-01-10", customer_id="P1") for n in range(start, start + count)])


@pytest.fixture
def live(tmp_path: Path):
    fx = LedgerFixture(tmp_path / "projections.duckdb")
    fx.batch(b.registered(customer_id="P1"))
    fd = os.open(tmp_path / "projections.duckdb", os.O_RDONLY)
    yield fx, fd, tmp_path / "projections.duckdb", tmp_path / "snapshot.duckdb"
    os.close(fd)
    fx.close()


def test_each_publication_shows_the_live_state_and_reuses_the_older_generation(live) -> None:
    fx, fd, path, snapshot = live
    seen = []
    for round_ in range(5):
        _sales(fx, round_ * 50, 50)
        published = publication.publish(fx.connection, path, snapshot, fd)
        seen.append(published.mode)
        assert snapshot.is_symlink()
        assert _figures(snapshot) == fx.connection.execute(FIGURES).fetchone()
        assert len(list(publication.generations_dir(snapshot).iterdir())) <= publication.GENERATIONS_KEPT
    assert seen[:2] == ["full", "full"] and set(seen[2:]) == {"blocks"}


def test_a_generation_a_reader_holds_is_left_alone(live) -> None:
    fx, fd, path, snapshot = live
    for round_ in range(2):
        _sales(fx, round_ * 10, 10)
        publication.publish(fx.connection, path, snapshot, fd)
    older = [p for p in publication.generations_dir(snapshot).iterdir()
             if p.resolve() != publication.current_generation(snapshot)][0]
    held = _figures(older)
    # another process holds the older generation open (DuckDB's shared lock), as an analyst's CLI would
    reader = subprocess.Popen([sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1], "
                               "read_only=True); print('open', flush=True); sys.stdin.read()", str(older)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline().strip() == "open"
        _sales(fx, 100, 10)
        published = publication.publish(fx.connection, path, snapshot, fd)
        assert published.mode == "full" and published.path != older
        assert _figures(snapshot) == fx.connection.execute(FIGURES).fetchone()
    finally:
        reader.communicate("")
    assert not older.exists() or _figures(older) == held  # dropped from the folder, never rewritten


def test_a_generation_with_a_second_name_is_left_alone(live, tmp_path: Path) -> None:
    fx, fd, path, snapshot = live
    _sales(fx, 0, 10)
    publication.publish(fx.connection, path, snapshot, fd)
    publication.stable_link(snapshot, tmp_path / "verify-copy.duckdb")
    held = _figures(tmp_path / "verify-copy.duckdb")
    for round_ in range(3):
        _sales(fx, 20 + round_ * 10, 10)
        publication.publish(fx.connection, path, snapshot, fd)
    assert _figures(tmp_path / "verify-copy.duckdb") == held


@pytest.mark.skipif(DUCKDB_CLI is None, reason="the duckdb CLI (test extra duckdb-cli) is not installed")
def test_the_duckdb_1_5_cli_reads_the_published_snapshot(live) -> None:
    fx, fd, path, snapshot = live
    _sales(fx, 0, 20)
    publication.publish(fx.connection, path, snapshot, fd)
    version = subprocess.run([DUCKDB_CLI, "--version"], capture_output=True, text=True, check=True).stdout
    result = subprocess.run([DUCKDB_CLI, "-readonly", "-csv", "-noheader", str(snapshot), "-c",
                             "SELECT count(*) FROM ledger_events; SELECT balance FROM customer_balances; "
                             "SELECT count(*) FROM open_items"], capture_output=True, text=True)
    assert result.returncode == 0, (version, result.stderr)
    expected_balance = sum(1_000 + n for n in range(20))
    assert result.stdout.split() == [str(fx.connection.execute("SELECT count(*) FROM ledger_events").fetchone()[0]),
                                     str(expected_balance), "20"]


def test_projection_files_are_created_in_a_format_duckdb_1_reads(tmp_path: Path) -> None:
    connection = schema.connect(str(tmp_path / "p.duckdb"))
    schema.create_schema(connection)
    connection.close()
    with open(tmp_path / "p.duckdb", "rb") as f:
        header = f.read(4096)
    # DuckDB's main header: the magic bytes, then the storage version number (64..68 = v1.x readable)
    version = int.from_bytes(header[12:20], "little")
    assert 64 <= version <= 68, version
    assert duckdb.connect(str(tmp_path / "p.duckdb"), read_only=True).execute("SELECT 1").fetchone() == (1,)
