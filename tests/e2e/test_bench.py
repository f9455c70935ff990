"""`arledger bench --quick` runs and writes valid JSON with every key. Never a timing: figures are not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from arledger.settings import Settings
from bench import report
from bench.harness import BASELINE_KEYS, STAGE_KEYS
from consumers import broker
from tests.integration.postgres_server import server_bin_dir
from tests.support import free_port_pair

BENCH_TIMEOUT_S = 900
TARGET_NAMES = {name for name, *_ in report.TARGETS}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path, Path, int]:
    home = tmp_path_factory.mktemp("bench-home")
    out = home / "results" / "quick.json"
    port = free_port_pair()
    env = {key: value for key, value in os.environ.items() if not key.startswith("ARLEDGER_")}
    env.update(ARLEDGER_HOME=str(home), ARLEDGER_BROKER_PORT=str(port))
    try:
        result = subprocess.run([sys.executable, "-m", "arledger.cli", "bench", "--quick", "--out", str(out)],
                                env=env, capture_output=True, text=True, timeout=BENCH_TIMEOUT_S)
    finally:
        broker.stop(Settings(home=home, broker_port=port, kafka_bootstrap=f"127.0.0.1:{port}",
                             store_url=f"sqlite:///{home / 'ledger.sqlite'}"))
    return result, out, home, port


@pytest.mark.slow
def test_quick_bench_writes_valid_json_with_every_key(quick_run) -> None:
    result, out, _, _ = quick_run

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["quick"] is True
    assert {"schema_version", "generated_at", "machine", "workload", "stages", "baselines", "summary", "targets",
            "notes", "profiles", "errors", "duration_s"} <= set(results)
    assert results["errors"] == {}
    assert set(results["stages"]) == set(STAGE_KEYS)
    assert set(results["baselines"]) == set(BASELINE_KEYS)
    for section in ("stages", "baselines"):
        for key, figures in results[section].items():
            assert isinstance(figures, dict) and "error" not in figures and "skipped" not in figures, (key, figures)
    assert {"cores", "python", "packages", "java", "kafka_broker", "load_average_start"} <= set(results["machine"])
    assert {target["name"] for target in results["targets"]} == TARGET_NAMES
    assert {"p50_ms", "p99_ms"} <= set(results["stages"]["e2e_latency"]["committed"])
    assert results["stages"]["aging"] and all("ms_median" in size for size in results["stages"]["aging"].values())


@pytest.mark.slow
def test_quick_bench_runs_the_workers_store_and_decision_stages(quick_run) -> None:
    result, out, _, _ = quick_run
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    stages = json.loads(out.read_text())["stages"]

    workers = stages["workers"]
    assert workers["partitions"] == 12 and set(workers["by_workers"]) == {"1", "2", "4"}
    by_workers = workers["by_workers"].values()
    assert all(one["ingest_records_per_s"] and one["projector_events_per_s"] for one in by_workers)
    assert all(one["ingest_records_handled"] >= one["records"] == workers["records"] for one in by_workers)
    # the same records from the beginning for every N: the same ledger, whatever the process count
    assert len({one["ledger_events"] for one in by_workers}) == 1 and workers["by_workers"]["1"]["ledger_events"] > 0
    store = stages["store"]
    assert store["sqlite"]["records_per_s"] > 0
    assert store["sqlite"]["outcomes"]["accepted"] > 0
    if server_bin_dir() is None:
        assert "skipped" in store["postgresql"]
    else:
        assert store["postgresql"]["outcomes"] == store["sqlite"]["outcomes"]  # same records, same verdicts
    decisions = stages["decision_latency"]
    assert decisions["missing"] == 0 and decisions["measured"] > 0
    assert decisions["p50_ms"] <= decisions["p99_ms"] <= decisions["max_ms"]


@pytest.mark.slow
def test_quick_bench_prints_the_table_and_cleans_up(quick_run) -> None:
    result, out, home, port = quick_run

    assert "targets" in result.stdout and f"results written to {out}" in result.stdout
    assert not (home / "bench").exists() or not any((home / "bench").iterdir())
    assert not broker.port_in_use(port)


def test_a_missed_target_says_by_how_much() -> None:
    results = {"stages": {"ingest_ledger": {"records_per_s": 5_000.0, "stored_rows_per_record": 3.0},
                          "aging": {"1000000": {"ms_median": 250.0}}},
               "baselines": {"store_append": {"rows_per_s": 30_000.0}}}

    targets = {target["name"]: target for target in report.measured_targets(results)}

    assert targets["ingest_rate"]["met"] is False
    assert targets["ingest_rate"]["shortfall"].startswith("75% below")
    assert targets["ingest_vs_store_append"]["measured"] == 0.5
    assert targets["aging_1m"]["shortfall"].startswith("2.5× the limit")
    assert targets["rebuild_rate"]["met"] is None and targets["rebuild_rate"]["shortfall"]


def test_the_readme_section_is_replaced_between_its_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nIntro.\n")

    report.update_readme(readme, "## Performance\n\nfirst\n")
    report.update_readme(readme, "## Performance\n\nsecond\n")

    text = readme.read_text()
    assert text.startswith("# Title\n\nIntro.\n\n")
    assert text.count("## Performance") == 1 and "second" in text and "first" not in text
