"""The ingest worker: ar.inbound → ledger (event store); rejects → ar.rejected; decisions → ar.decisions.

One checkpoint per poll (STYLE §9): apply the batch to the ledger in one atomic
save, publish its rejects and decisions and wait for their acknowledgements,
and only then commit the Kafka offsets. A crash anywhere before the commit
replays the batch: accepted facts come back as duplicates (no new events), so
nothing is lost or doubled in the ledger. Rejects of a replayed batch are
published again (at-least-once; each names its source offset, so readers
dedupe). A decision lost to a crash between the ledger commit and its publish
is re-published when the very same record is redelivered (the receipt
remembers the offset it came from); an upstream re-send under the same id gets
no second decision.

The offset commit is sent without waiting for the broker's answer: the worker
polls and applies the next batch meanwhile (the round trip was a third of a
checkpoint under light load, time during which no decision went out). Its
answer is read at the next poll: a commit lost to a rebalance is logged, as
before; any other failure is retried synchronously — with the offsets of every
later batch — before the next batch is taken, so a broker that refuses commits
still stops the worker after the retries. `batch_committed` is logged when the
broker confirmed the commit; `close()` commits what is unconfirmed, waiting.
"""

from __future__ import annotations

import base64
import datetime as dt
import gc
import os
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CommitFailedError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from arledger.settings import (
    INGEST_BATCH_LATENCY_MS,
    INGEST_BATCH_RECORDS_MAX,
    INGEST_BATCH_RECORDS_MIN,
    TOPIC_DECISIONS,
    TOPIC_INBOUND,
    TOPIC_REJECTED,
    Settings,
)
from consumers import clients
from consumers.faults import crash_point
from consumers.retry import RETRY_ATTEMPTS_MAX, with_retries
from ledger import events as e
from ledger.application import InboundRecord, Ledger, Outcome, PoisonRecord

INGEST_GROUP_ID = "arledger-ingest"
DECISION_TYPES = ("order.placed", "order.released")
# CPython's cyclic GC with its default thresholds (700, 10, 10) ran a full pass every ~3,000 records
# of the decision-latency load: each one traverses every live object of the worker (cached accounts),
# 100-300 ms during which no decision goes out, and ~25 % of the worker's time. A batch's objects
# live across many young passes and are promoted to the old generation, so full passes came often.
# These thresholds let a batch's garbage die young (refcounting frees nearly all of it) and make a
# full pass rare (~every 10 M tracked allocations, a few minutes at full load); young passes stay
# under ~20 ms. Measured on the decision-latency load: GC time 27 % → 5 % of the worker's time.
GC_THRESHOLDS = (5_000, 20, 100)
# Batches whose commit is sent and not answered yet: normally one or two (an answer takes a few ms).
# Past this many, the worker waits for the broker: it bounds the memory held and what a crash replays.
UNCONFIRMED_COMMITS_MAX = 50
COST_SMOOTHING = 0.3  # weight of the last batch in the moving estimate of a record's cost
log = structlog.get_logger("arledger.ingest")
_json = msgspec.json.Encoder()
_gc_tuned = False


def tune_garbage_collector() -> None:
    """Once per process: freeze what exists at start (modules, clients; never garbage, never traversed
    again) and raise the GC thresholds (see GC_THRESHOLDS). Only when the thresholds are Python's
    defaults, so an operator's own setting (e.g. via a sitecustomize) wins."""
    global _gc_tuned
    if _gc_tuned or gc.get_threshold() != (700, 10, 10):
        return
    _gc_tuned = True
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def batch_latency_ms() -> float:
    """The ingest batch latency bound: $ARLEDGER_INGEST_BATCH_MS, else INGEST_BATCH_LATENCY_MS."""
    text = os.environ.get("ARLEDGER_INGEST_BATCH_MS", "").strip()
    try:
        value = float(text) if text else INGEST_BATCH_LATENCY_MS
    except ValueError:
        raise SystemExit(f"ARLEDGER_INGEST_BATCH_MS={text!r}: give a number of milliseconds") from None
    if value <= 0:
        raise SystemExit(f"ARLEDGER_INGEST_BATCH_MS={text!r}: give a positive number of milliseconds")
    return value


