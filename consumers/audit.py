"""Auditing: verify the event store, the global chain, ar.ledger and the read models against each other.

`verify()` reads everything once and names every problem it finds:

1. the event store: each customer stream has versions 1..n without gaps, each
   `prev_hash` links to the stream's previous event and each `hash` recomputes
   (docs/contract.md §4); every accepted envelope's receipt matches the events it
   produced; the library's own metadata is plausible;
2. the global chain the relay stored (`LedgerChain.Extended`): positions
   1..N without gaps, each `hash_global` recomputed from the stored event;
3. ar.ledger (every partition, deduplicated by position): for each position,
   the bytes equal the record the store gives (every field);
4. the published snapshot: every folded table equals a fresh fold of the same
   events from the store, row by row (`EXCEPT ALL` both ways).

`stored_records()` gives the ledger records of the store in position order,
checking the global chain on the way: `replay` and `export` build on it.

Checkpoints: the global chain head at every multiple of
CHECKPOINT_INTERVAL_EVENTS positions, appended to `checkpoints.jsonl` in the
home after a verification that found nothing. `verify --from-checkpoint`
trusts the hash at that position (it must still be the stored one) and checks
only what came after it; the read models are always compared in full.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from array import array
import json
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from eventsourcing.utils import get_topic

from arledger.settings import TOPIC_LEDGER, Settings
from consumers.relay import ledger_record
from ledger.aggregate import (CHAIN_ID, RECOVERED_DIGEST, CustomerAccount, EnvelopeReceipt, LedgerChain, account_id, receipt_claims,
                              receipt_id)
from ledger.application import ACCOUNT_EVENT_TOPICS, Ledger, StoredLedgerEvent, format_instant
from ledger.events import event_from_data
from ledger.hashing import GENESIS_HASH, chain_hash, customer_hash_body, receipt_hash
from ledger.records import LedgerRecord, global_hash_body, record_decoder, record_encoder
from ledger.upcasting import upcast
from projections import audit as projection_audit
from projections import publication

# A trusted head every 10,000 positions: a verification from the latest one
# re-hashes at most that many old events more than needed, and the file grows
# by one short line per 10,000 events.
CHECKPOINT_INTERVAL_EVENTS = 10_000
CHECKPOINTS_FILE = "checkpoints.jsonl"
# Notifications per read of the event store (KAFKA.md: ~140,000 rows/s; 10,000 keeps each read < 0.1 s).
STORE_PAGE_EVENTS = 10_000
# Records per fresh-fold batch: the projector's own batch size, so the fold is exercised as in production.
FOLD_BATCH_EVENTS = 50_000
# Problems kept in full: a badly damaged store can produce millions; the count is always exact.
PROBLEMS_KEPT_MAX = 1_000
# Records of ar.ledger read again to show which fields differ (each read costs a consumer and a fetch).
TOPIC_FIELD_DIFFS_MAX = 20
# Differing rows shown per table and side.
ROWS_SHOWN_MAX = 3
# Reading ar.ledger: one poll waits at most this long; the whole read gives up after the second limit.
TOPIC_POLL_TIMEOUT_MS = 1_000
TOPIC_READ_TIMEOUT_S = 600.0
TOPIC_POLL_RECORDS_MAX = 10_000
# The ledger gives eventsourcing's own `timestamp` (outside both hash chains) the value of
# `recorded_at` itself, so any difference means an edit.
TIMESTAMP_BEFORE_RECORDED_S_MAX = 0.0
TIMESTAMP_AFTER_RECORDED_S_MAX = 0.0

RECEIPT_TOPIC = get_topic(EnvelopeReceipt.Accepted)
CHAIN_TOPICS = {get_topic(cls) for cls in (LedgerChain.Started, LedgerChain.Extended, LedgerChain.Published)}
ACCOUNT_TOPIC = get_topic(CustomerAccount)
OPENED_TOPIC, RECORDED_TOPIC = ACCOUNT_EVENT_TOPICS
CHECK_ORDER = ("checkpoint", "store", "chain", "receipts", "topic", "projection")


class HistoryBroken(Exception):
    """The stored history does not check out (replay and export refuse to go on)."""


@dataclass(frozen=True)
class Problem:
    """One thing verify found wrong, located as precisely as it can be."""

    check: str  # one of CHECK_ORDER
    reason: str
    position: int | None = None
    customer_id: str | None = None
    version: int | None = None
    notification_id: int | None = None

    def sort_key(self) -> tuple:
        """History first (store, chains, receipts, ar.ledger), then read models: a damaged event makes rows of
        other positions differ too, and the event is what an auditor must be shown first."""
        return (self.check == "projection", self.position if self.position is not None else math.inf,
                CHECK_ORDER.index(self.check), self.customer_id or "", self.version or 0, self.notification_id or 0)

    def where(self) -> str:
        parts = []
        if self.position is not None:
            parts.append(f"position {self.position}")
        if self.customer_id is not None:
            parts.append(f"customer {self.customer_id}" + (f" version {self.version}" if self.version else ""))
        if self.notification_id is not None and self.position is None:
            parts.append(f"notification {self.notification_id}")
        return ", ".join(parts) or self.check

    def describe(self) -> str:
        return f"{self.where()}: [{self.check}] {self.reason}"


@dataclass(frozen=True)
class Checkpoint:
    """The global chain head at a position: what a later verification may trust."""

    position: int
    hash_global: str
    notification_id: int | None = None
    recorded_at: str | None = None
    verified_at: str | None = None

    @classmethod
    def parse(cls, text: str) -> "Checkpoint":
        """'POSITION:HASH' (a head noted by the auditor)."""
        position, _, hash_global = text.partition(":")
        if not position.isdigit() or len(hash_global) != 64:
            raise ValueError(f"a checkpoint is POSITION:HASH (64 hex digits), got {text!r}")
        return cls(position=int(position), hash_global=hash_global.lower())


def read_checkpoints(path: Path) -> list[Checkpoint]:
    """Checkpoints recorded by earlier verifications, in position order."""
    if not path.exists():
        return []
    found = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            found[entry["position"]] = Checkpoint(**entry)
    return [found[position] for position in sorted(found)]


def append_checkpoints(path: Path, checkpoints: list[Checkpoint]) -> int:
    """Append the checkpoints not recorded yet; returns how many were new."""
    known = {checkpoint.position for checkpoint in read_checkpoints(path)}
    new = [checkpoint for checkpoint in checkpoints if checkpoint.position not in known]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as file:
            for checkpoint in new:
                file.write(json.dumps(asdict(checkpoint), sort_keys=True) + "\n")
    return len(new)


class ProgressSink:
    """Where verify reports progress (the CLI draws rich bars; the default draws nothing)."""

    def start(self, stage: str, total: int | None) -> None:
        pass

    def advance(self, stage: str, amount: int) -> None:
        pass


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    problems_total: int = 0
    events: int = 0  # account events in the store
    streams: int = 0
    receipts: int = 0
    chain_length: int = 0
    chain_head: str = GENESIS_HASH
    published_position: int = 0
    not_relayed: int = 0  # account events recorded but not chained yet
    topic_records: int = 0
    topic_duplicates: int = 0
    projected_events: int = 0
    tables_compared: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    from_checkpoint: Checkpoint | None = None
    checkpoints: list[Checkpoint] = field(default_factory=list)  # chain heads at each interval

    @property
    def ok(self) -> bool:
        return self.problems_total == 0

    def add(self, problem: Problem) -> None:
        self.problems_total += 1
        if len(self.problems) < PROBLEMS_KEPT_MAX:
            self.problems.append(problem)

    def sorted_problems(self) -> list[Problem]:
        return sorted(self.problems, key=Problem.sort_key)

    def to_json(self) -> dict[str, Any]:
        body = {key: value for key, value in asdict(self).items() if key not in ("problems", "checkpoints")}
        problems = self.sorted_problems()
        body["ok"] = self.ok
        body["first_problem"] = asdict(problems[0]) | {"text": problems[0].describe()} if problems else None
        body["problems"] = [asdict(problem) | {"text": problem.describe()} for problem in problems]
        return body


# -- The global chain as stored ---------------------------------------------------------------

@dataclass
class ChainIndex:
    """Positions 1..N of the global chain: notification id and hash of each, as the relay stored them."""

    notification_ids: list[int] = field(default_factory=list)
    hashes: list[str] = field(default_factory=list)
    published_position: int = 0
    problems: list[Problem] = field(default_factory=list)
    by_notification: dict[int, int] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.hashes)

    @property
    def last_notification_id(self) -> int:
        return self.notification_ids[-1] if self.notification_ids else 0

    def hash_before(self, position: int) -> str:
        return self.hashes[position - 2] if position > 1 else GENESIS_HASH


def load_chain(ledger: Ledger) -> ChainIndex:
    """Read every stored event of the LedgerChain aggregate; structural problems are collected, not raised."""
    index = ChainIndex()
    expected_version = 1
    for stored in ledger.recorder.select_events(CHAIN_ID):
        version = stored.originator_version
        if version != expected_version:
            index.problems.append(Problem("chain", f"chain event version {expected_version} is missing "
                                                   f"(found version {version} next): deleted?",
                                          position=index.length + 1))
        expected_version = version + 1
        try:
            event = ledger.mapper.to_domain_event(stored)
        except Exception as error:  # a damaged row: say which, keep reading
            index.problems.append(Problem("chain", f"chain event version {version} cannot be decoded: {error}",
                                          position=index.length + 1))
            continue
        if isinstance(event, LedgerChain.Extended):
            _extend(index, event, version)
        elif isinstance(event, LedgerChain.Published):
            if event.up_to_position > index.length:
                index.problems.append(Problem(
                    "chain", f"chain event version {version} says position {event.up_to_position} was published "
                             f"but the chain ends at {index.length}", position=index.length + 1))
            index.published_position = max(index.published_position, event.up_to_position)
    index.by_notification = {nid: position for position, nid in enumerate(index.notification_ids, start=1)}
    return index


def _extend(index: ChainIndex, event: LedgerChain.Extended, version: int) -> None:
    first = event.first_position
    if first != index.length + 1:
        index.problems.append(Problem(
            "chain", f"chain event version {version} starts at position {first}, expected {index.length + 1} "
                     f"(positions missing or repeated)", position=min(first, index.length + 1)))
    if len(event.notification_ids) != len(event.hashes):
        index.problems.append(Problem("chain", f"chain event version {version} has {len(event.notification_ids)} "
                                               f"notification ids but {len(event.hashes)} hashes", position=first))
    for nid, hash_global in zip(event.notification_ids, event.hashes):
        if nid <= index.last_notification_id:
            index.problems.append(Problem("chain", f"notification id {nid} does not follow "
                                                   f"{index.last_notification_id}: the chain is out of order",
                                          position=index.length + 1))
        index.notification_ids.append(nid)
        index.hashes.append(hash_global)


# -- Reading the store ------------------------------------------------------------------------

def open_ledger(store_url: str) -> Ledger:
    """The event store at `store_url`, refusing to create an empty SQLite file where none exists."""
    if store_url.startswith("sqlite:///"):
        path = Path(store_url[len("sqlite:///"):])
        if not path.exists():
            raise FileNotFoundError(f"no event store at {path}")
    return Ledger(store_url)


def _notifications(ledger: Ledger, up_to: int, after: int = 0,
                   topics: tuple[str, ...] = ()) -> Iterator[Any]:
    start = after + 1
    while start <= up_to:
        page = ledger.recorder.select_notifications(start=start, limit=STORE_PAGE_EVENTS, stop=up_to,
                                                    topics=topics)
        if not page:
            return
        yield page
        start = page[-1].id + 1


def _record_for(stored: StoredLedgerEvent, position: int, notification_id: int, chain: ChainIndex) -> LedgerRecord:
    return ledger_record(position, notification_id, stored, chain.hash_before(position), chain.hashes[position - 1])


def _global_hash_ok(record: LedgerRecord) -> bool:
    return chain_hash(record.prev_hash_global, global_hash_body(record)) == record.hash_global


def stored_records(ledger: Ledger, chain: ChainIndex | None = None, *, first_position: int = 1,
                   last_position: int | None = None) -> Iterator[LedgerRecord]:
    """The ar.ledger records of positions first..last, from the store, each global hash checked (HistoryBroken)."""
    chain = chain or load_chain(ledger)
    if chain.problems:
        raise HistoryBroken(f"the global chain is damaged: {chain.problems[0].describe()} (run 'arledger verify')")
    last_position = chain.length if last_position is None else min(last_position, chain.length)
    if first_position > last_position:
        return
    expected = first_position
    after = chain.notification_ids[first_position - 1] - 1
    up_to = chain.notification_ids[last_position - 1]
    for page in _notifications(ledger, up_to, after, ACCOUNT_EVENT_TOPICS):
        for notification in page:
            position = chain.by_notification.get(notification.id)
            if position is None:
                raise HistoryBroken(f"notification {notification.id} is an account event outside the global chain "
                                    f"(run 'arledger verify')")
            if position != expected:
                raise HistoryBroken(f"position {expected} is missing from the store (run 'arledger verify')")
            event = ledger.mapper.to_domain_event(notification)
            record = _record_for(StoredLedgerEvent.from_stored(event.customer_id, event), position,
                                 notification.id, chain)
            if not _global_hash_ok(record):
                raise HistoryBroken(f"position {position}: the stored event does not match its global hash "
                                    f"(run 'arledger verify')")
            yield record
            expected += 1
    if expected <= last_position:
        raise HistoryBroken(f"position {expected} is missing from the store (run 'arledger verify')")


def unrelayed_events(ledger: Ledger, chain: ChainIndex) -> Iterator[StoredLedgerEvent]:
    """Account events recorded after the chain's last one (the relay has not given them a position yet)."""
    for _, stored in _read_ledger_all(ledger, chain.last_notification_id):
        yield stored


