"""A local multi-broker Apache Kafka cluster (KRaft) on 127.0.0.1, for tests and for trying production settings.

Three nodes by default, each a combined broker and controller with its own
node id, ports and folder under `home`:

    home/cluster.id                     the cluster id every node was formatted with
    home/node-N/kafka/server.properties
    home/node-N/kafka/data/             log.dirs (KRaft metadata and topic logs)
    home/node-N/kafka/logs/server.log   the broker's log4j output
    home/node-N/kafka/broker.out        JVM stdout and stderr
    home/node-N/kafka/broker.pid

(each node's folder is laid out as the single broker's `home/kafka`, so
`.ci/run`'s safety net, which stops every `*/kafka/broker.pid` left running,
covers the cluster too).

Ports from `base_port`: node N (1-based) listens on base + 3(N-1) (PLAINTEXT:
between brokers and for local probes), base + 3(N-1) + 1 (CONTROLLER) and, with
`security`, base + 3(N-1) + 2 (SASL_SSL: TLS with certificates from
`throwaway_tls`, SASL SCRAM-SHA-512 and PLAIN, users created when the storage is
formatted). The PLAINTEXT listener stays open on loopback: this cluster is for
one machine, not a hardened deployment.

It reuses the single broker's machinery (`consumers.broker`): the jars, Java,
StorageTool, PID files, readiness by an admin metadata call, SIGTERM then SIGKILL.

    python -m consumers.cluster start --home /tmp/c --base-port 29000 --sasl-ssl
    python -m consumers.cluster stop --home /tmp/c
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from arledger.settings import BROKER_STOP_TIMEOUT_S
from consumers.broker import (
    READY_POLL_INTERVAL_S,
    READY_PROBE_TIMEOUT_MS,
    STORAGE_TOOL_JVM_OPTIONS,
    BrokerError,
    answering_broker_ids,
    check_kafka_jars,
    find_java,
    is_kafka_process,
    java_command,
    pid_alive,
    port_in_use,
    run_storage_tool,
    tail_of_file,
    terminate,
    write_atomically,
)

NODE_COUNT_DEFAULT = 3
PORTS_PER_NODE = 3  # PLAINTEXT, CONTROLLER, SASL_SSL
# Three JVMs beside the Python workers on a 2-core machine: a small heap each.
CLUSTER_JVM_OPTIONS = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
)
# Three JVMs start at once on 2 cores and must elect a controller: slower than one broker.
CLUSTER_START_TIMEOUT_S = 120.0
# A node that died is fenced after this long without a heartbeat; Kafka's 9 s
# default makes every failover test wait that long before leaders move.
BROKER_SESSION_TIMEOUT_MS = 4_000
BROKER_HEARTBEAT_INTERVAL_MS = 1_000
# The data is throwaway: a stop does not wait long for a controlled shutdown
# (the last nodes of a cluster that is going down cannot complete one anyway).
CLUSTER_STOP_TIMEOUT_S = 20.0
SCRAM_MECHANISM = "SCRAM-SHA-512"
CERTIFICATE_DAYS = 2  # throwaway certificates: valid for the length of a test run
OPENSSL_TIMEOUT_S = 30.0
LOG_TAIL_LINES = 20


# -- Throwaway TLS material ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a throwaway CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    ca_cert: Path  # trusted by the brokers (client certificates) and the clients (server certificate)
    server_keystore: Path  # the server's private key (PKCS#8) followed by its certificate chain
    client_cert: Path
    client_key: Path


def throwaway_tls(folder: Path) -> TlsFiles:
    """Make a CA, a server certificate (SAN 127.0.0.1 and localhost) and a client certificate with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = folder / "ca.key", folder / "ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca_cert,
             "-days", str(CERTIFICATE_DAYS), "-subj", "/CN=arledger throwaway CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    server_key, server_cert = _signed_certificate(
        folder, "server", ca_key, ca_cert, "/CN=localhost",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n")
    client_key, client_cert = _signed_certificate(
        folder, "client", ca_key, ca_cert, "/CN=arledger",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    keystore = folder / "server-keystore.pem"
    keystore.write_text(server_key.read_text() + server_cert.read_text() + ca_cert.read_text())
    for path in (ca_key, server_key, client_key, keystore):
        path.chmod(0o600)
    return TlsFiles(ca_cert=ca_cert, server_keystore=keystore, client_cert=client_cert, client_key=client_key)


def _signed_certificate(folder: Path, name: str, ca_key: Path, ca_cert: Path, subject: str,
                        extensions: str) -> tuple[Path, Path]:
    key, request, cert, extfile = (folder / f"{name}.key", folder / f"{name}.csr", folder / f"{name}.pem",
                                   folder / f"{name}.ext")
    extfile.write_text(extensions)
    # openssl 3 writes an unencrypted PKCS#8 key with -nodes: the form Kafka's PEM keystore reads.
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", subject)
    _openssl("x509", "-req", "-in", request, "-CA", ca_cert, "-CAkey", ca_key, "-CAcreateserial",
             "-out", cert, "-days", str(CERTIFICATE_DAYS), "-sha256", "-extfile", extfile)
    request.unlink()
    extfile.unlink()
    return key, cert


def _openssl(*args: object) -> None:
    try:
        result = subprocess.run(["openssl", *map(str, args)], capture_output=True, text=True,
                                timeout=OPENSSL_TIMEOUT_S, check=False, stdin=subprocess.DEVNULL)
    except FileNotFoundError as error:
        raise BrokerError("openssl was not found on PATH: it makes the throwaway certificates") from error
    if result.returncode != 0:
        raise BrokerError(f"openssl {args[0]} failed (exit {result.returncode}):\n{result.stderr.strip()}")


# -- Cluster configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterSecurity:
    """A SASL_SSL listener on every node: TLS with `tls`, SCRAM-SHA-512 and PLAIN for `users`."""

    tls: TlsFiles
    users: dict[str, str] = field(default_factory=dict)  # name → password (letters and digits)
    client_auth: bool = False  # True: clients must also present a certificate signed by the CA (mutual TLS)


@dataclass(frozen=True)
class Node:
    node_id: int
    port: int  # PLAINTEXT
    controller_port: int
    secure_port: int | None  # SASL_SSL, when the cluster has security
    folder: Path

    @property
    def properties_path(self) -> Path:
        return self.folder / "server.properties"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def logs_dir(self) -> Path:
        return self.folder / "logs"

    @property
    def pid_path(self) -> Path:
        return self.folder / "broker.pid"

    @property
    def stdout_path(self) -> Path:
        return self.folder / "broker.out"


class LocalCluster:
    """N combined broker+controller nodes on 127.0.0.1 under `home`; start/stop/kill by PID."""

    def __init__(self, home: Path, base_port: int, node_count: int = NODE_COUNT_DEFAULT,
                 security: ClusterSecurity | None = None, partitions: int = 6) -> None:
        assert node_count >= 1, "a cluster has at least one node"
        assert all(name.isalnum() and password.isalnum() for name, password in (security.users.items()
                                                                                if security else ())), \
            "SCRAM/PLAIN user names and passwords here are letters and digits (they go into JAAS and --add-scram)"
        self.home = home
        self.security = security
        self._processes: dict[int, subprocess.Popen[bytes]] = {}  # the nodes this object started: exit codes
        self.partitions = partitions
        self.nodes = [
            Node(node_id=n, port=base_port + PORTS_PER_NODE * (n - 1),
                 controller_port=base_port + PORTS_PER_NODE * (n - 1) + 1,
                 secure_port=base_port + PORTS_PER_NODE * (n - 1) + 2 if security else None,
                 folder=home / f"node-{n}" / "kafka")
            for n in range(1, node_count + 1)
        ]

    # -- Addresses and client settings -------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """The PLAINTEXT bootstrap servers of every node."""
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    @property
    def secure_bootstrap(self) -> str:
        """The SASL_SSL bootstrap servers (TLS certificates name 127.0.0.1)."""
        assert self.security is not None, "this cluster has no SASL_SSL listener"
        return ",".join(f"127.0.0.1:{node.secure_port}" for node in self.nodes)

    def node(self, node_id: int) -> Node:
        [found] = [node for node in self.nodes if node.node_id == node_id]
        return found

    def client_environment(self, user: str, *, mechanism: str = SCRAM_MECHANISM,
                           password: str | None = None) -> dict[str, str]:
        """The ARLEDGER_KAFKA* variables that connect arledger to the SASL_SSL listener as `user`."""
        assert self.security is not None, "this cluster has no SASL_SSL listener"
        tls = self.security.tls
        env = {
            "ARLEDGER_KAFKA": self.secure_bootstrap,
            "ARLEDGER_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "ARLEDGER_KAFKA_SASL_MECHANISM": mechanism,
            "ARLEDGER_KAFKA_SASL_USERNAME": user,
            "ARLEDGER_KAFKA_SASL_PASSWORD": password if password is not None else self.security.users[user],
            "ARLEDGER_KAFKA_SSL_CAFILE": str(tls.ca_cert),
        }
        if self.security.client_auth:
            env["ARLEDGER_KAFKA_SSL_CERTFILE"] = str(tls.client_cert)
            env["ARLEDGER_KAFKA_SSL_KEYFILE"] = str(tls.client_key)
        return env

    # -- Configuration and storage ------------------------------------------------------------

    def server_properties(self, node: Node) -> str:
        """KRaft configuration of one node: combined roles, static voters, internal topics replicated."""
        count = len(self.nodes)
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        listeners = [f"PLAINTEXT://127.0.0.1:{node.port}", f"CONTROLLER://127.0.0.1:{node.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{node.port}"]
        protocol_map = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
        if self.security:
            listeners.append(f"SASL_SSL://127.0.0.1:{node.secure_port}")
            advertised.append(f"SASL_SSL://127.0.0.1:{node.secure_port}")
            protocol_map.append("SASL_SSL:SASL_SSL")
        lines = [
            "# Written by consumers.cluster on every start; edits are overwritten.",
            "process.roles=broker,controller",
            f"node.id={node.node_id}",
            f"listeners={','.join(listeners)}",
            f"advertised.listeners={','.join(advertised)}",
            f"listener.security.protocol.map={','.join(protocol_map)}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            f"controller.quorum.voters={voters}",
            f"log.dirs={node.data_dir}",
            "auto.create.topics.enable=false",
            f"num.partitions={self.partitions}",
            f"default.replication.factor={min(3, count)}",
            # Kafka's default; arledger sets min.insync.replicas per topic (ARLEDGER_MIN_INSYNC_REPLICAS).
            "min.insync.replicas=1",
            f"offsets.topic.replication.factor={count}",
            f"transaction.state.log.replication.factor={count}",
            f"transaction.state.log.min.isr={min(2, count)}",
            f"share.coordinator.state.topic.replication.factor={count}",
            f"share.coordinator.state.topic.min.isr={min(2, count)}",
            "offsets.topic.num.partitions=10",
            "transaction.state.log.num.partitions=10",
            "group.initial.rebalance.delay.ms=0",
            f"broker.session.timeout.ms={BROKER_SESSION_TIMEOUT_MS}",
            f"broker.heartbeat.interval.ms={BROKER_HEARTBEAT_INTERVAL_MS}",
            # Fewer threads than the defaults (8 I/O, 3 network): three brokers share 2 cores.
            "num.io.threads=4",
            "num.network.threads=2",
        ]
        if self.security:
            lines += self._security_properties()
        return "\n".join(lines) + "\n"

    def _security_properties(self) -> list[str]:
        assert self.security is not None
        tls = self.security.tls
        plain_users = " ".join(f'user_{name}="{password}"' for name, password in self.security.users.items())
        prefix = "listener.name.sasl_ssl."
        return [
            f"{prefix}sasl.enabled.mechanisms={SCRAM_MECHANISM},PLAIN",
            # SCRAM credentials live in the cluster metadata (created by StorageTool --add-scram).
            f"{prefix}scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;",
            f"{prefix}plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
            f"{plain_users};",
            f"{prefix}ssl.keystore.type=PEM",
            f"{prefix}ssl.keystore.location={tls.server_keystore}",
            f"{prefix}ssl.truststore.type=PEM",
            f"{prefix}ssl.truststore.location={tls.ca_cert}",
            f"{prefix}ssl.client.auth={'required' if self.security.client_auth else 'none'}",
        ]

    def _cluster_id(self) -> str:
        """The id every node is formatted with, made once and kept in home/cluster.id."""
        path = self.home / "cluster.id"
        with contextlib.suppress(OSError):
            return path.read_text().strip()
        # Kafka's Uuid form: 16 random bytes, URL-safe base64 without padding, never starting with '-'.
        while True:
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
            if not cluster_id.startswith("-"):
                break
        write_atomically(path, cluster_id + "\n")
        return cluster_id

    def _format(self, node: Node, cluster_id: str, java: str, lib: Path) -> None:
        scram = [arg for name, password in (self.security.users.items() if self.security else ())
                 for arg in ("--add-scram", f"{SCRAM_MECHANISM}=[name={name},password={password}]")]
        base = java_command(java, lib, STORAGE_TOOL_JVM_OPTIONS, node.logs_dir)
        run_storage_tool([*base, "kafka.tools.StorageTool", "format", "-t", cluster_id,
                          "-c", str(node.properties_path), *scram])

    # -- Processes ----------------------------------------------------------------------------------

    def pid(self, node_id: int) -> int | None:
        """The PID of the node if it runs (the PID file names a live kafka.Kafka on its properties)."""
        node = self.node(node_id)
        try:
            pid = int(node.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_kafka_process(pid, node.properties_path) else None

    def running_node_ids(self) -> list[int]:
        return [node.node_id for node in self.nodes if self.pid(node.node_id) is not None]

    def start(self, timeout_s: float = CLUSTER_START_TIMEOUT_S) -> float:
        """Format what is new, start every node that is not running, wait until all are brokers; seconds taken."""
        started = time.monotonic()
        self.start_nodes([node.node_id for node in self.nodes], timeout_s)
        return time.monotonic() - started

    def start_nodes(self, node_ids: list[int], timeout_s: float = CLUSTER_START_TIMEOUT_S) -> None:
        """Start the given nodes (those not running) and wait until the cluster lists each as a live broker."""
        lib, java = check_kafka_jars(), find_java()
        to_start = [self.node(n) for n in node_ids if self.pid(n) is None]
        for node in to_start:
            for port in (node.port, node.controller_port, node.secure_port):
                if port is not None and port_in_use(port):
                    raise BrokerError(f"port {port} on 127.0.0.1 is in use: node {node.node_id} cannot start")
            for folder in (node.folder, node.data_dir, node.logs_dir):
                folder.mkdir(parents=True, exist_ok=True)
            write_atomically(node.properties_path, self.server_properties(node))
        unformatted = [node for node in to_start if not (node.data_dir / "meta.properties").is_file()]
        if unformatted:
            cluster_id = self._cluster_id()
            # One StorageTool JVM per node, side by side: each takes seconds to start.
            with ThreadPoolExecutor(max_workers=len(unformatted)) as pool:
                list(pool.map(lambda node: self._format(node, cluster_id, java, lib), unformatted))
        for node in to_start:
            process = self._spawn(node, java, lib)
            self._processes[node.node_id] = process
            write_atomically(node.pid_path, f"{process.pid}\n")
        try:
            self.wait_for_brokers(node_ids, timeout_s)
        except BrokerError as error:
            raise BrokerError(f"{error}\n{self.failure_details()}") from None

    def _spawn(self, node: Node, java: str, lib: Path) -> subprocess.Popen[bytes]:
        command = [*java_command(java, lib, CLUSTER_JVM_OPTIONS, node.logs_dir), "kafka.Kafka",
                   str(node.properties_path)]
        with open(node.stdout_path, "ab") as out:
            # A new session: the node outlives this process and ignores its Ctrl-C.
            return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=node.folder, start_new_session=True, close_fds=True)

    def wait_for_brokers(self, node_ids: list[int], timeout_s: float = CLUSTER_START_TIMEOUT_S) -> float:
        """Block until the cluster lists every node in `node_ids` as a live broker; seconds waited."""
        wanted = set(node_ids)
        started = time.monotonic()
        deadline = started + timeout_s
        while True:
            dead = [n for n in wanted if not self._alive(n)]
            if dead:
                codes = {n: self._processes[n].poll() for n in dead if n in self._processes}
                raise BrokerError(f"node(s) {sorted(dead)} of the cluster in {self.home} exited while starting "
                                  f"(exit codes {codes})")
            probe_ms = max(100, min(READY_PROBE_TIMEOUT_MS, int((deadline - time.monotonic()) * 1000)))
            bootstrap = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes if self._alive(node.node_id))
            if bootstrap and wanted <= answering_broker_ids(bootstrap, probe_ms):
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise BrokerError(f"nodes {sorted(wanted)} of the cluster in {self.home} were not all live "
                                  f"brokers within {timeout_s:.0f} s")
            time.sleep(READY_POLL_INTERVAL_S)

    def _alive(self, node_id: int) -> bool:
        """Whether the node runs: by its process handle when this object started it, else by its PID file."""
        process = self._processes.get(node_id)
        return process.poll() is None if process is not None else self.pid(node_id) is not None

    def kill(self, node_id: int) -> None:
        """SIGKILL one node, as a crash would (no controlled shutdown), and wait until it is gone."""
        pid = self.pid(node_id)
        assert pid is not None, f"node {node_id} is not running"
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + BROKER_STOP_TIMEOUT_S
        while pid_alive(pid):
            assert time.monotonic() < deadline, f"node {node_id} (pid {pid}) survived SIGKILL"
            time.sleep(0.05)
        self.node(node_id).pid_path.unlink(missing_ok=True)

    def stop(self, timeout_s: float = CLUSTER_STOP_TIMEOUT_S) -> list[int]:
        """SIGTERM every running node at once, SIGKILL what is left after `timeout_s`; the node ids stopped."""
        running = {n: pid for n in (node.node_id for node in self.nodes) if (pid := self.pid(n)) is not None}
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        # terminate() sends SIGTERM again (harmless) and SIGKILLs a node still there after the timeout.
        with ThreadPoolExecutor(max_workers=max(1, len(running))) as pool:
            list(pool.map(lambda pid: terminate(pid, timeout_s), running.values()))
        for node in self.nodes:
            if node.node_id in running or self.pid(node.node_id) is None:
                node.pid_path.unlink(missing_ok=True)
        return sorted(running)

    def failure_details(self) -> str:
        parts = []
        for node in self.nodes:
            for path in (node.stdout_path, node.logs_dir / "server.log"):
                tail = tail_of_file(path, LOG_TAIL_LINES)
                if tail:
                    parts.append(f"--- last lines of {path} ---\n{tail}")
        return "\n".join(parts)

    def __enter__(self) -> "LocalCluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


