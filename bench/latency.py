"""End-to-end latency: an inbound record produced → its effect in `customer_balances` of the projection.

The workers run as `arledger run` in a child process, as in production. The
benchmark offers records at a fixed rate and notes each one's send time
(wall clock). Afterwards it finds, for each record, its first event on
ar.ledger (by envelope id) and the first projector commit whose stored
offsets pass that event (the projector logs each commit with its offsets and
a UTC timestamp): from that instant the row is in `customer_balances` of the
projection file, in the same transaction as the offsets (docs/contract.md §5). It also
notes when the published snapshot — what `report`, `sql` and other processes
read — first showed it, by polling the snapshot every 100 ms.
"""

from __future__ import annotations

import datetime as dt
import json
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
from kafka import TopicPartition

from arledger.settings import TOPIC_INBOUND, TOPIC_LEDGER, Settings
from bench.stages import end_offsets, env_for
from consumers import clients
from consumers.publisher import probe, snapshot_offsets

SNAPSHOT_POLL_S = 0.1
SETTLE_TIMEOUT_S_MIN = 120.0
WORKERS_STOP_TIMEOUT_S = 60.0


class _LedgerProbe(msgspec.Struct):
    envelope_id: str = ""


def _percentile(values: Sequence[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return round(ordered[index], 1)


def _summary(latencies_ms: Sequence[float]) -> dict[str, Any]:
    return {"p50_ms": _percentile(latencies_ms, 0.50), "p99_ms": _percentile(latencies_ms, 0.99),
            "max_ms": round(max(latencies_ms), 1) if latencies_ms else None,
            "mean_ms": round(statistics.fmean(latencies_ms), 1) if latencies_ms else None,
            "samples": len(latencies_ms)}


class _SnapshotWatcher(threading.Thread):
    """Polls the published snapshot's offsets; keeps (wall time, offsets) whenever they change."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        last: dict[int, int] | None = None
        while not self.stopping.is_set():
            try:
                offsets = snapshot_offsets(self.settings)
            except Exception:  # the snapshot is being replaced (rename): read it on the next poll
                offsets = last
            if offsets is not None and offsets != last:
                self.samples.append((time.time(), offsets))
                last = offsets
            self.stopping.wait(SNAPSHOT_POLL_S)


def _wait(condition, timeout_s: float, what: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process.poll() is not None:
            raise RuntimeError(f"the workers exited ({process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


def _caught_up(settings: Settings, sent_end: dict[int, int]) -> bool:
    """The ingest group committed past every sent record and the snapshot reflects all of ar.ledger."""
    from consumers.ingest import INGEST_GROUP_ID
    from consumers.topics import admin_client

    group = settings.topic(INGEST_GROUP_ID)
    topic = settings.topic(TOPIC_INBOUND)
    try:
        with admin_client(settings) as admin:
            committed = admin.list_group_offsets(group).get(group, {})
    except Exception:  # coordinator loading: not yet
        return False
    for partition, offset in sent_end.items():
        done = committed.get(TopicPartition(topic, partition))
        if done is None or done.offset < offset:
            return False
    ledger_end = end_offsets(settings, settings.topic(TOPIC_LEDGER))
    projected = snapshot_offsets(settings)
    return all(projected.get(p, 0) >= o for p, o in ledger_end.items() if o)


def end_to_end(settings: Settings, lines: Sequence[bytes], rate: int, seconds: float,
               log_path: Path) -> dict[str, Any]:
    """p50/p99 latency of `rate` records/s offered for `seconds`, after a warm-up of the registrations."""
    from consumers.topics import ensure_topics

    ensure_topics(settings)
    warmup = []
    for line in lines:
        if b'"customer.registered"' not in line:
            break
        warmup.append(line)
    measured = list(lines[len(warmup):len(warmup) + int(rate * seconds)])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "arledger.cli", "run"], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, env=env_for(settings))
    producer = clients.producer(settings, "arledger-bench-e2e")
    topic = settings.topic(TOPIC_INBOUND)
    watcher = _SnapshotWatcher(settings)
    try:
        sent_end: dict[int, int] = {}

        inbound_at: dict[str, tuple[int, int]] = {}

        def send_all(batch: Sequence[bytes], paced: bool) -> tuple[dict[str, float], float]:
            sent_at: dict[str, float] = {}
            futures = []
            started = time.perf_counter()
            for index, line in enumerate(batch):
                if paced:
                    delay = started + index / rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)
                envelope_id, customer_id = probe(line)
                if envelope_id is not None:
                    sent_at.setdefault(envelope_id, time.time())
                futures.append((envelope_id, producer.send(
                    topic, key=customer_id.encode() if customer_id else None, value=line)))
            producer.flush()
            elapsed = time.perf_counter() - started
            for envelope_id, future in futures:
                metadata = future.get(timeout=60)
                sent_end[metadata.partition] = max(sent_end.get(metadata.partition, 0), metadata.offset + 1)
                if envelope_id is not None:
                    inbound_at.setdefault(envelope_id, (metadata.partition, metadata.offset))
            return sent_at, elapsed

        send_all(warmup, paced=False)
        _wait(lambda: _caught_up(settings, sent_end), SETTLE_TIMEOUT_S_MIN, "the warm-up records", process)
        watcher.start()
        sent_at, offered_s = send_all(measured, paced=True)
        settle_started = time.monotonic()
        _wait(lambda: _caught_up(settings, sent_end), max(SETTLE_TIMEOUT_S_MIN, 20 * seconds),
              "the measured records", process)
        settle_s = time.monotonic() - settle_started
    finally:
        watcher.stopping.set()
        producer.close(timeout=10)
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=WORKERS_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    first_event = _first_ledger_event(settings, set(sent_at))
    commits = _commits(log_path, "project")
    ingest_commits = _commits(log_path, "ingest")
    committed, visible, ingested = [], [], []
    for envelope_id, (partition, offset) in first_event.items():
        if envelope_id in inbound_at:
            ingest_time = _first_passing(ingest_commits, *inbound_at[envelope_id])
            if ingest_time is not None:
                ingested.append((ingest_time - sent_at[envelope_id]) * 1000)
        commit_time = _first_passing(commits, partition, offset)
        if commit_time is not None:
            committed.append((commit_time - sent_at[envelope_id]) * 1000)
        snapshot_time = _first_passing(watcher.samples, partition, offset)
        if snapshot_time is not None:
            visible.append((snapshot_time - sent_at[envelope_id]) * 1000)
    return {
        "offered_rate_per_s": rate, "offered_records": len(measured),
        "achieved_rate_per_s": round(len(measured) / offered_s, 1) if offered_s else None,
        "records_with_ledger_events": len(first_event), "warmup_records": len(warmup),
        "settle_after_last_send_s": round(settle_s, 2),
        "committed": _summary(committed),
        "snapshot_visible": _summary(visible),
        "ingest_committed": _summary(ingested),
        "note": "committed = the projector's transaction holding the record's first ledger event (and its "
                "offsets) committed: from then it is in customer_balances of the projection; snapshot_visible = "
                "first seen in the published snapshot other processes read (polled every 100 ms); "
                "ingest_committed = the ingest worker's checkpoint holding the inbound record committed (a part "
                "of the whole)",
    }


def _first_ledger_event(settings: Settings, wanted: set[str]) -> dict[str, tuple[int, int]]:
    """envelope id → (partition, offset) of its first record on ar.ledger."""
    topic = settings.topic(TOPIC_LEDGER)
    end = end_offsets(settings, topic)
    consumer = clients.assigned_consumer(settings, "arledger-bench-e2e-read", 5000)
    decoder = msgspec.json.Decoder(_LedgerProbe)
    found: dict[str, tuple[int, int]] = {}
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(end) if end[p]]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        remaining = {tp.partition: end[tp.partition] for tp in partitions}
        deadline = time.monotonic() + 120
        while remaining and time.monotonic() < deadline:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    envelope_id = decoder.decode(record.value).envelope_id
                    if envelope_id in wanted and envelope_id not in found:
                        found[envelope_id] = (tp.partition, record.offset)
                if records and records[-1].offset + 1 >= remaining.get(tp.partition, 0):
                    remaining.pop(tp.partition, None)
    finally:
        consumer.close()
    return found


def _commits(log_path: Path, worker: str) -> list[tuple[float, dict[int, int]]]:
    """(wall time, {partition: next offset}) of every commit of `worker`, from the workers' JSON log."""
    commits = []
    for line in log_path.read_text(errors="replace").splitlines():
        if '"batch_committed"' not in line or f'"{worker}"' not in line:
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") != "batch_committed" or entry.get("worker") != worker:
            continue
        instant = dt.datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
        commits.append((instant, {int(p): int(o) for p, o in entry.get("offsets", {}).items()}))
    return commits


def _first_passing(samples: Sequence[tuple[float, dict[int, int]]], partition: int, offset: int) -> float | None:
    """The time of the first sample whose offset for `partition` is past `offset`."""
    for instant, offsets in samples:
        if offsets.get(partition, 0) > offset:
            return instant
    return None