def _read_ledger_all(ledger: Ledger, after: int) -> Iterator[tuple[int, StoredLedgerEvent]]:
    while True:
        page = ledger.read_ledger(after, STORE_PAGE_EVENTS)
        if not page:
            return
        yield from page
        after = page[-1][0]


# -- verify -----------------------------------------------------------------------------------

@dataclass
class _StreamHead:
    version: int
    hash: str
    customer_id: str


class _TopicIndex:
    """Per position of ar.ledger: a digest of the record's bytes, where it was read, and whether the snapshot
    applied it. Dense arrays up to the chain length known before reading (~40 bytes a position instead of a
    few hundred in a dict); anything beyond (published meanwhile, or forged) goes to `overflow`."""

    DIGEST_BYTES = 16  # 128 bits of SHA-256: equality of two records, not a security boundary of its own

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.digests = bytearray(self.DIGEST_BYTES * (capacity + 1))
        self.partitions = array("i", [-1]) * (capacity + 1)
        self.offsets = array("q", [0]) * (capacity + 1)
        self.projected = bytearray(capacity + 1)
        self.overflow: dict[int, tuple[bytes, int, int]] = {}
        self.overflow_projected: set[int] = set()

    @classmethod
    def digest(cls, value: bytes) -> bytes:
        return hashlib.sha256(value).digest()[:cls.DIGEST_BYTES]

    def _dense(self, position: int) -> bool:
        return 1 <= position <= self.capacity

    def get(self, position: int) -> tuple[bytes, int, int] | None:
        if not self._dense(position):
            return self.overflow.get(position)
        if self.partitions[position] < 0:
            return None
        start = position * self.DIGEST_BYTES
        return bytes(self.digests[start:start + self.DIGEST_BYTES]), self.partitions[position], self.offsets[position]

    def put(self, position: int, digest: bytes, partition: int, offset: int) -> None:
        if not self._dense(position):
            self.overflow[position] = (digest, partition, offset)
            return
        start = position * self.DIGEST_BYTES
        self.digests[start:start + self.DIGEST_BYTES] = digest
        self.partitions[position], self.offsets[position] = partition, offset

    def mark_projected(self, position: int) -> None:
        if self._dense(position):
            self.projected[position] = 1
        else:
            self.overflow_projected.add(position)

    def is_projected(self, position: int) -> bool:
        return bool(self.projected[position]) if self._dense(position) else position in self.overflow_projected

    def positions_beyond(self, last: int) -> list[int]:
        """Positions present on the topic that are not in 1..last."""
        dense = [p for p in range(last + 1, self.capacity + 1) if self.partitions[p] >= 0]
        return sorted(dense + [p for p in self.overflow if p > last or p < 1])


