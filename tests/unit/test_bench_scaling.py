"""The workers, store and decision stages of `arledger bench`: how their figures are read and reported.

No timing is asserted: the log reading that times the workers, and the rows and targets built from results.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench import report
from bench.harness import notes
from bench.scaling import _Log


def _line(event: str, second: float, **fields) -> str:
    return json.dumps({"event": event, "timestamp": f"2026-01-01T00:00:{second:09.6f}Z", **fields})


def test_the_workers_log_gives_when_the_last_offsets_were_committed(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    lines = [
        _line("workers_started", 1.0, ingest=True, project=False),
        _line("workers_started", 1.5, ingest=False, project=True),
        "not JSON: a child's stray output",
        _line("batch_committed", 2.0, worker="ingest", records=5, offsets={"0": 5}),
        _line("commit_lost_to_rebalance", 2.5, worker="ingest", offsets={"1": 3}),
        # two processes' lines interleaved with their newlines
        _line("batch_committed", 3.0, worker="ingest", records=3, offsets={"1": 3})
        + _line("batch_committed", 3.5, worker="project", records=4, offsets={"0": 4}) + "\n",
        _line("batch_committed", 4.0, worker="project", records=2, offsets={"1": 2}),
        _line("batch_committed", 5.0, worker="project", records=2, offsets={"0": 6}),
    ]
    path.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # the last line still being written
    log = _Log(path, ingest_end={0: 5, 1: 3, 2: 0})

    log.update()
    assert log.ingest_done_at is None and log.lost_commits == 1

    path.write_text("\n".join(lines) + "\n")
    log.update()
    assert log.ingest_done_at - log.started["ingest"][0] == 2.0
    assert log.ingest_handled == 8
    assert log.project_done_at({0: 6, 1: 2}) - log.started["project"][0] == 3.5
    assert log.project_done_at({0: 7, 1: 2}) is None


RESULTS = {
    "stages": {
        "workers": {"partitions": 12, "counts": [1, 2, 4], "by_workers": {
            "1": {"ingest_records_per_s": 2_000.0, "projector_events_per_s": 40_000.0},
            "2": {"ingest_records_per_s": 2_400.0, "projector_events_per_s": 44_000.0},
            "4": {"ingest_records_per_s": 2_200.0, "projector_events_per_s": None}}},
        "store": {"sqlite": {"records_per_s": 8_000.0}, "postgresql": {"records_per_s": 4_000.0}},
        "decision_latency": {"orders_per_s": 200.0, "background_events_per_s": 2_000.0, "p50_ms": 30.0,
                             "p99_ms": 120.0, "max_ms": 150.0},
        "aging": {"skipped": "not selected (--only)"},
    },
    "baselines": {},
}


def test_each_worker_count_is_a_row_against_one_process() -> None:
    rows = {row["stage"]: row for row in report.summary_rows(RESULTS)}

    two = rows["ingest via Kafka, `run --workers 2` (12 partitions)"]
    assert two["baseline_value"] == 2_000.0 and two["ratio"] == 1.2
    assert rows["ingest via Kafka, `run --workers 1` (12 partitions)"]["ratio"] is None
    assert rows["projector on Kafka, 4 shard processes (12 partitions)"]["ratio"] is None  # not measured: no ratio
    assert rows["ingest in process on PostgreSQL (Ledger.process_batch ×2,000)"]["ratio"] == 0.5


def test_the_decision_target_counts_only_at_its_load() -> None:
    targets = {target["name"]: target for target in report.measured_targets(RESULTS)}
    assert targets["decision_p99"]["met"] is False
    assert targets["decision_p99"]["shortfall"].startswith("2.4× the limit")

    light = json.loads(json.dumps(RESULTS))
    light["stages"]["decision_latency"].update(orders_per_s=20.0, p99_ms=10.0)
    targets = {target["name"]: target for target in report.measured_targets(light)}
    assert targets["decision_p99"]["met"] is None
    assert "not measured at the target's size" in targets["decision_p99"]["shortfall"]


def test_a_missed_decision_target_says_what_limits_it() -> None:
    results = json.loads(json.dumps(RESULTS))
    results["summary"] = report.summary_rows(results)
    results["targets"] = report.measured_targets(results)

    [note] = notes(results)

    assert note.startswith("credit-decision p99") and "2,200 records/s" in note and "8,000 records/s" in note


def test_a_repeated_measurement_is_said_in_the_readme_section() -> None:
    results = json.loads(json.dumps(RESULTS))
    results["stages"]["workers"]["by_workers"]["2"]["repeated_after"] = "the ingest stalled"
    results["stages"]["decision_latency"]["repeated_after"] = "no decision in time"

    assert report._repeated(results) == [("`run --workers 2`", "the ingest stalled"),
                                         ("credit decision latency", "no decision in time")]
    assert report._repeated(RESULTS) == []
