"""Rebuild the read models from ar.ledger or the event store into a new DuckDB file, then swap it in.

Files (next to the live projection file `projections.duckdb`):
- `projections.rebuilding.duckdb`: being written; never read by anyone else.
- `projections.rebuilt.duckdb`: complete and closed. Its existence is the
  hand-over marker: a running projector notices it between two batches,
  closes its file, renames the rebuilt one into place, reopens it and seeks
  to the offsets stored in it (consumers/project.py). With no projector
  running, the rebuild installs it itself and publishes a snapshot.
- `projections.duckdb.swap.lock`: serialises installing a rebuilt file with a
  projector opening the live one (flock, held for milliseconds).
- `projections.duckdb.rebuild.lock`: one rebuild at a time per home.

Offsets. A rebuild from ar.ledger stores the offsets it consumed up to, like
the projector. A rebuild from the event store reads no records from Kafka, so
it first reads ar.ledger's end offsets E, *then* reads the relay's chain and
folds every chained position. Every record below E was published before E was
read, hence chained before the chain was read, hence folded; records at or
above E are either folded already (the projector's fold drops a position it
holds) or new. So storing E is exact: seeking there loses nothing and applies
nothing twice. Both kinds then catch up from ar.ledger to its current end
before the hand-over, so the projector has little left to consume.

No Kafka client option here differs from the projector's (clients.assigned_consumer).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import msgspec
import structlog
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from arledger.settings import TOPIC_LEDGER, Settings
from consumers import clients
from ledger.aggregate import CHAIN_ID, LedgerChain
from ledger.application import Ledger
from ledger.hashing import GENESIS_HASH
from ledger.records import record_encoder
from projections import publication, schema
from projections.projection_file import (  # noqa: F401 (announce_projector, projector_running: re-exported)
    ProjectionFileError, adopt_rebuilt, announce_projector, building_path, file_in_use, projector_running,
    rebuild_lock, rebuilt_path, swap_lock, wal_path)
from projections.fold import apply_batch, stored_offsets

log = structlog.get_logger("arledger.rebuild")

# Two large batches: per-batch costs (a DuckDB statement ≈ 0.3 ms x ~25) vanish;
# memory stays ≈ 2 x 100,000 x ~700 bytes.
REBUILD_BATCH_EVENTS = 100_000
REBUILD_POLL_RECORDS_MAX = 50_000
REBUILD_POLL_TIMEOUT_MS = 500
# Batches read ahead while the previous one is folded (DuckDB releases the GIL).
READ_AHEAD_BATCHES = 2
# Catch-up passes to ar.ledger's moving end before the hand-over: each pass
# reads what arrived during the previous one, so they shrink quickly.
CATCH_UP_PASSES_MAX = 3
# Chain events read from the event store per query.
CHAIN_EVENTS_PAGE = 200
# Waiting for a running projector to adopt the rebuilt file: it checks between batches (≤ 1 s apart).
HAND_OVER_TIMEOUT_S = 120.0
HAND_OVER_POLL_S = 0.1
DIFF_SAMPLE_ROWS = 5
# A partition that returns nothing below its end offset for this long: the broker is away.
STALL_TIMEOUT_S = 60.0

Progress = Callable[[int, int], None]  # (events done, events total)


class _Position(msgspec.Struct):
    position: int


_position_decoder = msgspec.json.Decoder(_Position)


# -- Paths and locks: projections/projection_file.py (shared with the projector, no import cycle) ---------

RebuildError = ProjectionFileError  # an operating error of a rebuild (reported to the user, not a bug)


# -- Folding from ar.ledger ------------------------------------------------------------------------


@dataclass
class FoldStats:
    records: int = 0  # records read (Kafka records or stored events)
    applied: int = 0  # events new to the file (after dropping positions already held)
    duration_s: float = 0.0

    @property
    def events_per_s(self) -> float:
        return self.records / self.duration_s if self.duration_s > 0 else 0.0

    def add(self, other: "FoldStats") -> None:
        self.records += other.records
        self.applied += other.applied
        self.duration_s += other.duration_s


Batch = tuple[list[bytes], dict[tuple[str, int], int]]


def _fold_batches(connection: duckdb.DuckDBPyConnection, batches: Iterator[Batch], staging_dir: Path,
                  progress: Progress | None, total: int) -> FoldStats:
    """Fold batches produced by `batches` (run in a reader thread) while the next ones are read."""
    stats = FoldStats()
    started = time.perf_counter()
    handoff: queue.Queue[Batch | BaseException | None] = queue.Queue(maxsize=READ_AHEAD_BATCHES)
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        handoff.put(batch, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            handoff.put(None)
        except BaseException as error:  # surfaced in the folding thread
            handoff.put(error)

    reader = threading.Thread(target=read, name="rebuild-reader", daemon=True)
    reader.start()
    try:
        while True:
            item = handoff.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            values, offsets = item
            result = apply_batch(connection, values, offsets, staging_dir=staging_dir)
            stats.records += result.records
            stats.applied += result.applied
            if progress:
                progress(stats.records, total)
    finally:
        stop.set()
        reader.join(timeout=10)
    stats.duration_s = time.perf_counter() - started
    return stats


class LedgerReader:
    """Reads ar.ledger partitions from given offsets up to given end offsets, in big batches."""

    def __init__(self, settings: Settings, consumer: KafkaConsumer | None = None) -> None:
        self.topic = settings.topic(TOPIC_LEDGER)
        try:
            self.consumer = consumer or clients.assigned_consumer(settings, "arledger-rebuild",
                                                                  REBUILD_POLL_RECORDS_MAX)
            self.partitions = clients.partitions_of(self.consumer, self.topic)
        except (KafkaError, RuntimeError) as error:
            raise RebuildError(f"cannot read {self.topic} at {settings.kafka_bootstrap}: {error}") from error
        self.consumer.assign(self.partitions)

    def end_offsets(self) -> dict[int, int]:
        return {tp.partition: offset for tp, offset in self.consumer.end_offsets(self.partitions).items()}

    def beginning_offsets(self) -> dict[int, int]:
        return {tp.partition: offset for tp, offset in self.consumer.beginning_offsets(self.partitions).items()}

    def batches(self, start: Mapping[int, int], end: Mapping[int, int],
                keep: Callable[[bytes], bool] | None = None) -> Iterator[Batch]:
        """Batches of record values with the offsets they reach, from `start` (inclusive) to `end` (exclusive)."""
        beginning = self.beginning_offsets()
        remaining: dict[TopicPartition, int] = {}
        for tp in self.partitions:
            first = max(start.get(tp.partition, 0), beginning.get(tp.partition, 0))
            stop_at = end.get(tp.partition, 0)
            if first < stop_at:
                self.consumer.seek(tp, first)
                remaining[tp] = stop_at
        self.consumer.pause(*[tp for tp in self.partitions if tp not in remaining])
        self.consumer.resume(*remaining)
        values: list[bytes] = []
        offsets: dict[tuple[str, int], int] = {}
        last_progress = time.monotonic()
        while remaining:
            polled = self.consumer.poll(timeout_ms=REBUILD_POLL_TIMEOUT_MS, max_records=REBUILD_POLL_RECORDS_MAX)
            if polled:
                last_progress = time.monotonic()
            elif time.monotonic() - last_progress > STALL_TIMEOUT_S:
                raise RebuildError(f"no record from {self.topic} for {STALL_TIMEOUT_S:.0f} s: is the broker up?")
            for tp, records in polled.items():
                stop_at = remaining.get(tp)
                if stop_at is None:
                    continue
                taken = [r for r in records if r.offset < stop_at]
                if taken:
                    values.extend(r.value for r in taken if keep is None or keep(r.value))
                    offsets[(tp.topic, tp.partition)] = taken[-1].offset + 1
                if len(taken) < len(records) or self.consumer.position(tp) >= stop_at:
                    del remaining[tp]
                    self.consumer.pause(tp)
            if len(values) >= REBUILD_BATCH_EVENTS or (not remaining and (values or offsets)):
                yield values, offsets
                values, offsets = [], {}

    def close(self) -> None:
        self.consumer.close()


def _open_new(path: Path) -> duckdb.DuckDBPyConnection:
    for stale in (path, wal_path(path)):
        stale.unlink(missing_ok=True)
    connection = schema.connect(str(path))
    schema.create_schema(connection)
    # A bulk load: no need to keep the insertion order of rows that have a primary key anyway.
    connection.execute("SET preserve_insertion_order = false")
    # DuckDB checkpoints when the WAL passes 16 MB, and each checkpoint rewrites every primary-key
    # index whole: with 100,000-event batches that made each commit slower than the last. The
    # rebuild checkpoints once, at the end; nobody reads this file before.
    connection.execute("SET checkpoint_threshold = '1TB'")
    connection.execute("SET enable_progress_bar = false")  # ours is on stderr already
    return connection


def fold_from_ledger(connection: duckdb.DuckDBPyConnection, reader: LedgerReader, end: Mapping[int, int],
                     progress: Progress | None = None, staging_dir: Path | None = None) -> FoldStats:
    """Fold ar.ledger from the offsets stored in `connection` (or the beginning) up to `end`."""
    start = stored_offsets(connection, reader.topic)
    total = sum(max(0, end.get(p, 0) - start.get(p, 0)) for p in end)
    return _fold_batches(connection, reader.batches(start, end), staging_dir or Path("."), progress, total)


def fold_from_store(connection: duckdb.DuckDBPyConnection, ledger: Ledger, *, up_to_position: int | None = None,
                    progress: Progress | None = None, staging_dir: Path | None = None) -> FoldStats:
    """Fold every chained position (≤ up_to_position) from the event store, as the relay published it."""
    from consumers.relay import ledger_record

    chain = ledger.chain()
    last = chain.last_position if up_to_position is None else min(up_to_position, chain.last_position)

    def batches() -> Iterator[Batch]:
        values: list[bytes] = []
        for entries in _chained_entries(ledger, last):
            events = dict(ledger.read_ledger(entries[0][1] - 1, len(entries), entries[-1][1]))
            for position, notification_id, hash_global, prev_hash in entries:
                stored = events.get(notification_id)
                if stored is None:
                    raise RebuildError(f"position {position}: notification {notification_id} is not in the store")
                record = ledger_record(position, notification_id, stored, prev_hash, hash_global)
                values.append(record_encoder.encode(record))
            if len(values) >= REBUILD_BATCH_EVENTS:
                yield values, {}
                values = []
        if values:
            yield values, {}

    return _fold_batches(connection, batches(), staging_dir or Path("."), progress, last)


def _chained_entries(ledger: Ledger, last_position: int) -> Iterator[list[tuple[int, int, str, str]]]:
    """(position, notification_id, hash_global, prev_hash_global) of positions 1..last, in chunks."""
    prev_hash = GENESIS_HASH
    after_version: int | None = None
    chunk: list[tuple[int, int, str, str]] = []
    position = 0
    while position < last_position:
        page = list(ledger.repository.event_store.get(CHAIN_ID, gt=after_version, limit=CHAIN_EVENTS_PAGE))
        if not page:
            raise RebuildError(f"the relay's chain ends at position {position}, expected {last_position}")
        after_version = page[-1].originator_version
        for event in page:
            if not isinstance(event, LedgerChain.Extended):
                continue
            for offset, (notification_id, hash_global) in enumerate(zip(event.notification_ids, event.hashes)):
                position = event.first_position + offset
                if position > last_position:
                    break
                chunk.append((position, notification_id, hash_global, prev_hash))
                prev_hash = hash_global
            if len(chunk) >= REBUILD_BATCH_EVENTS // 2:
                yield chunk
                chunk = []
            if position >= last_position:
                break
    if chunk:
        yield chunk


def _store_offsets(connection: duckdb.DuckDBPyConnection, topic: str, offsets: Mapping[int, int]) -> None:
    connection.execute("BEGIN TRANSACTION")
    for partition, next_offset in offsets.items():
        if next_offset > 0:
            connection.execute(
                "INSERT INTO projection_offsets VALUES (?, ?, ?) "
                "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
                [topic, partition, next_offset])
    connection.execute("COMMIT")


# -- The whole rebuild ---------------------------------------------------------------------------------


@dataclass
class RebuildResult:
    source: str  # "ledger" | "store"
    path: Path
    stats: FoldStats = field(default_factory=FoldStats)
    catch_up: FoldStats = field(default_factory=FoldStats)
    offsets: dict[int, int] = field(default_factory=dict)
    max_position: int | None = None
    events: int = 0  # rows in ledger_events of the new file
    handed_over: str = ""  # "installed" | "adopted" | "pending" | "" (check)
    seconds: float = 0.0  # the main fold plus the final checkpoint (catch-up excluded)

    @property
    def events_per_s(self) -> float:
        """Rebuild throughput: events read by the main fold per second of fold and final checkpoint."""
        return self.stats.records / self.seconds if self.seconds > 0 else 0.0

    def as_json(self) -> dict[str, Any]:
        return {"source": self.source, "path": str(self.path), "events": self.events,
                "records_read": self.stats.records, "seconds": round(self.seconds, 3),
                "events_per_s": round(self.events_per_s),
                "catch_up_records": self.catch_up.records, "max_position": self.max_position,
                "offsets": {str(p): o for p, o in sorted(self.offsets.items())}, "handed_over": self.handed_over}


def build(settings: Settings, target: Path, *, from_store: bool, catch_up: bool = True,
          stop_offsets: Mapping[int, int] | None = None, up_to_position: int | None = None,
          progress: Progress | None = None, reader: LedgerReader | None = None) -> RebuildResult:
    """Build a complete projection file at `target` (closed, checkpointed) and return what it holds."""
    own_reader = reader is None
    reader = reader or LedgerReader(settings)
    connection = _open_new(target)
    result = RebuildResult(source="store" if from_store else "ledger", path=target)
    started = time.perf_counter()
    try:
        if from_store:
            end = reader.end_offsets()  # before reading the store: see the module docstring
            ledger = Ledger(settings.store_url)
            try:
                result.stats = fold_from_store(connection, ledger, up_to_position=up_to_position,
                                               progress=progress, staging_dir=target.parent)
            finally:
                ledger.close()
            if stop_offsets is None:
                _store_offsets(connection, reader.topic, end)
        else:
            end = dict(stop_offsets) if stop_offsets is not None else reader.end_offsets()
            result.stats = fold_from_ledger(connection, reader, end, progress, target.parent)
        result.seconds = time.perf_counter() - started
        if catch_up:
            for _ in range(CATCH_UP_PASSES_MAX):
                end = reader.end_offsets()
                start = stored_offsets(connection, reader.topic)
                if all(start.get(p, 0) >= o for p, o in end.items()):
                    break
                result.catch_up.add(fold_from_ledger(connection, reader, end, None, target.parent))
        result.offsets = stored_offsets(connection, reader.topic)
        result.max_position, result.events = connection.execute(
            "SELECT max(position), count(*) FROM ledger_events").fetchone()
        checkpoint_started = time.perf_counter()
        connection.execute("CHECKPOINT")
        result.seconds += time.perf_counter() - checkpoint_started
    finally:
        connection.close()
        if own_reader:
            reader.close()
    return result


def hand_over(settings: Settings, built: Path, *, timeout_s: float = HAND_OVER_TIMEOUT_S,
              projection_path: Path | None = None, snapshot_path: Path | None = None) -> str:
    """Make `built` the live file: "installed" (no projector ran), "adopted" (by the projector) or "pending"."""
    live = projection_path or settings.projection_path
    snapshot = snapshot_path or settings.snapshot_path
    rebuilt = rebuilt_path(live)
    os.replace(built, rebuilt)  # from here on, a projector may adopt it
    deadline = time.monotonic() + timeout_s
    while True:
        with swap_lock(live):
            if not rebuilt.exists():
                return "adopted"
            if not file_in_use(live):
                adopt_rebuilt(live)
                connection = schema.connect(str(live))
                try:
                    publication.publish(connection, live, snapshot)
                finally:
                    connection.close()
                return "installed"
        if time.monotonic() > deadline:
            return "pending"
        time.sleep(HAND_OVER_POLL_S)


def rebuild(settings: Settings, *, from_store: bool = False, progress: Progress | None = None,
            timeout_s: float = HAND_OVER_TIMEOUT_S) -> RebuildResult:
    """`arledger rebuild`: build aside, catch up, then swap in without stopping the projector."""
    live = settings.projection_path
    with rebuild_lock(live):
        rebuilt_path(live).unlink(missing_ok=True)  # an earlier rebuild nobody adopted: superseded
        result = build(settings, building_path(live), from_store=from_store, progress=progress)
        result.handed_over = hand_over(settings, building_path(live), timeout_s=timeout_s)
        result.path = live if result.handed_over in ("installed", "adopted") else rebuilt_path(live)
        log.info("rebuild_finished", **result.as_json())
        return result


def rebuild_throughput(settings: Settings, *, from_store: bool = False, target: Path | None = None) -> float:
    """Events/s of a full rebuild into a scratch file (the benchmark hook); the live file is untouched."""
    target = target or settings.home / "projections.bench.duckdb"
    try:
        result = build(settings, target, from_store=from_store, catch_up=False)
    finally:
        for path in (target, wal_path(target)):
            path.unlink(missing_ok=True)
    return result.events_per_s


# -- --check ----------------------------------------------------------------------------------------


@dataclass
class TableDiff:
    table: str
    only_live: int
    only_rebuilt: int
    live_samples: list[dict[str, Any]]
    rebuilt_samples: list[dict[str, Any]]


@dataclass
class CheckResult:
    live: str  # which file was compared: "projection" or "snapshot"
    rebuild: RebuildResult
    tables: list[TableDiff]
    notes: list[str] = field(default_factory=list)

    @property
    def differences(self) -> list[TableDiff]:
        return [t for t in self.tables if t.only_live or t.only_rebuilt]


@contextlib.contextmanager
def live_copy(settings: Settings, scratch: Path) -> Iterator[tuple[Path, str]]:
    """A stable image of the live tables: a copy of the projection file if nobody writes it, else the snapshot."""
    live = settings.projection_path
    kind = ""
    for path in (scratch, wal_path(scratch)):
        path.unlink(missing_ok=True)
    with swap_lock(live):
        if live.exists() and not file_in_use(live):
            shutil.copyfile(live, scratch)
            if wal_path(live).exists():
                shutil.copyfile(wal_path(live), wal_path(scratch))
            kind = "projection"
    if not kind and settings.snapshot_path.exists():
        # A second name for this very snapshot: the projector may rename a newer one over it meanwhile.
        try:
            publication.stable_link(settings.snapshot_path, scratch)  # never rewritten while linked
        except OSError:
            publication.copy_published(settings.snapshot_path, scratch)
        kind = "snapshot"
    if not kind:
        raise RebuildError(f"no projection under {settings.home}: nothing to check")
    try:
        yield scratch, kind
    finally:
        for path in (scratch, wal_path(scratch)):
            path.unlink(missing_ok=True)


def check(settings: Settings, *, from_store: bool = False, progress: Progress | None = None) -> CheckResult:
    """`arledger rebuild --check`: rebuild aside to the live file's own cut and compare every table row by row."""
    live = settings.projection_path
    target = live.with_name(f"{live.stem}.check{live.suffix}")
    scratch = live.with_name(f"{live.stem}.live-copy{live.suffix}")
    topic = settings.topic(TOPIC_LEDGER)
    with live_copy(settings, scratch) as (live_file, live_kind):
        reader_connection = schema.connect(str(live_file), read_only=True)
        try:
            live_offsets = stored_offsets(reader_connection, topic)
            live_positions = reader_connection.execute(
                "SELECT coalesce(max(position), 0), count(*) FROM ledger_events").fetchone()
        finally:
            reader_connection.close()
        notes: list[str] = []
        reader = LedgerReader(settings)
        try:
            if from_store:
                max_position, count = live_positions
                if count != max_position:
                    notes.append(f"the live ledger_events holds {count} events but positions up to {max_position}: "
                                 "a projector between partitions, or rows deleted; compared up to the maximum")
                result = build(settings, target, from_store=True, catch_up=False, stop_offsets=live_offsets,
                               up_to_position=max_position, progress=progress, reader=reader)
            else:
                result = build(settings, target, from_store=False, catch_up=False, stop_offsets=live_offsets,
                               progress=progress, reader=reader)
                extra = _fold_live_positions_beyond(settings, target, live_file, live_offsets, reader)
                if extra:
                    notes.append(f"{extra} events the live file holds beyond its offsets (a rebuild from the store "
                                 "folds events before the relay publishes them) were folded from ar.ledger too")
        finally:
            reader.close()
        try:
            tables = compare(target, live_file, skip=("projection_offsets",) if from_store else ())
        finally:
            for path in (target, wal_path(target)):
                path.unlink(missing_ok=True)
    return CheckResult(live=live_kind, rebuild=result, tables=tables, notes=notes)