class Verifier:
    """One verification run; see the module docstring for what is checked and in which order."""

    def __init__(self, settings: Settings, *, store_url: str | None = None, snapshot_path: Path | None = None,
                 checkpoint: Checkpoint | None = None, skip: frozenset[str] = frozenset(),
                 progress: ProgressSink | None = None) -> None:
        self.settings = settings
        self.store_url = store_url or settings.store_url
        self.snapshot_path = Path(snapshot_path or settings.snapshot_path)
        self.checkpoint = checkpoint
        self.skip = skip
        self.progress = progress or ProgressSink()
        self.report = VerifyReport(from_checkpoint=checkpoint)
        self.topic = settings.topic(TOPIC_LEDGER)
        self._account_ids: dict[str, Any] = {}  # uuid5 per customer, computed once
        self._published_before = 0  # the relay's published position before ar.ledger was read
        self._field_diffs = 0

    def _account_id(self, customer_id: str) -> Any:
        found = self._account_ids.get(customer_id)
        if found is None:
            found = self._account_ids[customer_id] = account_id(customer_id)
        return found

    def run(self) -> VerifyReport:
        with tempfile.TemporaryDirectory(prefix="arledger-verify-") as scratch:
            return self._run(Path(scratch))

    def _run(self, scratch: Path) -> VerifyReport:
        report = self.report
        ledger = open_ledger(self.store_url)
        try:
            # Capture order matters while the workers run: snapshot ≤ published ≤ topic ≤ chain ≤ store, so
            # every later source holds everything an earlier one refers to.
            snapshot = self._copy_snapshot(scratch)
            snapshot_offsets = projection_audit.snapshot_offsets(snapshot, self.topic) if snapshot else None
            topic = None
            if "topic" not in self.skip:
                before = load_chain(ledger)
                self._published_before = before.published_position  # all on the topic by now
                topic = self._read_topic(snapshot_offsets, before.length)
                report.checked.append("topic")
            else:
                report.skipped.append("topic")
            chain = load_chain(ledger)
            max_notification_id = ledger.max_notification_id()
            report.chain_length, report.published_position = chain.length, chain.published_position
            report.chain_head = chain.hashes[-1] if chain.hashes else GENESIS_HASH
            for problem in chain.problems:
                report.add(problem)
            self._check_checkpoint(chain)
            report.checked += ["store", "chain", "receipts"]
            fold = self._fresh_fold(scratch, snapshot, topic)
            self._check_store(ledger, chain, max_notification_id, topic, fold)
        finally:
            ledger.close()
        if topic is not None:
            self._check_topic_tail(chain, topic)
        if fold is not None:
            self._compare_projection(fold, snapshot)
        report.checkpoints = self._checkpoints(chain)
        return report

    # -- snapshot ----------------------------------------------------------------------------

    def _copy_snapshot(self, scratch: Path) -> Path | None:
        if "projection" in self.skip:
            self.report.skipped.append("projection")
            return None
        if not self.snapshot_path.exists():
            self.report.skipped.append("projection")
            self.report.notes.append(f"no snapshot at {self.snapshot_path}: read models not compared")
            return None
        # The projector replaces the snapshot by rename: a copy is one consistent image for the whole run.
        copy = scratch / "snapshot.duckdb"
        publication.copy_published(self.snapshot_path, copy)
        self.report.checked.append("projection")
        return copy

    # -- ar.ledger ---------------------------------------------------------------------------

    def _read_topic(self, snapshot_offsets: dict[int, int] | None, capacity: int) -> _TopicIndex:
        from consumers import clients

        consumer = clients.assigned_consumer(self.settings, "arledger-verify", TOPIC_POLL_RECORDS_MAX)
        index = _TopicIndex(capacity)
        customer_partition: dict[str, int] = {}
        last_position: dict[int, int] = {}
        try:
            partitions = clients.partitions_of(consumer, self.topic)
            consumer.assign(partitions)
            consumer.seek_to_beginning(*partitions)
            ends = consumer.end_offsets(partitions)
            remaining = {tp.partition: ends[tp] for tp in partitions if ends[tp] > 0}
            self.progress.start("ar.ledger", sum(ends.values()))
            deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=TOPIC_READ_TIMEOUT_S)
            while remaining:
                if dt.datetime.now(dt.UTC) > deadline:
                    raise TimeoutError(f"reading {self.topic} took over {TOPIC_READ_TIMEOUT_S:.0f} s")
                polled = consumer.poll(timeout_ms=TOPIC_POLL_TIMEOUT_MS, max_records=TOPIC_POLL_RECORDS_MAX)
                for tp, records in polled.items():
                    end = remaining.get(tp.partition)
                    if end is None:
                        continue
                    read = 0
                    for message in records:
                        if message.offset >= end:
                            break
                        read += 1
                        self._index_topic_record(message, index, customer_partition, last_position,
                                                 snapshot_offsets)
                    self.progress.advance("ar.ledger", read)
                    if records and records[-1].offset + 1 >= end:
                        del remaining[tp.partition]
        finally:
            consumer.close()
        return index

    def _index_topic_record(self, message: Any, index: _TopicIndex, customer_partition: dict[str, int],
                            last_position: dict[int, int], snapshot_offsets: dict[int, int] | None) -> None:
        report = self.report
        report.topic_records += 1
        where = f"{self.topic} partition {message.partition} offset {message.offset}"
        try:
            record = record_decoder.decode(message.value)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            report.add(Problem("topic", f"{where} is not a ledger record: {error}"))
            return
        position = record.position
        if message.key != record.customer_id.encode():
            report.add(Problem("topic", f"{where}: key {message.key!r} is not the record's customer_id",
                               position=position, customer_id=record.customer_id, version=record.version))
        home = customer_partition.setdefault(record.customer_id, message.partition)
        if home != message.partition:
            report.add(Problem("topic", f"{where}: customer {record.customer_id} also appears on partition {home}",
                               position=position, customer_id=record.customer_id, version=record.version))
        digest = _TopicIndex.digest(message.value)
        known = index.get(position)
        if known is not None:
            if known[0] == digest:
                report.topic_duplicates += 1
            else:
                report.add(Problem("topic", f"{where} differs from the record of the same position at partition "
                                            f"{known[1]} offset {known[2]}", position=position,
                                   customer_id=record.customer_id, version=record.version))
        else:
            if position < last_position.get(message.partition, 0):
                report.add(Problem("topic", f"{where}: position {position} comes after position "
                                            f"{last_position[message.partition]} on its partition (reordered)",
                                   position=position, customer_id=record.customer_id, version=record.version))
            index.put(position, digest, message.partition, message.offset)
        last_position[message.partition] = max(last_position.get(message.partition, 0), position)
        if snapshot_offsets is not None and message.offset < snapshot_offsets.get(message.partition, 0):
            index.mark_projected(position)

    def _fetch_topic_record(self, partition: int, offset: int) -> bytes | None:
        from kafka import TopicPartition

        from consumers import clients

        consumer = clients.assigned_consumer(self.settings, "arledger-verify-fetch", 1)
        try:
            tp = TopicPartition(self.topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset)
            for _ in range(10):
                for records in consumer.poll(timeout_ms=TOPIC_POLL_TIMEOUT_MS, max_records=1).values():
                    return records[0].value
        finally:
            consumer.close()
        return None

    def _compare_topic_record(self, record: LedgerRecord, encoded: bytes, topic: _TopicIndex,
                              chain: ChainIndex) -> None:
        known = topic.get(record.position)
        if known is None:
            if record.position <= self._published_before:
                self.report.add(Problem("topic", f"missing from {self.topic} although the relay recorded it as "
                                                 f"published", position=record.position,
                                        customer_id=record.customer_id, version=record.version))
            return
        if known[0] == _TopicIndex.digest(encoded):
            return
        self.report.add(Problem("topic", f"{self.topic} partition {known[1]} offset {known[2]} differs from the "
                                         f"store: {self._field_diff(record, known)}", position=record.position,
                                customer_id=record.customer_id, version=record.version))

    def _field_diff(self, record: LedgerRecord, known: tuple[bytes, int, int]) -> str:
        self._field_diffs += 1
        if self._field_diffs > TOPIC_FIELD_DIFFS_MAX:
            return "content differs"
        raw = self._fetch_topic_record(known[1], known[2])
        if raw is None:
            return "content differs (record could not be read again)"
        try:
            published = msgspec.json.decode(raw)
        except msgspec.DecodeError:
            return "not valid JSON"
        expected = msgspec.to_builtins(record)
        differing = [f"{name}: store {expected.get(name)!r}, topic {published.get(name)!r}"
                     for name in sorted(set(expected) | set(published)) if expected.get(name) != published.get(name)]
        if not differing:
            return "same fields, different bytes (re-encoded or padded)"
        return "; ".join(differing)[:2_000]

    def _check_topic_tail(self, chain: ChainIndex, topic: _TopicIndex) -> None:
        for position in topic.positions_beyond(chain.length):
            _, partition, offset = topic.get(position)
            self.report.add(Problem("topic", f"{self.topic} partition {partition} offset {offset} has position "
                                             f"{position}, which the store's chain does not have (injected?)",
                                    position=position))

    # -- the store and the global chain ---------------------------------------------------

    def _check_checkpoint(self, chain: ChainIndex) -> None:
        checkpoint = self.checkpoint
        if checkpoint is None:
            return
        if checkpoint.position > chain.length:
            self.report.add(Problem("checkpoint", f"checkpoint position {checkpoint.position} is beyond the chain's "
                                                  f"end ({chain.length}): history was truncated",
                                    position=chain.length + 1))
        elif checkpoint.position >= 1 and chain.hashes[checkpoint.position - 1] != checkpoint.hash_global:
            self.report.add(Problem("checkpoint", f"the stored hash {chain.hashes[checkpoint.position - 1]} is not "
                                                  f"the checkpoint's {checkpoint.hash_global}: history up to here "
                                                  f"was rewritten", position=checkpoint.position))

    def _trusted_up_to(self, chain: ChainIndex) -> tuple[int, int]:
        """(position, notification id) up to which a checkpoint is trusted: (0, 0) without one."""
        if self.checkpoint is None or self.checkpoint.position < 1 or self.checkpoint.position > chain.length:
            return 0, 0
        return self.checkpoint.position, chain.notification_ids[self.checkpoint.position - 1]

    def _check_store(self, ledger: Ledger, chain: ChainIndex, max_notification_id: int,
                     topic: _TopicIndex | None, fold: "_Fold | None") -> None:
        report = self.report
        trusted_position, trusted_notification = self._trusted_up_to(chain)
        heads: dict[Any, _StreamHead] = {}
        # envelope id → [customer_id, first_version, last_version, notification, hash of its last event]
        runs: dict[str, list[Any]] = {}
        receipts: list[tuple[int, Any]] = []
        seen = bytearray(chain.length + 1)
        other: dict[str, int] = {}
        self.progress.start("event store", max_notification_id)
        for page in _notifications(ledger, max_notification_id):
            for notification in page:
                if notification.topic in ACCOUNT_EVENT_TOPICS:
                    self._check_account_event(ledger, notification, chain, heads, runs, seen, topic, fold,
                                              trusted_notification)
                elif notification.topic == RECEIPT_TOPIC:
                    if notification.id > trusted_notification:
                        receipts.append((notification.id, notification))
                elif notification.topic not in CHAIN_TOPICS and notification.originator_id != CHAIN_ID:
                    other[notification.topic] = other.get(notification.topic, 0) + 1
            self.progress.advance("event store", page[-1].id - (page[0].id - 1))
        report.streams = len(heads)
        for stored_topic, count in sorted(other.items()):
            report.notes.append(f"{count} stored event(s) of another kind ({stored_topic}) not checked")
        for position in range(trusted_position + 1, chain.length + 1):
            if not seen[position]:
                report.add(Problem("chain", f"its event (notification {chain.notification_ids[position - 1]}) is "
                                            f"missing from the store: deleted?", position=position))
        self._check_receipts(ledger, receipts, runs, chain, trusted_notification)
        if fold is not None:
            fold.flush()

    def _check_account_event(self, ledger: Ledger, notification: Any, chain: ChainIndex,
                             heads: dict[Any, _StreamHead], runs: dict[str, list[Any]], seen: bytearray,
                             topic: _TopicIndex | None, fold: "_Fold | None", trusted_notification: int) -> None:
        report = self.report
        report.events += 1
        nid = notification.id
        position = chain.by_notification.get(nid)
        checking = nid > trusted_notification
        try:
            event = ledger.mapper.to_domain_event(notification)
            stored = StoredLedgerEvent.from_stored(event.customer_id, event)
        except Exception as error:  # damaged bytes: name the row, go on with the others
            if checking:
                report.add(Problem("store", f"stored event cannot be decoded ({type(error).__name__}: {error})",
                                   position=position, notification_id=nid))
            if position is not None:
                seen[position] = 1
            return
        customer, version = stored.customer_id, stored.version
        head = heads.get(notification.originator_id)
        if checking:
            self._check_stream_link(notification, event, stored, head, position)
        heads[notification.originator_id] = _StreamHead(version, stored.hash, customer)
        run = runs.get(stored.envelope_id)
        if run is not None and run[0] == customer and run[2] + 1 == version:
            run[2], run[4] = version, stored.hash
        elif run is None:
            runs[stored.envelope_id] = [customer, version, version, nid, stored.hash]
        elif checking:
            report.add(Problem("receipts", f"envelope {stored.envelope_id} produced events that are not "
                                           f"consecutive in one stream ({run[0]} {run[1]}..{run[2]}, then this)",
                               position=position, customer_id=customer, version=version))
        if position is None:
            if nid <= chain.last_notification_id:
                if checking:
                    report.add(Problem("chain", "account event missing from the global chain (inserted after the "
                                                "relay chained its neighbours?)", customer_id=customer,
                                       version=version, notification_id=nid))
            else:
                report.not_relayed += 1
            return
        seen[position] = 1
        record = _record_for(stored, position, nid, chain)
        encoded = record_encoder.encode(record)
        if checking:
            if not _global_hash_ok(record):
                report.add(Problem("chain", "the stored event does not hash to the global chain's hash for this "
                                            "position (event or chain altered)", position=position,
                                   customer_id=customer, version=version))
            if topic is not None:
                self._compare_topic_record(record, encoded, topic, chain)
        if fold is not None:
            fold.add(position, encoded)

    def _check_stream_link(self, notification: Any, event: Any, stored: StoredLedgerEvent, head: _StreamHead | None,
                           position: int | None) -> None:
        """Stream id, version continuity, prev_hash link, recomputed hash, decodable data, plausible metadata."""
        customer, version = stored.customer_id, stored.version

        def problem(reason: str) -> None:
            self.report.add(Problem("store", reason, position=position, customer_id=customer, version=version))

        if notification.originator_id != self._account_id(customer):
            problem(f"stored in stream {notification.originator_id}, which is not customer {customer}'s "
                    f"(moved or swapped?)")
            return
        expected_version = head.version + 1 if head else 1
        if version != expected_version:
            problem(f"stream version {expected_version} is missing (deleted?); next stored is {version}"
                    if version > expected_version else f"version {version} comes again after {head.version} "
                                                       f"(reordered?)")
            return
        if (version == 1) != (notification.topic == OPENED_TOPIC):
            problem(f"version {version} is stored as {notification.topic.rsplit('.', 1)[-1]}")
            return
        if version == 1 and getattr(event, "originator_topic", ACCOUNT_TOPIC) != ACCOUNT_TOPIC:
            problem(f"the stream's aggregate type was changed to {event.originator_topic!r}")
            return
        expected_prev = head.hash if head else GENESIS_HASH
        if stored.prev_hash != expected_prev:
            problem(f"prev_hash {stored.prev_hash} does not link to the previous event's hash {expected_prev}")
            return
        body = customer_hash_body(kind=stored.kind, customer_id=customer, envelope_id=stored.envelope_id,
                                  version=version, recorded_at=stored.recorded_at,
                                  schema_version=stored.schema_version, data=stored.data)
        if chain_hash(stored.prev_hash, body) != stored.hash:
            problem("content does not match its hash (altered)")
            return
        try:
            event_from_data(stored.kind, upcast(stored.kind, stored.data, stored.schema_version))
        except Exception as error:
            problem(f"data does not decode as {stored.kind} version {stored.schema_version}: {error}")
            return
        skew = _timestamp_skew_s(event.timestamp, stored.recorded_at)
        if skew is None or not -TIMESTAMP_BEFORE_RECORDED_S_MAX <= skew <= TIMESTAMP_AFTER_RECORDED_S_MAX:
            problem(f"the store's own timestamp {event.timestamp.isoformat()} is implausible for recorded_at "
                    f"{stored.recorded_at} (edited?)")

    def _check_receipts(self, ledger: Ledger, receipts: list[tuple[int, Any]], runs: dict[str, list[Any]],
                        chain: ChainIndex, trusted_notification: int) -> None:
        report = self.report
        claimed = set()
        unhashed: list[int] = []
        hashed_from = math.inf
        recovered = 0
        for nid, notification in receipts:
            report.receipts += 1
            try:
                receipt = ledger.mapper.to_domain_event(notification)
            except Exception as error:
                report.add(Problem("receipts", f"receipt cannot be decoded: {error}", notification_id=nid))
                continue
            claimed.add(receipt.envelope_id)
            recovered += receipt.digest == RECOVERED_DIGEST
            where = dict(customer_id=receipt.customer_id, version=receipt.first_version, notification_id=nid)
            if notification.originator_id != receipt_id(receipt.envelope_id):
                report.add(Problem("receipts", f"receipt of envelope {receipt.envelope_id} is stored under another "
                                               f"id", **where))
                continue
            run = runs.get(receipt.envelope_id)
            if run is None:
                report.add(Problem("receipts", f"envelope {receipt.envelope_id} was accepted "
                                               f"(versions {receipt.first_version}..{receipt.last_version}) but its "
                                               f"events are not in the store: deleted?", **where))
            elif (run[0], run[1], run[2]) != (receipt.customer_id, receipt.first_version, receipt.last_version):
                # Located at the first version that differs; its position is unknown when it was deleted.
                differs = (receipt.first_version if run[1] != receipt.first_version
                           else min(run[2], receipt.last_version) + 1)
                report.add(Problem("receipts", f"envelope {receipt.envelope_id}: the receipt says versions "
                                               f"{receipt.first_version}..{receipt.last_version} of "
                                               f"{receipt.customer_id}, the store has {run[1]}..{run[2]} of "
                                               f"{run[0]}", **(where | {"version": differs})))
            elif getattr(receipt, "hash", None) is None:
                unhashed.append(nid)
            elif receipt_hash(run[4], receipt_claims(receipt)) != receipt.hash:
                report.add(Problem("receipts", f"receipt of envelope {receipt.envelope_id} does not match its hash "
                                               f"(its digest, type, recorded time or origin was altered)", **where))
            else:
                hashed_from = min(hashed_from, nid)
        late = [nid for nid in unhashed if nid > hashed_from]
        if late:  # receipts are hashed since a version: one without a hash after a hashed one was stripped
            report.add(Problem("receipts", f"{len(late)} receipt(s) stored after hashed ones carry no hash "
                                           f"(hash removed?)", notification_id=late[0]))
        if recovered:
            report.notes.append(f"{recovered} receipt(s) recovered from ar.ledger by 'arledger recover-store' "
                                f"(content digest unknown: a later envelope with the same id is a duplicate)")
        if len(unhashed) > len(late):
            report.notes.append(f"{len(unhashed) - len(late)} receipt(s) written before receipts were hashed: "
                                f"checked against their events' versions only")
        for envelope_id, (customer, first, last, nid, _) in runs.items():
            if nid > trusted_notification and envelope_id not in claimed:
                report.add(Problem("receipts", f"events of envelope {envelope_id} have no receipt (inserted?)",
                                   position=chain.by_notification.get(nid), customer_id=customer, version=first))

    # -- the read models ---------------------------------------------------------------------

    def _fresh_fold(self, scratch: Path, snapshot: Path | None, topic: _TopicIndex | None) -> "_Fold | None":
        if snapshot is None:
            return None
        if topic is None:
            self.report.notes.append("ar.ledger not read: the fresh fold takes every position up to the highest "
                                     "one in the snapshot")
        return _Fold(scratch / "fresh.duckdb", topic, projection_audit.max_position(snapshot), self.progress)

    def _compare_projection(self, fold: "_Fold", snapshot: Path) -> None:
        self.report.projected_events = fold.count
        self.progress.start("compare tables", None)
        differences, compared = projection_audit.compare_with_snapshot(fold.connection, snapshot, ROWS_SHOWN_MAX)
        fold.close()
        self.report.tables_compared = compared
        for difference in differences:
            self.report.add(Problem("projection", difference.describe(), position=difference.position,
                                    customer_id=difference.customer_id))

    def _checkpoints(self, chain: ChainIndex) -> list[Checkpoint]:
        verified_at = format_instant(dt.datetime.now(dt.UTC))
        return [Checkpoint(position=position, hash_global=chain.hashes[position - 1],
                           notification_id=chain.notification_ids[position - 1], verified_at=verified_at)
                for position in range(CHECKPOINT_INTERVAL_EVENTS, chain.length + 1, CHECKPOINT_INTERVAL_EVENTS)]


