"""The local single-node Apache Kafka broker (KRaft, broker+controller) arledger manages.

Everything lives under `settings.home / "kafka"`: `server.properties`, `data/`
(log.dirs), `logs/` (the broker's log4j output), `broker.out` (JVM stdout and
stderr), `broker.pid`. The broker listens on 127.0.0.1 only: `broker_port` for
clients and the next port for the controller. Storage is formatted once; the
ports may change between runs (the single KRaft voter updates its endpoint).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from arledger.settings import (
    BROKER_START_TIMEOUT_S,
    BROKER_STOP_TIMEOUT_S,
    REPO_ROOT,
    Settings,
)

KAFKA_LIB_ENV = "ARLEDGER_KAFKA_LIB"
DEFAULT_KAFKA_LIB = REPO_ROOT / "deploy" / "kafka" / "lib"
LOG4J_CONFIG = REPO_ROOT / "deploy" / "kafka" / "log4j2.xml"
JAVA_VERSION_MIN = 17  # Kafka 4 brokers need Java 17+.

# Heap: 256 MiB is enough to start; 1 GiB covers the benchmarks on a 2-core,
# 24 GiB machine without starving the Python workers beside it.
BROKER_JVM_OPTIONS = (
    "-Xms256m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
)
# StorageTool runs once and exits: a small heap starts faster.
STORAGE_TOOL_JVM_OPTIONS = ("-Xmx256m", "-Djava.awt.headless=true")
STORAGE_TOOL_TIMEOUT_S = 120.0
# One readiness probe: short, so a dead port is retried soon and a wait ends on time.
READY_PROBE_TIMEOUT_MS = 2_000
READY_POLL_INTERVAL_S = 0.25
STOP_POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 30


class BrokerError(Exception):
    """An operating error of the local broker, with a message for a person."""


@dataclass(frozen=True)
class BrokerStatus:
    """What `status` (and `start`) know about the local broker."""

    running: bool
    pid: int | None
    port: int
    controller_port: int
    answering: bool
    bootstrap: str
    kafka_dir: Path
    log_path: Path
    already_running: bool = False
    start_duration_s: float | None = None


# -- Paths --------------------------------------------------------------------


def kafka_dir(settings: Settings) -> Path:
    return settings.home / "kafka"


def _data_dir(settings: Settings) -> Path:
    return kafka_dir(settings) / "data"


def _logs_dir(settings: Settings) -> Path:
    return kafka_dir(settings) / "logs"


def _properties_path(settings: Settings) -> Path:
    return kafka_dir(settings) / "server.properties"


def _pid_path(settings: Settings) -> Path:
    return kafka_dir(settings) / "broker.pid"


def _stdout_path(settings: Settings) -> Path:
    return kafka_dir(settings) / "broker.out"


def server_log_path(settings: Settings) -> Path:
    return _logs_dir(settings) / "server.log"


def local_bootstrap(settings: Settings) -> str:
    return f"127.0.0.1:{settings.broker_port}"


def kafka_lib_dir() -> Path:
    """The folder of Kafka jars: `deploy/kafka/lib`, or `$ARLEDGER_KAFKA_LIB`."""
    override = os.environ.get(KAFKA_LIB_ENV)
    return Path(override).expanduser() if override else DEFAULT_KAFKA_LIB


# -- Prerequisites --------------------------------------------------------------


def find_java() -> str:
    """The java executable ($JAVA_HOME/bin/java, else java on PATH), version checked."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if not java:
        raise BrokerError(
            "java was not found on PATH (nor in $JAVA_HOME/bin). The Kafka broker needs "
            f"Java {JAVA_VERSION_MIN}+: run `make jars` (it calls deploy/install-system-deps.sh, "
            "which installs Java and Maven) or `apt-get install openjdk-17-jre-headless`."
        )
    major = _java_major_version(java)
    if major is not None and major < JAVA_VERSION_MIN:
        raise BrokerError(
            f"{java} is Java {major}; Kafka 4 needs Java {JAVA_VERSION_MIN}+. "
            "Install a newer JDK and put it first on PATH or set JAVA_HOME."
        )
    return java


def _java_major_version(java: str) -> int | None:
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if not match:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_…".
    return int(match.group(2) or 0) if major == 1 else major


