"""Client side of credit decisions: an upstream system places an order and waits for its outcome (docs/contract.md §3).

`place_order_and_wait` publishes an `order.placed` envelope on ar.inbound
(key = customer id) and waits for the matching record: the decision on
ar.decisions whose `inbound_id` is the envelope id, or the reject on
ar.rejected whose `envelope_id` is. The consumer is positioned at the end of
both topics *before* the order is sent, so the answer cannot be missed.
`CreditClient` keeps one producer and one consumer open for many orders
(what an order system would do); `measure_decision_latency` uses it to
measure produce → decision consumed under load (the benchmark of issue 6).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
from kafka import KafkaConsumer, TopicPartition

from arledger.settings import TOPIC_DECISIONS, TOPIC_INBOUND, TOPIC_REJECTED, Settings
from consumers import clients
from consumers.topics import ensure_topics

POLL_MS = 5  # short polls: the waiting thread sees a decision within a few ms of its arrival
ORDER_LINGER_MS = 0  # an order is sent at once: its sender waits for the decision (linger would add up to 5 ms)
BACKGROUND_LINGER_MS = 20  # the benchmark's bulk feeds (sales, payments) batch as upstream feeds do
_json = msgspec.json.Encoder()
_decode = msgspec.json.Decoder()


class DecisionTimeout(TimeoutError):
    """No decision nor reject arrived in time (is 'arledger run' running? an exact re-send gets no second one)."""


def order_envelope(customer_id: str, order_id: str, amount: int, currency: str, *,
                   envelope_id: str | None = None, time_iso: str | None = None,
                   source: str = "arledger-credit-client") -> dict[str, Any]:
    """An `order.placed` envelope; the id defaults to a fresh UUID, the time to now (UTC)."""
    when = time_iso or dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"id": envelope_id or f"order-{uuid.uuid4().hex}", "type": "order.placed", "source": source,
            "time": when, "customer_id": customer_id,
            "data": {"order_id": order_id, "amount": amount, "currency": currency}}


def outcome_of(topic_kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """A decision as published, or a reject reduced to what the caller needs; `outcome` says which."""
    if topic_kind == "decision":
        return {"outcome": "decision", **record}
    return {"outcome": "rejected", "inbound_id": record.get("envelope_id"), "customer_id": record.get("customer_id"),
            "reason": record.get("reason"), "message": record.get("message"), "rejected_at": record.get("rejected_at")}


class CreditClient:
    """One producer to ar.inbound, one consumer of ar.decisions and ar.rejected (from their end at start)."""

    def __init__(self, settings: Settings, *, client_id: str = "arledger-credit-client") -> None:
        self.settings = settings
        ensure_topics(settings)
        self.producer = clients.producer(settings, client_id, linger_ms=ORDER_LINGER_MS)
        self.consumer: KafkaConsumer = clients.assigned_consumer(settings, client_id, 5_000)
        self._kinds = {settings.topic(TOPIC_DECISIONS): "decision", settings.topic(TOPIC_REJECTED): "rejected"}
        partitions: list[TopicPartition] = []
        for topic in self._kinds:
            partitions += clients.partitions_of(self.consumer, topic)
        self.consumer.assign(partitions)
        self.consumer.seek_to_end(*partitions)
        for partition in partitions:
            self.consumer.position(partition)  # resolve the end offsets now, before anything is sent
        self._outcomes: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def send(self, envelope: dict[str, Any]) -> float:
        """Publish an envelope (returns time.perf_counter() just before the send)."""
        started = time.perf_counter()
        self.producer.send(self.settings.topic(TOPIC_INBOUND), key=envelope["customer_id"].encode(),
                           value=_json.encode(envelope))
        return started

    def poll(self, timeout_ms: int = POLL_MS, on_outcome: Callable[[str, dict[str, Any]], None] | None = None) -> int:
        """Read what arrived; remember each outcome by inbound id (or hand it to `on_outcome`)."""
        count = 0
        for partition, records in self.consumer.poll(timeout_ms=timeout_ms).items():
            kind = self._kinds[partition.topic]
            for record in records:
                outcome = outcome_of(kind, _decode.decode(record.value))
                inbound_id = outcome.get("inbound_id")
                if inbound_id is None:
                    continue
                count += 1
                if on_outcome is not None:
                    on_outcome(inbound_id, outcome)
                else:
                    with self._lock:
                        self._outcomes[inbound_id] = outcome
        return count

    def wait(self, inbound_id: str, timeout_s: float) -> dict[str, Any]:
        """The outcome of one envelope; raises DecisionTimeout."""
        deadline = time.monotonic() + timeout_s
        self.producer.flush()
        while True:
            with self._lock:
                if inbound_id in self._outcomes:
                    return self._outcomes.pop(inbound_id)
            if time.monotonic() > deadline:
                raise DecisionTimeout(f"no decision for envelope {inbound_id!r} within {timeout_s} s; "
                                      "is 'arledger run' (ingest) running?")
            self.poll()

    def place_order(self, customer_id: str, order_id: str, amount: int, currency: str, timeout_s: float = 30.0,
                    **envelope_options: Any) -> dict[str, Any]:
        envelope = order_envelope(customer_id, order_id, amount, currency, **envelope_options)
        self.send(envelope)
        return self.wait(envelope["id"], timeout_s)

    def close(self) -> None:
        self.consumer.close()
        self.producer.close(timeout=10)


def place_order_and_wait(settings: Settings, customer_id: str, order_id: str, amount: int, currency: str,
                         timeout_s: float = 30.0, *, envelope_id: str | None = None,
                         time_iso: str | None = None) -> dict[str, Any]:
    """Place one order and wait for its decision (or reject): the ar.decisions record plus `"outcome": "decision"`,
    or `{"outcome": "rejected", "inbound_id", "reason", "message", ...}`. Raises DecisionTimeout."""
    client = CreditClient(settings)
    try:
        return client.place_order(customer_id, order_id, amount, currency, timeout_s,
                                  envelope_id=envelope_id, time_iso=time_iso)
    finally:
        client.close()


# -- Benchmark -------------------------------------------------------------------------------------

BENCH_CUSTOMERS = 200
BENCH_LIMIT = 10**15  # limits high enough that every order is approved: the decision path, not the verdict, is timed


def _percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least `fraction` of the values at or below it."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, math.ceil(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def _env_of(settings: Settings) -> dict[str, str]:
    return {**os.environ, "ARLEDGER_HOME": str(settings.home), "ARLEDGER_KAFKA": settings.kafka_bootstrap,
            "ARLEDGER_BROKER_PORT": str(settings.broker_port), "ARLEDGER_STORE": settings.store_url,
            "ARLEDGER_TOPIC_PREFIX": settings.topic_prefix, "ARLEDGER_PARTITIONS": str(settings.partitions),
            "ARLEDGER_REPLICATION_FACTOR": str(settings.replication_factor)}


def _paced(rate_per_s: float, duration_s: float, emit: Callable[[int], None], stop: threading.Event) -> int:
    """Call emit(n) at `rate_per_s` on average for `duration_s` (in small bursts every 5 ms)."""
    started = time.perf_counter()
    sent = 0
    while not stop.is_set():
        elapsed = time.perf_counter() - started
        if elapsed >= duration_s:
            break
        due = int(elapsed * rate_per_s) + 1
        while sent < due:
            emit(sent)
            sent += 1
        time.sleep(0.005)
    return sent


def measure_decision_latency(settings: Settings, *, orders_per_s: float = 200.0,
                             background_events_per_s: float = 2_000.0, duration_s: float = 20.0,
                             warmup_s: float = 3.0, start_workers: bool = True, customers: int = BENCH_CUSTOMERS,
                             business_date: str = "2026-01-15", worker_log_level: str = "warning") -> dict[str, Any]:
    """Decision latency (order.placed produced → its decision consumed) under a background of other events.

    With `start_workers`, runs `arledger run ingest` and `arledger run relay project` as two processes on
    `settings` (a fresh home and topic prefix are best), registers `customers`, then for `duration_s`
    sends orders at `orders_per_s` and sales/payments at `background_events_per_s`. Returns p50/p90/p99/max
    in ms and the counts; the first `warmup_s` seconds are not counted. Orders go out at once (linger 0,
    as an order system waiting for each answer sends them); the background goes through a second producer
    that batches (linger BACKGROUND_LINGER_MS), as bulk upstream feeds do.
    """
    ensure_topics(settings)
    workers: list[subprocess.Popen[bytes]] = []
    log_path = settings.home / "bench-workers.log"
    settings.home.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    try:
        if start_workers:
            env = _env_of(settings)
            for names in (("ingest",), ("relay", "project")):
                workers.append(subprocess.Popen([sys.executable, "-m", "arledger.cli", "run", *names,
                                                 "--log-level", worker_log_level], env=env, stdout=log_file,
                                                stderr=subprocess.STDOUT))
        client = CreditClient(settings, client_id="arledger-bench")
        try:
            return _measure(client, orders_per_s, background_events_per_s, duration_s, warmup_s, customers,
                            business_date)
        except DecisionTimeout as timeout:
            log_file.flush()
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            dead = [f"pid {p.pid} exited {p.returncode}" for p in workers if p.poll() is not None]
            raise DecisionTimeout(f"{timeout}; workers: {', '.join(dead) or 'all running'}; "
                                  f"their log ends:\n{tail}") from None
        finally:
            client.close()
    finally:
        for process in workers:
            process.send_signal(signal.SIGTERM)
        for process in workers:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
        log_file.close()


def _measure(client: CreditClient, orders_per_s: float, background_per_s: float, duration_s: float,
             warmup_s: float, customers: int, business_date: str) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    ids = [f"B{run}-{n:04d}" for n in range(customers)]
    time_iso = f"{business_date}T09:00:00Z"
    for customer_id in ids:
        client.send({"id": f"{customer_id}-reg", "type": "customer.registered", "time": time_iso,
                     "customer_id": customer_id, "data": {"name": customer_id, "currency": "EUR",
                                                          "credit_limit": BENCH_LIMIT, "payment_terms_days": 30}})
    # One probe order per customer: when all are decided, the workers are up and every registration is in.
    probes = {}
    for customer_id in ids:
        envelope = order_envelope(customer_id, "probe", 1, "EUR", time_iso=time_iso)
        client.send(envelope)
        probes[envelope["id"]] = customer_id
    for inbound_id in probes:
        client.wait(inbound_id, timeout_s=120.0)

    sent_at: dict[str, float] = {}
    latencies: list[tuple[float, float]] = []  # (sent since start, latency ms)
    lock = threading.Lock()
    stop = threading.Event()
    started = time.perf_counter()
    outcomes: dict[str, int] = {}

    def on_outcome(inbound_id: str, outcome: dict[str, Any]) -> None:
        arrived = time.perf_counter()
        with lock:
            sent = sent_at.pop(inbound_id, None)
        if sent is not None:
            latencies.append((sent - started, (arrived - sent) * 1000))
            key = outcome.get("decision") or outcome["outcome"]
            outcomes[key] = outcomes.get(key, 0) + 1

    def consume() -> None:
        while not stop.is_set() or sent_at:
            client.poll(POLL_MS, on_outcome)
            if stop.is_set() and time.perf_counter() - started > duration_s + 30:
                break

    def order(n: int) -> None:
        customer_id = ids[n % len(ids)]
        envelope = order_envelope(customer_id, f"O{run}-{n}", 100, "EUR", time_iso=time_iso)
        with lock:
            sent_at[envelope["id"]] = time.perf_counter()
        client.producer.send(client.settings.topic(TOPIC_INBOUND), key=customer_id.encode(),
                             value=_json.encode(envelope))

    def background(n: int) -> None:
        customer_id = ids[(n * 7) % len(ids)]
        if n % 2 == 0:
            envelope = {"id": f"S{run}-{n}", "type": "sale.recorded", "time": time_iso, "customer_id": customer_id,
                        "data": {"invoice_id": f"I{run}-{n}", "amount": 1_000, "currency": "EUR",
                                 "issued_on": business_date}}
        else:
            envelope = {"id": f"P{run}-{n}", "type": "payment.received", "time": time_iso,
                        "customer_id": customer_id, "data": {"payment_id": f"P{run}-{n}", "amount": 1_000,
                                                             "currency": "EUR", "received_on": business_date}}
        feeds.send(client.settings.topic(TOPIC_INBOUND), key=customer_id.encode(), value=_json.encode(envelope))

    feeds = clients.producer(client.settings, "arledger-bench-feeds", linger_ms=BACKGROUND_LINGER_MS)
    consumer_thread = threading.Thread(target=consume, name="bench-consumer", daemon=True)
    background_count: list[int] = []
    background_thread = threading.Thread(
        target=lambda: background_count.append(_paced(background_per_s, duration_s, background, stop)),
        name="bench-background", daemon=True)
    consumer_thread.start()
    background_thread.start()
    orders_sent = _paced(orders_per_s, duration_s, order, stop)
    background_thread.join()
    client.producer.flush()
    feeds.close(timeout=10)
    deadline = time.perf_counter() + 30
    while sent_at and time.perf_counter() < deadline:
        time.sleep(0.05)
    stop.set()
    consumer_thread.join(timeout=35)
    measured = sorted(latency for sent, latency in latencies if sent >= warmup_s)
    return {
        "orders_per_s": orders_per_s, "background_events_per_s": background_per_s, "duration_s": duration_s,
        "warmup_s": warmup_s, "orders_sent": orders_sent, "background_sent": background_count[0] if background_count else 0,
        "decisions": len(latencies), "measured": len(measured), "missing": len(sent_at), "outcomes": outcomes,
        "p50_ms": _percentile(measured, 0.50), "p90_ms": _percentile(measured, 0.90),
        "p99_ms": _percentile(measured, 0.99), "max_ms": measured[-1] if measured else None,
    }
