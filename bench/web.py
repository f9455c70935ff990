"""Bench stage `web`: server time of each page and API call of `arledger serve`.

Two read models: the bench's generated workload (the demo's size with
`--customers 500`), folded from the real ar.ledger records the relay
published; and a synthetic one with 50,000 customers (20 open items each,
made directly in DuckDB as the aging stage does). The app runs in process
behind Starlette's test client (no socket), signed in with a viewer token;
the figure is the time from request to complete response, per call, after
one warm-up call. Targets (issue 15): p99 < 200 ms for pages, < 50 ms for the
credit check.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from arledger.settings import Settings

PAGE_P99_TARGET_MS = 200.0
CREDIT_CHECK_P99_TARGET_MS = 50.0
SYNTHETIC_CUSTOMERS = 50_000
SYNTHETIC_ITEMS = SYNTHETIC_CUSTOMERS * 20


# The synthetic read model has items and movements but no documents (invoices, payments): a statement of it
# does not balance, so the customer page is measured on the workload's read model only.
SYNTHETIC_SKIPS = {"customer": "the synthetic read model has no documents for a statement"}


def _percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def endpoints(customer_id: str, as_of: dt.date) -> dict[str, tuple[str, str]]:
    """name → (kind, path); kind is page, api or credit_check (each has its own target)."""
    day = as_of.isoformat()
    return {
        "overview": ("page", f"/?as_of={day}"),
        "worklist": ("page", f"/worklist?as_of={day}"),
        "calendar": ("page", f"/calendar?as_of={day}"),
        "collections": ("page", f"/collections?as_of={day}"),
        "customer": ("page", f"/customers/{customer_id}?as_of={day}"),
        "credit_queue": ("page", "/credit-queue"),
        "downloads": ("page", "/downloads"),
        "credit_check": ("credit_check", f"/api/credit-check?customer={customer_id}&amount=1000&as_of={day}"),
        "api_aging": ("api", f"/api/reports/aging?as_of={day}"),
        "api_balances_csv": ("api", f"/api/reports/balances?as_of={day}&format=csv"),
        "api_exposure": ("api", f"/api/reports/exposure?as_of={day}"),
        "api_worklist": ("api", f"/api/reports/worklist?as_of={day}"),
    }


def serve_times(base: Settings, home: Path, read_model: Path, as_of: dt.date, calls: int,
                say: Callable[[str], None], skip: dict[str, str] | None = None) -> dict[str, Any]:
    """p50/p99/max of each endpoint over `calls` calls on the read model at `read_model`."""
    from starlette.testclient import TestClient

    from arledger.web.app import create_app
    from arledger.web.auth import UserStore

    settings = dataclasses.replace(base, home=home)
    home.mkdir(parents=True, exist_ok=True)
    target = settings.projection_path  # what readmodel opens when no projector has published a snapshot
    if read_model != target:
        read_model.replace(target)
    token = UserStore(home / "web-users.sqlite").create_token("bench", "viewer")
    figures: dict[str, Any] = {}
    with TestClient(create_app(settings, kafka=False), raise_server_exceptions=False) as client:
        headers = {"Authorization": f"Bearer {token}"}
        customer_id = _busiest_customer(client, headers, as_of)
        for name, (kind, path) in endpoints(customer_id, as_of).items():
            if name in (skip or {}):
                figures[name] = {"skipped": skip[name]}
                continue
            first = client.get(path, headers=headers)  # warm-up (and a check that it answers)
            if first.status_code != 200:
                figures[name] = {"error": f"HTTP {first.status_code}: {first.text[:200]}"}
                continue
            times_ms = []
            for _ in range(calls):
                started = time.perf_counter()
                response = client.get(path, headers=headers)
                times_ms.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 200, (path, response.status_code)
            target_ms = CREDIT_CHECK_P99_TARGET_MS if kind == "credit_check" else PAGE_P99_TARGET_MS
            p99 = _percentile(times_ms, 0.99)
            figures[name] = {"kind": kind, "calls": calls, "p50_ms": round(statistics.median(times_ms), 1),
                             "p99_ms": round(p99, 1), "max_ms": round(max(times_ms), 1),
                             "target_p99_ms": target_ms if kind != "api" else None,
                             "met": (p99 < target_ms) if kind != "api" else None}
            say(f"web {name}: p50 {figures[name]['p50_ms']} ms, p99 {figures[name]['p99_ms']} ms")
    return {"customer": customer_id, "endpoints": figures}


def _busiest_customer(client, headers: dict[str, str], as_of: dt.date) -> str:
    rows = client.get(f"/api/reports/exposure?as_of={as_of.isoformat()}", headers=headers).json()["rows"]
    return max(rows, key=lambda row: row["exposure"])["customer_id"] if rows else "C0001"


def measure_web(base: Settings, ledger_values: Sequence[bytes], ledger_topic: str, home: Path, quick: bool,
                say: Callable[[str], None]) -> dict[str, Any]:
    """Both read models; the workload's first (when the relay published it), then 50,000 customers."""
    from bench import stages
    from projections import schema
    from projections.fold import apply_batch

    as_of = dt.datetime.now(dt.UTC).date()
    calls = 5 if quick else 30
    results: dict[str, Any] = {"calls_per_endpoint": calls, "targets": {"page_p99_ms": PAGE_P99_TARGET_MS,
                                                                         "credit_check_p99_ms": CREDIT_CHECK_P99_TARGET_MS}}
    if ledger_values:
        path = home / "web-workload.duckdb"
        connection = schema.connect(str(path))
        schema.create_schema(connection)
        for start in range(0, len(ledger_values), 50_000):
            batch = ledger_values[start:start + 50_000]
            apply_batch(connection, batch, {(ledger_topic, 0): start + len(batch)}, staging_dir=home)
        customers = connection.execute("SELECT count(*) FROM customers").fetchone()[0]
        connection.close()
        say(f"web: the workload's read model ({customers:,} customers)")
        results["workload"] = {"customers": customers,
                               **serve_times(base, home / "web-workload", path, as_of, calls, say)}
    else:
        results["workload"] = {"skipped": "no ledger records (the relay stage did not run or failed)"}
    items = 20 * 500 if quick else SYNTHETIC_ITEMS
    path = home / "web-synthetic.duckdb"
    say(f"web: building a synthetic read model of {items // 20:,} customers ...")
    stages.build_aging_file(path, items, as_of)
    results["synthetic"] = {"customers": items // 20, "open_items": items,
                            **serve_times(base, home / "web-synthetic", path, as_of, max(3, calls // 3), say,
                                         skip=SYNTHETIC_SKIPS)}
    return results
