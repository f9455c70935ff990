"""The producer client: publish inbound envelopes as an upstream system would, and wait for their outcomes.

`publish_lines` sends each line to ar.inbound keyed by its `customer_id` and
keeps the (partition, offset) the broker acknowledged. `wait_for_outcomes`
then waits — by the mechanism of docs/contract.md §6 — until the ingest group has
committed past every one of them, the relay has published every event recorded
by then, and the published snapshot reflects all of ar.ledger at that moment;
it then counts the outcomes: rejected (found on ar.rejected by source offset),
accepted (the envelope's receipt names this very offset) or duplicate.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError

from arledger.settings import TOPIC_INBOUND, TOPIC_LEDGER, TOPIC_REJECTED, Settings
from consumers import clients
from consumers.ingest import INGEST_GROUP_ID, origin_of
from consumers.topics import admin_client
from ledger.application import Ledger
from projections import schema
from projections.fold import stored_offsets

WAIT_POLL_S = 0.2


class _KeyProbe(msgspec.Struct):
    id: Any = None
    customer_id: Any = None


_probe = msgspec.json.Decoder(_KeyProbe)


@dataclass(frozen=True)
class Published:
    line_number: int
    envelope_id: str | None
    partition: int
    offset: int


def probe(line: bytes) -> tuple[str | None, str | None]:
    """(envelope id, customer_id) of a line if it has them as strings; malformed lines give (None, None)."""
    try:
        found = _probe.decode(line)
    except (msgspec.DecodeError, UnicodeDecodeError):  # msgspec raises the latter for bytes that are not UTF-8
        return None, None
    return (found.id if isinstance(found.id, str) else None,
            found.customer_id if isinstance(found.customer_id, str) else None)


def read_lines(path: Path) -> Iterable[bytes]:
    with path.open("rb") as file:
        for line in file:
            line = line.rstrip(b"\r\n")
            if line.strip():
                yield line


def publish_lines(settings: Settings, lines: Iterable[bytes],
                  on_sent: Callable[[int], None] | None = None) -> list[Published]:
    """Send every line to ar.inbound; returns where each landed (after all acknowledgements)."""
    producer = clients.producer(settings, "arledger-ingest-cli")
    topic = settings.topic(TOPIC_INBOUND)
    pending = []
    try:
        for number, line in enumerate(lines, start=1):
            envelope_id, customer_id = probe(line)
            key = customer_id.encode() if customer_id is not None else None
            pending.append((number, envelope_id, producer.send(topic, key=key, value=line)))
            if on_sent:
                on_sent(1)
        producer.flush()
        published = []
        for number, envelope_id, future in pending:
            metadata = future.get(timeout=120)
            published.append(Published(number, envelope_id, metadata.partition, metadata.offset))
        return published
    finally:
        producer.close(timeout=10)


def end_offsets(settings: Settings, topic: str) -> dict[int, int]:
    consumer = clients.assigned_consumer(settings, "arledger-offsets", 1)
    try:
        partitions = clients.partitions_of(consumer, topic)
        return {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    finally:
        consumer.close()


class WaitTimeout(Exception):
    pass


def _wait(condition: Callable[[], bool], what: str, deadline: float) -> None:
    while not condition():
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out waiting for {what}; is 'arledger run' running?")
        time.sleep(WAIT_POLL_S)


def _ingest_committed_past(settings: Settings, published: list[Published]) -> Callable[[], bool]:
    topic = settings.topic(TOPIC_INBOUND)
    needed: dict[int, int] = {}
    for item in published:
        needed[item.partition] = max(needed.get(item.partition, -1), item.offset + 1)

    group_id = settings.topic(INGEST_GROUP_ID)

    def check() -> bool:
        try:
            with admin_client(settings) as admin:
                committed = admin.list_group_offsets(group_id).get(group_id, {})
        except KafkaError as error:
            if not error.retriable:
                raise
            return False  # e.g. the group's coordinator is still being elected or loaded: ask again
        return all(committed.get(TopicPartition(topic, p)) is not None
                   and committed[TopicPartition(topic, p)].offset >= offset for p, offset in needed.items())
    return check


def snapshot_offsets(settings: Settings) -> dict[int, int]:
    """{partition: next_offset} of ar.ledger reflected in the published snapshot(s) (empty if none yet)."""
    offsets: dict[int, int] = {}
    for path in settings.snapshot_paths():
        connection = schema.connect(str(path), read_only=True)
        try:
            offsets.update(stored_offsets(connection, settings.topic(TOPIC_LEDGER)))
        finally:
            connection.close()
    return offsets


def wait_for_outcomes(settings: Settings, published: list[Published], rejected_start: dict[int, int],
                      timeout_s: float, on_stage: Callable[[str], None] | None = None) -> Counter[str]:
    """Wait until every published record has an outcome and the snapshot shows the effects; count outcomes."""
    deadline = time.monotonic() + timeout_s
    stage = on_stage or (lambda _: None)
    stage("ingest")
    _wait(_ingest_committed_past(settings, published), "the ingest workers to commit the records", deadline)
    ledger = Ledger(settings.store_url)
    try:
        stage("relay")
        _wait(ledger.relay_caught_up, "the relay to publish the new ledger events", deadline)
        stage("project")
        ledger_end = end_offsets(settings, settings.topic(TOPIC_LEDGER))
        _wait(lambda: _reflects(snapshot_offsets(settings), ledger_end), "the projection snapshot", deadline)
        stage("count")
        return _count_outcomes(settings, ledger, published, rejected_start)
    finally:
        ledger.close()


def _reflects(applied: dict[int, int], wanted: dict[int, int]) -> bool:
    return all(applied.get(partition, 0) >= offset for partition, offset in wanted.items() if offset > 0)


def _count_outcomes(settings: Settings, ledger: Ledger, published: list[Published],
                    rejected_start: dict[int, int]) -> Counter[str]:
    topic = settings.topic(TOPIC_INBOUND)
    rejected = _rejected_origins(settings, rejected_start)
    counts: Counter[str] = Counter()
    for item in published:
        origin = origin_of(topic, item.partition, item.offset)
        if origin in rejected:
            counts["rejected"] += 1
            counts["rejected:" + rejected[origin]] += 1
            continue
        receipt = ledger.receipt(item.envelope_id) if item.envelope_id else None
        if receipt is not None and receipt.origin == origin:
            counts["accepted"] += 1
        else:
            counts["duplicate"] += 1
    return counts


def _rejected_origins(settings: Settings, start: dict[int, int]) -> dict[str, str]:
    """origin → reason of every reject published since `start` offsets."""
    topic = settings.topic(TOPIC_REJECTED)
    end = end_offsets(settings, topic)
    consumer: KafkaConsumer = clients.assigned_consumer(settings, "arledger-ingest-cli", 5000)
    found: dict[str, str] = {}
    try:
        partitions = [TopicPartition(topic, p) for p, offset in end.items() if offset > start.get(p, 0)]
        if not partitions:
            return found
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, start.get(tp.partition, 0))
        remaining = {tp.partition: end[tp.partition] for tp in partitions}
        while remaining:
            for tp, records in consumer.poll(timeout_ms=500).items():
                for record in records:
                    reject = msgspec.json.decode(record.value)
                    found[origin_of(reject["topic"], reject["partition"], reject["offset"])] = reject["reason"]
                    if record.offset + 1 >= remaining.get(tp.partition, 0):
                        remaining.pop(tp.partition, None)
        return found
    finally:
        consumer.close()
