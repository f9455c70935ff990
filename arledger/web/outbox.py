"""Sending envelopes to ar.inbound and learning their outcomes, for the workspace and the API.

The server writes like any upstream system: it produces to ar.inbound (key =
customer id) and never touches the event store. It learns each envelope's
outcome from Kafka alone, with one consumer positioned at the end of
ar.rejected and ar.ledger when the server starts:
- rejected: a record on ar.rejected whose source (topic, partition, offset)
  is where the broker put our envelope — the reason code and message are there;
- accepted: a record on ar.ledger carrying our envelope id (the ledger writes
  the envelope id on every event it records, docs/contract.md §4);
- duplicate: the ingest group committed past our record (every record before
  the commit has its outcome, docs/contract.md §6) and, after a grace period for the
  relay, neither of the above appeared: the id was known, no new event.
Visible in reports = accepted and the published read model's ar.ledger
offsets have passed the event's offset.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog
from kafka import TopicPartition
from kafka.errors import KafkaError

from arledger.settings import TOPIC_INBOUND, TOPIC_LEDGER, TOPIC_REJECTED, Settings
from consumers import clients
from consumers.topics import admin_client, ensure_topics

log = structlog.get_logger("arledger.web")

INGEST_GROUP_ID = "arledger-ingest"  # consumers.ingest.INGEST_GROUP_ID (not imported: it pulls in the event store)
TRACKED_ENVELOPES_MAX = 100_000  # the oldest outcomes are forgotten past this many
POLL_MS = 50
DUPLICATE_GRACE_S = 15.0  # after the ingest commit, how long the relay may take before "no new event" is said
COMMIT_CHECK_EVERY_S = 1.0
SEND_TIMEOUT_S = 30.0
_decode = msgspec.json.Decoder()


class _Probe(msgspec.Struct):
    envelope_id: Any = None
    kind: Any = None
    topic: Any = None
    partition: Any = None
    offset: Any = None
    reason: Any = None
    message: Any = None


_probe = msgspec.json.Decoder(_Probe)


class Unavailable(RuntimeError):
    """Kafka cannot be reached: the request is answered 503, nothing was sent."""


@dataclass
class Tracked:
    envelope_id: str
    customer_id: str
    type: str
    by: str
    sent_at: float = field(default_factory=time.monotonic)
    partition: int | None = None
    offset: int | None = None
    status: str = "pending"  # pending, accepted, rejected, duplicate
    reason: str | None = None
    message: str | None = None
    ledger_partition: int | None = None
    ledger_offset: int | None = None
    ledger_kinds: list[str] = field(default_factory=list)
    committed_at: float | None = None

    def view(self, visible: bool | None = None) -> dict[str, Any]:
        return {"id": self.envelope_id, "customer_id": self.customer_id, "type": self.type, "status": self.status,
                "reason": self.reason, "message": self.message, "partition": self.partition, "offset": self.offset,
                "ledger_events": self.ledger_kinds, "visible": visible}


class Outbox:
    """One producer to ar.inbound and one consumer of ar.rejected + ar.ledger, shared by all requests."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._tracked: OrderedDict[str, Tracked] = OrderedDict()
        self._by_origin: dict[tuple[int, int], str] = {}
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer = None
        self._consumer = None
        self._inbound = settings.topic(TOPIC_INBOUND)
        self._rejected = settings.topic(TOPIC_REJECTED)
        self._ledger = settings.topic(TOPIC_LEDGER)
        self._last_commit_check = 0.0

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and position the consumer at the end of both topics, before anything is sent."""
        ensure_topics(self.settings)
        self._producer = clients.producer(self.settings, "arledger-web", linger_ms=0)
        consumer = clients.assigned_consumer(self.settings, "arledger-web", 5_000)
        partitions = clients.partitions_of(consumer, self._rejected) + clients.partitions_of(consumer, self._ledger)
        consumer.assign(partitions)
        consumer.seek_to_end(*partitions)
        for partition in partitions:
            consumer.position(partition)
        self._consumer = consumer
        self._thread = threading.Thread(target=self._follow, name="arledger-web-outcomes", daemon=True)
        self._thread.start()

    @property
    def ready(self) -> bool:
        return self._producer is not None and self._thread is not None and self._thread.is_alive()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._producer is not None:
            self._producer.close(timeout=10)
        if self._consumer is not None:
            self._consumer.close()

    # -- sending -------------------------------------------------------------------------------------

    def send(self, envelopes: list[tuple[dict[str, Any], bytes]], by: str) -> list[Tracked]:
        """Produce each (envelope, its JSON bytes) keyed by its customer id; returns them tracked."""
        if not self.ready:
            raise Unavailable("the server is not connected to Kafka (see its log); nothing was sent")
        tracked = []
        with self._lock:
            for envelope, _ in envelopes:
                item = Tracked(envelope["id"], envelope["customer_id"], envelope["type"], by)
                self._remember(item)
                tracked.append(item)
        futures = [self._producer.send(self._inbound, key=envelope["customer_id"].encode(), value=line)
                   for envelope, line in envelopes]
        self._producer.flush(timeout=SEND_TIMEOUT_S)
        try:
            for item, future in zip(tracked, futures):
                metadata = future.get(timeout=SEND_TIMEOUT_S)
                with self._lock:
                    item.partition, item.offset = metadata.partition, metadata.offset
                    self._by_origin[(metadata.partition, metadata.offset)] = item.envelope_id
        except KafkaError as error:
            raise Unavailable(f"Kafka did not acknowledge the envelopes: {error}") from None
        log.info("envelopes_sent", count=len(tracked), by=by, types=sorted({t.type for t in tracked}))
        return tracked

    def _remember(self, item: Tracked) -> None:
        self._tracked[item.envelope_id] = item
        self._tracked.move_to_end(item.envelope_id)
        while len(self._tracked) > TRACKED_ENVELOPES_MAX:
            _, old = self._tracked.popitem(last=False)
            self._by_origin.pop((old.partition, old.offset), None)

    def get(self, envelope_id: str) -> Tracked | None:
        with self._lock:
            return self._tracked.get(envelope_id)

    def wait(self, items: list[Tracked], timeout_s: float,
             done: Callable[[Tracked], bool] = lambda item: item.status != "pending") -> None:
        """Until every item satisfies `done` or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not all(done(item) for item in items):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._changed.wait(min(remaining, 0.2))

    # -- following outcomes --------------------------------------------------------------------------

    def _follow(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=POLL_MS)
                with self._changed:
                    for tp, records in batches.items():
                        for record in records:
                            self._observe(tp, record)
                    self._changed.notify_all()
                self._check_commits()
            except Exception as error:  # keep following: a transient Kafka error must not end outcome tracking
                log.warning("outcome_follow_failed", error=repr(error))
                self._stop.wait(1.0)

    def _observe(self, tp: TopicPartition, record: Any) -> None:
        try:
            probe = _probe.decode(record.value)
        except msgspec.DecodeError:
            return
        if tp.topic == self._rejected:
            if probe.topic != self._inbound:
                return
            envelope_id = self._by_origin.get((probe.partition, probe.offset))
            item = self._tracked.get(envelope_id) if envelope_id else None
            if item is not None and item.status == "pending":
                item.status, item.reason, item.message = "rejected", probe.reason, probe.message
        else:
            item = self._tracked.get(probe.envelope_id) if isinstance(probe.envelope_id, str) else None
            if item is not None and item.status in ("pending", "accepted", "duplicate"):
                item.status = "accepted"
                item.ledger_kinds.append(str(probe.kind))
                item.ledger_partition, item.ledger_offset = tp.partition, record.offset

    def _check_commits(self) -> None:
        """Mark pending envelopes the ingest group has committed past; past the grace period: duplicates."""
        now = time.monotonic()
        if now - self._last_commit_check < COMMIT_CHECK_EVERY_S:
            return
        with self._lock:
            pending = [item for item in self._tracked.values() if item.status == "pending" and item.offset is not None]
        if not pending:
            return
        self._last_commit_check = now
        committed = self._committed_offsets()  # outside the lock: an admin round trip
        with self._changed:
            for item in pending:
                if item.committed_at is None and committed.get(item.partition, -1) > item.offset:
                    item.committed_at = now
                if item.status == "pending" and item.committed_at is not None \
                        and now - item.committed_at > DUPLICATE_GRACE_S:
                    item.status = "duplicate"
                    item.message = "the ledger recorded no new event: this id was already accepted"
            self._changed.notify_all()

    def _committed_offsets(self) -> dict[int, int]:
        group_id = self.settings.topic(INGEST_GROUP_ID)
        try:
            with admin_client(self.settings) as admin:
                committed = admin.list_group_offsets(group_id).get(group_id, {})
        except KafkaError:
            return {}
        return {tp.partition: meta.offset for tp, meta in committed.items() if tp.topic == self._inbound}
