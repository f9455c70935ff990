"""The 2-minute soak (`arledger soak --minutes 2`) on SQLite and on PostgreSQL: load at a steady rate through
`arledger run --workers 2`, a worker process killed with SIGKILL every few seconds, the broker restarted; then
every invariant holds (one outcome per record, ar.ledger positions 1..N, verify, roll-forward, reports equal
to a clean run's). The soak starts its own broker (it restarts it) and, for PostgreSQL, its own server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
SOAK_TIMEOUT_S = 2_400  # 2 minutes of load, the drain, the checks and the clean run, on a busy 2-core machine


@pytest.mark.parametrize("store", ["sqlite", "postgresql"])
def test_a_two_minute_soak_with_kills_and_a_broker_restart_keeps_every_invariant(store: str,
                                                                                 tmp_path: Path) -> None:
    if store == "postgresql":
        from tests.integration.postgres_server import server_bin_dir

        if server_bin_dir() is None:
            pytest.fail("PostgreSQL server binaries not found: run 'make system-deps'")
    out = tmp_path / "soak.json"
    result = subprocess.run([sys.executable, "-m", "arledger.cli", "soak", "--minutes", "2", "--store", store,
                             "--dir", str(tmp_path / "soak"), "--out", str(out)],
                            capture_output=True, text=True, timeout=SOAK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"soak failed\n{result.stdout}\n{result.stderr[-5000:]}"
    results = json.loads(out.read_text())
    assert results["ok"] and all(check["ok"] for check in results["checks"].values())
    figures = results["figures"]
    assert figures["records_offered"] + figures["sends_failed"] == 2 * 60 * figures["rate_offered_per_s"]
    assert figures["kills"] >= 5 and figures["broker_restarts"] == 1
    assert figures["outcomes"]["rejected"] > 0 and figures["outcomes"]["duplicate"] > 0  # bad input was offered
    assert figures["faults_recovered"] == figures["faults"]
    assert "every record has exactly one outcome" in result.stdout and "result: PASSED" in result.stdout
