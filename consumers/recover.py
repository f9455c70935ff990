"""Recover a lost event store from ar.ledger, every hash checked (`arledger recover-store`).

ar.ledger keeps every published event for ever, with its global position, the event store's notification id,
the customer stream version and both hash chains (docs/contract.md §4). That is enough to write the store's
account events back exactly as they were stored, and the relay's global chain with them:

1. read every partition of ar.ledger into a scratch SQLite table keyed by position. A position read twice
   (the relay publishes at least once) must be byte-identical to the first copy: it is then skipped; two
   different records of one position stop the recovery.
2. walk the positions 1..N in order and check each record: no gap, the notification ids increasing,
   `prev_hash_global` linking to the previous record and `hash_global` recomputed, the customer's stream
   versions 1..n with `prev_hash_customer` linking and `hash_customer` recomputed, the data decodable, the
   events of one envelope consecutive in one stream. The first record that fails stops the recovery with
   its position, partition and offset and the hash (or rule) it fails.
3. write, in ONE transaction of an empty store (a SQLite store is written to a scratch file beside the
   target and renamed into place only when complete): each event at its own notification id, a receipt
   per envelope (`RECOVERED_DIGEST`, see docs/decisions.md), and the global chain (`LedgerChain`) with
   every position published. `arledger verify` passes on the result and `arledger run` continues from it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import msgspec

from arledger.settings import RELAY_BATCH_EVENTS_MAX, TOPIC_LEDGER, Settings
from ledger.aggregate import RECOVERED_DIGEST, RECOVERED_ORIGIN, LedgerChain, receipt_accepted, recovered_account_event
from ledger.application import Ledger
from ledger.events import event_from_data
from ledger.hashing import GENESIS_HASH, chain_hash, customer_hash_body, receipt_hash, receipt_hash_body
from ledger.records import LedgerRecord, global_hash_body, record_decoder
from ledger.store import stored_event_count, write_with_notification_ids
from ledger.upcasting import upcast

TOPIC_POLL_TIMEOUT_MS = 1_000
TOPIC_POLL_RECORDS_MAX = 10_000
TOPIC_READ_TIMEOUT_S = 3_600.0
STAGING_COMMIT_RECORDS = 50_000  # scratch-table rows per commit while reading the topic

# progress(stage, done, total): stage "reading ar.ledger" (records) then "writing the store" (positions)
Progress = Callable[[str, int, int | None], None]


class RecoveryError(Exception):
    """The recovery cannot go on (a bad record, a store that is not empty): a message for a person."""


@dataclass
class RecoveryResult:
    store: str
    positions: int  # account events written = the global chain's length
    customers: int
    receipts: int
    topic_records: int  # records read from ar.ledger, duplicates included
    duplicates: int  # re-published records, byte-identical to the first copy, skipped
    chain_head: str
    max_notification_id: int

    def as_json(self) -> dict[str, Any]:
        return dict(vars(self))


class _PositionProbe(msgspec.Struct):
    position: int


_probe = msgspec.json.Decoder(_PositionProbe)


def _no_progress(stage: str, done: int, total: int | None) -> None:
    pass


def _sqlite_path(store_url: str) -> Path | None:
    if store_url.startswith("sqlite:///"):
        return Path(unquote(store_url[len("sqlite:///"):]))
    return None


def _redacted(store_url: str) -> str:
    from arledger.backup import _redacted as redacted

    return redacted(store_url)


def recover_store(settings: Settings, *, store_url: str | None = None, progress: Progress = _no_progress,
                  scratch_dir: Path | None = None) -> RecoveryResult:
    """Rebuild the empty event store at `store_url` (default: the settings') from ar.ledger; see the module doc."""
    store_url = store_url or settings.store_url
    sqlite_path = _sqlite_path(store_url)
    if sqlite_path is None and not store_url.startswith(("postgresql://", "postgres://")):
        raise RecoveryError(f"cannot recover into {_redacted(store_url)}: only sqlite:/// and postgresql:// stores")
    _require_empty(store_url, sqlite_path)
    topic = settings.topic(TOPIC_LEDGER)
    with tempfile.TemporaryDirectory(prefix="arledger-recover-", dir=scratch_dir) as scratch:
        staged = sqlite3.connect(Path(scratch) / "staged.sqlite")
        try:
            read, duplicates = _stage_topic(settings, topic, staged, progress)
            if sqlite_path is None:
                result = _write(store_url, topic, staged, progress)
            else:
                result = _write_sqlite(sqlite_path, topic, staged, progress)
        finally:
            staged.close()
    result.topic_records, result.duplicates = read, duplicates
    return result


def _require_empty(store_url: str, sqlite_path: Path | None) -> None:
    if sqlite_path is not None and (not sqlite_path.exists() or sqlite_path.stat().st_size == 0):
        return
    ledger = Ledger(store_url)
    try:
        rows = stored_event_count(ledger)
    finally:
        ledger.close()
    if rows:
        raise RecoveryError(f"the event store {_redacted(store_url)} is not empty (it holds {rows} stored events): "
                            "recover into a new SQLite file or an empty PostgreSQL database")


# -- 1. ar.ledger into a scratch table ----------------------------------------------------------

def _stage_topic(settings: Settings, topic: str, staged: sqlite3.Connection, progress: Progress) -> tuple[int, int]:
    """Every record of every partition, one row per position; returns (records read, duplicates skipped)."""
    from consumers import clients

    staged.execute("CREATE TABLE staged (position INTEGER PRIMARY KEY, partition INTEGER, offset INTEGER, "
                   "key BLOB, value BLOB)")
    consumer = clients.assigned_consumer(settings, "arledger-recover", TOPIC_POLL_RECORDS_MAX)
    read = duplicates = 0
    try:
        partitions = clients.partitions_of(consumer, topic)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        remaining = {tp.partition: ends[tp] for tp in partitions if ends[tp] > 0}
        total = sum(ends.values())
        progress("reading ar.ledger", 0, total)
        deadline = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=TOPIC_READ_TIMEOUT_S)
        while remaining:
            if dt.datetime.now(dt.UTC) > deadline:
                raise RecoveryError(f"reading {topic} took over {TOPIC_READ_TIMEOUT_S:.0f} s")
            polled = consumer.poll(timeout_ms=TOPIC_POLL_TIMEOUT_MS, max_records=TOPIC_POLL_RECORDS_MAX)
            for tp, messages in polled.items():
                end = remaining.get(tp.partition)
                if end is None:
                    continue
                for message in messages:
                    if message.offset >= end:
                        break
                    read += 1
                    duplicates += _stage_one(topic, staged, message)
                if messages and messages[-1].offset + 1 >= end:
                    del remaining[tp.partition]
            staged.commit()
            progress("reading ar.ledger", read, total)
    finally:
        consumer.close()
    staged.commit()
    return read, duplicates


