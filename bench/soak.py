"""`arledger soak`: a generated workload offered at a steady rate through `arledger run --workers N` while
worker processes are killed with SIGKILL every few seconds and the broker is restarted (on the local 3-broker
cluster: one broker stopped and brought back); then every invariant is checked against a clean run.

It drives arledger as a user would: `arledger generate` writes the workload, `arledger broker start|stop` runs the
single broker, `arledger run --workers N` runs the workers (their processes found as the children of the `run`
process, whatever their number), `arledger verify` and `arledger report ...` check the result. The records are
offered by an upstream producer of its own (an idempotent producer keyed by customer_id, as `arledger ingest`),
paced at `rate` records/s.

Checked at the end, each printed as figures:
- every offered record has exactly one outcome (accepted, rejected with one reason, or duplicate), the same as in
  a clean run of the same input (one `arledger run` process, no fault) — record by record;
- ar.ledger holds positions 1..N (N = the events in the store), no gap, no position with two different records
  (an identical re-publish after a crash is counted, it is at-least-once by contract); the read model holds each
  position once;
- `arledger verify` passes (store, global chain, ar.ledger, snapshot against a fresh fold);
- the roll-forward identity holds (`report rollforward`: check = 0 on every row);
- every report (aging, balances, exposure, worklist, kpis, allowance, rollforward) equals the clean run's.
Figures: records offered, kills per worker kind, broker restarts, the longest ingest lag (records, and seconds at
the offered rate), and the recovery time per fault (p50, p99, max): from the fault until everything offered before
it has an outcome and every ledger event published before it is in the read model's snapshot.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARLEDGER = (sys.executable, "-m", "arledger.cli")
OFFERER_GRACE_S = 120  # how long past the load's planned end the offerer may take to send its last lines
LINES_PER_CUSTOMER_MONTH = 6  # what `arledger generate` writes on average (measured: ~7.5); sized generously
REPORT_NAMES = ("aging", "balances", "exposure", "worklist", "kpis", "allowance")
SAMPLE_INTERVAL_S = 1.0
CLI_TIMEOUT_S = 600.0
RUN_START_TIMEOUT_S = 300.0  # a busy shared machine starts Python processes slowly
RUN_STOP_TIMEOUT_S = 90.0
BROKER_DOWN_S = 5.0  # how long the broker (or one cluster node) stays down before it is brought back
PORT_MIN, PORT_MAX = 20_000, 32_000  # below Linux's ephemeral range: no client socket takes one meanwhile
CLUSTER_PORTS = 9


@dataclass
class SoakOptions:
    minutes: float
    store: str = "sqlite"  # sqlite | postgresql (a throwaway local server from the system's binaries)
    cluster: bool = False  # three local brokers (replication 3, min ISR 2) instead of one
    rate: int = 40  # offered inbound records/s
    kill_every_s: float = 6.0  # about the ingest group's session timeout: each kill forces a rebalance
    workers: int = 2
    seed: int = 17
    bad_share: float = 0.03
    folder: Path | None = None  # where the homes, the broker(s) and logs live (default: a new temp folder)
    out: Path | None = None  # the JSON results
    keep: bool = False  # keep the folder (it is kept anyway when a check failed)
    drain_timeout_s: float = 900.0
    progress: Any = None  # callable(str) for one line per event, or None


@dataclass
class Fault:
    kind: str  # kill:<worker> | broker-restart | node-restart:<id>
    at_s: float  # seconds since the load started
    targets: tuple[dict[int, int], dict[int, int]] | None = None  # inbound end, ar.ledger end at the fault
    recovered_s: float | None = None  # seconds from the fault to recovery


# -- Processes ---------------------------------------------------------------------------------------------------


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc (the worker processes of `arledger run --workers N`)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces and parentheses, so split after the last ')'
        fields = stat[stat.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


def worker_name(pid: int) -> str:
    """What a child runs, from its command line: 'ingest', 'relay', 'project alerts', ..."""
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "run" not in words:
        return "?"
    names = [w for w in words[words.index("run") + 1:] if w and not w.startswith("-") and w.isalpha()]
    return "+".join(n for n in names if n not in ("info", "debug", "warning")) or "all"


def free_ports(count: int) -> int:
    from consumers.broker import port_in_use

    rng = random.Random()
    for _ in range(500):
        base = rng.randrange(PORT_MIN, PORT_MAX - count)
        if not any(port_in_use(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports in {PORT_MIN}-{PORT_MAX}")


def cli(env: dict[str, str], *args: str, check: bool = True, timeout_s: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess:
    result = subprocess.run([*ARLEDGER, *args], env=env, capture_output=True, text=True, timeout=timeout_s,
                            stdin=subprocess.DEVNULL)
    if check and result.returncode != 0:
        raise RuntimeError(f"arledger {' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")
    return result


class RunProcess:
    """`arledger run ARGS` as a child process in a session of its own (so a failed soak can stop every worker)."""

    def __init__(self, env: dict[str, str], args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen([*ARLEDGER, "run", *args], env=env, stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_started(self, expected_markers: int = 1) -> None:
        deadline = time.monotonic() + RUN_START_TIMEOUT_S
        while self.log_path.read_bytes().count(b'"workers_started"') < expected_markers:
            if self.process.poll() is not None:
                raise RuntimeError(f"arledger run exited {self.process.returncode} at start; see {self.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"arledger run not started after {RUN_START_TIMEOUT_S} s; see {self.log_path}")
            time.sleep(0.2)

    def stop(self) -> int:
        """SIGTERM and wait (the workers finish their batch); SIGKILL the whole session if that fails."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=RUN_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()  # any child left behind (there should be none)
        self._log.close()
        return self.process.returncode

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)


