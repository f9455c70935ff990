"""Shared helpers of the integration tests: envelopes, the CLI and the workers as subprocesses, topics, tables.

The workers run as `arledger run` in a subprocess, as a user runs them, so a
crash test can kill them with SIGKILL (the fault hooks of `consumers.faults`)
and a clean stop is a SIGTERM. Every wait here polls a condition with a
deadline; nothing sleeps and hopes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
from kafka import KafkaProducer, TopicPartition

from arledger.settings import Settings
from consumers import clients
from consumers.publisher import end_offsets
from consumers.topics import ensure_topics
from projections import schema

ARLEDGER = (sys.executable, "-m", "arledger.cli")
CLI_TIMEOUT_S = 120.0  # one `ingest --wait` of a few hundred records takes a few seconds
WORKER_START_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 30.0
WORKER_DEATH_TIMEOUT_S = 60.0  # a fault point is reached within seconds of the first record
TOPIC_READ_TIMEOUT_S = 30.0
POLL_S = 0.1


# -- Envelopes (built with tests/builders.py): JSONL lines ---------------------------------------

def line(item: dict[str, Any] | bytes) -> bytes:
    """A JSONL line: dicts are JSON-encoded, bytes are written as they are (bad input on purpose)."""
    return item if isinstance(item, bytes) else json.dumps(item, separators=(",", ":")).encode()


def write_jsonl(path: Path, items: Iterable[dict[str, Any] | bytes]) -> Path:
    path.write_bytes(b"".join(line(item) + b"\n" for item in items))
    return path


# -- The CLI --------------------------------------------------------------------------------------

def cli(env: dict[str, str], *args: str, timeout_s: float = CLI_TIMEOUT_S,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run `arledger ARGS` as a user would; fails the test with its output when it fails."""
    result = subprocess.run([*ARLEDGER, *args], env=env, capture_output=True, text=True, timeout=timeout_s)
    if check and result.returncode != 0:
        raise AssertionError(f"arledger {' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def ingest_wait(env: dict[str, str], path: Path) -> dict[str, int]:
    """`arledger ingest FILE --wait`; returns the printed counts per outcome (and `rejected <reason>`)."""
    result = cli(env, "ingest", str(path), "--wait")
    return parse_ingest_counts(result.stdout)


def parse_ingest_counts(stdout: str) -> dict[str, int]:
    """'accepted 3  rejected 1  duplicate 0' + '  rejected invalid_json: 1' → {'accepted': 3, ...}."""
    counts: dict[str, int] = {}
    for text in stdout.splitlines():
        words = text.replace(":", "").split()
        if words and words[0] == "accepted":
            counts.update({words[i]: int(words[i + 1]) for i in range(0, len(words), 2)})
        elif len(words) == 3 and words[0] == "rejected":
            counts[f"rejected {words[1]}"] = int(words[2])
    assert "accepted" in counts, f"no counts in the output of ingest --wait:\n{stdout}"
    return counts


def report(env: dict[str, str], name: str, *args: str) -> dict[str, Any]:
    """`arledger report NAME ARGS --format json`, decoded."""
    return json.loads(cli(env, "report", name, *args, "--format", "json").stdout)


# -- The workers ----------------------------------------------------------------------------------

class Workers:
    """`arledger run [WORKER ...]` in a subprocess, its output in a log file under the test's home."""

    def __init__(self, env: dict[str, str], *workers: str, log_path: Path,
                 extra_env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen([*ARLEDGER, "run", *workers], env={**env, **(extra_env or {})},
                                        stdout=self._log, stderr=subprocess.STDOUT)

    def wait_started(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> "Workers":
        """Until the workers log `workers_started` (topics ensured, clients built); fails fast if they died."""
        deadline = time.monotonic() + timeout_s
        while b'"workers_started"' not in self.log_path.read_bytes():
            if self.process.poll() is not None:
                raise AssertionError(f"workers exited {self.process.returncode} at start\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"workers not started after {timeout_s} s\n{self.log_tail()}")
            time.sleep(POLL_S)
        return self

    def log_tail(self, lines: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        """SIGTERM and wait: the workers finish their step and publish a last snapshot."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"workers did not stop on SIGTERM\n{self.log_tail()}") from None
        self._log.close()
        assert self.process.returncode == 0, f"workers exited {self.process.returncode}\n{self.log_tail()}"

    def wait_killed(self, timeout_s: float = WORKER_DEATH_TIMEOUT_S) -> int:
        """Wait for the process to die by itself (a fault point); returns its exit status."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"workers did not reach their fault point\n{self.log_tail()}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
        if not self._log.closed:
            self._log.close()


@contextmanager
def running_workers(env: dict[str, str], *workers: str, log_path: Path,
                    extra_env: dict[str, str] | None = None) -> Iterator[Workers]:
    """Workers for the duration of a `with`; stopped by SIGTERM at the end (killed if the test failed)."""
    running = Workers(env, *workers, log_path=log_path, extra_env=extra_env)
    try:
        yield running.wait_started()
    except BaseException:
        running.kill()
        raise
    running.stop()


# -- Kafka ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes

    def json(self) -> Any:
        return json.loads(self.value)


def read_topic(settings: Settings, name: str, *, at_least: int = 0,
               timeout_s: float = TOPIC_READ_TIMEOUT_S) -> list[Record]:
    """Every record of topic `name` (unprefixed) from the beginning to its end; waits for `at_least` records."""
    topic = settings.topic(name)
    deadline = time.monotonic() + timeout_s
    while True:
        records = _read_to_end(settings, topic)
        if len(records) >= at_least:
            return records
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic}: {len(records)} records after {timeout_s} s, expected {at_least}")
        time.sleep(POLL_S * 5)


def _read_to_end(settings: Settings, topic: str) -> list[Record]:
    end = end_offsets(settings, topic)
    consumer = clients.assigned_consumer(settings, "arledger-test-reader", 5_000)
    try:
        partitions = [TopicPartition(topic, p) for p, offset in end.items() if offset > 0]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        remaining = {tp.partition: end[tp.partition] for tp in partitions}
        records: list[Record] = []
        deadline = time.monotonic() + TOPIC_READ_TIMEOUT_S
        while remaining:
            assert time.monotonic() < deadline, f"{topic}: could not read up to {remaining}"
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for record in batch:
                    if record.offset < remaining.get(tp.partition, 0):
                        records.append(Record(tp.partition, record.offset, record.key, record.value))
                    if record.offset + 1 >= remaining.get(tp.partition, 0):
                        remaining.pop(tp.partition, None)
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def produce(settings: Settings, name: str, key: bytes | None, value: bytes) -> tuple[int, int]:
    """Send one raw record to topic `name` (unprefixed) as an upstream system would; (partition, offset)."""
    ensure_topics(settings)  # the workers may not have created them yet
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", enable_idempotence=True)
    try:
        metadata = producer.send(settings.topic(name), key=key, value=value).get(timeout=30)
        return metadata.partition, metadata.offset
    finally:
        producer.close(timeout=10)


# -- The projection file --------------------------------------------------------------------------

# Columns that differ between two runs of the same input: when and in which interleaving the ledger
# recorded each event (recorded times, positions, notification ids, the hashes over them).
VOLATILE_COLUMNS = ("position", "notification_id", "prev_hash_customer", "hash_customer", "prev_hash_global",
                    "hash_global")
# The read models folded from ar.ledger (not the alerts worker's tables: they follow the wall clock).
# Kafka offsets differ when ar.ledger holds re-published records; meta tables hold run facts.
COMPARED_RELATIONS = tuple(name for name in (*schema.TABLES, *schema.VIEWS)
                           if not name.endswith(("_offsets", "_meta")))


def _comparable_columns(connection: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    columns = [row[0] for row in connection.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = ? ORDER BY ordinal_position",
        [table]).fetchall()]
    return [c for c in columns if c not in VOLATILE_COLUMNS and not c.endswith("recorded_at")]


def projection_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Each read model of a projection file as a sorted row list, volatile columns left out."""
    connection = duckdb.connect(str(path), read_only=True)
    try:
        connection.execute("SET TimeZone = 'UTC'")
        result = {}
        for name in COMPARED_RELATIONS:
            columns = ", ".join(f'"{c}"::VARCHAR' for c in _comparable_columns(connection, name))
            result[name] = sorted(connection.execute(f'SELECT {columns} FROM "{name}"').fetchall(), key=repr)
        return result
    finally:
        connection.close()


def query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    connection = duckdb.connect(str(path), read_only=True)
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def ledger_counts(settings: Settings) -> tuple[tuple[int, int, int, int], int, int]:
    """What "nothing lost, nothing doubled" is checked on: (min, max, count, distinct count) of the
    positions in the projection's ledger_events, its distinct (customer, envelope) pairs, and the
    number of account events in the event store. Read from the projection file: stop the workers first."""
    from ledger.application import Ledger

    path = settings.projection_path
    [positions] = query(path, "SELECT min(position), max(position), count(*), count(DISTINCT position) "
                              "FROM ledger_events")
    [(envelopes,)] = query(path, "SELECT count(*) FROM (SELECT DISTINCT customer_id, envelope_id FROM ledger_events)")
    ledger = Ledger(settings.store_url)
    try:
        stored_events = len(ledger.read_ledger(0, 10_000_000))
    finally:
        ledger.close()
    return positions, envelopes, stored_events


def wait_until(condition, what: str, timeout_s: float = TOPIC_READ_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


def env_of(settings: Settings) -> dict[str, str]:
    """os.environ plus the ARLEDGER_* variables of `settings` (as the `kafka_env` fixture)."""
    return {**os.environ, "ARLEDGER_HOME": str(settings.home), "ARLEDGER_KAFKA": settings.kafka_bootstrap,
            "ARLEDGER_BROKER_PORT": str(settings.broker_port), "ARLEDGER_STORE": settings.store_url,
            "ARLEDGER_TOPIC_PREFIX": settings.topic_prefix, "ARLEDGER_PARTITIONS": str(settings.partitions),
            "ARLEDGER_REPLICATION_FACTOR": str(settings.replication_factor)}


def settings_on(bootstrap: str, home: Path, prefix: str) -> Settings:
    """Settings on the session broker with their own home and topic prefix (for module-scoped fixtures)."""
    first = bootstrap.split(",")[0].strip()
    return Settings(home=home, broker_port=int(first.rsplit(":", 1)[1]), kafka_bootstrap=bootstrap,
                    store_url=f"sqlite:///{home / 'ledger.sqlite'}", topic_prefix=prefix)
