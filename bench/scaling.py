"""Ingest and projector throughput with 1, 2 and 4 worker processes on 12 partitions (issue 9).

For each N the same generated lines go to a fresh ar.inbound of 12 partitions
(topic prefix and home of that N alone, so every N starts from the beginning
with an empty event store and group), then:

1. `arledger run --workers N` (N ingest processes in one group, one relay, N
   projector shards) runs until the projections hold every ledger event. Ingest
   throughput = inbound records ÷ (the commit that covers the last inbound
   offset − the first ingest process's `workers_started`): the group join and
   rebalances as more members arrive count, the interpreters' start-up does
   not. The same run's time until the projections hold everything is kept too
   (`pipeline_*`): there the projector only follows the ingest.
2. The supervisor stopped, N projector shards alone (`arledger run project`
   with ARLEDGER_SHARD=i/N, what the supervisor starts) fold the complete
   ar.ledger of that run into new DuckDB files. Projector throughput = ledger
   events ÷ (the commit that covers the last ar.ledger offset − the first
   shard's `workers_started`).

Times come from the workers' own JSON log lines (UTC timestamps of each
commit), so polling from here adds nothing to them. An N whose ingest group
stalls before committing anything is measured once more on fresh topics, and
the JSON says so (`repeated_after`; see `IngestStalled`).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from kafka import TopicPartition

from arledger.settings import TOPIC_INBOUND, TOPIC_LEDGER, Settings
from bench.stages import end_offsets, env_for, settings_for

SCALING_PARTITIONS = 12  # issue 9: enough partitions for 4 processes to share evenly (3 each)
WAIT_TIMEOUT_S_MIN = 120.0  # a stage that long without finishing has failed (records/100 s for large ones)
WAIT_POLL_S = 0.2
STOP_TIMEOUT_S = 60.0
# No ingest commit for this long while records wait: the ingest group stalled (see `IngestStalled`).
INGEST_STALL_S = 20.0
COMMIT_LINE_WAIT_S = 3.0

STALL_NOTE = ("a kafka-python 3.0.12 group consumer that lost the completion of its second join (no partitions, "
              "no heartbeat, dropped by the broker); measured again on fresh topics")


class IngestStalled(RuntimeError):
    """The ingest processes committed nothing for INGEST_STALL_S while records were waiting.

    Seen here in about one start of `run` in 25: kafka-python 3.0.12 loses the completion
    of a second join that follows the first at once (the first assignment is empty when the leader has
    no metadata for the topic yet): the consumer never takes its partitions nor re-enables its
    heartbeat, the broker drops it after the session timeout, and it polls nothing for ever. The
    workers are not at fault in a way the benchmark can measure, so the run of that N is repeated once
    on fresh topics, and the repeat is recorded."""


@dataclass
class _Log:
    """What the workers' JSON log said so far; read incrementally from the file."""

    path: Path
    read: int = 0
    started: dict[str, list[float]] = field(default_factory=lambda: {"ingest": [], "project": []})
    ingest_offsets: dict[int, int] = field(default_factory=dict)
    ingest_done_at: float | None = None
    last_ingest_commit_at: float | None = None
    ingest_handled: int = 0
    ingest_end: dict[int, int] = field(default_factory=dict)
    project_commits: list[tuple[float, dict[int, int]]] = field(default_factory=list)
    lost_commits: int = 0

    def update(self) -> None:
        with self.path.open("rb") as file:
            file.seek(self.read)
            chunk = file.read()
        complete = chunk.rfind(b"\n") + 1
        self.read += complete
        for line in chunk[:complete].decode("utf-8", "replace").splitlines():
            for entry in _objects(line):
                self._take(entry)

    def _take(self, entry: dict[str, Any]) -> None:
        event, stamp = entry.get("event"), entry.get("timestamp")
        if stamp is None:
            return
        instant = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
        if event == "workers_started":
            for kind in ("ingest", "project"):
                if entry.get(kind):
                    self.started[kind].append(instant)
        elif event == "commit_lost_to_rebalance":
            self.lost_commits += 1
        elif event == "batch_committed" and entry.get("worker") == "ingest":
            self.ingest_handled += int(entry.get("records", 0))
            self.last_ingest_commit_at = instant
            for partition, offset in entry.get("offsets", {}).items():
                self.ingest_offsets[int(partition)] = max(self.ingest_offsets.get(int(partition), 0), int(offset))
            if self.ingest_done_at is None and _covers(self.ingest_offsets, self.ingest_end):
                self.ingest_done_at = instant
        elif event == "batch_committed" and entry.get("worker") == "project":
            self.project_commits.append((instant, {int(p): int(o) for p, o in entry.get("offsets", {}).items()}))

    def project_done_at(self, end: dict[int, int]) -> float | None:
        """When the projector commits together covered every offset of `end` (None: not yet)."""
        applied: dict[int, int] = {}
        for instant, offsets in self.project_commits:
            for partition, offset in offsets.items():
                applied[partition] = max(applied.get(partition, 0), offset)
            if _covers(applied, end):
                return instant
        return None


