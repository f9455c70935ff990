"""Publishing a snapshot must not release DuckDB's lock on the live projection file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from consumers.project import publish_snapshot
from projections import schema


def other_process_can_open(path: Path) -> bool:
    probe = subprocess.run([sys.executable, "-c", f"import duckdb; duckdb.connect({str(path)!r}).close()"],
                           capture_output=True, text=True)
    return probe.returncode == 0


def test_the_live_file_stays_locked_after_a_snapshot_copy(tmp_path: Path) -> None:
    live = tmp_path / "projections.duckdb"
    connection = schema.connect(str(live))
    schema.create_schema(connection)
    source_fd = os.open(live, os.O_RDONLY)
    try:
        publish_snapshot(connection, live, tmp_path / "snapshot.duckdb", source_fd)
        publish_snapshot(connection, live, tmp_path / "snapshot.duckdb", source_fd)

        assert not other_process_can_open(live)
        snapshot = schema.connect(str(tmp_path / "snapshot.duckdb"), read_only=True)
        assert snapshot.execute("SELECT count(*) FROM ledger_events").fetchone() == (0,)
    finally:
        connection.close()
        os.close(source_fd)
