"""The measured stages and their baselines. Each returns a flat dict of figures (JSON-ready).

Every stage works on the topics and files of one benchmark run (a `Settings`
with a topic prefix and a home of its own) and measures wall-clock time with
`time.perf_counter` around the work only, never around set-up.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import cProfile
import io
import os
import pstats
import random
import re
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import msgspec
from kafka import KafkaProducer, TopicPartition

from arledger.settings import (
    INGEST_BATCH_RECORDS_MAX,
    PROJECT_BATCH_EVENTS_MAX,
    TOPIC_LEDGER,
    Settings,
)
from consumers import clients
from consumers.publisher import end_offsets, probe
from ledger.application import InboundRecord, Ledger
from projections import schema
from projections.fold import apply_batch, stored_offsets

RAW_POLL_RECORDS_MAX = 5_000  # the baseline: assign + poll with max_poll_records=5000
DRAIN_STALL_TIMEOUT_S = 60.0  # a consumer that gets nothing for this long below the end offsets: broker trouble
PROFILE_LINES = 12



def _drain(step: Callable[[], int], finished: Callable[[int], bool], what: str) -> tuple[int, float]:
    """Call `step` (it returns how many it handled) until `finished(total handled)`; (handled, seconds).
    Raises when no step handles anything for DRAIN_STALL_TIMEOUT_S: broker trouble, not a measurement."""
    handled = 0
    stall = time.monotonic()
    started = time.perf_counter()
    while not finished(handled):
        count = step()
        handled += count
        if count:
            stall = time.monotonic()
        elif time.monotonic() - stall > DRAIN_STALL_TIMEOUT_S:
            raise RuntimeError(f"{what} stalled at {handled}")
    return handled, time.perf_counter() - started


def _rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1) if seconds > 0 else 0.0


def inbound_records(lines: Sequence[bytes]) -> list[InboundRecord]:
    """The lines as the ingest worker sees them: value plus the Kafka key (the customer id)."""
    records = []
    for line in lines:
        _, customer_id = probe(line)
        records.append(InboundRecord(line, customer_id.encode() if customer_id is not None else None))
    return records


# -- Ingest -------------------------------------------------------------------------------------


def ingest_ledger(ledger: Ledger, records: Sequence[InboundRecord]) -> dict[str, Any]:
    """Inbound records/s through `Ledger.process_batch` in batches of the ingest worker's size, on SQLite."""
    outcomes: dict[str, int] = {}
    events = 0
    notifications_before = ledger.max_notification_id()
    started = time.perf_counter()
    for start in range(0, len(records), INGEST_BATCH_RECORDS_MAX):
        for outcome in ledger.process_batch(records[start:start + INGEST_BATCH_RECORDS_MAX]):
            outcomes[outcome.status] = outcomes.get(outcome.status, 0) + 1
            events += len(outcome.events)
    seconds = time.perf_counter() - started
    rows = ledger.max_notification_id() - notifications_before
    return {"records": len(records), "seconds": round(seconds, 3), "records_per_s": _rate(len(records), seconds),
            "events": events, "events_per_s": _rate(events, seconds), "stored_rows": rows,
            "stored_rows_per_record": round(rows / len(records), 3) if records else 0.0,
            "batch_records": INGEST_BATCH_RECORDS_MAX, "outcomes": outcomes}


def store_state_bytes_mean(ledger: Ledger) -> int:
    """Mean size of a stored event's state in the ledger's SQLite store (for the raw-append baseline)."""
    datastore = getattr(ledger.recorder, "datastore", None)
    table = getattr(ledger.recorder, "events_table_name", None)
    if datastore is None or table is None:
        return 400
    with datastore.transaction(commit=False) as cursor:
        cursor.execute(f"SELECT avg(length(state)) FROM {table}")
        value = cursor.fetchone()[0]
    return int(value or 400)


