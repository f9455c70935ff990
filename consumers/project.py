"""The projector runner: ar.ledger → DuckDB read models, offsets in the same transaction (docs/contract.md §5).

It assigns every partition of ar.ledger itself (no consumer group, no
rebalance pauses) and seeks to the offsets stored in the DuckDB file, never to
Kafka's committed ones. Every few seconds it publishes a consistent read-only
snapshot for `report`, `sql` and analysts' own tools (DuckDB lets no other
process open a file while it writes): `projections/publication.py` copies only
what changed since into a generation file and atomically re-points the
`snapshot.duckdb` link to it.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from pathlib import Path

import structlog
from kafka import KafkaConsumer, TopicPartition

from arledger.settings import PROJECT_BATCH_EVENTS_MAX, SNAPSHOT_INTERVAL_S, TOPIC_LEDGER, Settings
from consumers import clients
from consumers.faults import crash_point
from projections import publication, schema
from projections.projection_file import adopt_rebuilt, announce_projector, rebuilt_path, swap_lock
from projections.fold import dead_letters, fold_or_set_aside, redrive, stored_offsets

log = structlog.get_logger("arledger.project")


def publish_snapshot(connection, source: Path, target: Path, source_fd: int | None = None) -> publication.Published:
    """Publish the live file `source` (open in `connection`) at `target`: readers see the old or the new
    state, never half (projections/publication.py: changed blocks into a generation file, then a link).

    A writer passes `source_fd`, a descriptor it keeps open for as long as its connection: closing any
    descriptor of a file drops the process's POSIX locks on it, DuckDB's own lock included.
    """
    return publication.publish(connection, source, target, source_fd)


def redrive_path(projection_path: Path) -> Path:
    """`arledger redrive` writes this marker (JSON: positions, or null for all); the projector acts on it."""
    return projection_path.with_name(projection_path.name + ".redrive")


PUBLICATIONS_KEPT = 1000  # (mode, seconds) of the latest publications, for the bench and metrics
READ_AHEAD_BATCHES_MAX = 2  # batches fetched ahead while DuckDB folds: bounded memory


def consumer_lags(consumer: KafkaConsumer) -> dict[TopicPartition, int]:
    """Records behind the end of each assigned partition, from the high-water marks of the last fetches."""
    lags = {}
    for partition in consumer.assignment():
        highwater = consumer.highwater(partition)
        if highwater is not None:
            lags[partition] = max(highwater - consumer.position(partition), 0)
    return lags


class ReadAhead:
    """Polls ar.ledger on its own thread while the projector folds the previous batch in DuckDB, so
    consuming and folding overlap instead of taking turns. Only this thread touches the consumer while
    it runs; `stop()` hands the consumer back (e.g. to seek after a rebuilt file was adopted)."""

    def __init__(self, consumer: KafkaConsumer, poll_timeout_ms: int = 200) -> None:
        self.consumer = consumer
        self.poll_timeout_ms = poll_timeout_ms
        # (values, next offsets per partition, (topic, partition, offset) of each value)
        self.batches: queue.Queue[tuple[list[bytes], dict[tuple[str, int], int], list[tuple[str, int, int]]]] = \
            queue.Queue(maxsize=READ_AHEAD_BATCHES_MAX)
        self.lags: dict[TopicPartition, int] = {}
        self.error: BaseException | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="arledger-project-read-ahead", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                polled = self.consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=PROJECT_BATCH_EVENTS_MAX)
                self.lags = consumer_lags(self.consumer)
                if not polled:
                    continue
                values: list[bytes] = []
                offsets: dict[tuple[str, int], int] = {}
                origins: list[tuple[str, int, int]] = []
                for partition, records in polled.items():
                    values.extend(record.value for record in records)
                    origins.extend((partition.topic, partition.partition, record.offset) for record in records)
                    offsets[(partition.topic, partition.partition)] = records[-1].offset + 1
                while not self._stopping.is_set():
                    try:
                        self.batches.put((values, offsets, origins), timeout=0.1)
                        break
                    except queue.Full:
                        continue
        except BaseException as error:  # surfaced to the projector's thread by next()
            self.error = error

    def next(self, timeout_ms: int) -> tuple[list[bytes], dict[tuple[str, int], int],
                                             list[tuple[str, int, int]]] | None:
        """The next fetched batch, waiting at most `timeout_ms`; None when there is none yet."""
        if self.error is not None:
            raise self.error
        try:
            return self.batches.get(timeout=timeout_ms / 1000) if timeout_ms > 0 else self.batches.get_nowait()
        except queue.Empty:
            return None

    def stop(self) -> None:
        """Stop polling and drop what was fetched but not folded (the caller seeks to its stored offsets)."""
        self._stopping.set()
        self._thread.join()
        while not self.batches.empty():
            self.batches.get_nowait()


class Projector:
    """Folds ar.ledger into one DuckDB file and publishes its snapshot."""

    def __init__(self, settings: Settings, *, path: Path | None = None, snapshot_path: Path | None = None,
                 consumer: KafkaConsumer | None = None) -> None:
        self.settings = settings
        self.metrics = None  # a consumers.metrics.Metrics when `run --metrics-port` serves them
        self.topic = settings.topic(TOPIC_LEDGER)
        self.path = path or settings.projection_path
        self.snapshot_path = snapshot_path or settings.snapshot_path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rebuilt_path = rebuilt_path(self.path)  # `arledger rebuild` hands its file over here
        # A rebuilt file may lag the published snapshot: hold snapshots until it has caught up with that.
        self._snapshot_floor = self._offsets_of(self.snapshot_path) if self.rebuilt_path.exists() else None
        with swap_lock(self.path):
            # One projector per file; tells `arledger rebuild` to hand over rather than install.
            self._presence = announce_projector(self.path)
            adopted = adopt_rebuilt(self.path)
            self.connection = schema.connect(str(self.path))
            self._source_fd = os.open(self.path, os.O_RDONLY)  # for snapshots; closed after the connection
        schema.create_schema(self.connection)
        if adopted:
            log.info("rebuilt_adopted", worker="project", offsets=stored_offsets(self.connection, self.topic),
                     snapshot_held_until=self._snapshot_floor)
        self.consumer = consumer or clients.assigned_consumer(settings, "arledger-project", PROJECT_BATCH_EVENTS_MAX)
        self.partitions = [partition for partition in clients.partitions_of(self.consumer, self.topic)
                           if settings.shard is None or partition.partition % settings.shard[1] == settings.shard[0]]
        self.consumer.assign(self.partitions)
        self._seek_to_stored_offsets()
        self.reader = ReadAhead(self.consumer)
        self._dirty = True
        self._last_snapshot = 0.0
        self.publications: list[tuple[str, float]] = []  # (mode, seconds) of the latest publications
        self.staging_dir = self.path.parent

    def _seek_to_stored_offsets(self) -> None:
        offsets = stored_offsets(self.connection, self.topic)
        for partition in self.partitions:
            if partition.partition in offsets:
                self.consumer.seek(partition, offsets[partition.partition])
            else:
                self.consumer.seek_to_beginning(partition)

    def _offsets_of(self, path: Path) -> dict[int, int] | None:
        if not path.exists():
            return None
        connection = schema.connect(str(path), read_only=True)
        try:
            return stored_offsets(connection, self.topic)
        finally:
            connection.close()

    def adopt_rebuilt(self) -> bool:
        """Swap in the file `arledger rebuild` handed over, then continue from its offsets (between batches)."""
        with swap_lock(self.path):
            if not self.rebuilt_path.exists():
                return False
            self.reader.stop()  # fetched batches belong to the old file's offsets: dropped, read again
            floor = stored_offsets(self.connection, self.topic)
            self.connection.execute("CHECKPOINT")
            self.connection.close()
            os.close(self._source_fd)
            adopt_rebuilt(self.path)
            self.connection = schema.connect(str(self.path))
            self._source_fd = os.open(self.path, os.O_RDONLY)
        schema.create_schema(self.connection)
        self._seek_to_stored_offsets()
        self.reader = ReadAhead(self.consumer)
        self._snapshot_floor = floor
        self._dirty = True
        log.info("rebuilt_adopted", worker="project", offsets=stored_offsets(self.connection, self.topic),
                 snapshot_held_until=floor)
        return True

    def redrive(self) -> tuple[int, int]:
        """`arledger redrive` asked (a marker file): fold the dead letters again, between two batches."""
        marker = redrive_path(self.path)
        try:
            wanted = json.loads(marker.read_text() or "null")
        except (OSError, ValueError):
            wanted = None
        folded, failing = redrive(self.connection, wanted, staging_dir=self.staging_dir)
        marker.unlink(missing_ok=True)
        self._dirty = True
        log.info("dead_letters_redriven", worker="project", folded=folded, still_failing=failing)
        if self.metrics:
            self.metrics.observe_dead_letters(len(dead_letters(self.connection)))
        return folded, failing

    def run_once(self, timeout_ms: int) -> int:
        if self.rebuilt_path.exists():
            self.adopt_rebuilt()
        if redrive_path(self.path).exists():
            self.redrive()
        batch = self.reader.next(timeout_ms)
        values, offsets, origins = batch if batch is not None else ([], {}, [])
        if values:
            result, dead = fold_or_set_aside(self.connection, values, offsets, origins, staging_dir=self.staging_dir,
                                             before_commit=lambda: crash_point("project.mid_transaction"))
            for letter in dead:  # the alert: an error line per record set aside, and the metric
                topic, partition, offset = origins[letter.index]
                log.error("projector_dead_letter", worker="project", topic=topic, partition=partition, offset=offset,
                          error=f"{type(letter.error).__name__}: {letter.error}"[:500],
                          hint="set aside in dead_letters; fix, then `arledger redrive`")
            if dead and self.metrics:
                self.metrics.observe_dead_letters(len(dead_letters(self.connection)))
            self._dirty = True
            if self.metrics:
                self.metrics.observe_project(self.topic, result.applied, offsets, result.duration_s)
            log.info("batch_committed", worker="project", topic=self.topic, records=result.records,
                     applied=result.applied, offsets={str(p): o for (_, p), o in offsets.items()},
                     duration_ms=round(result.duration_s * 1000, 1))
        self.maybe_publish_snapshot(force=False)
        return len(values)

    def maybe_publish_snapshot(self, *, force: bool) -> bool:
        now = time.monotonic()
        if not self._dirty or (not force and now - self._last_snapshot < SNAPSHOT_INTERVAL_S):
            return False
        if self._snapshot_floor:
            applied = stored_offsets(self.connection, self.topic)
            if any(applied.get(partition, 0) < offset for partition, offset in self._snapshot_floor.items()):
                return False  # readers never see the read model go back in time
            self._snapshot_floor = None
        published = publish_snapshot(self.connection, self.path, self.snapshot_path, self._source_fd)
        self._dirty = False
        self._last_snapshot = now
        self.publications.append((published.mode, published.seconds))
        del self.publications[:-PUBLICATIONS_KEPT]
        log.debug("snapshot_published", worker="project", mode=published.mode, blocks=published.blocks_copied,
                  of_blocks=published.blocks_total, duration_ms=round(published.seconds * 1000, 1))
        return True

    def close(self) -> None:
        self.reader.stop()
        self.maybe_publish_snapshot(force=True)
        self.consumer.close()
        self.connection.close()
        os.close(self._source_fd)
        self._presence.close()