def _fold_live_positions_beyond(settings: Settings, target: Path, live_file: Path, live_offsets: Mapping[int, int],
                                reader: LedgerReader) -> int:
    """Fold the ar.ledger records beyond the live offsets whose positions the live file already holds."""
    connection = schema.connect(str(target))
    connection.execute("SET enable_progress_bar = false")
    try:
        quoted = str(live_file).replace("'", "''")
        connection.execute(f"ATTACH '{quoted}' AS live (READ_ONLY)")
        missing = {row[0] for row in connection.execute(
            "SELECT position FROM live.main.ledger_events EXCEPT SELECT position FROM main.ledger_events").fetchall()}
        connection.execute("DETACH live")
        if not missing:
            return 0
        wanted = lambda value: _position_decoder.decode(value).position in missing  # noqa: E731
        before = connection.execute("SELECT count(*) FROM ledger_events").fetchone()[0]
        for values, _ in reader.batches(live_offsets, reader.end_offsets(), keep=wanted):
            if values:
                apply_batch(connection, values, {}, staging_dir=target.parent)
        after = connection.execute("SELECT count(*) FROM ledger_events").fetchone()[0]
        connection.execute("CHECKPOINT")
        return after - before
    finally:
        connection.close()


def compare(rebuilt_file: Path, live_file: Path, *, skip: tuple[str, ...] = ()) -> list[TableDiff]:
    """Row-level differences of every table, EXCEPT ALL both ways (duplicates count)."""
    connection = schema.connect(str(rebuilt_file), read_only=True)
    connection.execute("SET enable_progress_bar = false")
    try:
        quoted = str(live_file).replace("'", "''")
        connection.execute(f"ATTACH '{quoted}' AS live (READ_ONLY)")
        live_tables = {row[0] for row in connection.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = 'live'").fetchall()}
        diffs = []
        for table in schema.TABLES:
            if table in skip:
                continue
            columns = [row[0] for row in connection.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
                "AND table_name = ? ORDER BY column_index", [table]).fetchall()]
            if table not in live_tables:
                total = connection.execute(f"SELECT count(*) FROM main.{table}").fetchone()[0]
                diffs.append(TableDiff(table, 0, total, [], []))
                continue
            select_list = ", ".join(f'"{c}"' for c in columns)
            live_rows = f"SELECT {select_list} FROM live.main.{table}"
            new_rows = f"SELECT {select_list} FROM main.{table}"
            diffs.append(TableDiff(
                table,
                *_difference(connection, f"{live_rows} EXCEPT ALL {new_rows}", f"{new_rows} EXCEPT ALL {live_rows}")))
        return diffs
    finally:
        connection.close()


def _difference(connection: duckdb.DuckDBPyConnection, only_live_sql: str,
                only_rebuilt_sql: str) -> tuple[int, int, list[dict[str, Any]], list[dict[str, Any]]]:
    counts = []
    samples = []
    for sql in (only_live_sql, only_rebuilt_sql):
        counts.append(connection.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0])
        cursor = connection.execute(f"SELECT * FROM ({sql}) LIMIT {DIFF_SAMPLE_ROWS}")
        names = [d[0] for d in cursor.description]
        samples.append([dict(zip(names, row)) for row in cursor.fetchall()])
    return counts[0], counts[1], samples[0], samples[1]
