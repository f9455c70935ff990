"""Every setting and limit of arledger in one place, read from the environment.

Each limit carries the reason for its value beside it (TigerBeetle style).
The Kafka settings can also be given as flags of the `arledger` command
(`KAFKA_OPTIONS`); the command line writes them into the environment before
anything reads it, so one code path (`Settings.from_env`) serves both, and the
child processes of `arledger run --workers N` inherit them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, MutableMapping
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
# ... and bounded by latency: an ingest batch closes at INGEST_BATCH_RECORDS_MAX records or at about this
# many ms of work, whichever comes first (ARLEDGER_INGEST_BATCH_MS overrides it; an order is decided with
# its batch, so this bounds how long it waits behind other records).
INGEST_BATCH_LATENCY_MS = 30
INGEST_BATCH_RECORDS_MIN = 20
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


SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")  # what kafka-python speaks without Kerberos/OAuth
# Kafka's own limit on a topic name is 249 characters of [a-zA-Z0-9._-]; the
# prefix goes before the longest name (and the ingest group id).
TOPIC_NAME_LENGTH_MAX = 249
TOPIC_NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]*")
# Kafka keeps the replication factor as a 16-bit signed integer.
REPLICATION_FACTOR_MAX = 32_767


class SettingsError(ValueError):
    """A setting (a flag or its environment variable) that cannot work; the message says which and why."""


@dataclass(frozen=True)
class KafkaOption:
    """One Kafka setting: its flag of the `arledger` command, named after Kafka's own configuration
    name, and the environment variable the flag overrides."""

    flag: str
    variable: str
    metavar: str
    default: str  # as --help and the README show it
    help: str
    kafka_name: str  # Kafka's configuration name (client or topic), for the reader who knows Kafka
    choices: tuple[str, ...] = ()
    is_file: bool = False


PASSWORD_VARIABLE = "ARLEDGER_KAFKA_SASL_PASSWORD"
PASSWORD_FILE_VARIABLE = "ARLEDGER_KAFKA_SASL_PASSWORD_FILE"

KAFKA_OPTIONS = (
    KafkaOption("--bootstrap-servers", "ARLEDGER_KAFKA", "HOST:PORT,...", "127.0.0.1:$ARLEDGER_BROKER_PORT",
                "brokers to connect to first; name several, so that one broker down does not matter",
                "bootstrap.servers"),
    KafkaOption("--security-protocol", "ARLEDGER_KAFKA_SECURITY_PROTOCOL", "PROTOCOL", "PLAINTEXT",
                "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL", "security.protocol", choices=SECURITY_PROTOCOLS),
    KafkaOption("--sasl-mechanism", "ARLEDGER_KAFKA_SASL_MECHANISM", "MECHANISM", "PLAIN",
                "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with a SASL_* protocol)", "sasl.mechanism",
                choices=SASL_MECHANISMS),
    KafkaOption("--sasl-username", "ARLEDGER_KAFKA_SASL_USERNAME", "USER", "none", "the SASL user",
                "sasl.username"),
    KafkaOption("--sasl-password-file", PASSWORD_FILE_VARIABLE, "FILE", "none",
                f"a file whose first line is the SASL password; or set {PASSWORD_VARIABLE}. There is no "
                "--sasl-password: any user of the machine can read a flag's value in `ps`",
                "sasl.password", is_file=True),
    KafkaOption("--ssl-cafile", "ARLEDGER_KAFKA_SSL_CAFILE", "PEM", "the system's CAs",
                "CA bundle that signed the brokers' certificates (with SSL or SASL_SSL); the broker's host "
                "name is checked against its certificate", "ssl.ca.location", is_file=True),
    KafkaOption("--ssl-certfile", "ARLEDGER_KAFKA_SSL_CERTFILE", "PEM", "none",
                "client certificate, for brokers that require mutual TLS", "ssl.certificate.location",
                is_file=True),
    KafkaOption("--ssl-keyfile", "ARLEDGER_KAFKA_SSL_KEYFILE", "PEM", "none",
                "the client certificate's private key (not encrypted)", "ssl.key.location", is_file=True),
    KafkaOption("--client-id", "ARLEDGER_CLIENT_ID", "ID", "arledger",
                "prefix of every client id (ID-ingest, ID-relay, ID-topics, ...): what the brokers' logs "
                "and quotas see", "client.id"),
    KafkaOption("--topic-prefix", "ARLEDGER_TOPIC_PREFIX", "PREFIX", "empty",
                "put before every topic name and the ingest group id (finance.ar.inbound)", "(topic names)"),
    KafkaOption("--partitions", "ARLEDGER_PARTITIONS", "N", "6",
                "partitions of the topics arledger creates: the most ingest processes that share the work",
                "num.partitions"),
    KafkaOption("--replication-factor", "ARLEDGER_REPLICATION_FACTOR", "N", "1",
                "replicas of each topic arledger creates (3 on a production cluster)", "replication.factor"),
    KafkaOption("--min-insync-replicas", "ARLEDGER_MIN_INSYNC_REPLICAS", "N", "the cluster's",
                "min.insync.replicas of each topic arledger creates (2 with replication factor 3)",
                "min.insync.replicas"),
)
KAFKA_OPTION_BY_VARIABLE = {option.variable: option for option in KAFKA_OPTIONS}


def describe(variable: str) -> str:
    """How the user may have given a setting: its flag and its variable."""
    option = KAFKA_OPTION_BY_VARIABLE.get(variable)
    return f"{option.flag} ({variable})" if option else variable


def apply_flags(values: Mapping[str, str | None], environ: MutableMapping[str, str]) -> None:
    """Write the given flags' values (by variable name; None: not given) into `environ`: a flag
    overrides its variable. The password file replaces a password set in the environment."""
    for variable, value in values.items():
        if value is None:
            continue
        option = KAFKA_OPTION_BY_VARIABLE[variable]
        if option.is_file:
            value = str(Path(value).expanduser().absolute())  # children may run elsewhere: no relative path
        environ[variable] = value
        if variable == PASSWORD_FILE_VARIABLE:
            environ.pop(PASSWORD_VARIABLE, None)


def _listed(variables: list[str]) -> str:
    """'--a (A) is' or '--a (A), --b (B) are': the subject of a problem."""
    return f"{', '.join(describe(v) for v in variables)} {'is' if len(variables) == 1 else 'are'}"


def _given(environ: Mapping[str, str], variable: str) -> str | None:
    value = environ.get(variable)
    return value if value else None


def _read_password_file(path: str) -> str:
    """The first line of the file, without its line ending (a password may have spaces, not newlines)."""
    try:
        with open(path, encoding="utf-8") as file:
            password = file.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as error:
        raise SettingsError(f"{describe(PASSWORD_FILE_VARIABLE)}: cannot read {path}: "
                            f"{getattr(error, 'strerror', None) or error}") from None
    if not password:
        raise SettingsError(f"{describe(PASSWORD_FILE_VARIABLE)}: {path} is empty; its first line is the password")
    return password


def _positive_int(environ: Mapping[str, str], variable: str, problems: list[str]) -> int | None:
    text = _given(environ, variable)
    if text is None:
        return None
    if not text.strip().isdigit() or int(text) < 1:
        problems.append(f"{describe(variable)}: a whole number of at least 1, got {text!r}")
        return None
    return int(text)


def kafka_problems(environ: Mapping[str, str]) -> list[str]:
    """Every Kafka setting of `environ` that cannot work, each named by flag and variable.

    Settings that would be silently ignored (a SASL user without a SASL
    protocol, a CA file without TLS) are problems too: they mean the protocol
    was forgotten, and the broker would only answer with a closed connection.
    """
    problems: list[str] = []
    bootstrap = _given(environ, "ARLEDGER_KAFKA")
    if bootstrap is not None:
        for server in bootstrap.split(","):
            host, colon, port = server.strip().rpartition(":")
            if not (host and colon and port.isdigit() and 0 < int(port) < 65_536):
                problems.append(f"{describe('ARLEDGER_KAFKA')}: each server is HOST:PORT, comma-separated; "
                                f"got {server.strip()!r}")
    protocol = (_given(environ, "ARLEDGER_KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper()
    if protocol not in SECURITY_PROTOCOLS:
        problems.append(f"{describe('ARLEDGER_KAFKA_SECURITY_PROTOCOL')}: unknown {protocol!r}; "
                        f"choose {', '.join(SECURITY_PROTOCOLS)}")
    mechanism = _given(environ, "ARLEDGER_KAFKA_SASL_MECHANISM")
    if mechanism is not None and mechanism.upper() not in SASL_MECHANISMS:
        problems.append(f"{describe('ARLEDGER_KAFKA_SASL_MECHANISM')}: unknown {mechanism!r}; "
                        f"choose {', '.join(SASL_MECHANISMS)} (GSSAPI and OAUTHBEARER are not supported)")
    password = _given(environ, PASSWORD_VARIABLE)
    password_file = _given(environ, PASSWORD_FILE_VARIABLE)
    sasl_given = [variable for variable in ("ARLEDGER_KAFKA_SASL_MECHANISM", "ARLEDGER_KAFKA_SASL_USERNAME",
                                            PASSWORD_VARIABLE, PASSWORD_FILE_VARIABLE) if _given(environ, variable)]
    if protocol.startswith("SASL"):
        if not _given(environ, "ARLEDGER_KAFKA_SASL_USERNAME"):
            problems.append(f"security protocol {protocol} needs a user: {describe('ARLEDGER_KAFKA_SASL_USERNAME')}")
        if password and password_file:
            problems.append(f"the SASL password is given twice: set {PASSWORD_VARIABLE} or "
                            f"{describe(PASSWORD_FILE_VARIABLE)}, not both")
        elif not (password or password_file):
            problems.append(f"security protocol {protocol} needs a password: {describe(PASSWORD_FILE_VARIABLE)} "
                            f"or {PASSWORD_VARIABLE}")
    elif sasl_given and protocol in SECURITY_PROTOCOLS:
        problems.append(f"{_listed(sasl_given)} used only with "
                        f"{describe('ARLEDGER_KAFKA_SECURITY_PROTOCOL')} SASL_SSL or SASL_PLAINTEXT, not {protocol}")
    if password_file and not password:
        try:
            _read_password_file(password_file)
        except SettingsError as error:
            problems.append(str(error))
    tls_given = [variable for variable in ("ARLEDGER_KAFKA_SSL_CAFILE", "ARLEDGER_KAFKA_SSL_CERTFILE",
                                           "ARLEDGER_KAFKA_SSL_KEYFILE") if _given(environ, variable)]
    if tls_given and protocol in SECURITY_PROTOCOLS and not protocol.endswith("SSL"):
        problems.append(f"{_listed(tls_given)} used only with "
                        f"{describe('ARLEDGER_KAFKA_SECURITY_PROTOCOL')} SSL or SASL_SSL, not {protocol}")
    for variable in tls_given:
        path = Path(environ[variable]).expanduser()
        if not path.is_file():
            problems.append(f"{describe(variable)}: no such file: {path}")
        elif not os.access(path, os.R_OK):
            problems.append(f"{describe(variable)}: cannot read {path}: permission denied")
    if _given(environ, "ARLEDGER_KAFKA_SSL_KEYFILE") and not _given(environ, "ARLEDGER_KAFKA_SSL_CERTFILE"):
        problems.append(f"{describe('ARLEDGER_KAFKA_SSL_KEYFILE')} without "
                        f"{describe('ARLEDGER_KAFKA_SSL_CERTFILE')}: the key belongs to a client certificate")
    prefix = environ.get("ARLEDGER_TOPIC_PREFIX", "")
    longest = max((*ALL_TOPICS, "arledger-ingest"), key=len)
    if not TOPIC_NAME_PATTERN.fullmatch(prefix):
        problems.append(f"{describe('ARLEDGER_TOPIC_PREFIX')}: Kafka topic names allow only letters, digits, "
                        f"'.', '_' and '-'; got {prefix!r}")
    elif len(prefix + longest) > TOPIC_NAME_LENGTH_MAX:
        problems.append(f"{describe('ARLEDGER_TOPIC_PREFIX')}: too long; {prefix}{longest} would exceed "
                        f"Kafka's {TOPIC_NAME_LENGTH_MAX} characters")
    _positive_int(environ, "ARLEDGER_PARTITIONS", problems)
    replication_factor = _positive_int(environ, "ARLEDGER_REPLICATION_FACTOR", problems)
    if replication_factor is not None and replication_factor > REPLICATION_FACTOR_MAX:
        problems.append(f"{describe('ARLEDGER_REPLICATION_FACTOR')}: at most {REPLICATION_FACTOR_MAX}")
    min_insync = _positive_int(environ, "ARLEDGER_MIN_INSYNC_REPLICAS", problems)
    if min_insync is not None and min_insync > (replication_factor or 1):
        # Every acks=all produce would fail with NotEnoughReplicas: the workers could never write.
        problems.append(f"{describe('ARLEDGER_MIN_INSYNC_REPLICAS')} {min_insync} is above "
                        f"{describe('ARLEDGER_REPLICATION_FACTOR')} {replication_factor or 1}: "
                        "no write could ever be acknowledged")
    return problems


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'I/N' → (I, N), with 0 <= I < N."""
    if text is None:
        return None
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit()) or not 0 <= int(index) < int(count):
        raise ValueError(f"a shard is I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def _sasl_password(environ: Mapping[str, str]) -> str | None:
    """The SASL password from its variable or, read at start, from the file named by the other."""
    if password := _given(environ, PASSWORD_VARIABLE):
        return password
    if path := _given(environ, PASSWORD_FILE_VARIABLE):
        return _read_password_file(path)
    return None


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
    sasl_password: str | None = field(default=None, repr=False)  # never in a log line
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    shard: tuple[int, int] | None = None  # (index, count): this projector folds partitions p % count == index
    extra: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> "Settings":
        """The settings of this process; SettingsError names every Kafka setting that cannot work."""
        problems = kafka_problems(os.environ)
        if problems:
            raise SettingsError("; ".join(problems))
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
            security_protocol=_env("ARLEDGER_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper(),
            sasl_mechanism=(os.environ.get("ARLEDGER_KAFKA_SASL_MECHANISM") or "").upper() or None,
            sasl_username=os.environ.get("ARLEDGER_KAFKA_SASL_USERNAME") or None,
            sasl_password=_sasl_password(os.environ),
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
