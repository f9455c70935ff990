"""Prometheus metrics and health endpoints of a worker process (`arledger run --metrics-port P`).

GET /metrics  Prometheus text format (prometheus_client)
GET /health   200 while the worker loop turns (its last step is recent), else 503
GET /ready    200 once the workers are connected and running, else 503
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

HEALTH_STALE_S = 60.0  # a step never takes this long: longer means the loop is stuck


class Metrics:
    """The figures every worker reports; one registry per process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.records = Counter("arledger_records", "Records handled, by worker, topic and outcome",
                               ["worker", "topic", "outcome"], registry=self.registry)
        self.rejects = Counter("arledger_rejects", "Inbound records rejected, by reason code", ["reason"],
                               registry=self.registry)
        self.published = Counter("arledger_published", "Records published, by topic", ["topic"],
                                 registry=self.registry)
        self.batch_seconds = Histogram("arledger_batch_duration_seconds", "Duration of one checkpointed batch",
                                       ["worker"], registry=self.registry,
                                       buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
        self.consumer_lag = Gauge("arledger_consumer_lag", "Records behind the end of the topic, by partition",
                                  ["worker", "topic", "partition"], registry=self.registry)
        self.dead_letters = Gauge("arledger_dead_letters", "ar.ledger records the projector set aside "
                                  "(fold failed); `arledger redrive` retries them", registry=self.registry)
        self.projector_offset = Gauge("arledger_projector_offset", "Next ar.ledger offset the projection applies",
                                      ["partition"], registry=self.registry)
        self.relay_position = Gauge("arledger_relay_position", "Last ledger position the relay published",
                                    registry=self.registry)
        self.chain_head = Gauge("arledger_hash_chain_position", "Position of the last global hash chained",
                                registry=self.registry)
        self.last_step = time.monotonic()
        self.ready = False

    def observe_ingest(self, topic: str, outcomes: list, seconds: float) -> None:
        for outcome in outcomes:
            self.records.labels("ingest", topic, outcome.status).inc()
            if outcome.status == "rejected":
                self.rejects.labels(outcome.reason or "unknown").inc()
        self.batch_seconds.labels("ingest").observe(seconds)

    def observe_relay(self, topic: str, events: int, last_position: int, seconds: float) -> None:
        self.records.labels("relay", topic, "published").inc(events)
        self.published.labels(topic).inc(events)
        self.relay_position.set(last_position)
        self.chain_head.set(last_position)
        self.batch_seconds.labels("relay").observe(seconds)

    def observe_project(self, topic: str, applied: int, offsets: dict[tuple[str, int], int], seconds: float) -> None:
        self.records.labels("project", topic, "applied").inc(applied)
        for (_, partition), offset in offsets.items():
            self.projector_offset.labels(str(partition)).set(offset)
        self.batch_seconds.labels("project").observe(seconds)

    def observe_dead_letters(self, count: int) -> None:
        """Records the projector set aside (dead_letters): alert when > 0."""
        self.dead_letters.set(count)

    def observe_lag(self, worker: str, lags: dict) -> None:
        """Consumer lag by partition ({TopicPartition: records behind}, from the last fetches)."""
        for partition, lag in lags.items():
            self.consumer_lag.labels(worker, partition.topic, str(partition.partition)).set(lag)

    def beat(self) -> None:
        self.last_step = time.monotonic()

    def healthy(self) -> bool:
        return time.monotonic() - self.last_step < HEALTH_STALE_S


def serve(metrics: Metrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /metrics, /health and /ready on a daemon thread; port 0 picks a free one (see server_port)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/health"):
                ok = metrics.healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"stuck\n", "text/plain")
            elif self.path.startswith("/ready"):
                self._send(200 if metrics.ready else 503, b"ready\n" if metrics.ready else b"starting\n",
                           "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:  # keep scrapes out of the logs
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="arledger-metrics", daemon=True).start()
    return server