def _objects(line: str) -> list[dict[str, Any]]:
    """The JSON objects of one log line. Processes sharing the file can interleave a line and its newline
    (an unbuffered stderr writes them apart), so a line may hold two objects: `{...}{...}`."""
    found, index = [], line.find("{")
    while 0 <= index < len(line):
        try:
            entry, index = _decoder.raw_decode(line, index)
        except ValueError:
            break
        if isinstance(entry, dict):
            found.append(entry)
        index = line.find("{", index)
    return found


_decoder = json.JSONDecoder()


def _covers(applied: dict[int, int], end: dict[int, int]) -> bool:
    return all(applied.get(partition, 0) >= offset for partition, offset in end.items() if offset)


def _wait(condition: Callable[[], bool], timeout_s: float, what: str, processes: Sequence[subprocess.Popen],
          log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        dead = [process for process in processes if process.poll() is not None]
        if dead or time.monotonic() > deadline:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
            reason = (f"a worker process exited ({dead[0].returncode})" if dead
                      else f"timed out after {timeout_s:.0f} s")
            raise RuntimeError(f"{reason} while waiting for {what}; the workers' log ends:\n{tail}")
        time.sleep(WAIT_POLL_S)


def _start(command: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    # Line-buffered stderr (not PYTHONUNBUFFERED): each log line is one append, whole, in the shared file.
    env = {name: value for name, value in env.items() if name != "PYTHONUNBUFFERED"}
    with log_path.open("ab") as log:  # the child keeps its own descriptor
        return subprocess.Popen([sys.executable, "-m", "arledger.cli", *command], env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(processes: Sequence[subprocess.Popen]) -> None:
    """SIGTERM (the supervisor passes it on to its children), then SIGKILL of the whole session if stuck."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def _rate(count: int, seconds: float | None) -> float | None:
    return round(count / seconds, 1) if seconds and seconds > 0 else None


def _wait_ingested(settings: Settings, log: _Log, end: dict[int, int], timeout_s: float, workers: int,
                   processes: Sequence[subprocess.Popen], log_path: Path) -> tuple[float, str]:
    """When the ingest group had committed every offset of `end` (epoch seconds), and how that is known.
    The group's committed offsets say whether (asked once a second); the log's commit line says when.
    Raises IngestStalled when the committed offsets do not move for INGEST_STALL_S once the ingest is up."""
    from consumers.ingest import INGEST_GROUP_ID
    from consumers.topics import admin_client

    group, topic = settings.topic(INGEST_GROUP_ID), settings.topic(TOPIC_INBOUND)
    state = {"committed": -1, "progress_at": None, "asked_at": 0.0, "done_at": None}

    def ingested() -> bool:
        log.update()
        now = time.time()
        if log.started["ingest"] and state["progress_at"] is None:
            state["progress_at"] = min(log.started["ingest"])
        if now - state["asked_at"] < 1.0:
            return False
        state["asked_at"] = now
        try:
            offsets = admin.list_group_offsets(group).get(group, {})
        except Exception:  # the group's coordinator is loading: ask again
            return False
        committed = {p: min(offsets[TopicPartition(topic, p)].offset, o) for p, o in end.items()
                     if TopicPartition(topic, p) in offsets}
        total = sum(committed.values())
        if total > state["committed"]:
            state["committed"], state["progress_at"] = total, now
        if _covers(committed, end):
            state["done_at"] = now
            return True
        if state["progress_at"] is not None and now - state["progress_at"] > INGEST_STALL_S:
            raise IngestStalled(f"the ingest of 'run --workers {workers}' committed nothing for "
                                f"{INGEST_STALL_S:.0f} s with {sum(end.values()) - max(total, 0):,} of "
                                f"{sum(end.values()):,} records waiting")
        return False

    with admin_client(settings) as admin:
        _wait(ingested, timeout_s, f"{sum(end.values()):,} inbound records to be ingested", processes, log_path)
    deadline = time.monotonic() + COMMIT_LINE_WAIT_S  # the line is written once the worker saw the confirmation
    while log.ingest_done_at is None and time.monotonic() < deadline:
        time.sleep(0.05)
        log.update()
    if log.ingest_done_at is not None:
        return log.ingest_done_at, "the ingest's commit line in the workers' log"
    return state["done_at"], "the group's committed offsets, asked once a second (no commit line in the log)"


def one(base: Settings, home: Path, prefix: str, lines: Sequence[bytes], workers: int) -> dict[str, Any]:
    """The figures of one N (see the module docstring)."""
    from consumers.publisher import publish_lines
    from consumers.topics import ensure_topics
    from ledger.application import Ledger

    settings = replace(settings_for(base, home, prefix), partitions=SCALING_PARTITIONS)
    ensure_topics(settings)
    published = publish_lines(settings, lines)
    inbound_end: dict[int, int] = {}
    for item in published:
        inbound_end[item.partition] = max(inbound_end.get(item.partition, 0), item.offset + 1)
    timeout_s = max(WAIT_TIMEOUT_S_MIN, len(lines) / 100)
    log_path = home / "run.log"
    log = _Log(log_path, ingest_end=inbound_end)
    launched = time.time()
    supervisor = _start(["run", "--workers", str(workers), "--log-level", "info"], env_for(settings), log_path)
    try:
        ingest_done_at, ingest_done_from = _wait_ingested(settings, log, inbound_end, timeout_s, workers,
                                                          [supervisor], log_path)
        ledger = Ledger(settings.store_url)
        try:  # the ingest is over: what the store holds is final; wait for the relay to publish all of it
            _wait(ledger.relay_caught_up, timeout_s, "the relay", [supervisor], log_path)
        finally:
            ledger.close()
        ledger_end = end_offsets(settings, settings.topic(TOPIC_LEDGER))
        ledger_events = sum(ledger_end.values())

        def projected() -> bool:
            log.update()
            return log.project_done_at(ledger_end) is not None

        _wait(projected, timeout_s, f"{ledger_events:,} ledger events in the projections", [supervisor], log_path)
    finally:
        _stop([supervisor])
    ingest_start = min(log.started["ingest"])
    ingest_s = ingest_done_at - ingest_start
    pipeline_s = log.project_done_at(ledger_end) - ingest_start
    projector = _projector_alone(settings, home / "project-alone", workers, ledger_end, timeout_s)
    return {
        "workers": workers, "records": len(lines), "ledger_events": ledger_events,
        "startup_s": round(ingest_start - launched, 2),
        "ingest_seconds": round(ingest_s, 3), "ingest_records_per_s": _rate(len(lines), ingest_s),
        "ingest_records_handled": log.ingest_handled, "ingest_done_from": ingest_done_from,
        "commits_lost_to_rebalance": log.lost_commits,
        "pipeline_seconds": round(pipeline_s, 3), "pipeline_events_per_s": _rate(ledger_events, pipeline_s),
        **projector,
    }


def _projector_alone(settings: Settings, home: Path, workers: int, ledger_end: dict[int, int],
                     timeout_s: float) -> dict[str, Any]:
    home.mkdir(parents=True, exist_ok=True)
    alone = replace(settings, home=home)
    log_path = home / "project.log"
    log = _Log(log_path)
    launched = time.time()
    shards = [_start(["run", "project", "--log-level", "info"], {**env_for(alone), "ARLEDGER_SHARD": f"{i}/{workers}"},
                     log_path) for i in range(workers)]
    try:
        def projected() -> bool:
            log.update()
            return log.project_done_at(ledger_end) is not None

        _wait(projected, timeout_s, f"{sum(ledger_end.values()):,} ledger events folded by {workers} shard(s)",
              shards, log_path)
    finally:
        _stop(shards)
    start = min(log.started["project"])
    seconds = log.project_done_at(ledger_end) - start
    events = sum(ledger_end.values())
    return {"projector_seconds": round(seconds, 3),
            "projector_events_per_s": _rate(events, seconds),
            "projector_startup_s": round(start - launched, 2),
            "projector_shards_started_within_s": round(max(log.started["project"]) - start, 2)}


def scaling(base: Settings, home: Path, prefix: str, lines: Sequence[bytes],
            counts: Sequence[int], say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Every N of `counts`, then each figure's ratio to the first N (1)."""
    by_workers: dict[str, dict[str, Any]] = {}
    for workers in counts:
        say(f"workers: arledger run --workers {workers} on {SCALING_PARTITIONS} partitions ...")
        try:
            figures = one(base, home / f"w{workers}", f"{prefix}w{workers}.", lines, workers)
        except IngestStalled as stall:
            say(f"workers: {stall}; once more on fresh topics")
            figures = one(base, home / f"w{workers}-again", f"{prefix}w{workers}-again.", lines, workers)
            figures["repeated_after"] = f"{stall}: {STALL_NOTE}"
        by_workers[str(workers)] = figures
        say(f"workers: {workers}: ingest {figures['ingest_records_per_s'] or 0:,.0f} records/s, projector "
            f"{figures['projector_events_per_s'] or 0:,.0f} events/s")
    first = by_workers[str(counts[0])]
    for figures in by_workers.values():
        for name in ("ingest_records_per_s", "projector_events_per_s", "pipeline_events_per_s"):
            ratio_name = name.replace("_per_s", "_ratio_to_first")
            figures[ratio_name] = (round(figures[name] / first[name], 3)
                                   if figures.get(name) and first.get(name) else None)
    return {
        "partitions": SCALING_PARTITIONS, "counts": list(counts), "cores": os.cpu_count(),
        "store": "SQLite",  # settings_for: one file per N, shared by its N ingest processes (one writer at a time)
        "records": len(lines), "by_workers": by_workers,
        "note": "each N on a fresh topic prefix and home (same records from the beginning); ingest timed in "
                "'arledger run --workers N' from the first ingest process's start to the commit of the last "
                "inbound offset; projector timed with N shard processes alone over the complete ar.ledger of "
                "that run; pipeline = the same run until the projections held every ledger event. On "
                f"{os.cpu_count()} cores the processes share the CPUs, and the N ingest processes share one SQLite "
                "file, whose writes take turns on its lock",
    }
