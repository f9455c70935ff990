"""The ledger application service: the one place in ledger/ that touches storage (through eventsourcing).

`Ledger.process_batch(records)` takes raw inbound records, checks each in the
order of docs/contract.md §8, applies the accepted ones to CustomerAccount aggregates and
saves every event of the batch — with the idempotency receipts — in one atomic
`save()`. A transient failure raises and leaves nothing half-written: the
caller retries the same batch, which gives the same outcomes.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse
from uuid import UUID

import msgspec
from eventsourcing.application import AggregateNotFoundError, Application
from eventsourcing.persistence import JSONTranscoder, PersistenceError
from eventsourcing.utils import get_topic

from ledger import contract as c
from ledger.account import AccountState, CreditPolicy
from ledger.aggregate import (
    CHAIN_ID,
    RECOVERED_DIGEST,
    AccountStateAsBuiltins,
    CustomerAccount,
    EnvelopeReceipt,
    LedgerChain,
    account_id,
    parse_instant,
    receipt_accepted,
    receipt_id,
)
from ledger.errors import DuplicateConflict, InvalidEnvelope, Rejection, UnknownCustomer
from ledger.events import DomainEvent, event_from_data
from ledger.hashing import GENESIS_HASH, receipt_hash, receipt_hash_body
from ledger.store import can_select_first_versions, mapper_class, record_in_order, select_first_versions
from ledger.upcasting import upcast

ACCOUNT_CACHE_MAX = 50_000  # accounts kept in memory between batches (one writer per partition set)
RECEIPT_CACHE_MAX = 200_000  # recent envelope ids: redeliveries after a crash hit this, not the store
SNAPSHOT_INTERVAL_EVENTS = 500  # an account with 100,000 events loads from a snapshot + < 500 events
ACCOUNT_EVENT_TOPICS = (get_topic(CustomerAccount.Opened), get_topic(CustomerAccount.Recorded))
AccountEvent = CustomerAccount.Opened | CustomerAccount.Recorded


_LedgerMapper = mapper_class((CustomerAccount.Opened, CustomerAccount.Recorded, EnvelopeReceipt.Accepted))

# A remembered receipt: digest, origin, envelope id, customer id, type, recorded_at, first and last version.
_CachedReceipt = tuple[str, str | None, str | None, str | None, str | None, str | None, int | None, int | None]


class _IdProbe(msgspec.Struct):
    id: Any = None


_id_probe = msgspec.json.Decoder(_IdProbe)


class PoisonRecord(Exception):
    """Record `index` of a batch made the ledger's own code fail — a bug, not a broken rule. Nothing
    of the batch was saved; the caller sets the record aside (rejected as `internal_error`, to be
    re-driven after a fix) and processes the rest, so one record never stalls its partition."""

    def __init__(self, index: int, error: BaseException) -> None:
        super().__init__(f"record {index} of the batch failed: {error!r}")
        self.index = index
        self.error = error


class _RecordFailed(Exception):
    def __init__(self, error: BaseException) -> None:
        super().__init__(repr(error))
        self.error = error


class InboundRecord(msgspec.Struct, frozen=True):
    """One raw record as read from ar.inbound (or a file): the bytes and the Kafka key."""

    value: bytes
    key: bytes | None = None
    origin: str | None = None  # "topic:partition:offset" where it was read, if from Kafka


class Outcome(msgspec.Struct, kw_only=True):
    """What became of one inbound record."""

    status: str  # "accepted" | "rejected" | "duplicate"
    envelope_id: str | None = None
    customer_id: str | None = None
    type: str | None = None
    reason: str | None = None  # reason code when rejected
    message: str | None = None
    recorded_at: str | None = None
    first_version: int | None = None  # stream versions of the events the fact produced
    last_version: int | None = None
    redelivered: bool = False  # a duplicate read again from the very same Kafka offset (crash recovery)
    events: list[DomainEvent] = msgspec.field(default_factory=list)


def store_environment(store_url: str) -> dict[str, str]:
    """Map ARLEDGER_STORE (sqlite:///path, postgresql://user:pw@host:port/db, memory://) to eventsourcing's env."""
    parsed = urlparse(store_url)
    if parsed.scheme == "sqlite":
        path = unquote(store_url[len("sqlite:///"):]) if store_url.startswith("sqlite:///") else parsed.path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return {"PERSISTENCE_MODULE": "eventsourcing.sqlite", "SQLITE_DBNAME": path,
                "SQLITE_LOCK_TIMEOUT": "30"}
    if parsed.scheme in ("postgresql", "postgres"):
        return {"PERSISTENCE_MODULE": "eventsourcing.postgres", "POSTGRES_DBNAME": parsed.path.lstrip("/"),
                "POSTGRES_HOST": parsed.hostname or "127.0.0.1", "POSTGRES_PORT": str(parsed.port or 5432),
                "POSTGRES_USER": unquote(parsed.username or ""), "POSTGRES_PASSWORD": unquote(parsed.password or ""),
                "CREATE_TABLE": "y", "POSTGRES_LOCK_TIMEOUT": "30", "POSTGRES_POOL_SIZE": "4"}
    if parsed.scheme == "memory":
        return {"PERSISTENCE_MODULE": "eventsourcing.popo"}
    raise ValueError(f"unsupported event store URL {store_url!r}: use sqlite:///PATH, postgresql://... or memory://")


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_instant(instant: dt.datetime) -> str:
    """Recorded times: UTC, microseconds, `Z` — sortable as text. A naive instant is UTC (as in §8), not local."""
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Ledger(Application[UUID]):
    """The system of record: CustomerAccount streams plus envelope receipts, in one event store."""

    name = "arledger"
    snapshotting_intervals = {CustomerAccount: SNAPSHOT_INTERVAL_EVENTS, LedgerChain: 200}

    def __init__(self, store_url: str = "memory://", *, policy: CreditPolicy = CreditPolicy(),
                 clock: Callable[[], dt.datetime] = _utc_now, env: dict[str, str] | None = None) -> None:
        environment = dict(store_environment(store_url))
        environment.update(env or {})
        super().__init__(env=environment)
        self.policy = policy
        self._clock = clock
        self._last_recorded_at = dt.datetime.min.replace(tzinfo=dt.UTC)
        self._accounts: OrderedDict[str, CustomerAccount] = OrderedDict()
        self._receipts: OrderedDict[str, _CachedReceipt] = OrderedDict()
        self._stored_receipt_ids: set[str] | None = None
        self._batch_events: list[Any] = []  # this batch's new stored events, in recorded order

    def construct_mapper(self) -> Any:
        return self.factory.mapper(transcoder=self.construct_transcoder(), mapper_class=_LedgerMapper)

    def register_transcodings(self, transcoder: JSONTranscoder) -> None:
        super().register_transcodings(transcoder)
        transcoder.register(AccountStateAsBuiltins())

    # -- Writing -------------------------------------------------------------------------------

    def process_batch(self, records: Iterable[InboundRecord]) -> list[Outcome]:
        """Check and apply a batch; saves all accepted events and receipts atomically."""
        records = list(records)
        touched: dict[str, CustomerAccount] = {}
        new_receipts: dict[str, tuple[str, Outcome, str | None]] = {}
        self._stored_receipt_ids = self._prefetch_receipt_ids(records)
        self._batch_events = []
        try:
            outcomes = []
            for index, record in enumerate(records):
                try:
                    outcomes.append(self._process_one(record, touched, new_receipts))
                except _RecordFailed as failed:
                    for customer_id in touched:  # their in-memory state holds unsaved events: reload later
                        self._accounts.pop(customer_id, None)
                    raise PoisonRecord(index, failed.error) from failed.error
        finally:
            self._stored_receipt_ids = None
        try:
            if self._batch_events:
                self._save_in_recorded_order(self._batch_events, list(touched.values()))
        except BaseException:
            for customer_id in touched:  # their in-memory state is ahead of the store: reload next time
                self._accounts.pop(customer_id, None)
            raise
        for envelope_id, (digest, outcome, origin) in new_receipts.items():
            self._remember_receipt(envelope_id, digest, outcome, origin)
        return outcomes

    def _save_in_recorded_order(self, events: list[Any], aggregates: list[Any]) -> None:
        """Like `save(*aggregates)`, but the notification log gets the events in the order they were
        recorded across customers (save() would group them per aggregate)."""
        record_in_order(self, events, aggregates, then=lambda: self._snapshot_from_memory(events, aggregates))

    def _snapshot_from_memory(self, events: list[Any], aggregates: list[Any]) -> None:
        """Snapshots of the aggregates whose stream reached a multiple of its snapshotting interval in
        this batch, taken from the in-memory aggregate (exactly the state just saved, at its version
        after the batch) and written in one transaction. eventsourcing's own `_take_snapshots` rebuilds
        each one from the store (last snapshot + up to an interval of events, decoded and folded) and
        writes each in a transaction of its own: ~12 % of the ingest worker's time, an fsync each."""
        if self.snapshots is None:
            return
        by_id = {aggregate.id: aggregate for aggregate in aggregates}
        due: dict[Any, Any] = {}
        for event in events:
            aggregate = by_id.get(event.originator_id)
            if aggregate is None:
                continue
            interval = self.snapshotting_intervals.get(type(aggregate))
            if interval is not None and event.originator_version % interval == 0:
                due[aggregate.id] = aggregate
        if due:
            snapshots = []
            for aggregate in due.values():
                snapshot_class = getattr(type(aggregate), "Snapshot", self.snapshot_class)
                assert snapshot_class is not None, "snapshotting is on: Application gives a snapshot class"
                snapshots.append(snapshot_class.take(aggregate))
            self.snapshots.put(snapshots)

    def _next_recorded_at(self) -> str:
        """Strictly increasing recorded times within this process, stamped by the service (§2)."""
        now = self._clock()
        if now <= self._last_recorded_at:
            now = self._last_recorded_at + dt.timedelta(microseconds=1)
        self._last_recorded_at = now
        return format_instant(now)

    def _process_one(self, record: InboundRecord, touched: dict[str, CustomerAccount],
                     new_receipts: dict[str, tuple[str, Outcome, str | None]]) -> Outcome:
        raw: c.RawEnvelope | None = None
        try:
            raw = c.decode_envelope(record.value)
            # §8: a Kafka record's key must be the customer_id (a keyless one lands on any partition);
            # only a record that did not come from Kafka (no origin) may come without a key.
            if (record.key is not None or record.origin is not None) and record.key != raw.customer_id.encode():
                raise InvalidEnvelope(
                    f"record key {record.key!r} is not the envelope's customer_id {raw.customer_id!r}")
            known = self._find_receipt(raw.id, new_receipts)
            if known is not None:
                return self._duplicate(raw, record.origin, *known)
            envelope = c.decode_data(raw)
            return self._apply(envelope, record.origin, touched, new_receipts)
        except Rejection as rejection:
            return Outcome(status="rejected", reason=rejection.code, message=rejection.message,
                           envelope_id=raw.id if raw else None, customer_id=raw.customer_id if raw else None,
                           type=raw.type if raw else None)
        except (PersistenceError, OSError):
            raise  # the store is unavailable: transient, the caller retries the batch
        except Exception as error:  # noqa: BLE001 - the ledger's own code failed on this record
            raise _RecordFailed(error) from error

    def _duplicate(self, raw: c.RawEnvelope, origin: str | None, digest: str, original: Outcome,
                   original_origin: str | None) -> Outcome:
        if digest == RECOVERED_DIGEST:  # a receipt re-made from ar.ledger: the content is not known, the id is
            return msgspec.structs.replace(original, status="duplicate", events=[], redelivered=False)
        try:
            same = c.decode_data(raw).digest() == digest
        except Rejection:
            same = False
        if not same:
            raise DuplicateConflict(
                f"envelope id {raw.id!r} was accepted before with different content "
                f"({original.type} for customer {original.customer_id!r})")
        return msgspec.structs.replace(original, status="duplicate", events=[],
                                       redelivered=origin is not None and origin == original_origin)

    def _apply(self, envelope: c.Envelope, origin: str | None, touched: dict[str, CustomerAccount],
               new_receipts: dict[str, tuple[str, Outcome, str | None]]) -> Outcome:
        recorded_at = self._next_recorded_at()
        account = touched.get(envelope.customer_id) or self._load_account(envelope.customer_id)
        if account is None:
            if envelope.type != "customer.registered":
                raise UnknownCustomer(f"unknown customer {envelope.customer_id!r}")
            account, emitted = CustomerAccount.open(envelope, recorded_at)
            first_version = 1
            pending_before = 0
        else:
            first_version = account.version + 1
            pending_before = len(account.pending_events)
            emitted = account.handle(envelope, recorded_at, self.policy)
        self._batch_events.extend(account.pending_events[pending_before:])
        touched[envelope.customer_id] = account
        self._accounts[envelope.customer_id] = account
        self._accounts.move_to_end(envelope.customer_id)
        outcome = Outcome(status="accepted", envelope_id=envelope.id, customer_id=envelope.customer_id,
                          type=envelope.type, recorded_at=recorded_at, first_version=first_version,
                          last_version=account.version, events=emitted)
        digest = envelope.digest()
        claims = receipt_hash_body(envelope_id=envelope.id, digest=digest, customer_id=envelope.customer_id,
                                   type=envelope.type, first_version=first_version, last_version=account.version,
                                   recorded_at=recorded_at, origin=origin)
        new_receipts[envelope.id] = (digest, outcome, origin)
        self._batch_events.append(receipt_accepted(claims, receipt_hash(account.last_hash, claims),
                                                   parse_instant(recorded_at)))
        return outcome

    def _load_account(self, customer_id: str) -> CustomerAccount | None:
        account = self._accounts.get(customer_id)
        if account is not None:
            return account
        try:
            account = self.repository.get(account_id(customer_id))
        except AggregateNotFoundError:
            return None
        self._accounts[customer_id] = account
        while len(self._accounts) > ACCOUNT_CACHE_MAX:
            self._accounts.popitem(last=False)
        return account

    def _find_receipt(self, envelope_id: str,
                      new_receipts: dict[str, tuple[str, Outcome, str | None]]
                      ) -> tuple[str, Outcome, str | None] | None:
        if envelope_id in new_receipts:
            return new_receipts[envelope_id]
        cached = self._receipts.get(envelope_id)
        if cached is not None:
            digest, origin, cached_id, customer_id, type_, recorded_at, first_version, last_version = cached
            return digest, Outcome(status="accepted", envelope_id=cached_id, customer_id=customer_id, type=type_,
                                   recorded_at=recorded_at, first_version=first_version,
                                   last_version=last_version), origin
        if self._stored_receipt_ids is not None and envelope_id not in self._stored_receipt_ids:
            return None  # the batch look-up found no receipt: a new id, the common case
        try:
            receipt: EnvelopeReceipt = self.repository.get(receipt_id(envelope_id))
        except AggregateNotFoundError:
            return None
        outcome = Outcome(status="accepted", envelope_id=receipt.envelope_id, customer_id=receipt.customer_id,
                          type=receipt.type, recorded_at=receipt.recorded_at, first_version=receipt.first_version,
                          last_version=receipt.last_version)
        self._remember_receipt(envelope_id, receipt.digest, outcome, receipt.origin)
        return receipt.digest, outcome, receipt.origin

    def _prefetch_receipt_ids(self, records: list[InboundRecord]) -> set[str] | None:
        """Envelope ids of the batch that have a stored receipt, in one query (SQLite, PostgreSQL);
        None: the store is another kind, ask one by one."""
        if not can_select_first_versions(self):
            return None
        wanted: dict[UUID, str] = {}
        for record in records:
            try:
                envelope_id = _id_probe.decode(record.value).id
            except (msgspec.DecodeError, UnicodeDecodeError):  # not JSON, or not UTF-8: rejected later
                continue
            if isinstance(envelope_id, str) and envelope_id not in self._receipts:
                wanted[receipt_id(envelope_id)] = envelope_id
        return {wanted[found] for found in select_first_versions(self, list(wanted))}

    def _remember_receipt(self, envelope_id: str, digest: str, outcome: Outcome, origin: str | None) -> None:
        # A flat tuple of strings and ints: CPython's cyclic GC stops tracking it after one pass, so a
        # cache of 200,000 receipts adds nothing to the collector's full passes (an Outcome Struct and its
        # events list would be three tracked objects each, half the worker's heap).
        self._receipts[envelope_id] = (digest, origin, outcome.envelope_id, outcome.customer_id, outcome.type,
                                       outcome.recorded_at, outcome.first_version, outcome.last_version)
        while len(self._receipts) > RECEIPT_CACHE_MAX:
            self._receipts.popitem(last=False)

    def forget_cache(self) -> None:
        """Drop in-memory aggregates (after a concurrent writer may have moved them on)."""
        self._accounts.clear()
        self._receipts.clear()

    # -- Reading -------------------------------------------------------------------------------

    def account(self, customer_id: str) -> AccountState | None:
        """The current state of an account (None if the customer is unknown)."""
        account = self._load_account(customer_id)
        return None if account is None else account.state

    def stored_events(self, customer_id: str) -> Iterator[StoredLedgerEvent]:
        """The customer's events as stored, in stream-version order."""
        for event in self.repository.event_store.get(account_id(customer_id)):
            yield StoredLedgerEvent.from_stored(customer_id, event)

    def events_between(self, customer_id: str, first_version: int, last_version: int) -> list[DomainEvent]:
        """The domain events of versions first..last of a customer's stream (to re-publish a decision)."""
        stored = self.repository.event_store.get(account_id(customer_id), gt=first_version - 1, lte=last_version)
        return [StoredLedgerEvent.from_stored(customer_id, event).event for event in stored]

    def read_ledger(self, after_notification_id: int, limit: int,
                    up_to_notification_id: int | None = None) -> list[tuple[int, StoredLedgerEvent]]:
        """Account events in notification (recorded) order after a notification id: what the relay publishes."""
        notifications = self.recorder.select_notifications(
            start=after_notification_id + 1, limit=limit, stop=up_to_notification_id, topics=ACCOUNT_EVENT_TOPICS)
        result = []
        for notification in notifications:
            # an Opened or a Recorded: ACCOUNT_EVENT_TOPICS selects only those
            event = cast(AccountEvent, self.mapper.to_domain_event(notification))
            result.append((notification.id, StoredLedgerEvent.from_stored(event.customer_id, event)))
        return result

    def receipt(self, envelope_id: str) -> EnvelopeReceipt | None:
        """The receipt of an accepted envelope id, read from the store (None: never accepted)."""
        try:
            return self.repository.get(receipt_id(envelope_id))
        except AggregateNotFoundError:
            return None

    def relay_caught_up(self) -> bool:
        """True when the relay has chained and published every account event recorded so far."""
        chain = self.chain()
        latest = self.max_notification_id()
        return not chain.pending and not self.read_ledger(chain.last_notification_id, 1, latest)

    def max_notification_id(self) -> int:
        return self.recorder.max_notification_id() or 0

    def chain(self) -> LedgerChain:
        """The global hash chain kept by the relay (created empty on first use, not saved until extended)."""
        try:
            return self.repository.get(CHAIN_ID)
        except AggregateNotFoundError:
            return LedgerChain()

    def global_hash_before(self, position: int) -> str:
        """The global hash of ledger position `position - 1` (GENESIS_HASH before position 1), from the
        chain's history in the event store."""
        if position == 1:
            return GENESIS_HASH
        for event in reversed(list(self.repository.event_store.get(CHAIN_ID))):
            if isinstance(event, LedgerChain.Extended) and event.first_position < position:
                index = position - 1 - event.first_position
                if index < len(event.hashes):
                    return event.hashes[index]
        raise LookupError(f"no chained hash before position {position}")

    def account_known_at(self, customer_id: str, known_at: dt.datetime | None = None) -> AccountState | None:
        """The account as the ledger knew it at recorded instant `known_at` (None: now), replayed in order."""
        cutoff = format_instant(known_at) if known_at is not None else None
        state: AccountState | None = None
        for stored in self.stored_events(customer_id):
            if cutoff is not None and stored.recorded_at > cutoff:
                break
            if state is None:
                state = AccountState(customer_id=customer_id)
            state.fold(stored.event)
        return state


class StoredLedgerEvent(msgspec.Struct, frozen=True, kw_only=True):
    """A domain event with its ledger metadata, as the relay publishes it."""

    customer_id: str
    version: int
    kind: str
    data: dict[str, Any]
    envelope_id: str
    recorded_at: str
    schema_version: int
    prev_hash: str
    hash: str

    @property
    def event(self) -> DomainEvent:
        return event_from_data(self.kind, upcast(self.kind, self.data, self.schema_version))

    @classmethod
    def from_stored(cls, customer_id: str, event: Any) -> StoredLedgerEvent:
        return cls(customer_id=customer_id, version=event.originator_version, kind=event.kind, data=event.data,
                   envelope_id=event.envelope_id, recorded_at=event.recorded_at,
                   schema_version=event.schema_version, prev_hash=event.prev_hash, hash=event.hash)
