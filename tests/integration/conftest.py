"""A real Apache Kafka broker for the integration tests, started once per session.

Fixtures:
- `kafka_bootstrap` (session): the bootstrap string of the session broker.
  Set ARLEDGER_TEST_KAFKA=host:port to use a running cluster instead.
- `kafka_broker_settings` (session): the Settings of the broker this session
  started (skips the test when ARLEDGER_TEST_KAFKA is used).
- `kafka_settings` (function): Settings on the session broker with a topic
  prefix of its own and `home` = the test's tmp_path, so each test has fresh topics.
- `kafka_env` (function): the same as environment variables, for running the CLI.

Every test that uses one of them is marked `kafka` automatically
(`pytest -m "not kafka"` runs without a broker).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from arledger.settings import BROKER_START_TIMEOUT_S, Settings
from consumers import broker
from tests.support import free_port_pair

EXTERNAL_KAFKA_ENV = "ARLEDGER_TEST_KAFKA"
KAFKA_FIXTURES = frozenset({"kafka_bootstrap", "kafka_broker_settings", "kafka_settings", "kafka_env"})


@dataclass(frozen=True)
class KafkaSession:
    bootstrap: str
    managed: Settings | None  # None when ARLEDGER_TEST_KAFKA points at a running cluster


def broker_settings(home: Path, port: int) -> Settings:
    """Settings of a local broker at 127.0.0.1:port with its data under `home`."""
    return Settings(
        home=home,
        broker_port=port,
        kafka_bootstrap=f"127.0.0.1:{port}",
        store_url=f"sqlite:///{home / 'ledger.sqlite'}",
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if KAFKA_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.kafka)


@pytest.fixture(scope="session")
def _kafka_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaSession]:
    external = os.environ.get(EXTERNAL_KAFKA_ENV)
    if external:
        broker.wait_until_ready(external, BROKER_START_TIMEOUT_S)
        yield KafkaSession(bootstrap=external, managed=None)
        return
    # pytest keeps the last few base temp dirs: the broker's log survives a failed run.
    home = tmp_path_factory.mktemp("kafka-home")
    settings = broker_settings(home, free_port_pair())
    broker.start(settings)
    try:
        yield KafkaSession(bootstrap=settings.kafka_bootstrap, managed=settings)
    finally:
        broker.stop(settings)


@pytest.fixture(scope="session")
def kafka_bootstrap(_kafka_session: KafkaSession) -> str:
    """Bootstrap servers of the session broker (or of $ARLEDGER_TEST_KAFKA)."""
    return _kafka_session.bootstrap


@pytest.fixture(scope="session")
def kafka_broker_settings(_kafka_session: KafkaSession) -> Settings:
    """Settings of the broker this session started; skips when an external cluster is used."""
    if _kafka_session.managed is None:
        pytest.skip(f"{EXTERNAL_KAFKA_ENV} is set: no broker managed by this session")
    return _kafka_session.managed


def _port_of(bootstrap: str) -> int:
    first = bootstrap.split(",")[0].strip()
    return int(first.rsplit(":", 1)[1]) if ":" in first else 9092


@pytest.fixture
def kafka_settings(kafka_bootstrap: str, tmp_path: Path) -> Settings:
    """Settings on the session broker with topics of this test alone (prefix t<uuid8>.)."""
    return Settings(
        home=tmp_path,
        broker_port=_port_of(kafka_bootstrap),
        kafka_bootstrap=kafka_bootstrap,
        store_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}",
        topic_prefix=f"t{uuid.uuid4().hex[:8]}.",
    )


@pytest.fixture
def kafka_env(kafka_settings: Settings) -> dict[str, str]:
    """os.environ plus the ARLEDGER_* variables of `kafka_settings`, for subprocess CLI runs."""
    return {
        **os.environ,
        "ARLEDGER_HOME": str(kafka_settings.home),
        "ARLEDGER_KAFKA": kafka_settings.kafka_bootstrap,
        "ARLEDGER_BROKER_PORT": str(kafka_settings.broker_port),
        "ARLEDGER_STORE": kafka_settings.store_url,
        "ARLEDGER_TOPIC_PREFIX": kafka_settings.topic_prefix,
        "ARLEDGER_PARTITIONS": str(kafka_settings.partitions),
        "ARLEDGER_REPLICATION_FACTOR": str(kafka_settings.replication_factor),
    }


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator["PostgresServer"]:
    """A real PostgreSQL server (Debian's binaries) on 127.0.0.1 for the session, stopped at the end."""
    from tests.integration.postgres_server import PostgresServer, server_folder

    import shutil

    root = server_folder("arledger-pg-")
    server = PostgresServer(root / "cluster")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The event store URL, once per backend: the same tests run on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.sqlite'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database("t" + uuid.uuid4().hex[:12])