def check_kafka_jars(lib: Path | None = None) -> Path:
    """The jar folder if it holds the Kafka broker, else a BrokerError saying what to run."""
    lib = lib if lib is not None else kafka_lib_dir()
    if not lib.is_dir() or not any(lib.glob("kafka_2.13-*.jar")):
        raise BrokerError(
            f"Kafka jars not found in {lib}: run `make jars` at the repository root "
            f"(it fetches them with Maven), or set {KAFKA_LIB_ENV} to a folder holding "
            "the jars of org.apache.kafka:kafka_2.13 and its dependencies."
        )
    return lib


def java_command(java: str, lib: Path, jvm_options: tuple[str, ...], logs_dir: Path) -> list[str]:
    return [
        java,
        *jvm_options,
        f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
        f"-Dkafka.logs.dir={logs_dir}",
        "-cp",
        f"{lib}{os.sep}*",
    ]


# -- Processes and ports ----------------------------------------------------------


def _read_pid(settings: Settings) -> int | None:
    try:
        return int(_pid_path(settings).read_text().strip())
    except (OSError, ValueError):
        return None


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie (reaping our own children)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # a broker this process started exits as a zombie
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_our_broker(pid: int, settings: Settings) -> bool:
    """True if `pid` is a live kafka.Kafka run on this home's server.properties (not a reused PID)."""
    return is_kafka_process(pid, _properties_path(settings))


def is_kafka_process(pid: int, properties_path: Path) -> bool:
    """True if `pid` is a live kafka.Kafka run on `properties_path` (not a reused PID)."""
    if not pid_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no /proc: trust the PID file
    args = [arg.decode(errors="replace") for arg in cmdline]
    return "kafka.Kafka" in args and str(properties_path) in args