# -- The stack: broker(s) and store ------------------------------------------------------------------------------


class Stack:
    """The broker (or 3-broker cluster) and, for PostgreSQL, a throwaway server; all stopped by `close()`."""

    def __init__(self, folder: Path, cluster: bool, store: str) -> None:
        self.folder = folder
        self.cluster = None
        self.pg_server = None
        self._pg_root: Path | None = None
        self.broker_env: dict[str, str] = {}
        self.store = store
        try:
            if cluster:
                from consumers.cluster import LocalCluster

                self.cluster = LocalCluster(folder / "cluster", free_ports(CLUSTER_PORTS))
                self.cluster.start()
                self.bootstrap = self.cluster.bootstrap
                self.topic_env = {"ARLEDGER_REPLICATION_FACTOR": "3", "ARLEDGER_MIN_INSYNC_REPLICAS": "2"}
            else:
                port = free_ports(2)
                self.broker_env = {**os.environ, "ARLEDGER_HOME": str(folder / "broker"),
                                   "ARLEDGER_BROKER_PORT": str(port)}
                self.broker_env.pop("ARLEDGER_KAFKA", None)
                cli(self.broker_env, "broker", "start")
                self.bootstrap = f"127.0.0.1:{port}"
                self.topic_env = {"ARLEDGER_REPLICATION_FACTOR": "1"}
            if store == "postgresql":
                self._start_postgres()
        except BaseException:
            self.close()
            raise

    def _start_postgres(self) -> None:
        from arledger.settings import REPO_ROOT

        if str(REPO_ROOT) not in sys.path:
            sys.path.insert(0, str(REPO_ROOT))
        from tests.integration.postgres_server import PostgresServer, server_bin_dir, server_folder

        if server_bin_dir() is None:
            raise RuntimeError("PostgreSQL server binaries not found: run 'make system-deps' (apt-get install "
                               "postgresql)")
        self._pg_root = server_folder("arledger-soak-pg-")
        self.pg_server = PostgresServer(self._pg_root / "cluster", durable=True).start()

    def store_url(self, name: str, home: Path) -> str:
        if self.pg_server is not None:
            return self.pg_server.create_database(name)
        return f"sqlite:///{home / 'ledger.sqlite'}"

    def restart_broker(self, note) -> str:
        """Stop one broker (SIGTERM: a clean shutdown) and bring it back after a few seconds; what happened."""
        if self.cluster is not None:
            from consumers.broker import terminate

            node_id = random.choice(self.cluster.running_node_ids())
            pid = self.cluster.pid(node_id)
            note(f"stopping broker node {node_id}")
            terminate(pid, 30.0)
            self.cluster.node(node_id).pid_path.unlink(missing_ok=True)
            time.sleep(BROKER_DOWN_S)
            note(f"starting broker node {node_id}")
            self.cluster.start_nodes([node_id])
            return f"node-restart:{node_id}"
        note("stopping the broker")
        cli(self.broker_env, "broker", "stop")
        time.sleep(BROKER_DOWN_S)
        note("starting the broker")
        cli(self.broker_env, "broker", "start")
        return "broker-restart"

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()
        elif self.broker_env:
            with contextlib.suppress(Exception):
                cli(self.broker_env, "broker", "stop")
        if self.pg_server is not None:
            self.pg_server.stop()
        if self._pg_root is not None:
            shutil.rmtree(self._pg_root, ignore_errors=True)