class _Fold:
    """A fresh DuckDB fold of the store's records that the snapshot should reflect."""

    def __init__(self, path: Path, topic: _TopicIndex | None, max_position: int,
                 progress: ProgressSink) -> None:
        self.connection = projection_audit.fresh_read_model(path)
        self.staging_dir = path.parent
        self.topic = topic  # None: every position up to max_position
        self.max_position = max_position
        self.pending: list[bytes] = []
        self.count = 0
        self.progress = progress

    def add(self, position: int, encoded: bytes) -> None:
        if self.topic is not None and not self.topic.is_projected(position):
            return
        if self.topic is None and position > self.max_position:
            return
        self.pending.append(encoded)
        if len(self.pending) >= FOLD_BATCH_EVENTS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            projection_audit.fold_records(self.connection, self.pending, staging_dir=self.staging_dir)
            self.count += len(self.pending)
            self.pending = []

    def close(self) -> None:
        self.connection.close()


def _timestamp_skew_s(timestamp: Any, recorded_at: str) -> float | None:
    """Seconds from `recorded_at` to the store's own event timestamp (None if either is unreadable)."""
    try:
        recorded = dt.datetime.fromisoformat(recorded_at.replace("Z", "+00:00"))
        return (timestamp - recorded).total_seconds()
    except (TypeError, ValueError):
        return None


