"""A real three-broker KRaft cluster (consumers.cluster): TLS + SASL connections, and failover under load.

One cluster for the module, each node a combined broker and controller on
127.0.0.1 with a SASL_SSL listener (throwaway CA and certificates made here,
mutual TLS, SCRAM-SHA-512 and PLAIN users created when the storage is
formatted). arledger reaches it only through the ARLEDGER_KAFKA_* variables.

The failover test runs `arledger run` against the cluster with topics of
replication factor 3 and min.insync.replicas 2, publishes a generated history in
steady chunks, SIGKILLs the broker that coordinates the ingest group mid-way and
restarts it later; the outcome must equal a clean run of the same input on the
single session broker: nothing lost, nothing doubled, the same reports.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import re
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from arledger.generate import generate_labelled
from arledger.settings import ALL_TOPICS, TOPIC_INBOUND, TOPIC_LEDGER, Settings
from consumers import broker, clients
from consumers.cluster import ClusterSecurity, LocalCluster, throwaway_tls
from consumers.ingest import INGEST_GROUP_ID
from consumers.publisher import Published, publish_lines, wait_for_outcomes
from consumers.topics import admin_client, ensure_topics
from helpers import ARLEDGER, Workers, cli, env_of, ledger_counts, report, settings_on, write_jsonl
from tests.builders import fact

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

USER = "arledger"
PORT_MIN, PORT_MAX = 20_000, 32_000  # below Linux's ephemeral range, as the session broker's ports
PORTS_NEEDED = 9  # three nodes × (PLAINTEXT, CONTROLLER, SASL_SSL)
WRONG_LOGIN_TIMEOUT_S = 40.0  # the admin client gives up after its 10 s bootstrap timeout
WAIT_TIMEOUT_S = 180.0
CHUNKS = 20  # the workload is published in this many pieces, a steady stream rather than one burst
CHUNK_PAUSE_S = 0.5
KILL_AFTER_CHUNK = 3
RESTART_AFTER_CHUNK = 7  # the node takes 10-20 s to rejoin: the load goes on meanwhile
AS_OF = "2026-06-30"
ISR_TIMEOUT_S = 90.0  # the restarted broker catches up and rejoins every in-sync replica set


# A registration, a sale and a part payment: what the pipeline tests send over SASL_SSL.
PIPELINE_FACTS = [
    fact("customer.registered", {"name": "Acme", "currency": "EUR", "credit_limit": 100_000, "payment_terms_days": 30},
         id="reg-1", customer_id="C1", on="2026-01-05"),
    fact("sale.recorded", {"invoice_id": "INV-1", "amount": 40_000, "currency": "EUR", "issued_on": "2026-01-10"},
         id="sale-1", customer_id="C1", on="2026-01-10"),
    fact("payment.received", {"payment_id": "PAY-1", "amount": 15_000, "currency": "EUR", "received_on": "2026-02-01"},
         id="pay-1", customer_id="C1", on="2026-02-01"),
]


def free_base_port() -> int:
    """A port B such that B … B+8 are free on 127.0.0.1."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(PORT_MIN, PORT_MAX - PORTS_NEEDED)
        if not any(broker.port_in_use(port) for port in range(base, base + PORTS_NEEDED)):
            return base
    raise RuntimeError(f"no {PORTS_NEEDED} consecutive free ports in {PORT_MIN}-{PORT_MAX}")


@contextlib.contextmanager
def secure_cluster(home: Path) -> Iterator[LocalCluster]:
    """Three brokers with a SASL_SSL listener (mutual TLS, SCRAM user USER with a random password); every node
    stopped at the end, whatever happened."""
    security = ClusterSecurity(tls=throwaway_tls(home / "tls"), users={USER: uuid.uuid4().hex}, client_auth=True)
    local = LocalCluster(home, free_base_port(), security=security)
    try:
        local.start()
        yield local
    finally:
        local.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with secure_cluster(tmp_path_factory.mktemp("cluster")) as local:
        yield local


