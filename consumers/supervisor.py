"""`arledger run --workers N`: N ingest processes (one consumer group), one relay, N projector shards.

The ingest processes share ar.inbound's partitions through their group; the
projector shards each fold the ar.ledger partitions p with p % N == i into
their own DuckDB file and publish their own snapshot, which readers union
(`arledger.readmodel`). The relay stays one: it extends the single global hash
chain. The supervisor restarts a child that dies (each resumes from its
durable position) and stops them all on SIGTERM/SIGINT.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import structlog

from arledger.settings import Settings

RESTART_DELAY_S = 1.0  # a crashing child is not restarted in a tight loop
CHILD_STOP_TIMEOUT_S = 60.0
POLL_S = 0.5
log = structlog.get_logger("arledger.supervisor")


@dataclass
class Child:
    name: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    restarts: int = 0

    def start(self) -> None:
        command = [sys.executable, "-m", "arledger.cli", "run", *self.args]
        self.process = subprocess.Popen(command, env={**os.environ, **self.env})
        log.info("child_started", child=self.name, pid=self.process.pid)


def children(count: int, extra_args: list[str]) -> list[Child]:
    """The processes of `run --workers count`."""
    ingest = [Child(f"ingest-{i}", ["ingest", *extra_args]) for i in range(count)]
    relay = [Child("relay", ["relay", *extra_args])]
    project = [Child(f"project-{i}", ["project", "alerts", *extra_args], {"ARLEDGER_SHARD": f"{i}/{count}"})
               for i in range(count)]
    return [*ingest, *relay, *project]


def supervise(settings: Settings, count: int, extra_args: list[str]) -> int:
    from consumers.topics import ensure_topics

    ensure_topics(settings)  # once here, not raced by 2N+1 children
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    running = children(count, extra_args)
    for child in running:
        child.start()
    try:
        while not stopping:
            for child in running:
                if child.process is not None and child.process.poll() is not None and not stopping:
                    log.warning("child_exited", child=child.name, status=child.process.returncode,
                                restart_in_s=RESTART_DELAY_S)
                    time.sleep(RESTART_DELAY_S)
                    child.restarts += 1
                    child.start()
            time.sleep(POLL_S)
    finally:
        for child in running:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
        for child in running:
            if child.process is None:
                continue
            try:
                child.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        log.info("workers_stopped", children=len(running))
    return 0