def store_append(store_url: str, rows_total: int, rows_per_batch: int, state_bytes: int,
                 streams: int) -> dict[str, Any]:
    """Baseline: the event store's raw append rate — `recorder.insert_events` of ready stored events,
    `rows_per_batch` per transaction (what one ingest batch writes), no domain logic, no encoding."""
    from eventsourcing.persistence import StoredEvent

    ledger = Ledger(store_url)
    try:
        rng = random.Random(7)
        originators = [uuid.UUID(int=rng.getrandbits(128)) for _ in range(max(1, streams))]
        versions = [0] * len(originators)
        state = (b'{"data":"' + b"x" * max(0, state_bytes - 12) + b'"}')[:max(state_bytes, 12)]
        batches = []
        made = 0
        while made < rows_total:
            batch = []
            for _ in range(min(rows_per_batch, rows_total - made)):
                index = rng.randrange(len(originators))
                versions[index] += 1
                batch.append(StoredEvent(originators[index], versions[index], "bench.raw:Appended", state))
            batches.append(batch)
            made += len(batch)
        started = time.perf_counter()
        for batch in batches:
            ledger.recorder.insert_events(batch)
        seconds = time.perf_counter() - started
    finally:
        ledger.close()
    return {"rows": rows_total, "rows_per_batch": rows_per_batch, "state_bytes": state_bytes,
            "seconds": round(seconds, 3), "rows_per_s": _rate(rows_total, seconds)}