def secure_env(cluster: LocalCluster, home: Path, prefix: str, **overrides: str) -> dict[str, str]:
    """The environment of an arledger process on the SASL_SSL listener, RF 3 and min ISR 2."""
    return {**os.environ, "ARLEDGER_HOME": str(home), "ARLEDGER_STORE": f"sqlite:///{home / 'ledger.sqlite'}",
            "ARLEDGER_TOPIC_PREFIX": prefix, "ARLEDGER_REPLICATION_FACTOR": "3",
            "ARLEDGER_MIN_INSYNC_REPLICAS": "2", "ARLEDGER_CLIENT_ID": "arledger-it",
            **cluster.client_environment(USER), **overrides}


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings exactly as a process with `env` would read them."""
    for name in [name for name in os.environ if name.startswith("ARLEDGER_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith("ARLEDGER_"):
            monkeypatch.setenv(name, value)
    return Settings.from_env()


# -- TLS and SASL ---------------------------------------------------------------------------------


def test_topics_and_a_round_trip_over_sasl_ssl_configured_by_environment_only(
        cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = secure_env(cluster, tmp_path, f"t{uuid.uuid4().hex[:8]}.")

    result = cli(env, "topics", "ensure")

    settings = settings_from(env, monkeypatch)
    assert settings.security_protocol == "SASL_SSL" and settings.ssl_certfile  # mutual TLS: a client certificate
    assert "5 topic(s) created" in result.stdout
    with admin_client(settings) as admin:
        described = admin.describe_topics([settings.topic(name) for name in ALL_TOPICS])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic(TOPIC_LEDGER))])
    for topic in described:
        assert topic["error_code"] == 0
        assert all(len(p["replica_nodes"]) == 3 for p in topic["partitions"]), topic["name"]
    assert configs["topic"][settings.topic(TOPIC_LEDGER)]["min.insync.replicas"]["value"] == "2"

    # arledger's own producer and consumer, built from those Settings, see each other's records.
    topic = settings.topic(TOPIC_INBOUND)
    producer = clients.producer(settings, "arledger-it")
    try:
        sent = [producer.send(topic, key=b"C1", value=f"record {n}".encode()) for n in range(20)]
        producer.flush()
        placed = [future.get(timeout=30) for future in sent]
    finally:
        producer.close(timeout=10)
    consumer = clients.assigned_consumer(settings, "arledger-it", 100)
    try:
        [partition] = {TopicPartition(topic, meta.partition) for meta in placed}
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        received: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(received) < 20 and time.monotonic() < deadline:
            received += [record.value for batch in consumer.poll(timeout_ms=500).values() for record in batch]
    finally:
        consumer.close()
    assert received == [f"record {n}".encode() for n in range(20)]


def test_the_whole_pipeline_runs_over_sasl_ssl(cluster: LocalCluster, tmp_path: Path) -> None:
    env = secure_env(cluster, tmp_path, f"t{uuid.uuid4().hex[:8]}.", ARLEDGER_KAFKA_SASL_MECHANISM="PLAIN")
    facts = write_jsonl(tmp_path / "facts.jsonl", PIPELINE_FACTS)
    cli(env, "topics", "ensure")
    workers = Workers(env, log_path=tmp_path / "workers.log")
    try:
        workers.wait_started()
        ingested = cli(env, "ingest", str(facts), "--wait")
        balances = report(env, "balances", "--as-of", "2026-02-28")
    except BaseException:
        workers.kill()
        raise
    workers.stop()

    assert "accepted 3" in ingested.stdout
    [row] = balances["rows"]
    # 40,000 invoiced on 10 January, due 9 February (30 days); 15,000 paid on 1 February.
    assert (row["customer_id"], row["balance"], row["overdue"]) == ("C1", 25_000, 25_000)


def test_a_wrong_password_or_an_unknown_ca_fails_clearly_and_in_bounded_time(
        cluster: LocalCluster, tmp_path: Path) -> None:
    def env(**overrides: str) -> dict[str, str]:
        return secure_env(cluster, tmp_path, f"t{uuid.uuid4().hex[:8]}.", **overrides)

    attempts = {  # what is wrong → (environment, what the error must say)
        "SCRAM password": (env(ARLEDGER_KAFKA_SASL_PASSWORD="wrong"), r"authentication"),
        "PLAIN password": (env(ARLEDGER_KAFKA_SASL_MECHANISM="PLAIN", ARLEDGER_KAFKA_SASL_PASSWORD="wrong"),
                           r"authentication"),
        # The system's CAs do not know the throwaway CA that signed the brokers' certificate.
        "CA": ({k: v for k, v in env().items() if k != "ARLEDGER_KAFKA_SSL_CAFILE"}, r"CERTIFICATE_VERIFY_FAILED"),
    }
    started = time.monotonic()

    # Side by side: each waits out the admin client's 10 s bootstrap timeout.
    running = {what: subprocess.Popen([*ARLEDGER, "topics", "ensure"], env=attempt_env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for what, (attempt_env, _) in attempts.items()}
    try:
        results = {what: process.communicate(timeout=WRONG_LOGIN_TIMEOUT_S) for what, process in running.items()}
    finally:
        for process in running.values():
            if process.poll() is None:
                process.kill()
                process.wait()

    assert time.monotonic() - started < WRONG_LOGIN_TIMEOUT_S
    for what, (_, expected) in attempts.items():
        _, stderr = results[what]
        assert running[what].returncode == 1, (what, stderr)
        assert stderr.startswith("arledger: error: ") and "Traceback" not in stderr, (what, stderr)
        assert re.search(expected, stderr, re.IGNORECASE), (what, stderr)


# -- Failover ---------------------------------------------------------------------------------------


def workload() -> list[bytes]:
    """A generated history: 100 customers over 6 months (~4,300 envelopes, ~1 % of them bad)."""
    return [raw for _, raw in generate_labelled(100, 6, seed=11, start=dt.date(2026, 1, 1), bad_share=0.01)]


@dataclass
class RunResult:
    counts: Counter[str]
    aging: dict[str, Any]
    balances: dict[str, Any]
    positions: tuple[int, int, int, int]  # min, max, count, distinct count in ledger_events
    envelopes: int  # distinct (customer_id, envelope_id) in ledger_events
    stored_events: int


def collect(settings: Settings, env: dict[str, str], counts: Counter[str]) -> RunResult:
    aging = report(env, "aging", "--as-of", AS_OF)
    balances = report(env, "balances", "--as-of", AS_OF)
    positions, envelopes, stored_events = ledger_counts(settings)
    return RunResult(counts, aging, balances, positions, envelopes, stored_events)


def run_workers(settings: Settings, env: dict[str, str], publish: Any) -> RunResult:
    """`arledger run` while `publish()` sends the workload; the outcome once everything is through."""
    ensure_topics(settings)
    workers = Workers(env, log_path=settings.home / "workers.log")
    try:
        workers.wait_started()
        published = publish()
        counts = wait_for_outcomes(settings, published, {}, WAIT_TIMEOUT_S)
    except BaseException:
        workers.kill()
        raise
    workers.stop()  # the last snapshot is published on a clean stop: the reports read it
    return collect(settings, env, counts)


@pytest.fixture(scope="module")
def clean_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    """The workload on the single session broker, nothing killed."""
    home = tmp_path_factory.mktemp("clean-run")
    settings = settings_on(kafka_bootstrap, home, f"t{uuid.uuid4().hex[:8]}.")
    return run_workers(settings, env_of(settings), lambda: publish_lines(settings, workload()))


def java_string_hash(text: str) -> int:
    """Java's String.hashCode (UTF-16 code units), as Kafka uses it to place a group."""
    value = 0
    for unit in text.encode("utf-16-be").hex(" ", 2).split():
        value = (31 * value + int(unit, 16)) & 0xFFFFFFFF
    return value


