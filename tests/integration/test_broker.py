"""The local broker and the topics, on a real Apache Kafka broker."""

from __future__ import annotations

import dataclasses
import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from arledger.settings import ALL_TOPICS, TOPIC_INBOUND, TOPIC_LEDGER, Settings
from consumers import broker, topics

pytestmark = pytest.mark.kafka

RECEIVE_TIMEOUT_S = 20.0


def test_ensure_topics_creates_the_five_topics_with_the_configured_partitions(kafka_settings: Settings) -> None:
    created = topics.ensure_topics(kafka_settings)

    assert created == [kafka_settings.topic(name) for name in ALL_TOPICS]
    with topics.admin_client(kafka_settings) as admin:
        described = {t["name"]: t for t in admin.describe_topics(created)}
    for name in created:
        assert described[name]["error_code"] == 0
        assert len(described[name]["partitions"]) == kafka_settings.partitions
        assert all(len(p["replica_nodes"]) == kafka_settings.replication_factor for p in described[name]["partitions"])


def test_ensure_topics_is_idempotent(kafka_settings: Settings) -> None:
    topics.ensure_topics(kafka_settings)

    assert topics.ensure_topics(kafka_settings) == []


def test_ensure_topics_creates_only_the_missing_ones(kafka_settings: Settings) -> None:
    with topics.admin_client(kafka_settings) as admin:
        admin.create_topics({kafka_settings.topic(TOPIC_INBOUND): {"num_partitions": 2, "replication_factor": 1}})

    created = topics.ensure_topics(kafka_settings)

    assert kafka_settings.topic(TOPIC_INBOUND) not in created
    assert len(created) == len(ALL_TOPICS) - 1
    with topics.admin_client(kafka_settings) as admin:
        [inbound] = admin.describe_topics([kafka_settings.topic(TOPIC_INBOUND)])
    assert len(inbound["partitions"]) == 2  # left as it was


def test_ledger_topic_keeps_history_forever(kafka_settings: Settings) -> None:
    topics.ensure_topics(kafka_settings)
    ledger = kafka_settings.topic(TOPIC_LEDGER)

    with topics.admin_client(kafka_settings) as admin:
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, ledger)])

    ledger_configs = configs["topic"][ledger]
    assert ledger_configs["retention.ms"]["value"] == "-1"
    assert ledger_configs["retention.bytes"]["value"] == "-1"


def test_a_produced_record_is_consumed_back(kafka_settings: Settings) -> None:
    topics.ensure_topics(kafka_settings)
    topic = kafka_settings.topic(TOPIC_INBOUND)
    producer = KafkaProducer(
        bootstrap_servers=kafka_settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
    )
    try:
        metadata = producer.send(topic, key=b"C0001", value=b'{"hello": "ledger"}').get(timeout=RECEIVE_TIMEOUT_S)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=kafka_settings.kafka_bootstrap,
        enable_auto_commit=False,
        group_id=None,
    )
    try:
        partition = TopicPartition(topic, metadata.partition)
        consumer.assign([partition])
        consumer.seek(partition, metadata.offset)
        records = _poll_until_some(consumer)
    finally:
        consumer.close()

    assert [(r.key, r.value, r.offset) for r in records] == [(b"C0001", b'{"hello": "ledger"}', metadata.offset)]


def _poll_until_some(consumer: KafkaConsumer) -> list:
    deadline = time.monotonic() + RECEIVE_TIMEOUT_S
    while time.monotonic() < deadline:
        batches = consumer.poll(timeout_ms=500)
        records = [record for batch in batches.values() for record in batch]
        if records:
            return records
    raise AssertionError(f"no record received within {RECEIVE_TIMEOUT_S} s")


def test_status_reports_the_session_broker_running_and_answering(kafka_broker_settings: Settings) -> None:
    state = broker.status(kafka_broker_settings)

    assert state.running and state.answering
    assert state.pid is not None
    assert state.port == kafka_broker_settings.broker_port
    assert state.log_path.is_file()


def test_a_second_start_is_a_no_op(kafka_broker_settings: Settings) -> None:
    before = broker.status(kafka_broker_settings)

    state = broker.start(kafka_broker_settings)

    assert state.already_running
    assert state.pid == before.pid
    assert broker.status(kafka_broker_settings).pid == before.pid


def test_wait_until_ready_answers_at_once_for_a_running_cluster(kafka_bootstrap: str) -> None:
    assert broker.wait_until_ready(kafka_bootstrap, timeout_s=10) < 10


def test_start_on_another_port_while_running_is_refused_at_once(kafka_broker_settings: Settings) -> None:
    elsewhere = dataclasses.replace(kafka_broker_settings, broker_port=kafka_broker_settings.broker_port + 100)
    started = time.monotonic()

    with pytest.raises(broker.BrokerError, match=f"already runs .* on port {kafka_broker_settings.broker_port}"):
        broker.start(elsewhere)

    assert time.monotonic() - started < 5
    assert broker.status(elsewhere).port == kafka_broker_settings.broker_port