# -- Offering the load and watching it -------------------------------------------------------------------------------


class Offerer(threading.Thread):
    """Sends lines[i] at start + i / rate (catching up after a stall, as an upstream system with a buffer
    would); keeps each acknowledged record's line number, partition and offset."""

    def __init__(self, settings, lines: list[bytes], rate: int, stop: threading.Event) -> None:
        super().__init__(name="soak-offerer", daemon=True)
        self.settings, self.lines, self.rate, self.stop_event = settings, lines, rate, stop
        self.futures: list[tuple[int, str | None, Any]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        from arledger.settings import TOPIC_INBOUND
        from consumers import clients
        from consumers.publisher import probe

        producer = clients.producer(self.settings, "arledger-soak")
        topic = self.settings.topic(TOPIC_INBOUND)
        started = time.monotonic()
        try:
            for number, line in enumerate(self.lines, start=1):
                if self.stop_event.is_set():
                    break
                delay = started + (number - 1) / self.rate - time.monotonic()
                if delay > 0 and self.stop_event.wait(delay):
                    break
                envelope_id, customer_id = probe(line)
                key = customer_id.encode() if customer_id is not None else None
                self.futures.append((number, envelope_id, producer.send(topic, key=key, value=line)))
            producer.flush()
        except BaseException as error:  # noqa: BLE001 - reported by the soak, not lost in a thread
            self.error = error
        finally:
            producer.close(timeout=30)

    def published(self) -> tuple[list, int]:
        """(the acknowledged records as consumers.publisher.Published, the number whose send failed)."""
        from consumers.publisher import Published

        done, failed = [], 0
        for number, envelope_id, future in self.futures:
            try:
                metadata = future.get(timeout=1)
            except Exception:  # noqa: BLE001 - a send that failed for good was not offered
                failed += 1
                continue
            done.append(Published(number, envelope_id, metadata.partition, metadata.offset))
        return done, failed


class Watcher(threading.Thread):
    """Once a second: the ingest group's lag on ar.inbound (the longest is a figure), and the recovery of each
    fault — everything offered before it has an outcome and everything on ar.ledger before it is in the snapshot."""

    def __init__(self, settings, started: float, stop: threading.Event) -> None:
        super().__init__(name="soak-watcher", daemon=True)
        self.settings, self.started, self.stop_event = settings, started, stop
        self.faults: list[Fault] = []
        self.lag_max_records = 0
        self.samples = 0
        self.lock = threading.Lock()

    def add_fault(self, kind: str) -> Fault:
        fault = Fault(kind, time.monotonic() - self.started)
        with self.lock:
            self.faults.append(fault)
        return fault

    def run(self) -> None:
        from kafka.errors import KafkaError

        while not self.stop_event.wait(SAMPLE_INTERVAL_S):
            with contextlib.suppress(KafkaError, OSError, RuntimeError, AssertionError, ValueError):
                self.sample()
        with contextlib.suppress(Exception):
            self.sample()

    def ends(self) -> tuple[dict[int, int], dict[int, int]]:
        from arledger.settings import TOPIC_INBOUND, TOPIC_LEDGER
        from consumers.publisher import end_offsets

        return (end_offsets(self.settings, self.settings.topic(TOPIC_INBOUND)),
                end_offsets(self.settings, self.settings.topic(TOPIC_LEDGER)))

    def sample(self) -> None:
        from consumers.publisher import snapshot_offsets

        inbound_end, ledger_end = self.ends()
        committed = committed_offsets(self.settings)
        snapshot = snapshot_offsets(self.settings)
        self.lag_max_records = max(self.lag_max_records,
                                   sum(max(0, end - committed.get(p, 0)) for p, end in inbound_end.items()))
        self.samples += 1
        now = time.monotonic() - self.started
        with self.lock:
            for fault in self.faults:
                if fault.targets is None:
                    fault.targets = (inbound_end, ledger_end)  # the broker was down at the fault itself
                    continue
                if fault.recovered_s is None and reached(committed, fault.targets[0]) and \
                        reached(snapshot, fault.targets[1]):
                    fault.recovered_s = round(now - fault.at_s, 3)


def reached(applied: dict[int, int], wanted: dict[int, int]) -> bool:
    return all(applied.get(partition, 0) >= offset for partition, offset in wanted.items() if offset > 0)


def committed_offsets(settings) -> dict[int, int]:
    from arledger.settings import TOPIC_INBOUND
    from consumers.ingest import INGEST_GROUP_ID
    from consumers.topics import admin_client

    group = settings.topic(INGEST_GROUP_ID)
    with admin_client(settings) as admin:
        committed = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: meta.offset for tp, meta in committed.items()
            if tp.topic == settings.topic(TOPIC_INBOUND) and meta.offset >= 0}


