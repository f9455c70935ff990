"""The relay: the event store's notification log → ar.ledger, in recorded order, hash-chained.

Per batch: read the next account events in notification order, give them
positions and global hashes, save that chain extension in the event store
(before publishing, docs/contract.md §4), publish with the idempotent producer and wait
for the acknowledgements, then record the published position. While a batch's
records are on their way to the broker the next batch is read and hashed (not
chained nor sent until this one is confirmed, so records never overtake each
other): the store read and the hashing overlap the producer's network time. After a crash
the chain's pending part is re-published exactly as chained: duplicates are
possible (at-least-once), gaps and re-hashing are not; projectors dedupe by
position.
"""

from __future__ import annotations

import time
from typing import Any

import structlog
from kafka import KafkaProducer

from arledger.settings import RELAY_BATCH_EVENTS_MAX, TOPIC_LEDGER, Settings
from consumers import clients
from consumers.faults import crash_point
from consumers.retry import with_retries
from ledger.aggregate import LedgerChain
from ledger.application import Ledger, StoredLedgerEvent
from ledger.records import LedgerRecord, record_encoder, with_global_hash

log = structlog.get_logger("arledger.relay")


def ledger_record(position: int, notification_id: int, stored: StoredLedgerEvent, prev_hash_global: str,
                  hash_global: str | None = None) -> LedgerRecord:
    """The ar.ledger record of one stored event; computes the global hash unless it is given."""
    record = LedgerRecord(
        position=position, notification_id=notification_id, customer_id=stored.customer_id,
        version=stored.version, kind=stored.kind, envelope_id=stored.envelope_id,
        recorded_at=stored.recorded_at, schema_version=stored.schema_version, data=stored.data,
        prev_hash_customer=stored.prev_hash, hash_customer=stored.hash,
        prev_hash_global=prev_hash_global, hash_global=hash_global or "")
    if hash_global is None:
        record = with_global_hash(record, prev_hash_global)
    return record


class Relay:
    """Publishes the ledger to Kafka; its position lives in the event store (LedgerChain)."""

    def __init__(self, settings: Settings, ledger: Ledger, *, producer: KafkaProducer | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.metrics = None  # a consumers.metrics.Metrics when `run --metrics-port` serves them
        self.topic = settings.topic(TOPIC_LEDGER)
        self.producer = producer or clients.producer(settings, "arledger-relay")
        self._chain: LedgerChain | None = None
        self._next: list[LedgerRecord] | None = None  # the next batch, read and hashed while one is in flight

    def run_once(self) -> int:
        """Chain, publish and confirm one batch; returns the events published."""
        try:
            return self._run_once()
        except Exception:
            self._chain = None  # reload from the store: the in-memory chain may be ahead of it
            self._next = None
            raise

    def _prepare(self, chain: LedgerChain) -> list[LedgerRecord]:
        """The records of the next batch after what `chain` holds: read, positioned and hashed, not chained."""
        events = self.ledger.read_ledger(chain.last_notification_id, RELAY_BATCH_EVENTS_MAX)
        records = []
        prev_hash = chain.last_hash
        for offset, (notification_id, stored) in enumerate(events):
            record = ledger_record(chain.last_position + 1 + offset, notification_id, stored, prev_hash)
            records.append(record)
            prev_hash = record.hash_global
        return records

    def _run_once(self) -> int:
        if self._chain is None:
            self._chain = self.ledger.chain()
            self._next = None
        chain = self._chain
        if chain.pending:
            return self._publish_pending(chain)
        records, self._next = self._next or self._prepare(chain), None
        if not records:
            return 0
        started = time.perf_counter()
        chain.extend(records[0].position, [r.notification_id for r in records], [r.hash_global for r in records])
        self.ledger.save(chain)
        crash_point("relay.after_chain_saved")
        futures = self._send(records)
        if len(records) == RELAY_BATCH_EVENTS_MAX:  # more is likely waiting: read and hash it meanwhile
            self._next = self._prepare(chain) or None
        self._confirm(records, futures)
        crash_point("relay.after_publish")
        chain.published(records[-1].position)
        self.ledger.save(chain)
        if self.metrics:
            self.metrics.observe_relay(self.topic, len(records), records[-1].position, time.perf_counter() - started)
        log.info("batch_committed", worker="relay", topic=self.topic, first_position=records[0].position,
                 last_position=records[-1].position, events=len(records),
                 duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return len(records)

    def _publish_pending(self, chain: LedgerChain) -> int:
        """Re-publish what was chained but not confirmed before a crash, with the stored hashes."""
        pending = [tuple(entry) for entry in chain.pending]
        first_notification, last_notification = pending[0][1], pending[-1][1]
        events = dict(self.ledger.read_ledger(first_notification - 1, len(pending), last_notification))
        records = []
        prev_hash = self.ledger.global_hash_before(pending[0][0])
        for position, notification_id, hash_global in pending:
            record = ledger_record(position, notification_id, events[notification_id], prev_hash, hash_global)
            records.append(record)
            prev_hash = hash_global
        self._publish(records)
        chain.published(records[-1].position)
        self.ledger.save(chain)
        log.info("pending_republished", worker="relay", first_position=records[0].position,
                 last_position=records[-1].position, events=len(records))
        return len(records)

    def _send(self, records: list[LedgerRecord]) -> list[Any]:
        return [self.producer.send(self.topic, key=record.customer_id.encode(), value=record_encoder.encode(record))
                for record in records]

    def _confirm(self, records: list[LedgerRecord], futures: list[Any]) -> None:
        """Wait for the acknowledgements of `records` sent as `futures`; on a failure, publish them all again
        with retries (nothing later was sent meanwhile, so nothing overtakes them)."""
        try:
            self.producer.flush()
            for future in futures:
                future.get(timeout=60)
        except Exception as error:  # noqa: BLE001 - transient broker trouble: the retried publish decides
            log.warning("publish_retried", worker="relay", topic=self.topic, error=repr(error))
            self._publish(records)

    def _publish(self, records: list[LedgerRecord]) -> None:
        def send_all() -> None:
            self._confirm_once(self._send(records))

        with_retries(send_all, "publish ar.ledger")

    def _confirm_once(self, futures: list[Any]) -> None:
        self.producer.flush()
        for future in futures:
            future.get(timeout=60)

    def close(self) -> None:
        self.producer.close(timeout=10)