def group_coordinator(settings: Settings, group_id: str) -> int:
    """The broker leading the __consumer_offsets partition of `group_id`: the group's coordinator."""
    with admin_client(settings) as admin:
        [offsets] = admin.describe_topics(["__consumer_offsets"])
    partition = (java_string_hash(group_id) & 0x7FFFFFFF) % len(offsets["partitions"])
    [leader] = [p["leader_id"] for p in offsets["partitions"] if p["partition_index"] == partition]
    return int(leader)


def under_replicated(settings: Settings) -> list[str]:
    """Partitions of this test's topics with fewer than 3 in-sync replicas."""
    with admin_client(settings) as admin:
        described = admin.describe_topics([settings.topic(name) for name in ALL_TOPICS])
    return [f"{t['name']}/{p['partition_index']}" for t in described for p in t["partitions"]
            if len(p["isr_nodes"]) < 3]


def test_killing_a_broker_under_load_loses_and_doubles_nothing(
        cluster: LocalCluster, clean_run: RunResult, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = secure_env(cluster, tmp_path, f"t{uuid.uuid4().hex[:8]}.")
    settings = settings_from(env, monkeypatch)
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    lines = workload()
    chunk_size = -(-len(lines) // CHUNKS)
    timeline: list[str] = []  # what happened when, for the failure messages and the workers' home
    started = time.monotonic()

    def note(what: str) -> None:
        timeline.append(f"{time.monotonic() - started:6.1f} s  {what}")

    def publish_steadily() -> list[Published]:
        published: list[Published] = []
        victim, restart = None, None
        with ThreadPoolExecutor(max_workers=1) as background:
            for number, start in enumerate(range(0, len(lines), chunk_size), start=1):
                published += publish_lines(settings, lines[start:start + chunk_size])
                note(f"{len(published)} records published")
                if number == KILL_AFTER_CHUNK:
                    victim = group_coordinator(settings, settings.topic(INGEST_GROUP_ID))
                    cluster.kill(victim)
                    note(f"node {victim} (the ingest group's coordinator) killed with SIGKILL")
                elif number == RESTART_AFTER_CHUNK:
                    assert victim is not None
                    # In the background: the load goes on while the node recovers its logs and rejoins.
                    restart = background.submit(cluster.start_nodes, [victim])
                    note(f"node {victim} restarting")
                time.sleep(CHUNK_PAUSE_S)
            assert restart is not None
            restart.result()
            note(f"node {victim} is a live broker again")
        return published

    try:
        result = run_workers(settings, env, publish_steadily)
    except BaseException:
        with contextlib.suppress(Exception):
            cluster.start()  # a later test finds three brokers; the fixture stops them all in any case
        raise
    finally:
        (tmp_path / "failover-timeline.txt").write_text("\n".join(timeline) + "\n")

    assert sum("killed" in entry or "live broker again" in entry for entry in timeline) == 2, timeline
    # Every record has the outcome it had in the clean run: nothing lost, nothing applied twice.
    assert result.counts == clean_run.counts
    assert sum(result.counts[k] for k in ("accepted", "rejected", "duplicate")) == len(lines)
    n = result.stored_events
    assert n == clean_run.stored_events
    assert result.positions == (1, n, n, n)  # each ledger event projected once, positions without gaps
    assert result.envelopes == result.counts["accepted"]
    # The reports equal those of the clean run.
    assert result.aging == clean_run.aging
    assert result.balances == clean_run.balances
    # The restarted broker caught up: every partition has three in-sync replicas again.
    deadline = time.monotonic() + ISR_TIMEOUT_S
    while (lagging := under_replicated(settings)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not lagging, f"still under-replicated after {ISR_TIMEOUT_S} s: {lagging}"