# -- Checks ---------------------------------------------------------------------------------------------------------


def read_all(settings, topic: str) -> list[tuple[int, int, bytes]]:
    """Every record of `topic` from the beginning to its current end: (partition, offset, value)."""
    from kafka import TopicPartition

    from consumers import clients
    from consumers.publisher import end_offsets

    end = end_offsets(settings, topic)
    consumer = clients.assigned_consumer(settings, "arledger-soak-reader", 5_000)
    records = []
    try:
        partitions = [TopicPartition(topic, p) for p, offset in end.items() if offset > 0]
        if not partitions:
            return []
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        remaining = {tp.partition: end[tp.partition] for tp in partitions}
        deadline = time.monotonic() + 300
        while remaining:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{topic}: could not read up to {remaining}")
            for tp, batch in consumer.poll(timeout_ms=500).items():
                for record in batch:
                    if record.offset < remaining.get(tp.partition, 0):
                        records.append((tp.partition, record.offset, record.value))
                    if record.offset + 1 >= remaining.get(tp.partition, 0):
                        remaining.pop(tp.partition, None)
        return records
    finally:
        consumer.close()


def outcomes_by_line(settings, published: list) -> tuple[dict[int, str], dict[str, int]]:
    """Each offered record's outcome ('accepted', 'duplicate', 'rejected:<reason>'), by line number, and the
    count of records with more than one (a reject and an acceptance, or rejects with different reasons)."""
    from arledger.settings import TOPIC_INBOUND, TOPIC_REJECTED
    from consumers.ingest import origin_of
    from ledger.application import Ledger

    reasons: dict[str, set[str]] = {}
    for _, _, value in read_all(settings, settings.topic(TOPIC_REJECTED)):
        reject = json.loads(value)
        reasons.setdefault(origin_of(reject["topic"], reject["partition"], reject["offset"]), set()).add(
            reject["reason"])
    topic = settings.topic(TOPIC_INBOUND)
    ledger = Ledger(settings.store_url)
    outcomes: dict[int, str] = {}
    problems = Counter()
    try:
        for item in published:
            origin = origin_of(topic, item.partition, item.offset)
            receipt = ledger.receipt(item.envelope_id) if item.envelope_id else None
            accepted = receipt is not None and receipt.origin == origin
            if origin in reasons:
                if accepted:
                    problems["accepted_and_rejected"] += 1
                if len(reasons[origin]) > 1:
                    problems["rejected_with_two_reasons"] += 1
                outcomes[item.line_number] = "rejected:" + sorted(reasons[origin])[0]
            elif accepted:
                outcomes[item.line_number] = "accepted"
            elif receipt is not None:
                outcomes[item.line_number] = "duplicate"  # its id was claimed by an accepted record elsewhere
            else:
                problems["no_outcome"] += 1
                outcomes[item.line_number] = "none"
    finally:
        ledger.close()
    return outcomes, dict(problems)


