"""The whole spine through the real CLI: `arledger run` (subprocess) ← `arledger ingest --wait` → `arledger report`.

Four customers in two currencies go through sales with and without
installments, partial and explicit payments, an over-payment whose unapplied
cash goes to a later sale, credit notes (one with excess), a bounced payment,
a write-off and orders (approved and invoiced, blocked, duplicated, rejected).
Every expected figure below is computed by hand from docs/contract.md §7/§8 — the
working is in the comments — never by the code under test.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from arledger.settings import TOPIC_DECISIONS, Settings
from helpers import env_of, ingest_wait, read_topic, report, running_workers, settings_on, write_jsonl
from tests import builders as b
from tests.builders import fact

AS_OF = "2026-05-15"
PAST_AS_OF = "2026-04-10"
BUCKETS = ["current", "1-30", "31-60", "61-90", "90+"]


# The scenario's shorthand (envelope id, customer, business date first) over the suite's fact builders.

def register(cid: str, on: str, name: str, currency: str, limit: int, terms: int, **extra: Any) -> dict[str, Any]:
    return b.registered(limit=limit, terms=terms, currency=currency, on=on, customer_id=cid, id=f"{cid}-reg",
                        name=name, **extra)


def sale(id: str, cid: str, on: str, invoice: str, amount: int, currency: str, **extra: Any) -> dict[str, Any]:
    return b.sale(invoice, amount, issued_on=on, currency=currency, customer_id=cid, id=id, **extra)


def payment(id: str, cid: str, on: str, payment_id: str, amount: int, currency: str, **extra: Any) -> dict[str, Any]:
    return b.payment(payment_id, amount, received_on=on, currency=currency, customer_id=cid, id=id, **extra)


def order(id: str, cid: str, on: str, order_id: str, amount: int, currency: str) -> dict[str, Any]:
    return b.order_placed(order_id, amount, on=on, currency=currency, customer_id=cid, id=id)


DUPLICATE_ORDER = order("c2-o21", "C2", "2026-04-25", "O-21", 100_000, "USD")

BATCH_1 = [
    # C1, EUR, terms 30, limit 10,000.00.
    register("C1", "2026-01-05", "Alpha GmbH", "EUR", 1_000_000, 30, grade="B", salesperson="ana"),
    # Nothing open: approved, exposure 0.
    order("c1-o1", "C1", "2026-02-01", "O-1", 100_000, "EUR"),
    # Invoices O-1 (closes it); due 02-03 + 30 d = 03-05.
    sale("c1-s1001", "C1", "2026-02-03", "INV-1001", 100_000, "EUR", order_id="O-1"),
    sale("c1-s1003", "C1", "2026-02-10", "INV-1003", 25_000, "EUR", due_on="2026-03-01"),
    sale("c1-s1002", "C1", "2026-03-01", "INV-1002", 240_000, "EUR", installments=[
        {"due_on": "2026-03-31", "amount": 80_000}, {"due_on": "2026-04-30", "amount": 80_000},
        {"due_on": "2026-05-31", "amount": 80_000}]),
    # Partial payment, explicit: INV-1001 100,000 → 40,000 from 03-10.
    payment("c1-p1", "C1", "2026-03-10", "P-1", 60_000, "EUR", allocations=[{"invoice_id": "INV-1001", "amount": 60_000}]),
    # Explicit 100,000 to INV-1002: #1 80,000 → 0, #2 20,000 → 60,000 open. The other 10,000 goes to the
    # oldest due item: INV-1003 (due 03-01) 25,000 → 15,000. All from 04-05.
    payment("c1-p2", "C1", "2026-04-05", "P-2", 110_000, "EUR", method="transfer",
            allocations=[{"invoice_id": "INV-1002", "amount": 100_000}]),
    # Latest installment first: INV-1002 #3 80,000 → 50,000 from 04-10.
    b.credit_note("CN-1", "INV-1002", 30_000, on="2026-04-10", customer_id="C1", id="c1-cn1", reason="damaged goods"),
    # 04-20: INV-1003 is 50 days past due and still 15,000 open → blocked. Exposure = 40,000 + 15,000 +
    # 60,000 + 50,000 = 165,000; available 1,000,000 − 165,000 = 835,000.
    order("c1-o2", "C1", "2026-04-20", "O-2", 50_000, "EUR"),
    # USD order on a EUR account: currency_mismatch, no decision.
    order("c1-o99", "C1", "2026-04-21", "O-99", 10_000, "USD"),

    # C2, USD, terms 30, limit 5,000.00.
    register("C2", "2026-01-10", "Beta Ltd", "USD", 500_000, 30, grade="A", salesperson="bob"),
    # Due 01-15 + 30 d = 02-14.
    sale("c2-s2001", "C2", "2026-01-15", "INV-2001", 200_000, "USD"),
    # Over-payment: 200,000 to INV-2001 from 02-10, 50,000 unapplied.
    payment("c2-p21", "C2", "2026-02-10", "P-21", 250_000, "USD"),
    # Due 03-31. The unapplied 50,000 is applied at once, effective max(03-01, 03-01, 02-10) = 03-01: 70,000 open.
    sale("c2-s2002", "C2", "2026-03-01", "INV-2002", 120_000, "USD"),
    sale("c2-s2003", "C2", "2026-03-20", "INV-2003", 90_000, "USD", due_on="2026-04-20"),
    # Oldest due first: INV-2002 70,000 → 0 from 04-01 ...
    payment("c2-p22", "C2", "2026-04-01", "P-22", 70_000, "USD"),
    # ... until it bounces: INV-2002 reopens 70,000 from 04-15.
    fact("payment.reversed", {"payment_id": "P-22", "reason": "bounced"},
         id="c2-rev22", customer_id="C2", on="2026-04-15"),
    # 04-25: INV-2002 25 days past due (≤ 30 passes); exposure 70,000 + 90,000 = 160,000; 160,000 + 100,000
    # ≤ 500,000 → approved, available 340,000. It stays open: open_orders 100,000.
    DUPLICATE_ORDER,
    DUPLICATE_ORDER,  # the same envelope again: a no-op, no second decision

    # C3, EUR, terms 14, limit 3,000.00, no grade.
    register("C3", "2026-01-20", "Gamma SA", "EUR", 300_000, 14, salesperson="ana"),
    sale("c3-s3001", "C3", "2026-02-01", "INV-3001", 50_000, "EUR"),  # due 02-15
    sale("c3-s3002", "C3", "2026-02-10", "INV-3002", 80_000, "EUR"),  # due 02-24
    payment("c3-p31", "C3", "2026-02-20", "P-31", 30_000, "EUR", allocations=[{"invoice_id": "INV-3001", "amount": 30_000}]),
    # 45,000 ≤ 50,000 creditable: INV-3001 20,000 → 0; the excess 25,000 goes to INV-3002 (80,000 → 55,000),
    # all from 03-01.
    b.credit_note("CN-31", "INV-3001", 45_000, on="2026-03-01", customer_id="C3", id="c3-cn31",
                  reason="price correction"),
    # All that is open: INV-3002 55,000 → 0 from 04-01, written off.
    fact("invoice.written_off", {"invoice_id": "INV-3002", "reason": "customer insolvent"},
         id="c3-wo3002", customer_id="C3", on="2026-04-01"),
    # Nothing eligible is open: 20,000 unapplied from 05-01.
    payment("c3-p32", "C3", "2026-05-01", "P-32", 20_000, "EUR"),

    # C4, USD, terms 30, limit 1,000.00, no grade, no salesperson.
    register("C4", "2026-01-01", "Delta Inc", "USD", 100_000, 30),
    sale("c4-s4001", "C4", "2026-01-02", "INV-4001", 30_000, "USD"),  # due 02-01
    # 03-15: INV-4001 42 days past due → blocked; exposure 30,000, available 70,000.
    order("c4-o41", "C4", "2026-03-15", "O-41", 150_000, "USD"),
]

BATCH_2 = [
    # The unapplied 20,000 of P-32 goes to INV-3003 from max(05-10, 05-10, 05-01) = 05-10: 40,000 open, due 05-24.
    sale("c3-s3003", "C3", "2026-05-10", "INV-3003", 60_000, "EUR"),
    payment("c2-p23", "C2", "2026-05-12", "P-23", 90_000, "USD", allocations=[{"invoice_id": "INV-2003", "amount": 90_000}]),
    # Invoices the approved O-21: open_orders back to 0. Due 05-14 + 30 d = 06-13.
    sale("c2-s2004", "C2", "2026-05-14", "INV-2004", 100_000, "USD", order_id="O-21"),
    # Oldest due first: INV-1003 15,000 → 0 from 05-02.
    payment("c1-p3", "C1", "2026-05-02", "P-3", 15_000, "EUR"),
    register("C5", "2026-05-01", "Epsilon BV", "EUR", 50_000, 30, salesperson="cy"),
    sale("c5-s5001", "C5", "2026-05-05", "INV-5001", 10_000, "EUR"),  # due 06-04
    order("c1-o1", "C1", "2026-02-01", "O-1", 100_000, "EUR"),  # re-sent a batch later: a no-op, no decision
]


def buckets(current: int = 0, d1_30: int = 0, d31_60: int = 0, d61_90: int = 0, d90_plus: int = 0) -> dict[str, int]:
    return {"current": current, "1-30": d1_30, "31-60": d31_60, "61-90": d61_90, "90+": d90_plus}


def row(cid: str, name: str, currency: str, salesperson: str, amounts: dict[str, int],
        unapplied: int = 0) -> dict[str, Any]:
    open_ = sum(amounts.values())
    return {"customer_id": cid, "name": name, "currency": currency, "salesperson": salesperson, **amounts,
            "open": open_, "unapplied": unapplied, "total": open_ - unapplied}


def totals(current: int, d1_30: int, d31_60: int, d61_90: int, d90_plus: int, unapplied: int) -> dict[str, int]:
    open_ = current + d1_30 + d31_60 + d61_90 + d90_plus
    return {**buckets(current, d1_30, d31_60, d61_90, d90_plus), "open": open_, "unapplied": unapplied,
            "total": open_ - unapplied}


C1 = ("C1", "Alpha GmbH", "EUR", "ana")
C2 = ("C2", "Beta Ltd", "USD", "bob")
C3 = ("C3", "Gamma SA", "EUR", "ana")
C4 = ("C4", "Delta Inc", "USD", "")
C5 = ("C5", "Epsilon BV", "EUR", "cy")

# As of 05-15, batch 1 only. C1: INV-1001 40,000 due 03-05 (71 d) and INV-1003 15,000 due 03-01 (75 d) → 61-90;
# INV-1002 #2 60,000 due 04-30 (15 d) → 1-30; #3 50,000 due 05-31 → current. C2: INV-2002 70,000 due 03-31
# (45 d) → 31-60; INV-2003 90,000 due 04-20 (25 d) → 1-30. C3: nothing open, 20,000 unapplied.
# C4: INV-4001 30,000 due 02-01 (103 d) → 90+.
AGING_BATCH_1 = {
    "rows": [row(*C1, buckets(current=50_000, d1_30=60_000, d61_90=55_000)),
             row(*C2, buckets(d1_30=90_000, d31_60=70_000)),
             row(*C3, buckets(), unapplied=20_000),
             row(*C4, buckets(d90_plus=30_000))],
    "totals": {"EUR": totals(50_000, 60_000, 0, 55_000, 0, unapplied=20_000),
               "USD": totals(0, 90_000, 70_000, 0, 30_000, unapplied=0)},
}
# As of 05-15, both batches. C1: INV-1003 paid by P-3 → 61-90 is INV-1001's 40,000. C2: INV-2003 paid by P-23;
# INV-2004 100,000 current. C3: INV-3003 40,000 current, no unapplied cash left. C5: INV-5001 10,000 current.
AGING_BOTH = {
    "rows": [row(*C1, buckets(current=50_000, d1_30=60_000, d61_90=40_000)),
             row(*C2, buckets(current=100_000, d31_60=70_000)),
             row(*C3, buckets(current=40_000)),
             row(*C4, buckets(d90_plus=30_000)),
             row(*C5, buckets(current=10_000))],
    "totals": {"EUR": totals(100_000, 60_000, 0, 40_000, 0, unapplied=0),
               "USD": totals(100_000, 0, 70_000, 0, 30_000, unapplied=0)},
}
# As of 04-10 (a past date; batch 2 is all dated later). C1: INV-1001 40,000 due 03-05 (36 d) and INV-1003
# 15,000 due 03-01 (40 d) → 31-60; INV-1002 #1 0, #2 60,000 and #3 50,000 (CN-1 counts from 04-10) current.
# C2: INV-2002 is 0 (P-22 counts 04-01..04-14), INV-2003 90,000 current. C3: INV-3002 written off 04-01, P-32
# not yet received → no row. C4: INV-4001 68 d → 61-90.
AGING_PAST = {
    "rows": [row(*C1, buckets(current=110_000, d31_60=55_000)),
             row(*C2, buckets(current=90_000)),
             row(*C4, buckets(d61_90=30_000))],
    "totals": {"EUR": totals(110_000, 0, 55_000, 0, 0, unapplied=0),
               "USD": totals(90_000, 0, 0, 30_000, 0, unapplied=0)},
}


def balance(cid: str, name: str, currency: str, salesperson: str, *, balance: int, unapplied: int = 0,
            overdue: int, credit_limit: int, open_orders: int = 0, grade: str | None = None,
            last_payment_on: str | None = None) -> dict[str, Any]:
    exposure = balance + open_orders
    return {"customer_id": cid, "name": name, "currency": currency, "salesperson": salesperson,
            "balance": balance, "unapplied": unapplied, "overdue": overdue, "credit_limit": credit_limit,
            "open_orders": open_orders, "exposure": exposure, "available": credit_limit - exposure,
            "utilisation": pytest.approx(exposure / credit_limit), "on_hold": False, "grade": grade,
            "last_payment_on": last_payment_on}


# Overdue = open ≥ 1 day past due on 05-15. Last payment: P-22 was reversed on 04-15, so C2's is P-21.
BALANCES_BATCH_1 = [
    balance(*C1, balance=165_000, overdue=40_000 + 15_000 + 60_000, credit_limit=1_000_000, grade="B",
            last_payment_on="2026-04-05"),
    balance(*C2, balance=160_000, overdue=160_000, credit_limit=500_000, open_orders=100_000, grade="A",
            last_payment_on="2026-02-10"),
    balance(*C3, balance=-20_000, unapplied=20_000, overdue=0, credit_limit=300_000, last_payment_on="2026-05-01"),
    balance(*C4, balance=30_000, overdue=30_000, credit_limit=100_000),
]
BALANCES_BOTH = [
    balance(*C1, balance=150_000, overdue=40_000 + 60_000, credit_limit=1_000_000, grade="B",
            last_payment_on="2026-05-02"),
    balance(*C2, balance=170_000, overdue=70_000, credit_limit=500_000, grade="A", last_payment_on="2026-05-12"),
    balance(*C3, balance=40_000, overdue=0, credit_limit=300_000, last_payment_on="2026-05-01"),
    balance(*C4, balance=30_000, overdue=30_000, credit_limit=100_000),
    balance(*C5, balance=10_000, overdue=0, credit_limit=50_000),
]


@dataclass
class Pipeline:
    settings: Settings
    env: dict[str, str]
    counts_1: dict[str, int]
    counts_2: dict[str, int]
    aging_1: dict[str, Any]
    balances_1: dict[str, Any]
    between: str  # an instant after batch 1 was recorded and before batch 2 was


@pytest.fixture(scope="module")
def pipeline(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """Both batches through `arledger run` + `arledger ingest --wait`; reports of batch 1 taken in between."""
    home = tmp_path_factory.mktemp("pipeline")
    settings = settings_on(kafka_bootstrap, home, f"t{uuid.uuid4().hex[:8]}.")
    env = env_of(settings)
    with running_workers(env, log_path=home / "workers.log"):
        counts_1 = ingest_wait(env, write_jsonl(home / "batch1.jsonl", BATCH_1))
        aging_1 = report(env, "aging", "--as-of", AS_OF)
        balances_1 = report(env, "balances", "--as-of", AS_OF)
        between = dt.datetime.now(dt.UTC)
        time.sleep(0.002)  # recorded times have microseconds: make "after `between`" unambiguous
        counts_2 = ingest_wait(env, write_jsonl(home / "batch2.jsonl", BATCH_2))
    return Pipeline(settings, env, counts_1, counts_2, aging_1, balances_1,
                    between.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def test_ingest_wait_prints_the_outcome_of_every_record(pipeline: Pipeline) -> None:
    assert pipeline.counts_1 == {"accepted": 27, "rejected": 1, "duplicate": 1, "rejected currency_mismatch": 1}
    assert pipeline.counts_2 == {"accepted": 6, "rejected": 0, "duplicate": 1}


def test_aging_of_the_first_batch_matches_the_hand_computed_figures(pipeline: Pipeline) -> None:
    assert pipeline.aging_1 == {"as_of": AS_OF, "known_at": None, "basis": "due_date", "buckets": BUCKETS,
                                **AGING_BATCH_1}


def test_balances_of_the_first_batch_match_the_hand_computed_figures(pipeline: Pipeline) -> None:
    assert pipeline.balances_1 == {"as_of": AS_OF, "known_at": None, "rows": BALANCES_BATCH_1}


def test_reports_without_known_at_include_the_second_batch(pipeline: Pipeline) -> None:
    assert report(pipeline.env, "aging", "--as-of", AS_OF) == {
        "as_of": AS_OF, "known_at": None, "basis": "due_date", "buckets": BUCKETS, **AGING_BOTH}
    assert report(pipeline.env, "balances", "--as-of", AS_OF) == {
        "as_of": AS_OF, "known_at": None, "rows": BALANCES_BOTH}


def test_known_at_between_the_batches_excludes_the_second_batch(pipeline: Pipeline) -> None:
    aging = report(pipeline.env, "aging", "--as-of", AS_OF, "--known-at", pipeline.between)
    balances = report(pipeline.env, "balances", "--as-of", AS_OF, "--known-at", pipeline.between)

    assert aging == {"as_of": AS_OF, "known_at": pipeline.between, "basis": "due_date", "buckets": BUCKETS,
                     **AGING_BATCH_1}
    assert balances == {"as_of": AS_OF, "known_at": pipeline.between, "rows": BALANCES_BATCH_1}


def test_aging_as_of_a_past_date_counts_only_what_was_effective_then(pipeline: Pipeline) -> None:
    assert report(pipeline.env, "aging", "--as-of", PAST_AS_OF) == {
        "as_of": PAST_AS_OF, "known_at": None, "basis": "due_date", "buckets": BUCKETS, **AGING_PAST}


def test_each_accepted_order_gets_exactly_one_decision(pipeline: Pipeline) -> None:
    records = read_topic(pipeline.settings, TOPIC_DECISIONS, at_least=4)
    decisions = [record.json() for record in records]

    assert [record.key for record in records] == [d["customer_id"].encode() for d in decisions]
    for found in decisions:
        assert dt.datetime.fromisoformat(found.pop("decided_at").replace("Z", "+00:00")).tzinfo is not None
    assert sorted(decisions, key=lambda d: d["order_id"]) == [
        decision("O-1", "C1", "approved", None, 100_000, "EUR", 1_000_000, 0, "c1-o1"),
        decision("O-2", "C1", "blocked", "overdue_beyond_tolerance", 50_000, "EUR", 1_000_000, 165_000, "c1-o2"),
        # Once, although its envelope came twice (O-1 too, a batch later); O-99 (rejected) has none.
        decision("O-21", "C2", "approved", None, 100_000, "USD", 500_000, 160_000, "c2-o21"),
        decision("O-41", "C4", "blocked", "overdue_beyond_tolerance", 150_000, "USD", 100_000, 30_000, "c4-o41"),
    ]


def decision(order_id: str, cid: str, outcome: str, reason: str | None, amount: int, currency: str,
             limit: int, exposure: int, inbound_id: str) -> dict[str, Any]:
    return {"order_id": order_id, "customer_id": cid, "decision": outcome, "reason": reason, "amount": amount,
            "currency": currency, "credit_limit": limit, "exposure": exposure, "available": limit - exposure,
            "inbound_id": inbound_id}