def verify(settings: Settings, **options: Any) -> VerifyReport:
    """Check the store, the chain, ar.ledger and the snapshot against each other (see `Verifier`)."""
    return Verifier(settings, **options).run()


# -- replay and export (store and DuckDB only; no Kafka) ------------------------------------

@dataclass
class ReplayResult:
    known_at: str
    events: int
    last_position: int
    last_hash_global: str | None
    not_relayed: int


def replay(store_url: str, known_at: dt.datetime, out: Path,
           on_progress: Callable[[int], None] | None = None, on_total: Callable[[int], None] | None = None
           ) -> ReplayResult:
    """Fold, into a new DuckDB file `out`, every ledger record recorded at or before `known_at`."""
    cutoff = format_instant(known_at)
    ledger = open_ledger(store_url)
    try:
        chain = load_chain(ledger)
        if on_total:
            on_total(chain.length)
        connection = projection_audit.fresh_read_model(out)
        batch: list[bytes] = []
        events, last = 0, None
        try:
            for record in stored_records(ledger, chain):
                if record.recorded_at <= cutoff:
                    batch.append(record_encoder.encode(record))
                    events += 1
                    last = record
                if len(batch) >= FOLD_BATCH_EVENTS:
                    projection_audit.fold_records(connection, batch, staging_dir=out.parent)
                    batch = []
                if on_progress:
                    on_progress(1)
            projection_audit.fold_records(connection, batch, staging_dir=out.parent)
            not_relayed = sum(1 for stored in unrelayed_events(ledger, chain) if stored.recorded_at <= cutoff)
            result = ReplayResult(known_at=cutoff, events=events, last_position=last.position if last else 0,
                                  last_hash_global=last.hash_global if last else None, not_relayed=not_relayed)
            projection_audit.write_meta(connection, {
                "replay_known_at": cutoff, "replay_events": str(events),
                "replay_last_position": str(result.last_position),
                "replay_last_hash_global": result.last_hash_global or "",
                "replay_chain_length": str(chain.length)})
        finally:
            connection.close()
    finally:
        ledger.close()
    return result