def ledger_topic_check(settings) -> dict[str, Any]:
    """ar.ledger against the store: positions 1..N, no gap, no position with two different records."""
    from arledger.settings import TOPIC_LEDGER
    from ledger.application import Ledger

    ledger = Ledger(settings.store_url)
    try:
        stored = len(ledger.read_ledger(0, 100_000_000))
    finally:
        ledger.close()
    by_position: dict[int, bytes] = {}
    conflicting = repeated = 0
    records = read_all(settings, settings.topic(TOPIC_LEDGER))
    for _, _, value in records:
        position = json.loads(value)["position"]
        if position in by_position:
            if by_position[position] == value:
                repeated += 1
            else:
                conflicting += 1
        else:
            by_position[position] = value
    positions = sorted(by_position)
    gaps = stored - len(positions) if positions == list(range(1, len(positions) + 1)) else \
        len(set(range(1, stored + 1)) - set(positions))
    return {"events_in_store": stored, "records_on_topic": len(records), "distinct_positions": len(positions),
            "first_position": positions[0] if positions else None,
            "last_position": positions[-1] if positions else None, "gaps": gaps,
            "identical_republished": repeated, "conflicting": conflicting,
            "ok": positions == list(range(1, stored + 1)) and conflicting == 0}


def read_model_positions(env: dict[str, str]) -> dict[str, Any]:
    result = cli(env, "sql", "--format", "csv", "SELECT min(position) AS lo, max(position) AS hi, count(*) AS n, "
                                                "count(DISTINCT position) AS d FROM ledger_events")
    lo, hi, n, d = (int(x) if x else 0 for x in result.stdout.strip().splitlines()[-1].split(","))
    return {"first_position": lo, "last_position": hi, "rows": n, "distinct_positions": d,
            "ok": lo == 1 and hi == n == d}


def reports(env: dict[str, str], as_of: str, period_from: str) -> dict[str, Any]:
    found = {name: json.loads(cli(env, "report", name, "--as-of", as_of, "--format", "json").stdout)
             for name in REPORT_NAMES}
    found["rollforward"] = json.loads(cli(env, "report", "rollforward", "--from", period_from, "--to", as_of,
                                          "--format", "json").stdout)
    return found


def rollforward_check(report: dict[str, Any]) -> dict[str, Any]:
    bad = [row for row in report["rows"] if row["check"] != 0]
    return {"rows": len(report["rows"]), "rows_not_zero": len(bad), "ok": not bad and bool(report["rows"])}


def verify(env: dict[str, str]) -> dict[str, Any]:
    result = cli(env, "verify", "--format", "json", "--no-progress", check=False)
    try:
        body = json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        body = {"output": result.stdout[-2000:], "stderr": result.stderr[-2000:]}
    return {"exit_status": result.returncode, "ok": result.returncode == 0, "report": body}