def origin_of(topic: str, partition: int, offset: int) -> str:
    return f"{topic}:{partition}:{offset}"


def decision_record(customer_id: str, inbound_id: str, decided_at: str, event: e.OrderDecided) -> dict[str, Any]:
    """The ar.decisions record of docs/contract.md §3."""
    return {
        "order_id": event.order_id, "customer_id": customer_id,
        "decision": "approved" if isinstance(event, e.OrderApproved) else "blocked",
        "reason": event.reason, "amount": event.amount, "currency": event.currency,
        "credit_limit": event.credit_limit, "exposure": event.exposure, "available": event.available,
        "inbound_id": inbound_id, "decided_at": decided_at,
    }


def reject_record(record: Any, outcome: Outcome, rejected_at: str) -> dict[str, Any]:
    """The ar.rejected record: the original bytes, where they came from, the reason code and message."""
    try:
        original, original_base64 = record.value.decode("utf-8"), None
    except UnicodeDecodeError:
        original, original_base64 = None, base64.b64encode(record.value).decode("ascii")
    return {
        "reason": outcome.reason, "message": outcome.message,
        "envelope_id": outcome.envelope_id, "customer_id": outcome.customer_id, "type": outcome.type,
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "original": original, "original_base64": original_base64, "rejected_at": rejected_at,
    }


@dataclass
class _Checkpoint:
    """A batch whose facts are in the ledger and whose rejects and decisions the broker acknowledged;
    its offset commit is sent and its answer not read yet."""

    offsets: dict[TopicPartition, OffsetAndMetadata]
    outcomes: list[Outcome]
    counts: dict[str, int]
    started: float
    duration_s: float
    answered: bool = False
    answer: Any = None  # the commit's result (None on success with kafka-python 3), or an exception

    def on_answer(self, _: Any, answer: Any) -> None:
        self.answered, self.answer = True, answer


