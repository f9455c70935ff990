"""Every setting and limit of arledger in one place, read from the environment.

Each limit carries the reason for its value beside it (TigerBeetle style).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# Topic names (a prefix may be put in front of each, see `topic_prefix`).
TOPIC_INBOUND = "ar.inbound"
TOPIC_LEDGER = "ar.ledger"
TOPIC_REJECTED = "ar.rejected"
TOPIC_DECISIONS = "ar.decisions"
TOPIC_ALERTS = "ar.alerts"
ALL_TOPICS = (TOPIC_INBOUND, TOPIC_LEDGER, TOPIC_REJECTED, TOPIC_DECISIONS, TOPIC_ALERTS)

# Batches: large enough that per-batch costs (an fsync, a DuckDB statement at
# ~0.3 ms) vanish, small enough that one batch stays well under a second.
INGEST_BATCH_RECORDS_MAX = 2_000
RELAY_BATCH_EVENTS_MAX = 5_000
PROJECT_BATCH_EVENTS_MAX = 50_000
# Poll timeouts bound how long a worker idles before it re-checks for stop.
POLL_TIMEOUT_MS = 200
# Snapshot of the read models for other processes: the §5 staleness target is 5 s.
SNAPSHOT_INTERVAL_S = 2.0
# Transient failures (broker away, database locked): retried, never rejected.
RETRY_BACKOFF_S_INITIAL = 0.1
RETRY_BACKOFF_S_MAX = 5.0
# Kafka broker start: the JVM needs a few seconds on 2 cores.
BROKER_START_TIMEOUT_S = 60.0
BROKER_STOP_TIMEOUT_S = 30.0


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' → (I, N), with 0 <= I < N."""
    if text is None:
        return None
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise ValueError(f"a shard is I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class Settings:
    """Configuration of one arledger process; defaults work on one machine."""

    home: Path
    broker_port: int
    kafka_bootstrap: str
    store_url: str
    partitions: int = 6
    replication_factor: int = 1
    topic_prefix: str = ""
    overdue_tolerance_days: int = 30
    min_insync_replicas: int | None = None  # for created topics; None: the cluster's default
    client_id_prefix: str = "arledger"
    # Connecting to a secured cluster (TLS and/or SASL), as kafka-python names them.
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL
    sasl_mechanism: str | None = None  # PLAIN, SCRAM-SHA-256, SCRAM-SHA-512
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    shard: tuple[int, int] | None = None  # (index, count): this projector folds partitions p % count == index
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Settings":
        home = Path(_env("ARLEDGER_HOME", str(Path.home() / ".arledger"))).expanduser()
        port = int(_env("ARLEDGER_BROKER_PORT", "9092"))
        return cls(
            home=home,
            broker_port=port,
            kafka_bootstrap=_env("ARLEDGER_KAFKA", f"127.0.0.1:{port}"),
            store_url=_env("ARLEDGER_STORE", f"sqlite:///{home / 'ledger.sqlite'}"),
            partitions=int(_env("ARLEDGER_PARTITIONS", "6")),
            replication_factor=int(_env("ARLEDGER_REPLICATION_FACTOR", "1")),
            topic_prefix=_env("ARLEDGER_TOPIC_PREFIX", ""),
            overdue_tolerance_days=int(_env("ARLEDGER_OVERDUE_TOLERANCE_DAYS", "30")),
            min_insync_replicas=int(value) if (value := os.environ.get("ARLEDGER_MIN_INSYNC_REPLICAS")) else None,
            client_id_prefix=_env("ARLEDGER_CLIENT_ID", "arledger"),
            security_protocol=_env("ARLEDGER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT"),
            sasl_mechanism=os.environ.get("ARLEDGER_KAFKA_SASL_MECHANISM") or None,
            sasl_username=os.environ.get("ARLEDGER_KAFKA_SASL_USERNAME") or None,
            sasl_password=os.environ.get("ARLEDGER_KAFKA_SASL_PASSWORD") or None,
            ssl_cafile=os.environ.get("ARLEDGER_KAFKA_SSL_CAFILE") or None,
            ssl_certfile=os.environ.get("ARLEDGER_KAFKA_SSL_CERTFILE") or None,
            ssl_keyfile=os.environ.get("ARLEDGER_KAFKA_SSL_KEYFILE") or None,
            shard=parse_shard(os.environ.get("ARLEDGER_SHARD") or None),
        )

    def kafka_security(self) -> dict[str, object]:
        """kafka-python keyword arguments that connect to this cluster (every client gets them)."""
        options: dict[str, object] = {"security_protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            options.update(sasl_mechanism=self.sasl_mechanism or "PLAIN", sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        if self.security_protocol.endswith("SSL"):
            options.update(ssl_cafile=self.ssl_cafile, ssl_certfile=self.ssl_certfile, ssl_keyfile=self.ssl_keyfile,
                           ssl_check_hostname=True)
        return options

    def client_id(self, role: str) -> str:
        return f"{self.client_id_prefix}-{role}"

    @property
    def controller_port(self) -> int:
        return self.broker_port + 1

    @property
    def local_broker(self) -> bool:
        """True when arledger manages the broker itself (no ARLEDGER_KAFKA given)."""
        return self.kafka_bootstrap == f"127.0.0.1:{self.broker_port}"

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def projection_path(self) -> Path:
        return self.home / f"projections{self._shard_suffix}.duckdb"

    @property
    def snapshot_path(self) -> Path:
        return self.home / f"snapshot{self._shard_suffix}.duckdb"

    @property
    def _shard_suffix(self) -> str:
        return "" if self.shard is None else f"-{self.shard[0]}-of-{self.shard[1]}"

    def snapshot_paths(self) -> list[Path]:
        """The published snapshots readers union: every shard's, when a complete set of
        `snapshot-I-of-N.duckdb` exists (the largest N), else the one `snapshot.duckdb`."""
        by_count: dict[int, set[int]] = {}
        for path in self.home.glob("snapshot-*-of-*.duckdb"):
            index, _, count = path.stem.removeprefix("snapshot-").partition("-of-")
            if index.isdigit() and count.isdigit():
                by_count.setdefault(int(count), set()).add(int(index))
        for count in sorted(by_count, reverse=True):
            if by_count[count] == set(range(count)):
                return [self.home / f"snapshot-{index}-of-{count}.duckdb" for index in range(count)]
        single = self.home / "snapshot.duckdb"
        return [single] if single.exists() else []
