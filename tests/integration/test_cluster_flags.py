"""Every Kafka setting given as a flag of `arledger`, none by environment, on a real three-broker cluster.

The cluster is `consumers.cluster`'s, as in test_cluster.py: three combined
broker+controller nodes on 127.0.0.1, a SASL_SSL listener with throwaway
certificates made here, mutual TLS, SCRAM-SHA-512. The processes get no
ARLEDGER_KAFKA* variable at all, and ARLEDGER_BROKER_PORT points at a port
where nothing listens: a setting that did not reach a process (a child of
`run --workers 1` above all) would send it to the wrong place and fail.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.admin import ConfigResource, ConfigResourceType

from arledger.settings import ALL_TOPICS, KAFKA_OPTIONS, PASSWORD_FILE_VARIABLE, PASSWORD_VARIABLE, Settings
from consumers.cluster import LocalCluster
from consumers.ingest import INGEST_GROUP_ID
from consumers.topics import admin_client
from helpers import ARLEDGER, cli, report, write_jsonl
from test_cluster import PIPELINE_FACTS, USER, free_base_port, secure_cluster

pytestmark = [pytest.mark.slow, pytest.mark.kafka]

CLIENT_ID = "arledger-flags"
PARTITIONS = 3
WORKERS_START_TIMEOUT_S = 120.0  # three child processes beside three JVMs on 2 cores
WORKERS_STOP_TIMEOUT_S = 60.0
POLL_S = 0.2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with secure_cluster(tmp_path_factory.mktemp("cluster-flags")) as local:
        yield local


def environment_without_kafka(home: Path) -> dict[str, str]:
    """os.environ without any Kafka variable; the local-broker fallback on a port where nothing listens."""
    kafka = {option.variable for option in KAFKA_OPTIONS} | {PASSWORD_VARIABLE}
    return {**{name: value for name, value in os.environ.items() if name not in kafka},
            "ARLEDGER_HOME": str(home), "ARLEDGER_STORE": f"sqlite:///{home / 'ledger.sqlite'}",
            "ARLEDGER_BROKER_PORT": str(free_base_port())}


def children_of(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def environment_of(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode().partition("=")[::2] for entry in entries if entry)


def test_every_kafka_setting_by_flags_reaches_topics_and_the_children_of_run_workers(
        cluster: LocalCluster, tmp_path: Path) -> None:
    assert cluster.security is not None
    tls, password = cluster.security.tls, cluster.security.users[USER]
    password_file = tmp_path / "kafka.password"
    password_file.write_text(password + "\n")
    password_file.chmod(0o600)
    prefix = f"f{uuid.uuid4().hex[:8]}."
    env = environment_without_kafka(tmp_path / "home")
    flags = ["--bootstrap-servers", cluster.secure_bootstrap, "--security-protocol", "SASL_SSL",
             "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-username", USER, "--sasl-password-file", str(password_file),
             "--ssl-cafile", str(tls.ca_cert), "--ssl-certfile", str(tls.client_cert),
             "--ssl-keyfile", str(tls.client_key), "--client-id", CLIENT_ID, "--topic-prefix", prefix,
             "--partitions", str(PARTITIONS), "--replication-factor", "3", "--min-insync-replicas", "2"]
    # The same settings built directly, to look at the cluster independently of the command line.
    settings = Settings(home=tmp_path / "home", broker_port=0, kafka_bootstrap=cluster.secure_bootstrap,
                        store_url="memory://", topic_prefix=prefix, security_protocol="SASL_SSL",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username=USER, sasl_password=password,
                        ssl_cafile=str(tls.ca_cert), ssl_certfile=str(tls.client_cert),
                        ssl_keyfile=str(tls.client_key))

    created = cli(env, *flags, "topics", "ensure")

    assert "5 topic(s) created" in created.stdout, created.stdout
    with admin_client(settings) as admin:
        described = admin.describe_topics([settings.topic(name) for name in ALL_TOPICS])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, settings.topic(name))
                                          for name in ALL_TOPICS])
    for topic in described:
        assert topic["error_code"] == 0, topic
        assert len(topic["partitions"]) == PARTITIONS, topic["name"]
        assert all(len(p["replica_nodes"]) == 3 for p in topic["partitions"]), topic["name"]
    for name in ALL_TOPICS:
        assert configs["topic"][settings.topic(name)]["min.insync.replicas"]["value"] == "2", name

    facts = write_jsonl(tmp_path / "facts.jsonl", PIPELINE_FACTS)
    log_path = tmp_path / "workers.log"
    with log_path.open("ab") as log:
        supervisor = subprocess.Popen([*ARLEDGER, *flags, "run", "--workers", "1"], env=env, stdout=log,
                                      stderr=subprocess.STDOUT)
    try:
        wait_for_log(log_path, b'"workers_started"', 3, supervisor)  # ingest-0, relay, project-0

        # What the children inherited: the settings, and the password file's path, not the password.
        children = [environment_of(pid) for pid in children_of(supervisor.pid)]
        ingested = cli(env, *flags, "ingest", str(facts), "--wait")
        with admin_client(settings) as admin:
            groups = admin.describe_groups([settings.topic(INGEST_GROUP_ID)])
    finally:
        stop(supervisor, log_path)
    balances = report(env, "balances", "--as-of", "2026-02-28")

    assert len(children) == 3
    for child in children:
        assert child["ARLEDGER_KAFKA"] == cluster.secure_bootstrap
        assert child["ARLEDGER_TOPIC_PREFIX"] == prefix and child["ARLEDGER_CLIENT_ID"] == CLIENT_ID
        assert child[PASSWORD_FILE_VARIABLE] == str(password_file) and PASSWORD_VARIABLE not in child
        assert password not in "".join(f"{name}={value}" for name, value in child.items())
    assert "accepted 3" in ingested.stdout, ingested.stdout
    [group] = groups.values()
    assert [member["client_id"] for member in group["members"]] == [f"{CLIENT_ID}-ingest"], group
    [row] = balances["rows"]
    # 40,000 invoiced on 10 January, due 9 February (30 days); 15,000 paid on 1 February.
    assert (row["customer_id"], row["balance"], row["overdue"]) == ("C1", 25_000, 25_000)


def wait_for_log(path: Path, marker: bytes, count: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + WORKERS_START_TIMEOUT_S
    while path.read_bytes().count(marker) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{count} x {marker.decode()} not logged (exit {process.poll()})\n"
                                 + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        time.sleep(POLL_S)


def stop(process: subprocess.Popen[bytes], log_path: Path) -> None:
    """SIGTERM: the supervisor stops its children, which publish a last snapshot; all killed if it hangs."""
    if process.poll() is None:
        children = children_of(process.pid)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=WORKERS_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    assert process.returncode == 0, "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])