class IngestWorker:
    """Consumes ar.inbound in a consumer group and applies it to the ledger."""

    def __init__(self, settings: Settings, ledger: Ledger, *, consumer: KafkaConsumer | None = None,
                 producer: KafkaProducer | None = None) -> None:
        self.settings = settings
        self.ledger = ledger
        self.metrics = None  # a consumers.metrics.Metrics when `run --metrics-port` serves them
        self.topic = settings.topic(TOPIC_INBOUND)
        self.consumer = consumer or clients.group_consumer(
            settings, self.topic, settings.topic(INGEST_GROUP_ID), "arledger-ingest", INGEST_BATCH_RECORDS_MAX)
        self.producer = producer or clients.producer(settings, "arledger-ingest")
        self._unconfirmed: list[_Checkpoint] = []  # commits sent, in order, whose answer was not read yet
        self.batch_latency_s = batch_latency_ms() / 1000
        self._record_cost_s: float | None = None  # moving estimate of a checkpoint's time per record
        tune_garbage_collector()

    def batch_records(self) -> int:
        """How many records the next batch takes: INGEST_BATCH_RECORDS_MAX, or fewer when that many would
        take longer than the batch latency bound at the measured cost per record (a checkpoint's fixed
        costs included, so the size settles where the whole checkpoint fits the bound)."""
        if self._record_cost_s is None:
            return INGEST_BATCH_RECORDS_MIN  # the first batch measures the cost
        fitting = int(self.batch_latency_s / self._record_cost_s)
        return max(INGEST_BATCH_RECORDS_MIN, min(INGEST_BATCH_RECORDS_MAX, fitting))

    def _measured(self, records: int, seconds: float) -> None:
        cost = seconds / records
        previous = self._record_cost_s
        self._record_cost_s = cost if previous is None else previous + COST_SMOOTHING * (cost - previous)

    def run_once(self, timeout_ms: int) -> int:
        """Poll one bounded batch and take it through its checkpoint, the offset commit sent but not
        waited for (its answer is read at the next poll); returns the records handled."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.batch_records())
        self._read_commit_answers()  # the poll ran the callbacks of the commits answered so far
        records = [record for partition_records in polled.values() for record in partition_records]
        if not records:
            return 0
        started = time.perf_counter()
        inbound = [InboundRecord(record.value or b"", record.key,
                                 origin_of(record.topic, record.partition, record.offset)) for record in records]
        outcomes = self._apply_isolating_poison(inbound)
        crash_point("ingest.after_store_commit")
        counts = self._publish_effects(records, outcomes)
        crash_point("ingest.after_reject_publish")
        offsets = {}
        for record in records:
            offsets[TopicPartition(record.topic, record.partition)] = OffsetAndMetadata(record.offset + 1, "", -1)
        checkpoint = _Checkpoint(offsets, outcomes, counts, started, time.perf_counter() - started)
        self._measured(len(records), checkpoint.duration_s)
        self._unconfirmed.append(checkpoint)
        self.consumer.commit_async(offsets, callback=checkpoint.on_answer)
        if len(self._unconfirmed) > UNCONFIRMED_COMMITS_MAX:  # the broker is slow to answer: wait for it
            self._commit_unconfirmed()
        return len(records)

    def _read_commit_answers(self) -> None:
        """Log the batches whose commit the broker confirmed, in order; on a failed commit other than
        a rebalance, commit again — synchronously, with retries — with the offsets of that batch and
        every later one (a later commit never goes backwards)."""
        while self._unconfirmed and self._unconfirmed[0].answered:
            checkpoint = self._unconfirmed.pop(0)
            if not isinstance(checkpoint.answer, Exception):
                self._committed(checkpoint)
            elif isinstance(checkpoint.answer, (CommitFailedError, RebalanceInProgressError)):
                self._lost_to_rebalance(checkpoint.offsets, checkpoint.answer)
            else:
                log.warning("commit_failed", worker="ingest", topic=self.topic, error=repr(checkpoint.answer))
                self._commit_unconfirmed((checkpoint,))

    def _commit_unconfirmed(self, first: tuple[_Checkpoint, ...] = (), *,
                            attempts_max: int = RETRY_ATTEMPTS_MAX) -> None:
        """Commit `first` and every unconfirmed batch synchronously, with retries; then they are confirmed.
        Only partitions still assigned: after a rebalance another member owns the others and redelivers
        their records (no-ops), and an offset of ours could move its commits backwards."""
        checkpoints = [*first, *self._unconfirmed]
        self._unconfirmed = []
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for checkpoint in checkpoints:
            offsets.update(checkpoint.offsets)  # later batches hold later offsets of a partition
        owned = self.consumer.assignment()
        offsets = {tp: om for tp, om in offsets.items() if tp in owned}
        if offsets and with_retries(lambda: self._commit(offsets), "offset commit", attempts_max=attempts_max):
            for checkpoint in checkpoints:
                self._committed(checkpoint)

    def _committed(self, checkpoint: _Checkpoint) -> None:
        if self.metrics:
            self.metrics.observe_ingest(self.topic, checkpoint.outcomes, checkpoint.duration_s)
        log.info("batch_committed", worker="ingest", topic=self.topic, records=len(checkpoint.outcomes),
                 offsets={f"{tp.partition}": om.offset for tp, om in checkpoint.offsets.items()},
                 duration_ms=round(checkpoint.duration_s * 1000, 1),
                 confirmed_ms=round((time.perf_counter() - checkpoint.started) * 1000, 1), **checkpoint.counts)

    def _apply_isolating_poison(self, inbound: list[InboundRecord]) -> list[Outcome]:
        """process_batch with retries; a record that makes the ledger's code fail is set aside as
        `internal_error` and the rest of the batch applied without it (a poison record never stalls)."""
        set_aside: dict[int, Outcome] = {}
        while True:
            kept = [index for index in range(len(inbound)) if index not in set_aside]
            try:
                outcomes = with_retries(lambda: self.ledger.process_batch([inbound[i] for i in kept]),
                                        "ledger save", on_failure=self.ledger.forget_cache, fatal=(PoisonRecord,))
            except PoisonRecord as poison:
                index = kept[poison.index]
                log.error("poison_record", worker="ingest", origin=inbound[index].origin, error=repr(poison.error))
                set_aside[index] = Outcome(status="rejected", reason="internal_error",
                                           message=f"the ledger failed on this record: {poison.error!r}")
                continue
            merged = dict(zip(kept, outcomes)) | set_aside
            return [merged[index] for index in range(len(inbound))]

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> bool:
        """Commit the batch's offsets; False when the group no longer gives us these partitions.

        A member dropped from its group (a pause longer than the session or poll interval, an admin
        removal, a rebalance) cannot commit, and retrying will not change that: only the next poll
        rejoins. The batch is then delivered again — to this worker or another — and is a no-op
        there (its facts are stored under their receipts), exactly as after a crash.
        """
        try:
            self.consumer.commit(offsets)
        except (CommitFailedError, RebalanceInProgressError) as error:
            self._lost_to_rebalance(offsets, error)
            return False
        return True

    def _lost_to_rebalance(self, offsets: dict[TopicPartition, OffsetAndMetadata], error: BaseException) -> None:
        log.warning("commit_lost_to_rebalance", worker="ingest", topic=self.topic, error=repr(error),
                    offsets={f"{tp.partition}": om.offset for tp, om in offsets.items()})

    def _publish_effects(self, records: list[Any], outcomes: list[Outcome]) -> dict[str, int]:
        counts = {"accepted": 0, "rejected": 0, "duplicate": 0, "decisions": 0}
        futures = []
        rejected_at = _utc_iso()
        for record, outcome in zip(records, outcomes):
            counts[outcome.status] += 1
            if outcome.status == "rejected":
                futures.append(self.producer.send(
                    self.settings.topic(TOPIC_REJECTED), key=record.key,
                    value=_json.encode(reject_record(record, outcome, rejected_at))))
                continue
            for decision in self._decisions(outcome):
                counts["decisions"] += 1
                futures.append(self.producer.send(
                    self.settings.topic(TOPIC_DECISIONS), key=outcome.customer_id.encode(),
                    value=_json.encode(decision)))
        if futures:
            self.producer.flush()
            for future in futures:
                future.get(timeout=60)  # raises if the broker did not take it: nothing is committed then
        return counts

    def _decisions(self, outcome: Outcome) -> list[dict[str, Any]]:
        if outcome.type not in DECISION_TYPES:
            return []
        if outcome.status == "accepted":
            events = outcome.events
        elif outcome.redelivered:
            events = self.ledger.events_between(outcome.customer_id, outcome.first_version, outcome.last_version)
        else:
            return []  # an upstream re-send of the same order gets no second decision
        return [decision_record(outcome.customer_id, outcome.envelope_id, outcome.recorded_at, event)
                for event in events if isinstance(event, e.OrderDecided)]

    def close(self) -> None:
        try:
            self._commit_unconfirmed(attempts_max=1)  # waits: a clean stop leaves nothing to redeliver
        except Exception as error:  # noqa: BLE001 - the broker is away: those batches are redelivered, as no-ops
            log.warning("final_commit_failed", worker="ingest", topic=self.topic, error=repr(error))
        self.consumer.close(autocommit=False)
        self.producer.close(timeout=10)


def _utc_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
