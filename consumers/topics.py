"""Topic administration: the five arledger topics, created once with their settings."""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator

from kafka import KafkaAdminClient
from kafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    NoError,
    RequestTimedOutError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
    for_code,
)

from arledger.settings import ALL_TOPICS, TOPIC_LEDGER, Settings

# Admin calls on a local broker answer in milliseconds; creating topics on a
# busy 2-core machine can take seconds, so allow well above that.
ADMIN_REQUEST_TIMEOUT_MS = 30_000
# Finding the cluster: a live one answers in well under a second; 10 s covers a
# slow network without making a mistyped address hang for long.
ADMIN_BOOTSTRAP_TIMEOUT_MS = 10_000
TOPICS_READY_TIMEOUT_MS = 30_000

# Per-topic settings beyond the broker defaults. ar.ledger keeps everything:
# the history is the product (docs/contract.md §4).
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    TOPIC_LEDGER: {"retention.ms": "-1", "retention.bytes": "-1"},
}


class _ConnectionErrors(logging.Handler):
    """Keeps the exceptions kafka-python logs while connecting (it raises only 'Unable to bootstrap')."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors.extend(arg for arg in args if isinstance(arg, BaseException))


@contextlib.contextmanager
def admin_client(settings: Settings) -> Iterator[KafkaAdminClient]:
    """A KafkaAdminClient on `settings.kafka_bootstrap`, closed on exit.

    When the cluster cannot be reached, the error names the last connection
    failure: a refused login or a TLS handshake error says so, instead of a bare timeout.
    """
    kafka_logger = logging.getLogger("kafka")
    connection_errors = _ConnectionErrors()
    kafka_logger.addHandler(connection_errors)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap,
            client_id=settings.client_id("topics"),
            **settings.kafka_security(),
            request_timeout_ms=ADMIN_REQUEST_TIMEOUT_MS,
            bootstrap_timeout_ms=ADMIN_BOOTSTRAP_TIMEOUT_MS,
        )
    except KafkaError as error:
        # A refused login shows among many "socket disconnected" (the broker closes after refusing);
        # timeouts only say that the deadline came.
        errors = [e for e in connection_errors.errors if not isinstance(e, (KafkaTimeoutError, RequestTimedOutError))]
        refused = [e for e in errors if isinstance(e, SaslAuthenticationFailedError)]
        if refused:
            raise SaslAuthenticationFailedError(f"{error}: {refused[-1]}") from error
        if settings.security_protocol.startswith("SASL") and errors and all("disconnected" in str(e) for e in errors):
            # kafka-python drops the broker's refusal when the close arrives in the same read.
            raise type(error)(f"{error}; the brokers closed every connection during the SASL login: "
                              "authentication refused? Check ARLEDGER_KAFKA_SASL_USERNAME, "
                              "ARLEDGER_KAFKA_SASL_PASSWORD and ARLEDGER_KAFKA_SASL_MECHANISM") from error
        if errors:
            raise type(error)(f"{error}; last connection error: {errors[-1]}") from error
        raise
    finally:
        kafka_logger.removeHandler(connection_errors)
    try:
        yield admin
    finally:
        admin.close()


def topic_names(settings: Settings) -> list[str]:
    """The five arledger topic names with the configured prefix."""
    return [settings.topic(name) for name in ALL_TOPICS]


def topic_spec(settings: Settings, name: str) -> dict[str, object]:
    """kafka-python's create_topics entry for the unprefixed topic `name`."""
    return {
        "num_partitions": settings.partitions,
        "replication_factor": settings.replication_factor,
        "configs": {**TOPIC_CONFIGS.get(name, {}),
                    **({"min.insync.replicas": str(settings.min_insync_replicas)}
                       if settings.min_insync_replicas else {})},
    }


def ensure_topics(settings: Settings) -> list[str]:
    """Create those of the five topics that are missing; return the names created.

    Existing topics are left exactly as they are (no error, no change). Returns
    once every topic has a leader for each partition, so it can be used at once.
    """
    with admin_client(settings) as admin:
        existing = set(admin.list_topics())
        missing = {settings.topic(name): name for name in ALL_TOPICS if settings.topic(name) not in existing}
        created: list[str] = []
        if missing:
            specs = {full_name: topic_spec(settings, name) for full_name, name in missing.items()}
            result = admin.create_topics(specs, raise_errors=False)
            for topic in result["topics"]:
                error = for_code(topic["error_code"])
                if error is NoError:
                    created.append(topic["name"])
                elif error is not TopicAlreadyExistsError:
                    # Another process creating it meanwhile is fine; anything else is not.
                    raise error(f"creating topic {topic['name']}: {topic.get('error_message') or error.__name__}")
        admin.wait_for_topics(topic_names(settings), timeout_ms=TOPICS_READY_TIMEOUT_MS)
    return sorted(created, key=topic_names(settings).index)
