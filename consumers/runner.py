"""Runs the workers — ingest, relay, project, alerts — in one process, or any one alone (`arledger run WORKER`).

By default each stage runs in a thread of its own (ingest; relay; project with
alerts), so an ingest batch never waits for a relay or projector batch to end:
they overlap wherever one waits on I/O (an fsync, a broker acknowledgement, a
DuckDB statement, which releases the GIL), and a decision leaves with its own
ingest batch. `ARLEDGER_RUN_LAYOUT=serial` keeps the former layout (one thread,
round robin: each worker does one bounded step in turn). A worker that fails
stops the others and the process exits with its error, as before. SIGTERM/SIGINT
finish the current steps, publish a last snapshot and close the clients.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

import structlog

from arledger.settings import POLL_TIMEOUT_MS, Settings
from consumers.alerts import AlertsWorker, load_config
from consumers.ingest import IngestWorker
from consumers.metrics import Metrics
from consumers.project import Projector, consumer_lags
from consumers.relay import Relay
from consumers.topics import ensure_topics
from ledger.account import CreditPolicy
from ledger.application import Ledger

WORKERS = ("ingest", "relay", "project", "alerts")  # alerts uses the projector's DuckDB file: same process
LAG_CHECK_INTERVAL_S = 5.0
IDLE_SLEEP_S = 0.05  # the relay has no blocking poll: it sleeps this long when idle
LAYOUTS = ("threads", "serial")
MAIN_TICK_S = 0.2  # how often the main thread checks for stop, `until` and the metrics when threaded
log = structlog.get_logger("arledger.run")


def ledger_policy(settings: Settings) -> CreditPolicy:
    """The ledger's credit rules: the overdue tolerance from the settings, the behaviour grading (recorded as
    credit_grade.computed events) from the credit-control config file ($ARLEDGER_CONFIG)."""
    return CreditPolicy(overdue_tolerance_days=settings.overdue_tolerance_days, grading=load_config().grading)


class Runner:
    def __init__(self, settings: Settings, workers: tuple[str, ...] = WORKERS, *,
                 metrics: Metrics | None = None) -> None:
        unknown = set(workers) - set(WORKERS)
        assert not unknown, f"unknown workers {unknown}"
        self.settings = settings
        self.stopping = False
        self.metrics = metrics
        ensure_topics(settings)
        policy = ledger_policy(settings)
        self.ingest = IngestWorker(settings, Ledger(settings.store_url, policy=policy)) if "ingest" in workers else None
        self.relay = Relay(settings, Ledger(settings.store_url, policy=policy)) if "relay" in workers else None
        self.projector = Projector(settings) if "project" in workers else None
        if "alerts" in workers and self.projector is None:
            raise SystemExit("arledger run: the alerts worker reads the projector's file: run it with 'project'")
        self.alerts = AlertsWorker(settings, self.projector, load_config()) if "alerts" in workers else None
        for worker in (self.ingest, self.relay, self.projector):
            if worker is not None:
                worker.metrics = metrics
        self._lag_checked = 0.0
        if metrics:
            metrics.ready = True

    def stop(self, *_: object) -> None:
        self.stopping = True

    def step(self, timeout_ms: int) -> int:
        """One round: each worker does one bounded step; returns how much work was done."""
        done = 0
        if self.ingest:
            done += self.ingest.run_once(timeout_ms)
        if self.relay:
            done += self.relay.run_once()
        if self.projector:
            done += self.projector.run_once(0 if done else timeout_ms)
        if self.alerts:
            done += self.alerts.run_once(pipeline_idle=done == 0)
        if self.metrics:
            self._observe()
        return done

    def _observe(self, ingest_lag: bool = True) -> None:
        """Heartbeat and lags. Threaded, the ingest thread reads its own consumer's lag (`ingest_lag` False
        here): a kafka-python consumer is not safe to use from two threads."""
        self.metrics.beat()
        now = time.monotonic()
        if now - self._lag_checked >= LAG_CHECK_INTERVAL_S:
            self._lag_checked = now
            if self.ingest and ingest_lag:
                self.metrics.observe_lag("ingest", consumer_lags(self.ingest.consumer))
            if self.projector:
                self.metrics.observe_lag("project", self.projector.reader.lags)  # its reader thread owns the consumer

    def run(self, until: Callable[[], bool] | None = None) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        layout = run_layout()
        log.info("workers_started", ingest=bool(self.ingest), relay=bool(self.relay), project=bool(self.projector),
                 alerts=bool(self.alerts), kafka=self.settings.kafka_bootstrap, home=str(self.settings.home),
                 layout=layout)
        if layout == "threads" and len(self._stages()) > 1:
            self._run_threaded(until)
            return
        idle_timeout_ms = POLL_TIMEOUT_MS
        try:
            while not self.stopping and not (until and until()):
                done = self.step(0 if idle_timeout_ms == 0 else idle_timeout_ms // 4)
                idle_timeout_ms = 0 if done else POLL_TIMEOUT_MS
                if not done and self.relay and not self.ingest and not self.projector:
                    time.sleep(IDLE_SLEEP_S)
        finally:
            self.close()

    # -- one thread per stage ----------------------------------------------------------------------

    def _stages(self) -> dict[str, Callable[[int, bool], int]]:
        """The stages that run in threads of their own: name → one bounded step(timeout_ms, others_idle)."""
        stages: dict[str, Callable[[int, bool], int]] = {}
        if self.ingest:
            lag_checked = [0.0]

            def ingest(timeout_ms: int, _: bool) -> int:
                done = self.ingest.run_once(timeout_ms)
                now = time.monotonic()
                if self.metrics and now - lag_checked[0] >= LAG_CHECK_INTERVAL_S:
                    lag_checked[0] = now
                    self.metrics.observe_lag("ingest", consumer_lags(self.ingest.consumer))
                return done
            stages["ingest"] = ingest
        if self.relay:
            stages["relay"] = lambda _, __: self.relay.run_once()
        if self.projector:
            def project(timeout_ms: int, others_idle: bool) -> int:
                done = self.projector.run_once(timeout_ms)
                if self.alerts:
                    done += self.alerts.run_once(pipeline_idle=others_idle and done == 0)
                return done
            stages["project"] = project
        return stages

    def _run_threaded(self, until: Callable[[], bool] | None) -> None:
        stages = self._stages()
        busy = {name: True for name in stages}
        failures: list[BaseException] = []

        def loop(name: str, step: Callable[[int, bool], int]) -> None:
            idle_timeout_ms = POLL_TIMEOUT_MS
            try:
                while not self.stopping:
                    others_idle = not any(flag for other, flag in busy.items() if other != name)
                    done = step(0 if idle_timeout_ms == 0 else idle_timeout_ms // 4, others_idle)
                    busy[name] = bool(done)
                    idle_timeout_ms = 0 if done else POLL_TIMEOUT_MS
                    if not done and name == "relay":
                        time.sleep(IDLE_SLEEP_S)
            except BaseException as error:  # noqa: BLE001 - re-raised by the main thread
                failures.append(error)
                self.stopping = True

        threads = [threading.Thread(target=loop, args=(name, step), name=f"arledger-{name}", daemon=True)
                   for name, step in stages.items()]
        try:
            for thread in threads:
                thread.start()
            while not self.stopping and not (until and until()):
                time.sleep(MAIN_TICK_S)
                if self.metrics:
                    self._observe(ingest_lag=False)
            self.stopping = True
            for thread in threads:
                thread.join()
            if failures:
                raise failures[0]
        finally:
            self.stopping = True
            for thread in threads:
                if thread.is_alive():
                    thread.join()
            self.close()

    def close(self) -> None:
        for worker in (self.ingest, self.relay, self.alerts, self.projector):
            if worker is not None:
                worker.close()
        log.info("workers_stopped")


def run_layout() -> str:
    """$ARLEDGER_RUN_LAYOUT: `threads` (default: one thread per stage) or `serial` (one thread, round robin)."""
    layout = os.environ.get("ARLEDGER_RUN_LAYOUT", "").strip().lower() or "threads"
    if layout not in LAYOUTS:
        raise SystemExit(f"ARLEDGER_RUN_LAYOUT={layout!r}: choose {' or '.join(LAYOUTS)}")
    return layout
