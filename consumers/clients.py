"""Kafka clients of arledger, each option that matters set explicitly here (STYLE §10)."""

from __future__ import annotations

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from arledger.settings import Settings

PRODUCER_LINGER_MS = 5  # a few ms of batching buys throughput; decisions stay far under 50 ms
PRODUCER_BATCH_BYTES = 256 * 1024
CONSUMER_FETCH_BYTES_MAX = 64 * 1024 * 1024
CONSUMER_PARTITION_FETCH_BYTES_MAX = 16 * 1024 * 1024
# Group joins: 6 s session timeout makes the first join take ~3 s instead of ~23 s (KAFKA.md).
SESSION_TIMEOUT_MS = 6_000
HEARTBEAT_INTERVAL_MS = 2_000
METADATA_WAIT_S = 30.0


def producer(settings: Settings, client_id: str, *, linger_ms: int = PRODUCER_LINGER_MS) -> KafkaProducer:
    """Idempotent producer, acks from all in-sync replicas: at-least-once without reordering.
    `linger_ms` 0 for a sender that waits for each record's answer (an order waiting for its decision)."""
    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=settings.client_id(client_id.removeprefix("arledger-")),
        **settings.kafka_security(),
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        batch_size=PRODUCER_BATCH_BYTES,
        max_in_flight_requests_per_connection=5,
        retries=2_147_483_647,
        delivery_timeout_ms=120_000,
        request_timeout_ms=30_000,
    )


def group_consumer(settings: Settings, topic: str, group_id: str, client_id: str,
                   max_poll_records: int) -> KafkaConsumer:
    """A consumer in a group, auto-commit off: offsets are committed only after the effect is durable."""
    consumer = KafkaConsumer(
        **_consumer_options(settings, client_id, max_poll_records),
        group_id=group_id,
        session_timeout_ms=SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
        max_poll_interval_ms=300_000,
    )
    # Join with the topic's partitions known: a first join without them gets an empty assignment and an
    # immediate rejoin, whose answer kafka-python 3.0.x sometimes drops (the member never takes its
    # partitions nor heartbeats again: a stalled partition set, seen about once in 25 starts on a busy machine).
    partitions_of(consumer, topic)
    consumer.subscribe([topic])
    return consumer


def assigned_consumer(settings: Settings, client_id: str, max_poll_records: int) -> KafkaConsumer:
    """A consumer without a group: the caller assigns partitions and seeks to offsets it stores itself."""
    return KafkaConsumer(**_consumer_options(settings, client_id, max_poll_records), group_id=None)


def _consumer_options(settings: Settings, client_id: str, max_poll_records: int) -> dict[str, object]:
    """What every arledger consumer sets: auto-commit off, from the earliest offset, big fetches,
    committed records only."""
    return dict(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=settings.client_id(client_id.removeprefix("arledger-")),
        **settings.kafka_security(),
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=max_poll_records,
        fetch_max_bytes=CONSUMER_FETCH_BYTES_MAX,
        max_partition_fetch_bytes=CONSUMER_PARTITION_FETCH_BYTES_MAX,
        isolation_level="read_committed",
    )


def partitions_of(consumer: KafkaConsumer, topic: str) -> list[TopicPartition]:
    """All partitions of `topic`, waiting for metadata if the client has none yet."""
    import time

    deadline = time.monotonic() + METADATA_WAIT_S
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return [TopicPartition(topic, p) for p in sorted(partitions)]
        if time.monotonic() > deadline:
            raise RuntimeError(f"topic {topic!r} has no partitions (run 'arledger topics ensure')")
        consumer.topics()  # forces a metadata refresh
        time.sleep(0.1)