# -- Command line (python -m consumers.cluster) ---------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m consumers.cluster",
                                     description="A local three-broker KRaft cluster on 127.0.0.1.")
    parser.add_argument("action", choices=("start", "stop", "status"))
    parser.add_argument("--home", type=Path, required=True, help="folder of the cluster's data and logs")
    parser.add_argument("--base-port", type=int, default=29_000,
                        help="node N uses base+3(N-1) PLAINTEXT, +1 controller, +2 SASL_SSL (default 29000)")
    parser.add_argument("--nodes", type=int, default=NODE_COUNT_DEFAULT)
    parser.add_argument("--sasl-ssl", action="store_true",
                        help="add a SASL_SSL listener: throwaway certificates under HOME/tls, user 'arledger' "
                             "with a random password (SCRAM-SHA-512 and PLAIN)")
    args = parser.parse_args(argv)
    home = args.home.expanduser().resolve()
    config_path = home / "cluster.json"
    if args.action == "start":
        security = _security_for(home) if args.sasl_ssl else None
        cluster = LocalCluster(home, args.base_port, args.nodes, security)
        home.mkdir(parents=True, exist_ok=True)
        config_path.write_text(json.dumps({"base_port": args.base_port, "nodes": args.nodes,
                                           "sasl_ssl": args.sasl_ssl}))
        try:
            seconds = cluster.start()
        except BrokerError as error:
            print(f"error: {error}", file=sys.stderr)
            cluster.stop()
            return 1
        print(f"cluster of {args.nodes} started in {seconds:.1f} s; PLAINTEXT bootstrap: {cluster.bootstrap}")
        if security:
            for name, value in cluster.client_environment("arledger").items():
                print(f"export {name}={value}")
        return 0
    try:
        saved = json.loads(config_path.read_text())
    except OSError:
        print(f"no cluster in {home}", file=sys.stderr)
        return 1
    security = _security_for(home) if saved["sasl_ssl"] else None
    cluster = LocalCluster(home, saved["base_port"], saved["nodes"], security)
    if args.action == "stop":
        stopped = cluster.stop()
        print(f"stopped node(s) {stopped}" if stopped else "no node was running")
    else:
        print(json.dumps({"running": cluster.running_node_ids(),
                          "live_brokers": sorted(answering_broker_ids(cluster.bootstrap))}))
    return 0


def _security_for(home: Path) -> ClusterSecurity:
    """The throwaway TLS files and the user of a command-line cluster, made once under HOME/tls."""
    folder = home / "tls"
    password_path = folder / "arledger.password"
    if not password_path.is_file():
        throwaway_tls(folder)
        password_path.write_text(uuid.uuid4().hex)
        password_path.chmod(0o600)
    tls = TlsFiles(ca_cert=folder / "ca.pem", server_keystore=folder / "server-keystore.pem",
                   client_cert=folder / "client.pem", client_key=folder / "client.key")
    return ClusterSecurity(tls=tls, users={"arledger": password_path.read_text().strip()})


if __name__ == "__main__":
    sys.exit(main())