@dataclass
class ExportResult:
    records: int
    first_position: int | None
    last_position: int | None
    anchor: str | None  # prev_hash_global of the first record
    head: str | None  # hash_global of the last record


def export(store_url: str, out: Path, fmt: str = "jsonl", *, recorded_from: dt.datetime | None = None,
           recorded_to: dt.datetime | None = None, first_position: int | None = None,
           last_position: int | None = None, on_progress: Callable[[int], None] | None = None,
           on_total: Callable[[int], None] | None = None) -> ExportResult:
    """Write the ledger records of one contiguous position range, with their hashes, as JSONL or Parquet.

    The range runs from the first position recorded at or after `recorded_from` to the last one recorded at
    or before `recorded_to` (recorded times are not strictly ordered by position when several ingest
    workers write; the range stays contiguous so the chain can be checked without gaps).
    """
    assert fmt in ("jsonl", "parquet"), fmt
    low = format_instant(recorded_from) if recorded_from else None
    high = format_instant(recorded_to) if recorded_to else None
    ledger = open_ledger(store_url)
    try:
        chain = load_chain(ledger)
        if on_total:
            on_total(chain.length)
        with tempfile.TemporaryDirectory(prefix="arledger-export-", dir=out.parent) as scratch:
            lines = Path(scratch) / "records.jsonl"
            result = _write_range(ledger, chain, lines, low, high, first_position, last_position, on_progress)
            if fmt == "jsonl":
                shutil.move(str(lines), out)
            else:
                projection_audit.jsonl_to_parquet(lines, out)
    finally:
        ledger.close()
    return result


def _write_range(ledger: Ledger, chain: ChainIndex, path: Path, low: str | None, high: str | None,
                 first_position: int | None, last_position: int | None,
                 on_progress: Callable[[int], None] | None) -> ExportResult:
    """Write records from the first one recorded at/after `low`; cut after the last one recorded at/before `high`."""
    first: LedgerRecord | None = None
    last: LedgerRecord | None = None
    written = kept = kept_bytes = 0
    with path.open("wb") as file:
        for record in stored_records(ledger, chain, first_position=first_position or 1,
                                     last_position=last_position):
            if on_progress:
                on_progress(1)
            if first is None:
                if low is not None and record.recorded_at < low:
                    continue
                first = record
            file.write(record_encoder.encode(record) + b"\n")
            written += 1
            if high is None or record.recorded_at <= high:
                kept, kept_bytes, last = written, file.tell(), record
        file.truncate(kept_bytes)
    if first is None or last is None:
        return ExportResult(0, None, None, None, None)
    return ExportResult(kept, first.position, last.position, first.prev_hash_global, last.hash_global)