def _stage_one(topic: str, staged: sqlite3.Connection, message: Any) -> int:
    where = f"{topic} partition {message.partition} offset {message.offset}"
    try:
        position = _probe.decode(message.value).position
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise RecoveryError(f"{where} is not a ledger record ({error}): nothing was written") from error
    inserted = staged.execute("INSERT OR IGNORE INTO staged VALUES (?, ?, ?, ?, ?)",
                              (position, message.partition, message.offset, message.key, message.value)).rowcount
    if inserted:
        return 0
    [(partition, offset, value)] = staged.execute(
        "SELECT partition, offset, value FROM staged WHERE position = ?", (position,)).fetchall()
    if bytes(value) != message.value:
        raise RecoveryError(f"position {position}: {where} differs from the record of the same position at "
                            f"partition {partition} offset {offset} (conflicting records; a forged or altered "
                            f"copy): nothing was written")
    return 1  # re-published, byte-identical: skipped


# -- 2. and 3. check in position order, write -------------------------------------------------

@dataclass
class _Run:
    """The events one envelope produced: consecutive versions of one stream."""

    customer_id: str
    first_version: int
    last_version: int
    recorded_at: str
    kind: str  # of its first event
    last_hash: str
    last_notification_id: int


class _Walk:
    """Checks the staged records in position order and yields (notification id, stored event) to write."""

    def __init__(self, topic: str, staged: sqlite3.Connection, progress: Progress) -> None:
        self.topic = topic
        self.staged = staged
        self.progress = progress
        self.heads: dict[str, tuple[int, str]] = {}  # customer → (version, hash_customer)
        self.runs: dict[str, _Run] = {}
        self.notification_ids: list[int] = []
        self.hashes: list[str] = []
        self.taken = bytearray()  # notification ids of account events (1 = taken)
        self.receipts = 0

    def rows(self) -> Iterator[tuple[int, Any]]:
        [(total,)] = self.staged.execute("SELECT count(*) FROM staged").fetchall()
        self.progress("writing the store", 0, total)
        expected, prev_hash, prev_nid = 1, GENESIS_HASH, 0
        for position, partition, offset, key, value in self.staged.execute(
                "SELECT position, partition, offset, key, value FROM staged ORDER BY position"):
            where = f"position {position} ({self.topic} partition {partition} offset {offset})"
            if position != expected:
                raise RecoveryError(f"position {expected} is missing from {self.topic}: the next record is {where}")
            record = self._decode(where, value)
            self._check_global(where, record, key, prev_hash, prev_nid)
            yield record.notification_id, self._check_customer(where, record)
            self._take(record.notification_id)
            self.notification_ids.append(record.notification_id)
            self.hashes.append(record.hash_global)
            expected, prev_hash, prev_nid = position + 1, record.hash_global, record.notification_id
            if position % 10_000 == 0:
                self.progress("writing the store", position, total)
        self.progress("writing the store", expected - 1, total)
        highest = prev_nid
        for notification_id, receipt in self._receipts(highest):
            highest = max(highest, notification_id)
            yield notification_id, receipt
        for event in self._chain_events():
            highest += 1
            yield highest, event

    def _decode(self, where: str, value: bytes) -> LedgerRecord:
        try:
            return record_decoder.decode(value)
        except (msgspec.DecodeError, msgspec.ValidationError) as error:
            raise RecoveryError(f"{where} is not a ledger record: {error}") from error

    def _check_global(self, where: str, record: LedgerRecord, key: bytes | None, prev_hash: str,
                      prev_nid: int) -> None:
        if key != record.customer_id.encode():
            raise RecoveryError(f"{where}: the record's key {key!r} is not its customer_id {record.customer_id!r}")
        if record.notification_id <= prev_nid:
            raise RecoveryError(f"{where}: notification id {record.notification_id} does not follow the previous "
                                f"position's {prev_nid}")
        if record.prev_hash_global != prev_hash:
            raise RecoveryError(f"{where}: prev_hash_global {record.prev_hash_global} does not link to the previous "
                                f"position's hash_global {prev_hash}")
        if chain_hash(record.prev_hash_global, global_hash_body(record)) != record.hash_global:
            raise RecoveryError(f"{where}: hash_global does not match the record's content (altered or forged)")

    def _check_customer(self, where: str, record: LedgerRecord) -> Any:
        customer = record.customer_id
        where = f"{where}, customer {customer} version {record.version}"
        head_version, head_hash = self.heads.get(customer, (0, GENESIS_HASH))
        if record.version != head_version + 1:
            raise RecoveryError(f"{where}: the stream's next version is {head_version + 1}")
        if record.prev_hash_customer != head_hash:
            raise RecoveryError(f"{where}: prev_hash_customer {record.prev_hash_customer} does not link to the "
                                f"previous version's hash_customer {head_hash}")
        body = customer_hash_body(kind=record.kind, customer_id=customer, envelope_id=record.envelope_id,
                                  version=record.version, recorded_at=record.recorded_at,
                                  schema_version=record.schema_version, data=record.data)
        if chain_hash(record.prev_hash_customer, body) != record.hash_customer:
            raise RecoveryError(f"{where}: hash_customer does not match the record's content (altered or forged)")
        try:
            event_from_data(record.kind, upcast(record.kind, record.data, record.schema_version))
        except Exception as error:  # noqa: BLE001 - any failure to decode is the record's
            raise RecoveryError(f"{where}: data does not decode as {record.kind} version "
                                f"{record.schema_version}: {error}") from error
        self.heads[customer] = (record.version, record.hash_customer)
        run = self.runs.get(record.envelope_id)
        if run is None:
            self.runs[record.envelope_id] = _Run(customer, record.version, record.version, record.recorded_at,
                                                 record.kind, record.hash_customer, record.notification_id)
        elif run.customer_id == customer and run.last_version + 1 == record.version:
            run.last_version, run.last_hash = record.version, record.hash_customer
            run.last_notification_id = record.notification_id
        else:
            raise RecoveryError(f"{where}: envelope {record.envelope_id} produced events that are not consecutive "
                                f"in one stream ({run.customer_id} {run.first_version}..{run.last_version}, "
                                f"then this)")
        return recovered_account_event(customer_id=customer, version=record.version, kind=record.kind,
                                       data=record.data, envelope_id=record.envelope_id,
                                       recorded_at=record.recorded_at, schema_version=record.schema_version,
                                       prev_hash=record.prev_hash_customer, hash=record.hash_customer)

    def _take(self, notification_id: int) -> None:
        if notification_id >= len(self.taken):
            self.taken.extend(bytes(notification_id - len(self.taken) + 65_536))
        self.taken[notification_id] = 1

    def _is_taken(self, notification_id: int) -> bool:
        return notification_id < len(self.taken) and bool(self.taken[notification_id])

    def _receipts(self, highest: int) -> Iterator[tuple[int, Any]]:
        """A receipt per envelope, at the id right after its last event (where ingest wrote it) when free."""
        after = highest
        for envelope_id, run in self.runs.items():
            notification_id = run.last_notification_id + 1
            if self._is_taken(notification_id):
                after += 1
                notification_id = after
            claims = receipt_hash_body(envelope_id=envelope_id, digest=RECOVERED_DIGEST, customer_id=run.customer_id,
                                       type=run.kind, first_version=run.first_version,
                                       last_version=run.last_version, recorded_at=run.recorded_at,
                                       origin=RECOVERED_ORIGIN)
            self.receipts += 1
            yield notification_id, receipt_accepted(claims, receipt_hash(run.last_hash, claims),
                                                    dt.datetime.fromisoformat(run.recorded_at))

    def _chain_events(self) -> list[Any]:
        """The relay's LedgerChain: every position chained and published."""
        chain = LedgerChain()
        for start in range(0, len(self.hashes), RELAY_BATCH_EVENTS_MAX):
            chain.extend(start + 1, self.notification_ids[start:start + RELAY_BATCH_EVENTS_MAX],
                         self.hashes[start:start + RELAY_BATCH_EVENTS_MAX])
        if self.hashes:
            chain.published(len(self.hashes))
        return list(chain.collect_events())