def _recorded_broker_pid(settings: Settings) -> int | None:
    pid = _read_pid(settings)
    return pid if pid is not None and _is_our_broker(pid, settings) else None


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True if something listens on host:port (SO_REUSEADDR ignores TIME_WAIT leftovers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


@contextlib.contextmanager
def quiet_kafka_logging() -> Iterator[None]:
    """Silence kafka-python's connection errors while probing a broker that is not up yet."""
    logger = logging.getLogger("kafka")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def broker_answers(bootstrap: str, timeout_ms: int = READY_PROBE_TIMEOUT_MS) -> bool:
    """One probe: True if an admin client's metadata call gets an answer from `bootstrap`."""
    return bool(answering_broker_ids(bootstrap, timeout_ms))


def answering_broker_ids(bootstrap: str, timeout_ms: int = READY_PROBE_TIMEOUT_MS) -> frozenset[int]:
    """One probe: the node ids of the live brokers the cluster at `bootstrap` reports (empty: no answer)."""
    from kafka import KafkaAdminClient  # imported late: `broker status` stays fast without it

    with quiet_kafka_logging():
        admin = None
        try:
            admin = KafkaAdminClient(
                bootstrap_servers=bootstrap,
                client_id="arledger-broker-probe",
                bootstrap_timeout_ms=timeout_ms,
                request_timeout_ms=timeout_ms,
            )
            cluster = admin.describe_cluster()
            # DescribeCluster lists fenced brokers too (a node that died and was not yet restarted).
            return frozenset(int(b["broker_id"]) for b in cluster.get("brokers") or () if not b.get("is_fenced"))
        except Exception:  # noqa: BLE001 - any failure means "not answering yet"
            return frozenset()
        finally:
            if admin is not None:
                with contextlib.suppress(Exception):
                    admin.close()


def wait_until_ready(
    bootstrap: str,
    timeout_s: float = BROKER_START_TIMEOUT_S,
    *,
    still_starting: Callable[[], bool] | None = None,
) -> float:
    """Block until the cluster at `bootstrap` answers a metadata call; return the seconds waited.

    Works for any cluster. `still_starting` (optional) returns False when
    waiting is pointless (the broker process died); then a BrokerError is raised
    at once. Raises BrokerError after `timeout_s`.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        remaining_ms = int((deadline - time.monotonic()) * 1000)
        probe_ms = max(100, min(READY_PROBE_TIMEOUT_MS, remaining_ms))
        if broker_answers(bootstrap, probe_ms):
            return time.monotonic() - started
        if still_starting is not None and not still_starting():
            raise BrokerError(f"the Kafka broker at {bootstrap} exited while starting")
        if time.monotonic() >= deadline:
            raise BrokerError(
                f"no Kafka broker answered at {bootstrap} within {timeout_s:.0f} s"
            )
        time.sleep(READY_POLL_INTERVAL_S)


# -- Configuration and storage ------------------------------------------------------


def server_properties(settings: Settings) -> str:
    """The one-node KRaft configuration (combined broker and controller, loopback only)."""
    port, controller_port = settings.broker_port, settings.controller_port
    lines = [
        "# Written by `arledger broker start` on every start; edits are overwritten.",
        "process.roles=broker,controller",
        "node.id=1",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name=PLAINTEXT",
        "controller.listener.names=CONTROLLER",
        f"controller.quorum.bootstrap.servers=127.0.0.1:{controller_port}",
        f"log.dirs={_data_dir(settings)}",
        # Topics are created by `arledger topics ensure` with their own settings;
        # a typo in a topic name must fail rather than create a wrong topic.
        "auto.create.topics.enable=false",
        f"num.partitions={settings.partitions}",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        # One node: internal topics cannot have more replicas than brokers.
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        # Fewer internal partitions than the default 50: the first group join
        # and the first transaction create them, which is slow on 2 cores.
        "offsets.topic.num.partitions=10",
        "transaction.state.log.num.partitions=10",
        "group.initial.rebalance.delay.ms=0",
    ]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _is_formatted(settings: Settings) -> bool:
    return (_data_dir(settings) / "meta.properties").is_file()


def _format_storage(settings: Settings, java: str, lib: Path) -> None:
    """Format log.dirs once: a new cluster id, this node as the only voter."""
    base = java_command(java, lib, STORAGE_TOOL_JVM_OPTIONS, _logs_dir(settings))
    cluster_id = run_storage_tool([*base, "kafka.tools.StorageTool", "random-uuid"]).strip()
    cluster_id = cluster_id.splitlines()[-1].strip() if cluster_id else ""
    if not cluster_id:
        raise BrokerError("kafka.tools.StorageTool random-uuid printed no cluster id")
    run_storage_tool(
        [
            *base,
            "kafka.tools.StorageTool",
            "format",
            "-t",
            cluster_id,
            "-c",
            str(_properties_path(settings)),
            "--standalone",
        ]
    )


def run_storage_tool(command: list[str]) -> str:
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=STORAGE_TOOL_TIMEOUT_S,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as error:
        raise BrokerError(f"kafka.tools.StorageTool did not finish in {STORAGE_TOOL_TIMEOUT_S:.0f} s") from error
    if result.returncode != 0:
        raise BrokerError(
            f"kafka.tools.StorageTool failed (exit {result.returncode}):\n"
            f"{(result.stdout + result.stderr).strip()}"
        )
    return result.stdout


# -- Start, stop, status ----------------------------------------------------------------


def _configured_port(settings: Settings) -> int | None:
    """The client port in this home's server.properties (the one a running broker uses)."""
    try:
        text = _properties_path(settings).read_text()
    except OSError:
        return None
    match = re.search(r"^listeners=PLAINTEXT://[^:\s]+:(\d+)", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def status(settings: Settings) -> BrokerStatus:
    """Whether our broker runs (recorded PID alive) and answers on its port."""
    pid = _recorded_broker_pid(settings)
    # A running broker listens where its server.properties says, whatever the settings say now.
    port = (_configured_port(settings) if pid is not None else None) or settings.broker_port
    bootstrap = f"127.0.0.1:{port}"
    answering = pid is not None and broker_answers(bootstrap)
    return BrokerStatus(
        running=pid is not None,
        pid=pid,
        port=port,
        controller_port=port + 1,
        answering=answering,
        bootstrap=bootstrap,
        kafka_dir=kafka_dir(settings),
        log_path=server_log_path(settings),
    )


@contextlib.contextmanager
def _start_lock(settings: Settings) -> Iterator[None]:
    """One `start` at a time per home, so two callers never format or spawn twice."""
    kafka_dir(settings).mkdir(parents=True, exist_ok=True)
    with open(kafka_dir(settings) / "start.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def start(settings: Settings, timeout_s: float = BROKER_START_TIMEOUT_S) -> BrokerStatus:
    """Start the local broker if it is not running; return once it answers. Idempotent."""
    with _start_lock(settings):
        return _start_locked(settings, timeout_s)


def _start_locked(settings: Settings, timeout_s: float) -> BrokerStatus:
    started = time.monotonic()
    bootstrap = local_bootstrap(settings)
    pid = _recorded_broker_pid(settings)
    if pid is not None:
        running_port = _configured_port(settings)
        if running_port not in (None, settings.broker_port):
            raise BrokerError(
                f"the broker of {kafka_dir(settings)} already runs (pid {pid}) on port {running_port}, "
                f"not {settings.broker_port}: use ARLEDGER_BROKER_PORT={running_port}, or stop it first."
            )
        # Ours, maybe still starting: wait for it rather than start a second one.
        wait_until_ready(bootstrap, timeout_s, still_starting=lambda: pid_alive(pid))
        return _started_status(settings, pid, already_running=True, started=started)
    _pid_path(settings).unlink(missing_ok=True)  # stale: the process is gone

    lib = check_kafka_jars()
    java = find_java()
    for port in (settings.broker_port, settings.controller_port):
        if port_in_use(port):
            raise BrokerError(
                f"port {port} on 127.0.0.1 is already in use by another process (not the broker "
                f"recorded in {_pid_path(settings)}). Stop that process, or choose other ports "
                "with ARLEDGER_BROKER_PORT=P (the controller uses P+1)."
            )

    for folder in (kafka_dir(settings), _data_dir(settings), _logs_dir(settings)):
        folder.mkdir(parents=True, exist_ok=True)
    write_atomically(_properties_path(settings), server_properties(settings))
    if not _is_formatted(settings):
        _format_storage(settings, java, lib)

    process = _spawn_broker(settings, java, lib)
    write_atomically(_pid_path(settings), f"{process.pid}\n")
    try:
        wait_until_ready(bootstrap, timeout_s, still_starting=lambda: process.poll() is None)
    except BrokerError as error:
        exit_code = process.poll()
        if exit_code is None:
            terminate(process.pid, BROKER_STOP_TIMEOUT_S)
        _pid_path(settings).unlink(missing_ok=True)
        raise BrokerError(f"{error}.\n{_failure_details(settings)}") from None
    return _started_status(settings, process.pid, already_running=False, started=started)


def _spawn_broker(settings: Settings, java: str, lib: Path) -> subprocess.Popen[bytes]:
    command = [
        *java_command(java, lib, BROKER_JVM_OPTIONS, _logs_dir(settings)),
        "kafka.Kafka",
        str(_properties_path(settings)),
    ]
    with open(_stdout_path(settings), "ab") as out:
        # A new session: the broker outlives this command and ignores its Ctrl-C.
        return subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=kafka_dir(settings),
            start_new_session=True,
            close_fds=True,
        )


def _started_status(settings: Settings, pid: int, *, already_running: bool, started: float) -> BrokerStatus:
    bootstrap = local_bootstrap(settings)
    return BrokerStatus(
        running=True,
        pid=pid,
        port=settings.broker_port,
        controller_port=settings.controller_port,
        answering=True,
        bootstrap=bootstrap,
        kafka_dir=kafka_dir(settings),
        log_path=server_log_path(settings),
        already_running=already_running,
        start_duration_s=time.monotonic() - started,
    )


def _failure_details(settings: Settings) -> str:
    parts = []
    for path in (_stdout_path(settings), server_log_path(settings)):
        tail = tail_of_file(path, LOG_TAIL_LINES)
        if tail:
            parts.append(f"--- last lines of {path} ---\n{tail}")
    return "\n".join(parts) or f"(no broker output in {kafka_dir(settings)})"


def tail_of_file(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def stop(settings: Settings, timeout_s: float = BROKER_STOP_TIMEOUT_S) -> bool:
    """Stop our broker (SIGTERM, SIGKILL after `timeout_s`). True if one was running. Idempotent."""
    pid = _recorded_broker_pid(settings)
    if pid is None:
        _pid_path(settings).unlink(missing_ok=True)
        return False
    terminate(pid, timeout_s)
    _pid_path(settings).unlink(missing_ok=True)
    return True


def terminate(pid: int, timeout_s: float) -> None:
    """SIGTERM (the broker shuts down cleanly), then SIGKILL if it is still there after timeout_s."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if _wait_for_exit(pid, timeout_s):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _wait_for_exit(pid, 10.0)


def _wait_for_exit(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(STOP_POLL_INTERVAL_S)
    return True