def ingest_kafka(settings: Settings, store_url: str, lines: Sequence[bytes]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inbound records/s through the ingest worker: ar.inbound (group consumer) → ledger → commit.

    The worker joins its group on the empty topic first; then the lines are produced as `arledger ingest`
    does (idempotent, acks=all: the produce rate is returned as a baseline); then the worker's time to
    take every record through its checkpoints is measured. Returns (ingest figures, produce figures)."""
    from consumers.ingest import IngestWorker
    from consumers.publisher import publish_lines

    ledger = Ledger(store_url)
    worker = IngestWorker(settings, ledger)
    try:
        joined = time.perf_counter()
        while not worker.consumer.assignment():
            if worker.run_once(100):
                raise RuntimeError(f"{worker.topic} is not empty: the benchmark needs a fresh topic")
            if time.perf_counter() - joined > DRAIN_STALL_TIMEOUT_S:
                raise RuntimeError("the ingest worker did not join its consumer group")
        join_s = time.perf_counter() - joined
        produce_started = time.perf_counter()
        published = publish_lines(settings, lines)
        produce_s = time.perf_counter() - produce_started
        handled, seconds = _drain(lambda: worker.run_once(200), lambda done: done >= len(published),
                                  f"ingest worker ({len(published)} records)")
    finally:
        worker.close()
        ledger.close()
    return ({"records": handled, "seconds": round(seconds, 3), "records_per_s": _rate(handled, seconds),
             "group_join_s": round(join_s, 3), "batch_records": INGEST_BATCH_RECORDS_MAX,
             "note": "the worker joined its group before the records were produced; timed from the first poll "
                     "after they were all acknowledged"},
            {"records": len(published), "seconds": round(produce_s, 3),
             "records_per_s": _rate(len(published), produce_s),
             "note": "arledger ingest's producer: idempotent, acks=all, linger 5 ms"})


def store_ingest(records: Sequence[InboundRecord], sqlite_url: str) -> dict[str, Any]:
    """`Ledger.process_batch` (batches of 2,000) over the same records on SQLite and then on PostgreSQL,
    each into an empty store: the production store's ingest rate next to the default one's.

    PostgreSQL is a throwaway local server from the system's binaries (as the integration tests start it),
    durable (fsync on, as in production; SQLite's WAL commits are synced too); without the binaries its
    half is skipped, with the reason."""
    ledger = Ledger(sqlite_url)
    try:
        sqlite = ingest_ledger(ledger, records)
    finally:
        ledger.close()
    figures: dict[str, Any] = {"records": len(records), "batch_records": INGEST_BATCH_RECORDS_MAX,
                               "sqlite": _store_figures(sqlite)}
    try:
        from tests.integration.postgres_server import PostgresServer, server_bin_dir, server_folder
    except ImportError as error:  # the source tree without its tests
        figures["postgresql"] = {"skipped": f"the PostgreSQL test helper is not available: {error}"}
        return figures
    bindir = server_bin_dir()
    if bindir is None:
        figures["postgresql"] = {"skipped": "PostgreSQL server binaries not found (apt-get install postgresql, "
                                            "or 'make system-deps')"}
        return figures
    root = server_folder("arledger-bench-pg-")
    server = PostgresServer(root / "cluster", durable=True)
    try:
        server.start()
        ledger = Ledger(server.create_database("bench"))
        try:
            postgresql = ingest_ledger(ledger, records)
        finally:
            ledger.close()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
    figures["postgresql"] = {**_store_figures(postgresql), "server": f"PostgreSQL {bindir.parent.name}, local, "
                                                                     "fsync on, over TCP on 127.0.0.1"}
    figures["ratio_postgresql_to_sqlite"] = (round(postgresql["records_per_s"] / sqlite["records_per_s"], 3)
                                             if sqlite["records_per_s"] else None)
    return figures


def _store_figures(ingest: dict[str, Any]) -> dict[str, Any]:
    return {key: ingest[key] for key in ("records", "seconds", "records_per_s", "events", "events_per_s",
                                         "stored_rows", "outcomes")}


# -- Credit decisions ---------------------------------------------------------------------------


def decision_latency(settings: Settings, orders_per_s: float, background_per_s: float, seconds: float,
                     warmup_s: float, customers: int) -> dict[str, Any]:
    """`consumers.credit_client.measure_decision_latency` (issue 6): order.placed produced → its decision
    consumed, p50/p99, under a steady background of other events; `arledger run ingest` and `arledger run
    relay project` as two processes on a topic prefix and home of their own."""
    from consumers.credit_client import DecisionTimeout, measure_decision_latency

    def measure(settings: Settings) -> dict[str, Any]:
        return measure_decision_latency(settings, orders_per_s=orders_per_s, background_events_per_s=background_per_s,
                                        duration_s=seconds, warmup_s=warmup_s, customers=customers)

    try:
        figures = measure(settings)
    except DecisionTimeout as timeout:  # e.g. the ingest consumer stalled after joining (see bench.scaling)
        again = settings_for(settings, settings.home / "again", settings.topic_prefix + "again.")
        figures = measure(again)
        figures["repeated_after"] = repeat_reason(str(timeout))
    if not figures.get("measured"):
        raise RuntimeError(f"no decision was measured: {figures}")
    for name in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        if figures.get(name) is not None:
            figures[name] = round(figures[name], 1)
    return {**figures, "note": "latency = order.placed produced (just before send) → its ar.decisions record "
                               "consumed by the same client; nearest-rank percentiles; the first warmup_s seconds "
                               "are not counted"}


def repeat_reason(timeout: str) -> str:
    """Why the decision latency was measured again, from the first attempt's DecisionTimeout message."""
    first = timeout.splitlines()[0].split("; is 'arledger run'")[0]
    workers = "every worker still running" if "all running" in timeout else "a worker had exited"
    return (f"the first attempt got {first} ({workers}): the symptom of the ingest group stall described in "
            "bench/scaling.py (IngestStalled)")


# -- Relay --------------------------------------------------------------------------------------


def relay(settings: Settings, ledger: Ledger) -> dict[str, Any]:
    """Ledger events/s from the event store's notification log to ar.ledger (chained, acknowledged)."""
    from consumers.relay import Relay

    worker = Relay(settings, ledger)
    try:
        events = 0
        started = time.perf_counter()
        while True:
            count = worker.run_once()
            if not count:
                break
            events += count
        seconds = time.perf_counter() - started
    finally:
        worker.close()
    return {"events": events, "seconds": round(seconds, 3), "events_per_s": _rate(events, seconds)}


def raw_produce(target: Settings, values: Sequence[bytes]) -> dict[str, Any]:
    """Baseline of the relay: kafka-python producing the very records the relay published (its values,
    keyed by customer as the relay keys them) with the relay's producer settings, to the ar.ledger topic of
    `target` (another prefix: the same partitions and configuration), every acknowledgement awaited; no
    store read, no hashing."""
    from consumers.topics import ensure_topics

    ensure_topics(target)
    topic = target.topic(TOPIC_LEDGER)
    keys = [msgspec.json.decode(value, type=_Keyed).customer_id.encode() for value in values]
    producer = clients.producer(target, "arledger-bench-produce")
    try:
        started = time.perf_counter()
        futures = [producer.send(topic, key=key, value=value) for key, value in zip(keys, values)]
        producer.flush()
        for future in futures:
            future.get(timeout=60)
        seconds = time.perf_counter() - started
    finally:
        producer.close(timeout=10)
    return {"records": len(values), "seconds": round(seconds, 3), "records_per_s": _rate(len(values), seconds),
            "note": "the relay's own producer settings (idempotent, acks=all); the relay's records as published"}


class _Keyed(msgspec.Struct):
    customer_id: str


# -- Sustained rate through the default `arledger run` -----------------------------------------------

SUSTAINED_P99_MS_MAX = 1_000.0


def sustained(settings: Settings, home: Path, prefix: str, lines: Sequence[bytes], rates: Sequence[int],
              seconds: float, say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Steps the offered rate through the default `arledger run` (bench.latency.end_to_end: a fresh home
    and topics per step), lowest first, until a step's end-to-end p99 (committed in the projection) is
    1 s or more. Reports the highest rate that stayed under, and the p99 at 2,000 records/s."""
    from bench.latency import end_to_end

    steps: dict[str, Any] = {}
    highest = None
    for rate in rates:
        say(f"sustained: {rate:,} records/s for {seconds:g} s")
        step = settings_for(settings, home / f"rate-{rate}", f"{prefix}r{rate}.")
        try:
            figures = end_to_end(step, lines, rate, seconds, home / f"rate-{rate}" / "workers.log")
        except Exception as error:  # noqa: BLE001 - a step that cannot keep up may time out settling
            steps[str(rate)] = {"failed": f"{type(error).__name__}: {error}"}
            break
        p99 = (figures.get("committed") or {}).get("p99_ms")
        achieved = figures.get("achieved_rate_per_s") or 0
        steps[str(rate)] = {"p99_ms": p99, "p50_ms": (figures.get("committed") or {}).get("p50_ms"),
                            "achieved_rate_per_s": achieved,
                            "ingest_committed_p99_ms": (figures.get("ingest_committed") or {}).get("p99_ms"),
                            "settle_after_last_send_s": figures.get("settle_after_last_send_s")}
        if p99 is None or p99 >= SUSTAINED_P99_MS_MAX or achieved < 0.9 * rate:
            break
        highest = rate
    at_2000 = (steps.get("2000") or {}).get("p99_ms")
    return {"highest_rate_p99_under_1s": highest, "p99_ms_at_2000": at_2000, "steps": steps,
            "seconds_per_step": seconds, "layout": os.environ.get("ARLEDGER_RUN_LAYOUT") or "threads (default)",
            "note": "each step: the default `arledger run` as a child process on topics and a home of its own; "
                    "a step counts when its end-to-end p99 (inbound produced → committed in the projection) is "
                    "under 1 s and the producer achieved ≥ 90 % of the offered rate; the steps stop at the "
                    "first that misses"}


# -- Consuming: the baselines -------------------------------------------------------------------


def raw_consume(settings: Settings, topic: str, keep: bool = False) -> tuple[dict[str, Any], list[bytes]]:
    """Baseline: kafka-python's own consume rate of a whole topic (assign, seek to the start,
    poll max_poll_records=5000, the projector's fetch sizes); nothing done with the records."""
    end = end_offsets(settings, topic)
    total = sum(end.values())
    consumer = clients.assigned_consumer(settings, "arledger-bench-raw", RAW_POLL_RECORDS_MAX)
    values: list[bytes] = []
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(end)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        def poll() -> int:
            polled = consumer.poll(timeout_ms=500, max_records=RAW_POLL_RECORDS_MAX)
            for records in polled.values():
                if keep:
                    values.extend(record.value for record in records)
            return sum(len(records) for records in polled.values())

        count, seconds = _drain(poll, lambda done: done >= total, f"raw consume of {topic} ({total} records)")
    finally:
        consumer.close()
    return {"topic": topic, "records": count, "seconds": round(seconds, 3),
            "records_per_s": _rate(count, seconds), "max_poll_records": RAW_POLL_RECORDS_MAX}, values


def consumer_performance(settings: Settings, topic: str, messages: int) -> dict[str, Any]:
    """Baseline: Kafka's own `org.apache.kafka.tools.ConsumerPerformance` (Java) on the same topic."""
    from consumers.broker import check_kafka_jars, find_java

    lib = check_kafka_jars()
    command = [find_java(), "-Xmx512m", "-cp", f"{lib}/*", "org.apache.kafka.tools.ConsumerPerformance",
               "--bootstrap-server", settings.kafka_bootstrap, "--topic", topic, "--messages", str(messages),
               "--timeout", "30000", "--group", f"arledger-bench-perf-{uuid.uuid4().hex[:8]}"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    header = next((line for line in result.stdout.splitlines() if line.startswith("start.time")), None)
    if result.returncode != 0 or header is None:
        raise RuntimeError(f"ConsumerPerformance failed ({result.returncode}): {result.stderr[-500:]}")
    values_line = result.stdout.splitlines()[result.stdout.splitlines().index(header) + 1]
    figures = dict(zip((name.strip() for name in header.split(",")), (value.strip() for value in values_line.split(","))))
    return {"topic": topic, "records": int(figures["data.consumed.in.nMsg"]),
            "records_per_s": float(figures["fetch.nMsg.sec"]), "mb_per_s": float(figures["fetch.MB.sec"]),
            "rebalance_ms": int(figures["rebalance.time.ms"]), "fetch_ms": int(figures["fetch.time.ms"]),
            "note": "fetch.nMsg.sec: records/s excluding the group join, as printed by the tool"}


# -- Projection ---------------------------------------------------------------------------------


def fold(values: Sequence[bytes], path: Path, topic: str) -> dict[str, Any]:
    """Events/s of the set-based fold alone (`apply_batch`, 50,000-event batches) into a new DuckDB file."""
    connection = schema.connect(str(path))
    schema.create_schema(connection)
    try:
        started = time.perf_counter()
        for start in range(0, len(values), PROJECT_BATCH_EVENTS_MAX):
            batch = values[start:start + PROJECT_BATCH_EVENTS_MAX]
            apply_batch(connection, batch, {(topic, 0): start + len(batch)}, staging_dir=path.parent)
        seconds = time.perf_counter() - started
        rows = connection.execute("SELECT count(*) FROM ledger_events").fetchone()[0]
    finally:
        connection.close()
    return {"events": len(values), "rows": rows, "seconds": round(seconds, 3),
            "events_per_s": _rate(len(values), seconds), "batch_events": PROJECT_BATCH_EVENTS_MAX}


def projector(settings: Settings, path: Path) -> dict[str, Any]:
    """Events/s of the projector on Kafka (poll, fold, offsets in the same transaction, snapshots)."""
    from consumers.project import Projector

    topic = settings.topic(TOPIC_LEDGER)
    end = end_offsets(settings, topic)
    total = sum(end.values())
    worker = Projector(settings, path=path, snapshot_path=path.with_name(path.stem + ".snapshot.duckdb"))
    try:
        def caught_up(_: int) -> bool:
            applied = stored_offsets(worker.connection, topic)
            return all(applied.get(p, 0) >= o for p, o in end.items() if o)

        events, seconds = _drain(lambda: worker.run_once(200), caught_up, f"projector ({total} events)")
    finally:
        worker.close()
    return {"events": events, "seconds": round(seconds, 3), "events_per_s": _rate(events, seconds),
            "batch_events": PROJECT_BATCH_EVENTS_MAX}


NAIVE_STATEMENTS = {
    "item.opened": "INSERT INTO items VALUES (?, ?, ?, ?, NULL, ?, ?, ?, false, ?, ?)",
    "movement": "UPDATE items SET open_amount = open_amount + ? "
                "WHERE customer_id = ? AND invoice_id = ? AND installment = ?",
    "other": "INSERT INTO ledger_events (position, customer_id, kind, recorded_at, data) VALUES (?, ?, ?, ?, ?)",
}
_MOVEMENT_SIGN = {"cash.allocated": -1, "credit_note.applied": -1, "item.written_off": -1, "allocation.reversed": 1}


def naive_projector(values: Sequence[bytes], path: Path) -> dict[str, Any]:
    """Baseline: a row-by-row projector — one SQL statement (one round trip, autocommit) per event."""
    connection = schema.connect(str(path))
    schema.create_schema(connection)
    decoder = msgspec.json.Decoder()
    try:
        started = time.perf_counter()
        for value in values:
            record = decoder.decode(value)
            data, kind = record["data"], record["kind"]
            if kind == "item.opened":
                connection.execute(NAIVE_STATEMENTS["item.opened"], [
                    record["customer_id"], data["invoice_id"], data["installment"], data["amount"],
                    data["issued_on"], data["due_on"], data["amount"], record["recorded_at"], record["position"]])
            elif kind in _MOVEMENT_SIGN:
                connection.execute(NAIVE_STATEMENTS["movement"], [
                    _MOVEMENT_SIGN[kind] * data["amount"], record["customer_id"], data["invoice_id"],
                    data["installment"]])
            else:
                connection.execute(NAIVE_STATEMENTS["other"], [
                    record["position"], record["customer_id"], kind, record["recorded_at"],
                    msgspec.json.encode(data).decode()])
        seconds = time.perf_counter() - started
    finally:
        connection.close()
    return {"events": len(values), "seconds": round(seconds, 3), "events_per_s": _rate(len(values), seconds),
            "note": "one statement per event in autocommit: INSERT for opened items and other events, "
                    "UPDATE by key for item movements"}


# -- Rebuild ------------------------------------------------------------------------------------


def fill_rebuild_topic(settings: Settings, values: Sequence[bytes], events_min: int) -> dict[str, Any]:
    """Write at least `events_min` ledger records to `settings`' ar.ledger: the real ones, then copies under
    other customer ids (`C0001~1`...) with positions shifted past the last: real shapes, unique keys."""
    topic = settings.topic(TOPIC_LEDGER)
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks=1, enable_idempotence=False,
                             linger_ms=20, batch_size=1 << 20,
                             client_id="arledger-bench-fill")
    decoder = msgspec.json.Decoder()
    encoder = msgspec.json.Encoder()
    decoded = [decoder.decode(value) for value in values]
    last_position = max((record["position"] for record in decoded), default=0)
    written = 0
    copy = 0
    started = time.perf_counter()
    try:
        while written < events_min and decoded:
            for record in decoded:
                if copy:
                    record = dict(record, customer_id=f"{record['customer_id']}~{copy}",
                                  position=record["position"] + copy * last_position)
                producer.send(topic, key=record["customer_id"].encode(), value=encoder.encode(record))
                written += 1
            copy += 1
            producer.flush()
    finally:
        producer.close(timeout=30)
    return {"events": written, "copies": copy, "seconds": round(time.perf_counter() - started, 3)}


def rebuild(settings: Settings, target: Path, from_store: bool) -> dict[str, Any]:
    """Events/s of a full rebuild (`consumers.rebuild.build`) into a scratch file."""
    from consumers.rebuild import build, wal_path

    try:
        result = build(settings, target, from_store=from_store, catch_up=False)
    finally:
        for path in (target, wal_path(target)):
            path.unlink(missing_ok=True)
    return {"source": "store" if from_store else "ledger", "events": result.stats.records,
            "seconds": round(result.stats.duration_s, 3), "events_per_s": round(result.stats.events_per_s, 1)}


# -- Aging over synthetic open items ------------------------------------------------------------


def build_aging_file(path: Path, items: int, as_of, seed: int = 11) -> dict[str, Any]:
    """A read-model file with `items` open items (and their movements) made directly in DuckDB:
    one customer per 20 items, three currencies, due dates spread over 400 days, a third of the
    items partly paid, some unapplied cash."""
    path.unlink(missing_ok=True)
    connection = schema.connect(str(path))
    schema.create_schema(connection)
    customers = max(10, items // 20)
    try:
        params = {"customers": customers, "items": items, "as_of": as_of, "seed": seed}
        connection.execute("""
            INSERT INTO customers
            SELECT printf('C%07d', i), 'Customer ' || i,
                   CASE WHEN i % 10 < 7 THEN 'EUR' WHEN i % 10 < 9 THEN 'USD' ELSE 'GBP' END,
                   'sales.' || (i % 7), 30, DATE '2020-01-01', TIMESTAMPTZ '2020-01-01 00:00:00+00', i
            FROM range($customers) t(i)""", {k: params[k] for k in ("customers",)})
        connection.execute("""
            INSERT INTO items
            SELECT printf('C%07d', i % $customers), printf('INV-%09d', i), 1, 1000 + (i * 7919) % 2000000,
                   CASE WHEN (i % $customers) % 10 < 7 THEN 'EUR' WHEN (i % $customers) % 10 < 9 THEN 'USD'
                        ELSE 'GBP' END,
                   $as_of::DATE - ((i * 104729) % 400)::INTEGER, $as_of::DATE - ((i * 104729) % 400)::INTEGER + 30,
                   1000 + (i * 7919) % 2000000, false, TIMESTAMPTZ '2020-01-01 00:00:00+00', i
            FROM range($items) t(i)""", {k: params[k] for k in ("customers", "items", "as_of")})
        connection.execute("""
            INSERT INTO item_movements
            SELECT position, customer_id, invoice_id, installment, 'opened', amount, issued_on, recorded_at,
                   NULL, NULL FROM items""")
        connection.execute("""
            INSERT INTO item_movements
            SELECT position + $items, customer_id, invoice_id, installment, 'allocated', -(amount // 3),
                   least(issued_on + 20, $as_of::DATE), recorded_at, 'payment', 'PAY-' || position
            FROM items WHERE position % 3 = 0""", {k: params[k] for k in ("items", "as_of")})
        # as the fold keeps it: an item's open amount is the sum of its movements
        connection.execute("""
            UPDATE items SET open_amount = m.open_amount
            FROM (SELECT customer_id, invoice_id, installment, sum(amount) AS open_amount
                  FROM item_movements GROUP BY ALL) m
            WHERE items.customer_id = m.customer_id AND items.invoice_id = m.invoice_id
              AND items.installment = m.installment""")
        connection.execute("""
            INSERT INTO unapplied_movements
            SELECT 3 * $items + i, printf('C%07d', i), 'payment', 'PAY-U' || i, 'received', 5000 + i % 100000,
                   $as_of::DATE - 5, TIMESTAMPTZ '2020-01-01 00:00:00+00'
            FROM range($customers) t(i) WHERE i % 20 = 0""", {k: params[k] for k in ("items", "customers", "as_of")})
        connection.execute("CHECKPOINT")
        movements = connection.execute("SELECT count(*) FROM item_movements").fetchone()[0]
    finally:
        connection.close()
    return {"items": items, "customers": customers, "movements": movements}


def aging_latency(path: Path, as_of, runs: int = 7) -> dict[str, Any]:
    """Milliseconds of `projections.reports.aging` on the file (read-only, as `report` opens it):
    one warm-up, then the median and the best of `runs`."""
    from projections import reports

    connection = schema.connect(str(path), read_only=True)
    try:
        first_started = time.perf_counter()
        report = reports.aging(connection, as_of)
        first_ms = (time.perf_counter() - first_started) * 1000
        timings = []
        for _ in range(runs):
            started = time.perf_counter()
            reports.aging(connection, as_of)
            timings.append((time.perf_counter() - started) * 1000)
        known_at = dt.datetime.now(dt.UTC)  # with --known-at: the movement path (bitemporal), timed apart
        reports.aging(connection, as_of, known_at)
        bitemporal = []
        for _ in range(runs):
            started = time.perf_counter()
            reports.aging(connection, as_of, known_at)
            bitemporal.append((time.perf_counter() - started) * 1000)
        current_sql = CURRENT_STATE_AGING.format(case=reports.Buckets().case_sql("($as_of - due_on)"))
        connection.execute(current_sql, {"as_of": as_of}).fetchall()
        current = []
        for _ in range(runs):
            started = time.perf_counter()
            connection.execute(current_sql, {"as_of": as_of}).fetchall()
            current.append((time.perf_counter() - started) * 1000)
    finally:
        connection.close()
    return {"ms_median": round(statistics.median(timings), 2), "ms_min": round(min(timings), 2),
            "ms_first": round(first_ms, 2), "runs": runs, "rows": len(report["rows"]),
            "known_at_ms_median": round(statistics.median(bitemporal), 2),
            "current_state_ms_median": round(statistics.median(current), 2),
            "current_state_note": "for contrast, not the report: the same buckets per customer from the items' "
                                  "current open amounts (valid only for as-of today with nothing later recorded), "
                                  "no movement scan"}


# Buckets per customer from `items.open_amount` alone: what an as-of-today fast path would run.
CURRENT_STATE_AGING = """
    SELECT customer_id, bucket, sum(open_amount)::BIGINT AS amount
    FROM (SELECT customer_id, open_amount, {case} AS bucket FROM items WHERE open_amount <> 0)
    GROUP BY ALL"""


# -- Profiles of stages that miss a target ------------------------------------------------------


def profile(function: Callable[[], Any], lines: int = PROFILE_LINES) -> list[dict[str, Any]]:
    """The top functions by own time of one call: function, share of own and cumulative time, calls."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        function()
    finally:
        profiler.disable()
    stats = pstats.Stats(profiler, stream=io.StringIO())
    total = stats.total_tt or 1.0
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():
        rows.append((own, cumulative, calls, f"{_short_path(filename)}:{line}({name})"))
    rows.sort(key=lambda row: row[0], reverse=True)
    return [{"function": function_name, "own_share": round(own / total, 3),
             "cumulative_share": round(cumulative / total, 3), "calls": calls}
            for own, cumulative, calls, function_name in rows[:lines]]


def _short_path(filename: str) -> str:
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1]
    filename = re.sub(r"^.*/lib/python3\.\d+/", "", filename)
    return re.sub(r"^.*?/(ledger|consumers|projections|arledger|bench)/", r"\1/", filename)


def ingest_gc_tuned(store_url: str, records: Sequence[InboundRecord]) -> dict[str, Any]:
    """The in-process ingest again on a fresh store with Python's cyclic GC tuned (gc.freeze() of what exists,
    thresholds 200,000/50/100): how much of the ingest's time is the collector walking its large caches."""
    import gc

    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(200_000, 50, 100)
    ledger = Ledger(store_url)
    try:
        figures = ingest_ledger(ledger, records)
    finally:
        ledger.close()
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    return {"records": figures["records"], "records_per_s": figures["records_per_s"],
            "note": "diagnostic, not a stage: gc.freeze() and thresholds (200000, 50, 100) during the same ingest"}


def profile_ingest(store_url: str, records: Sequence[InboundRecord]) -> list[dict[str, Any]]:
    ledger = Ledger(store_url)
    try:
        return profile(lambda: ingest_ledger(ledger, records))
    finally:
        ledger.close()


@contextlib.contextmanager
def scratch_dir(path: Path):
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def settings_for(base: Settings, home: Path, prefix: str) -> Settings:
    """`base`'s broker with a topic prefix and a home (event store included) of the benchmark's own."""
    home.mkdir(parents=True, exist_ok=True)
    return replace(base, home=home, store_url=f"sqlite:///{home / 'ledger.sqlite'}", topic_prefix=prefix)


def chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def env_for(settings: Settings) -> dict[str, str]:
    """os.environ plus the ARLEDGER_* variables that make a child process use `settings`."""
    return {**os.environ, "ARLEDGER_HOME": str(settings.home), "ARLEDGER_KAFKA": settings.kafka_bootstrap,
            "ARLEDGER_BROKER_PORT": str(settings.broker_port), "ARLEDGER_STORE": settings.store_url,
            "ARLEDGER_TOPIC_PREFIX": settings.topic_prefix, "ARLEDGER_PARTITIONS": str(settings.partitions),
            "ARLEDGER_REPLICATION_FACTOR": str(settings.replication_factor)}

