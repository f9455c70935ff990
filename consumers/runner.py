"""Runs the workers — ingest, relay, project, alerts — in one process, or any one alone (`arledger run WORKER`).

One thread, round robin: each worker does one bounded step in turn. When a
step found work, the next poll does not wait, so a record flows from
ar.inbound to the snapshot without idle pauses; when all are idle, each poll
waits a little. SIGTERM/SIGINT finish the current step, publish a last
snapshot and close the clients.
"""

from __future__ import annotations

import signal
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

    def _observe(self) -> None:
        self.metrics.beat()
        now = time.monotonic()
        if now - self._lag_checked >= LAG_CHECK_INTERVAL_S:
            self._lag_checked = now
            if self.ingest:
                self.metrics.observe_lag("ingest", consumer_lags(self.ingest.consumer))
            if self.projector:
                self.metrics.observe_lag("project", self.projector.reader.lags)  # its reader thread owns the consumer

    def run(self, until: Callable[[], bool] | None = None) -> None:
        signal.signal(signal.SIGTERM, self.stop)
        signal.signal(signal.SIGINT, self.stop)
        log.info("workers_started", ingest=bool(self.ingest), relay=bool(self.relay), project=bool(self.projector),
                 alerts=bool(self.alerts), kafka=self.settings.kafka_bootstrap, home=str(self.settings.home))
        idle_timeout_ms = POLL_TIMEOUT_MS
        try:
            while not self.stopping and not (until and until()):
                done = self.step(0 if idle_timeout_ms == 0 else idle_timeout_ms // 4)
                idle_timeout_ms = 0 if done else POLL_TIMEOUT_MS
                if not done and self.relay and not self.ingest and not self.projector:
                    time.sleep(IDLE_SLEEP_S)
        finally:
            self.close()

    def close(self) -> None:
        for worker in (self.ingest, self.relay, self.alerts, self.projector):
            if worker is not None:
                worker.close()
        log.info("workers_stopped")