def percentile(values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile (p99 of few values is their maximum)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


# -- The soak ---------------------------------------------------------------------------------------------------


def workload(folder: Path, options: SoakOptions, records: int) -> list[bytes]:
    """`arledger generate` sized to `records` lines (at least); the first `records` lines are offered."""
    months = 6
    customers = max(10, math.ceil(records / (LINES_PER_CUSTOMER_MONTH * months)))
    path = folder / "workload.jsonl"
    cli(dict(os.environ), "generate", "--customers", str(customers), "--months", str(months), "--seed",
        str(options.seed), "--start", "2026-01-01", "--bad-share", str(options.bad_share), "--out", str(path),
        "--quiet", "--json")
    lines = [line for line in path.read_bytes().splitlines() if line.strip()]
    return lines[:records]


def business_dates(lines: list[bytes]) -> tuple[str, str]:
    """(first, last) business date among the lines' envelope times."""
    days = []
    for line in lines:
        with contextlib.suppress(ValueError, TypeError, AttributeError, KeyError):
            day = json.loads(line)["time"][:10]
            dt.date.fromisoformat(day)
            days.append(day)
    return min(days), max(days)


def home_env(stack: Stack, home: Path, prefix: str, store_url: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **stack.topic_env, "ARLEDGER_HOME": str(home), "ARLEDGER_KAFKA": stack.bootstrap,
           "ARLEDGER_STORE": store_url, "ARLEDGER_TOPIC_PREFIX": prefix}
    env.pop("ARLEDGER_SHARD", None)
    return env


def settings_of(env: dict[str, str]):
    """The Settings a process with `env` would read."""
    from arledger.settings import Settings

    saved = dict(os.environ)
    try:
        os.environ.clear()
        os.environ.update(env)
        return Settings.from_env()
    finally:
        os.environ.clear()
        os.environ.update(saved)


def soak(options: SoakOptions) -> dict[str, Any]:
    """Run the soak; returns the results (also written as JSON to options.out)."""
    note = options.progress or (lambda text: None)
    folder = options.folder or Path(tempfile.mkdtemp(prefix="arledger-soak-"))
    folder.mkdir(parents=True, exist_ok=True)
    duration_s = options.minutes * 60
    records = max(1, int(duration_s * options.rate))
    note(f"generating {records} records")
    lines = workload(folder, options, records)
    note(f"starting {'a 3-broker cluster' if options.cluster else 'the broker'}"
         f"{' and PostgreSQL' if options.store == 'postgresql' else ''}")
    stack = Stack(folder, options.cluster, options.store)
    results: dict[str, Any] = {}
    try:
        results = _soak_on(stack, folder, options, lines, note)
    finally:
        stack.close()
    results["folder"] = str(folder)
    if options.out:
        options.out.parent.mkdir(parents=True, exist_ok=True)
        options.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    if results.get("ok") and not options.keep and options.folder is None:
        shutil.rmtree(folder, ignore_errors=True)
        results["folder"] = None
    return results


def _soak_on(stack: Stack, folder: Path, options: SoakOptions, lines: list[bytes], note) -> dict[str, Any]:
    from consumers.publisher import wait_for_outcomes

    tag = f"{int(time.time())}"
    load_start = round(os.getloadavg()[0], 2)
    soak_home = folder / "soak-home"
    env = home_env(stack, soak_home, f"soak{tag}.", stack.store_url(f"soak{tag}", soak_home))
    settings = settings_of(env)
    cli(env, "topics", "ensure")
    run = RunProcess(env, ["--workers", str(options.workers)], soak_home / "run.log")
    stop = threading.Event()
    timeline: list[str] = []
    rng = random.Random(options.seed)
    kills: Counter[str] = Counter()
    broker_restarts: list[str] = []
    try:
        run.wait_started()
        started = time.monotonic()

        def mark(text: str) -> None:
            timeline.append(f"{time.monotonic() - started:7.1f} s  {text}")
            note(text)

        offerer = Offerer(settings, lines, options.rate, stop)
        watcher = Watcher(settings, started, stop)
        offerer.start()
        watcher.start()
        duration_s = options.minutes * 60
        restart_at_s = duration_s * 0.5  # the broker restart: once, in the middle of the load
        restart: threading.Thread | None = None
        restart_errors: list[BaseException] = []

        def restart_broker() -> None:
            fault = watcher.add_fault("broker-restart")
            with contextlib.suppress(Exception):
                fault.targets = watcher.ends()
            try:
                fault.kind = stack.restart_broker(mark)
            except BaseException as error:  # noqa: BLE001 - re-raised by the soak below
                restart_errors.append(error)
                return
            broker_restarts.append(fault.kind)
            mark(f"{fault.kind}: back")

        next_kill_s = options.kill_every_s
        # The load is over when the offerer has sent every line (its own clock paces them over duration_s);
        # stopping it on this loop's clock instead could cut the last line off by a few milliseconds. The cap
        # only guards against an offerer that hangs.
        give_up_at_s = duration_s + OFFERER_GRACE_S
        while offerer.is_alive() and time.monotonic() - started < give_up_at_s:
            elapsed = time.monotonic() - started
            if restart is None and elapsed >= restart_at_s:
                # In the background: the load and the kills go on while the broker is down and recovers.
                restart = threading.Thread(target=restart_broker, name="soak-broker-restart", daemon=True)
                restart.start()
            elif elapsed >= next_kill_s:
                next_kill_s = elapsed + options.kill_every_s * rng.uniform(0.5, 1.5)
                children = child_pids(run.process.pid)
                if children:
                    victim = rng.choice(children)
                    name = worker_name(victim)
                    fault = watcher.add_fault(f"kill:{name}")
                    with contextlib.suppress(Exception):
                        fault.targets = watcher.ends()
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(victim, signal.SIGKILL)
                        kills[name] += 1
                        mark(f"SIGKILL {name} (pid {victim})")
            time.sleep(0.2)
        stop.set()
        offerer.join()
        if restart is not None:
            restart.join()
        if restart_errors:
            raise RuntimeError(f"the broker restart failed: {restart_errors[0]!r}")
        load_s = time.monotonic() - started
        if offerer.error is not None:
            raise RuntimeError(f"offering failed: {offerer.error!r}")
        published, failed_sends = offerer.published()
        mark(f"load over: {len(published)} records offered in {load_s:.0f} s; draining")
        drain_started = time.monotonic()
        counts = wait_for_outcomes(settings, published, {}, options.drain_timeout_s)
        drain_s = time.monotonic() - drain_started
        watcher.join()
        watcher.sample()  # the last faults recover by the end of the drain at the latest
        mark("drained; stopping the workers")
        run_status = run.stop()
    except BaseException:
        stop.set()
        run.kill()
        raise
    # -- what the soak left, checked
    outcomes, outcome_problems = outcomes_by_line(settings, published)
    first_day, last_day = business_dates([lines[item.line_number - 1] for item in published])
    period_from = first_day[:8] + "01"
    topic = ledger_topic_check(settings)
    read_model = read_model_positions(env)
    verified = verify(env)
    soak_reports = reports(env, last_day, period_from)
    mark("clean run of the same input")
    clean = clean_run(stack, folder, tag, [lines[item.line_number - 1] for item in published])
    same_outcomes = sum(1 for number, (item) in enumerate(published, start=1)
                        if outcomes[item.line_number] == clean["outcomes"].get(number))
    clean_reports = reports(clean["env"], last_day, period_from)
    differing_reports = sorted(name for name in soak_reports if soak_reports[name] != clean_reports[name])
    recoveries = [f.recovered_s for f in watcher.faults if f.recovered_s is not None]
    outcome_counts = Counter(outcomes.values())
    checks = {
        "one_outcome_each": {"offered": len(published), "with_one_outcome": len(published) - sum(
            outcome_problems.values()), "problems": outcome_problems, "ok": not outcome_problems},
        "outcomes_equal_clean_run": {"equal": same_outcomes, "offered": len(published),
                                     "ok": same_outcomes == len(published)},
        "ledger_topic": topic,
        "read_model_positions": read_model,
        "verify": {"exit_status": verified["exit_status"], "ok": verified["ok"]},
        "rollforward_identity": rollforward_check(soak_reports["rollforward"]),
        "reports_equal_clean_run": {"compared": sorted(soak_reports), "differing": differing_reports,
                                    "ok": not differing_reports},
        "workers_stopped_cleanly": {"exit_status": run_status, "ok": run_status == 0},
    }
    figures = {
        "load_average_1min_start_end": [load_start, round(os.getloadavg()[0], 2)],  # a shared machine shows here
        "cpu_count": os.cpu_count(),
        "minutes": options.minutes, "store": options.store, "cluster": options.cluster,
        "workers": options.workers, "rate_offered_per_s": options.rate,
        "records_offered": len(published), "sends_failed": failed_sends,
        "load_seconds": round(load_s, 1), "drain_seconds": round(drain_s, 1),
        "outcomes": {"accepted": outcome_counts["accepted"], "duplicate": outcome_counts["duplicate"],
                     "rejected": sum(n for k, n in outcome_counts.items() if k.startswith("rejected:"))},
        "ledger_events": topic["events_in_store"],
        "kills": sum(kills.values()), "kills_by_worker": dict(sorted(kills.items())),
        "broker_restarts": len(broker_restarts), "broker_restart_kinds": broker_restarts,
        "lag_max_records": watcher.lag_max_records,
        "lag_max_seconds_at_offered_rate": round(watcher.lag_max_records / options.rate, 1),
        "faults": len(watcher.faults), "faults_recovered": len(recoveries),
        "recovery_s_p50": percentile(recoveries, 0.5), "recovery_s_p99": percentile(recoveries, 0.99),
        "recovery_s_max": max(recoveries) if recoveries else None,
        "recovery_s_by_fault": {kind: {"faults": len(times), "p50": percentile(times, 0.5),
                                       "p99": percentile(times, 0.99)}
                                for kind, times in _by_kind(watcher.faults).items()},
        "ingest_counts": dict(counts),
    }
    ok = all(check["ok"] for check in checks.values()) and len(recoveries) == len(watcher.faults)
    return {"ok": ok, "figures": figures, "checks": checks, "timeline": timeline,
            "faults": [vars(f) | {"targets": None} for f in watcher.faults],
            "verify": verified["report"], "as_of": last_day, "period_from": period_from}


def _by_kind(faults: list[Fault]) -> dict[str, list[float]]:
    """Recovery times per kind of fault: 'kill' (any worker) and the broker restart."""
    found: dict[str, list[float]] = {}
    for fault in faults:
        if fault.recovered_s is not None:
            found.setdefault("kill" if fault.kind.startswith("kill:") else "broker", []).append(fault.recovered_s)
    return found


def clean_run(stack: Stack, folder: Path, tag: str, lines: list[bytes]) -> dict[str, Any]:
    """The same records through one `arledger run` process with no fault, on fresh topics, home and store."""
    from consumers.publisher import publish_lines, wait_for_outcomes

    home = folder / "clean-home"
    env = home_env(stack, home, f"clean{tag}.", stack.store_url(f"clean{tag}", home))
    settings = settings_of(env)
    cli(env, "topics", "ensure")
    run = RunProcess(env, [], home / "run.log")
    try:
        run.wait_started()
        published = publish_lines(settings, lines)
        wait_for_outcomes(settings, published, {}, CLI_TIMEOUT_S)
    finally:
        run.stop()
    outcomes, _ = outcomes_by_line(settings, published)
    return {"env": env, "outcomes": outcomes}


# -- Printing ---------------------------------------------------------------------------------------------------


def summary(results: dict[str, Any]) -> str:
    f, c = results["figures"], results["checks"]
    mark = {True: "ok", False: "FAILED"}
    lines = [
        f"soak: {f['minutes']} min, {f['store']}, {'3-broker cluster' if f['cluster'] else 'one broker'}, "
        f"run --workers {f['workers']}, {f['rate_offered_per_s']} records/s offered",
        f"  records offered        {f['records_offered']:>8}   (accepted {f['outcomes']['accepted']}, rejected "
        f"{f['outcomes']['rejected']}, duplicate {f['outcomes']['duplicate']}; sends failed {f['sends_failed']})",
        f"  ledger events          {f['ledger_events']:>8}",
        f"  worker kills (SIGKILL) {f['kills']:>8}   {f['kills_by_worker']}",
        f"  broker restarts        {f['broker_restarts']:>8}   {f['broker_restart_kinds']}",
        f"  longest ingest lag     {f['lag_max_records']:>8}   records (~{f['lag_max_seconds_at_offered_rate']} s "
        "at the offered rate)",
        f"  recovery time          p50 {f['recovery_s_p50']} s, p99 {f['recovery_s_p99']} s, max "
        f"{f['recovery_s_max']} s over {f['faults_recovered']}/{f['faults']} faults",
        f"  recovery by fault      " + ", ".join(f"{kind}: p50 {v['p50']} s, p99 {v['p99']} s ({v['faults']})"
                                               for kind, v in f["recovery_s_by_fault"].items()),
        f"  load / drain           {f['load_seconds']} s / {f['drain_seconds']} s",
        "checks:",
        f"  every record has exactly one outcome        {mark[c['one_outcome_each']['ok']]}  "
        f"{c['one_outcome_each']['with_one_outcome']}/{c['one_outcome_each']['offered']}",
        f"  outcomes equal a clean run's, record by record {mark[c['outcomes_equal_clean_run']['ok']]}  "
        f"{c['outcomes_equal_clean_run']['equal']}/{c['outcomes_equal_clean_run']['offered']}",
        f"  ar.ledger positions 1..N, no gap or conflict {mark[c['ledger_topic']['ok']]}  "
        f"N={c['ledger_topic']['events_in_store']}, {c['ledger_topic']['records_on_topic']} records, "
        f"{c['ledger_topic']['identical_republished']} identical re-publishes, "
        f"{c['ledger_topic']['conflicting']} conflicting",
        f"  read model holds each position once          {mark[c['read_model_positions']['ok']]}  "
        f"{c['read_model_positions']['rows']} rows",
        f"  arledger verify                              {mark[c['verify']['ok']]}",
        f"  roll-forward identity                        {mark[c['rollforward_identity']['ok']]}  "
        f"{c['rollforward_identity']['rows']} rows",
        f"  reports equal a clean run's                  {mark[c['reports_equal_clean_run']['ok']]}  "
        f"{', '.join(c['reports_equal_clean_run']['compared'])}"
        + (f"; differing: {c['reports_equal_clean_run']['differing']}" if c['reports_equal_clean_run']['differing']
           else ""),
        f"  workers stopped cleanly at the end           {mark[c['workers_stopped_cleanly']['ok']]}",
        f"result: {'PASSED' if results['ok'] else 'FAILED'}",
    ]
    return "\n".join(lines)