def _write(store_url: str, topic: str, staged: sqlite3.Connection, progress: Progress) -> RecoveryResult:
    """Check and write into the (empty) store at `store_url`, in one transaction."""
    walk = _Walk(topic, staged, progress)
    ledger = Ledger(store_url)
    try:
        if stored_event_count(ledger):  # written to since the first look
            raise RecoveryError(f"the event store {_redacted(store_url)} is not empty")
        write_with_notification_ids(ledger, walk.rows())
        max_notification_id = ledger.max_notification_id()
    finally:
        ledger.close()
    return RecoveryResult(store=_redacted(store_url), positions=len(walk.hashes), customers=len(walk.heads),
                          receipts=walk.receipts, topic_records=0, duplicates=0,
                          chain_head=walk.hashes[-1] if walk.hashes else GENESIS_HASH,
                          max_notification_id=max_notification_id)


def _write_sqlite(path: Path, topic: str, staged: sqlite3.Connection, progress: Progress) -> RecoveryResult:
    """A SQLite store is written to a scratch file beside `path`, renamed into place only when complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".recovering-", suffix=".sqlite",
                                     delete=False) as scratch:
        scratch_path = Path(scratch.name)
    scratch_path.unlink()
    try:
        result = _write(f"sqlite:///{scratch_path}", topic, staged, progress)
        with contextlib.closing(sqlite3.connect(scratch_path)) as connection:
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            connection.execute("PRAGMA journal_mode=DELETE")  # one file, nothing beside it
        if path.exists() and path.stat().st_size > 0:
            _require_empty(f"sqlite:///{path}", path)  # written to meanwhile?
        scratch_path.replace(path)
    finally:
        for leftover in (scratch_path, Path(f"{scratch_path}-wal"), Path(f"{scratch_path}-shm")):
            leftover.unlink(missing_ok=True)
    result.store = f"sqlite:///{path}"
    return result
