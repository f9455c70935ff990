"""`arledger run --metrics-port`: Prometheus metrics and health probes, scraped from a real run."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request
from contextlib import closing
from pathlib import Path

import pytest

from tests.integration.helpers import ingest_wait, running_workers, write_jsonl
from tests.builders import fact

pytestmark = pytest.mark.kafka


def free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_report_what_the_workers_did(kafka_env: dict[str, str], tmp_path: Path) -> None:
    registration = {"name": "Acme", "currency": "EUR", "credit_limit": 100_000, "payment_terms_days": 30}
    facts = write_jsonl(tmp_path / "facts.jsonl", [
        fact("customer.registered", registration, id="m1", customer_id="C1", on="2026-03-01"),
        fact("sale.recorded", {"invoice_id": "I1", "amount": 1000, "currency": "EUR", "issued_on": "2026-03-02"},
             id="m2", customer_id="C1", on="2026-03-02"),
        fact("sale.recorded", {"invoice_id": "I1", "amount": 1000, "currency": "EUR", "issued_on": "2026-03-02"},
             id="m3", customer_id="C9", on="2026-03-02"),
        b"{not json",
    ])
    port = free_port()
    with running_workers(kafka_env, "--metrics-port", str(port), log_path=tmp_path / "run.log"):
        assert get(port, "/ready") == (200, "ready\n")
        assert get(port, "/health")[0] == 200
        counts = ingest_wait(kafka_env, facts)
        assert (counts["accepted"], counts["rejected"]) == (2, 2)
        status, text = get(port, "/metrics")

    assert status == 200
    inbound = kafka_env["ARLEDGER_TOPIC_PREFIX"] + "ar.inbound"
    ledger = kafka_env["ARLEDGER_TOPIC_PREFIX"] + "ar.ledger"
    assert sample(text, "arledger_records_total", worker="ingest", topic=inbound, outcome="accepted") == 2
    assert sample(text, "arledger_records_total", worker="ingest", topic=inbound, outcome="rejected") == 2
    assert sample(text, "arledger_rejects_total", reason="unknown_customer") == 1
    assert sample(text, "arledger_rejects_total", reason="invalid_json") == 1
    # registration (1) + sale, its item and the first computed grade (3): four ledger events, published and applied
    assert sample(text, "arledger_relay_position") == 4
    assert sample(text, "arledger_records_total", worker="project", topic=ledger, outcome="applied") == 4
    assert sample(text, "arledger_batch_duration_seconds_count", worker="ingest") >= 1
    assert "arledger_consumer_lag" in text
