"""A small ledger behind a running `arledger run`, with users and tokens, for the web tests.

Dates are relative to today (UTC): the workspace's pages default to today, as
a collector's day does. The world, as of today T:
- C1 Acme (ann, grade B, limit 10,000.00): INV-1 5,000.00 issued T-60 due T-30 (on the worklist),
  INV-3 1,000.00 due T+3 (in the calendar);
- C2 Bolt (bob, limit 1,000.00): INV-2 900.00 due T+20; order O-1 of 500.00 blocked over_limit;
- C3 Cask (ann, limit 5,000.00): INV-4 700.00 issued T-40 due T-10 (on the worklist).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from arledger.settings import Settings
from arledger.web.auth import UserStore
from helpers import env_of, ingest_wait, running_workers, settings_on, write_jsonl

PASSWORD = "correct horse battery"
USERS = {"vera": "viewer", "colin": "collector", "carla": "controller", "ada": "admin"}


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _envelope(type_: str, customer_id: str, on: dt.date, data: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"seed-{uuid.uuid4().hex[:12]}", "type": type_, "source": "web-test",
            "time": f"{on.isoformat()}T09:00:00Z", "customer_id": customer_id, "data": data}


def seed_facts() -> list[dict[str, Any]]:
    t = today()
    start = t - dt.timedelta(days=90)

    def register(cid: str, name: str, limit: int, salesperson: str, grade: str | None = None) -> dict[str, Any]:
        return _envelope("customer.registered", cid, start, {
            "name": name, "currency": "EUR", "credit_limit": limit, "payment_terms_days": 30,
            "salesperson": salesperson, **({"grade": grade} if grade else {})})

    def sale(cid: str, invoice: str, amount: int, issued: dt.date) -> dict[str, Any]:
        return _envelope("sale.recorded", cid, issued, {"invoice_id": invoice, "amount": amount, "currency": "EUR",
                                                        "issued_on": issued.isoformat()})

    return [
        register("C1", "Acme", 1_000_000, "ann", "B"),
        register("C2", "Bolt", 100_000, "bob"),
        register("C3", "Cask", 500_000, "ann"),
        sale("C1", "INV-1", 500_000, t - dt.timedelta(days=60)),
        sale("C1", "INV-3", 100_000, t - dt.timedelta(days=27)),
        sale("C2", "INV-2", 90_000, t - dt.timedelta(days=10)),
        sale("C3", "INV-4", 70_000, t - dt.timedelta(days=40)),
        _envelope("order.placed", "C2", t - dt.timedelta(days=1),
                  {"order_id": "O-1", "amount": 50_000, "currency": "EUR"}),
    ]


@dataclass
class WebWorld:
    settings: Settings
    env: dict[str, str]
    home: Path
    tokens: dict[str, str]  # role → bearer token


def build_world(kafka_bootstrap: str, home: Path) -> Iterator[WebWorld]:
    """Workers running, the seed ingested and projected, one user and one token per role."""
    settings = settings_on(kafka_bootstrap, home, f"t{uuid.uuid4().hex[:8]}.")
    env = env_of(settings)
    store = UserStore(home / "web-users.sqlite")
    for name, role in USERS.items():
        store.add_user(name, role, PASSWORD)
    tokens = {role: store.create_token(f"system-{role}", role) for role in USERS.values()}
    facts = seed_facts()
    with running_workers(env, log_path=home / "workers.log"):
        counts = ingest_wait(env, write_jsonl(home / "seed.jsonl", facts))
        assert counts["accepted"] == len(facts), counts
        yield WebWorld(settings, env, home, tokens)
