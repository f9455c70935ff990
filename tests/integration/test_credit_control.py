"""Credit control and collections through the real broker (issue 6): decisions, alerts, worklist, promises, grades.

- Decisions: `arledger run` in a subprocess; orders placed with the client helper
  (`place_order_and_wait`), each answered on ar.decisions (or ar.rejected) by inbound id; `arledger check`
  answers from the read model.
- Alerts: the workers in this process (ingest, relay, projector, alerts) on the real broker, with the
  alerts worker's clock walked day by day; every alert must be on ar.alerts and in the table exactly once.
- Worklist, promises, grades: data through `arledger run` and `arledger ingest --wait`, then the read model
  as of a calendar of dates.

Every expected figure is worked out by hand in the comments from docs/contract.md §7/§8 and consumers/arledger.toml.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from arledger.settings import TOPIC_ALERTS, TOPIC_DECISIONS, Settings
from consumers.alerts import DEFAULT_CONFIG_PATH, AlertsWorker, load_config
from consumers.credit_client import place_order_and_wait
from consumers.ingest import IngestWorker
from consumers.project import Projector
from consumers.publisher import publish_lines
from consumers.relay import Relay
from consumers.topics import ensure_topics
from helpers import cli, ingest_wait, read_topic, running_workers, write_jsonl
from ledger.application import Ledger
from ledger.policy import GRADING_INPUTS, parse_config
from projections import alerts as alert_rules
from projections import grading, schema, worklist
from tests import builders as b

SETTLE_TIMEOUT_S = 90.0


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


def days(first: str, last: str) -> list[dt.date]:
    start, end = day(first), day(last)
    return [start + dt.timedelta(days=n) for n in range((end - start).days + 1)]


# The scenarios' shorthand over the suite's fact builders: customer first, EUR, ids derived from the facts.

def register(cid: str, limit: int, *, on: str = "2026-01-01", salesperson: str | None = None) -> dict[str, Any]:
    extra = {} if salesperson is None else {"salesperson": salesperson}
    return b.registered(limit=limit, on=on, customer_id=cid, id=f"{cid}-reg", **extra)


def sale(cid: str, invoice: str, amount: int, issued_on: str, **extra: Any) -> dict[str, Any]:
    return b.sale(invoice, amount, issued_on=issued_on, customer_id=cid, id=f"{cid}-{invoice}", **extra)


def payment(cid: str, payment_id: str, amount: int, received_on: str, **extra: Any) -> dict[str, Any]:
    return b.payment(payment_id, amount, received_on=received_on, customer_id=cid, id=f"{cid}-{payment_id}",
                     **extra)


def action(cid: str, name: str, on: str, invoice: str | None = None) -> dict[str, Any]:
    return b.collection_action(name, on=on, invoice_id=invoice, customer_id=cid,
                               id=f"{cid}-{name}-{invoice}-{on}", by="collector.1")


def promise(cid: str, promise_id: str, amount: int, made_on: str, promised_on: str,
            invoice: str | None = None) -> dict[str, Any]:
    return b.promise(promise_id, amount, promised_on=promised_on, on=made_on, invoice_id=invoice, customer_id=cid,
                     id=f"{cid}-{promise_id}")


def fact(cid: str, type_: str, on: str, data: dict[str, Any], *, suffix: str = "") -> dict[str, Any]:
    return b.fact(type_, data, on=on, customer_id=cid, id=f"{cid}-{type_}-{on}{suffix}")


# -- Decisions ------------------------------------------------------------------------------------------


def order(settings: Settings, cid: str, order_id: str, amount: int, on: str) -> dict[str, Any]:
    return place_order_and_wait(settings, cid, order_id, amount, "EUR", timeout_s=60,
                                time_iso=f"{on}T12:00:00Z")


def figures(outcome: dict[str, Any]) -> tuple:
    return (outcome["decision"], outcome["reason"], outcome["credit_limit"], outcome["exposure"],
            outcome["available"])


@pytest.mark.slow
def test_decisions_for_every_reason_with_open_orders_consumed_by_invoices_and_cancellations(
        kafka_settings: Settings, kafka_env: dict[str, str], tmp_path: Path) -> None:
    setup = [
        register("D1", 100_000),
        register("D2", 100_000), fact("D2", "credit_hold.placed", "2026-02-01", {"reason": "cheque bounced"}),
        register("D3", 1_000_000), sale("D3", "K1", 10_000, "2026-01-01"),  # due 01-31
    ]
    with running_workers(kafka_env, log_path=tmp_path / "workers.log"):
        assert ingest_wait(kafka_env, write_jsonl(tmp_path / "setup.jsonl", setup))["accepted"] == 5
        s = kafka_settings
        # Nothing open: approved, exposure 0, available = limit.
        o1 = order(s, "D1", "O1", 60_000, "2026-02-01")
        assert o1["outcome"] == "decision" and figures(o1) == ("approved", None, 100_000, 0, 100_000)
        assert (o1["order_id"], o1["customer_id"], o1["amount"], o1["currency"]) == ("O1", "D1", 60_000, "EUR")
        assert o1["inbound_id"] and o1["decided_at"].endswith("Z")
        # The approved open order counts: 60,000 + 50,000 > 100,000.
        assert figures(order(s, "D1", "O2", 50_000, "2026-02-01")) == ("blocked", "over_limit", 100_000, 60_000,
                                                                        40_000)
        # Invoicing O1 (30,000) closes the order whatever the amounts: exposure = the invoice, 30,000.
        ingest_wait(kafka_env, write_jsonl(tmp_path / "s1.jsonl", [sale("D1", "I1", 30_000, "2026-02-02",
                                                                        order_id="O1")]))
        assert figures(order(s, "D1", "O3", 60_000, "2026-02-03")) == ("approved", None, 100_000, 30_000, 70_000)
        # Cancelling O3 gives its 60,000 back: 30,000 + 70,000 = 100,000 is not over the limit.
        ingest_wait(kafka_env, write_jsonl(tmp_path / "c3.jsonl", [fact("D1", "order.cancelled", "2026-02-04",
                                                                        {"order_id": "O3"})]))
        assert figures(order(s, "D1", "O4", 70_000, "2026-02-05")) == ("approved", None, 100_000, 30_000, 70_000)
        assert figures(order(s, "D1", "O5", 1, "2026-02-05")) == ("blocked", "over_limit", 100_000, 100_000, 0)
        # A credit controller releases the blocked O2: approved, reason released, figures as of the release.
        ingest_wait(kafka_env, write_jsonl(tmp_path / "r2.jsonl", [fact(
            "D1", "order.released", "2026-02-06", {"order_id": "O2", "by": "cc", "reason": "guarantee"})]))
        # ... it now counts in exposure: 30,000 + 70,000 + 50,000; the blocked O5 may be placed again.
        assert figures(order(s, "D1", "O5", 1, "2026-02-07")) == ("blocked", "over_limit", 100_000, 150_000,
                                                                  -50_000)
        # O2 is released (approved): placing it again is a reject, matched by the envelope id.
        again = order(s, "D1", "O2", 5, "2026-02-07")
        assert (again["outcome"], again["reason"]) == ("rejected", "duplicate_reference")
        # On hold beats everything.
        assert figures(order(s, "D2", "O1", 1, "2026-02-02")) == ("blocked", "on_hold", 100_000, 0, 100_000)
        # K1 due 01-31: 30 days past due on 03-02 passes, 31 on 03-03 blocks.
        assert figures(order(s, "D3", "O1", 1, "2026-03-02"))[:2] == ("approved", None)
        assert figures(order(s, "D3", "O2", 1, "2026-03-03")) == ("blocked", "overdue_beyond_tolerance",
                                                                  1_000_000, 10_001, 989_999)
        # A disputed item is not overdue for the decision (exposure 10,000 + O1's 1).
        ingest_wait(kafka_env, write_jsonl(tmp_path / "d.jsonl", [fact(
            "D3", "dispute.opened", "2026-03-04", {"invoice_id": "K1", "reason": "damaged"})]))
        assert figures(order(s, "D3", "O3", 1, "2026-03-05"))[:2] == ("approved", None)
        unknown = order(s, "NOPE", "O1", 1, "2026-03-05")
        assert (unknown["outcome"], unknown["reason"]) == ("rejected", "unknown_customer")

        # ar.decisions holds one record per decision, keyed by customer, the release included.
        decisions = [r.json() for r in read_topic(s, TOPIC_DECISIONS, at_least=11)]
        released = [d for d in decisions if d["reason"] == "released"]
        assert [(d["order_id"], d["decision"], d["exposure"]) for d in released] == [("O2", "approved", 100_000)]
        assert Counter(d["customer_id"] for d in decisions) == {"D1": 7, "D2": 1, "D3": 3}

        # `arledger check` answers the same question from the read model (ingest --wait: the snapshot is fresh).
        ingest_wait(kafka_env, write_jsonl(tmp_path / "n.jsonl", [action("D1", "call", "2026-02-08")]))

        def check(cid: str, amount: int, as_of: str) -> dict[str, Any]:
            result = cli(kafka_env, "check", "--customer", cid, "--amount", str(amount), "--as-of", as_of,
                         "--format", "json", check=False)
            assert result.returncode in (0, 1), result.stderr
            answer = json.loads(result.stdout)
            assert result.returncode == (0 if answer["decision"] == "approved" else 1)
            return answer

        d1 = check("D1", 1, "2026-02-07")
        assert (d1["decision"], d1["reason"], d1["exposure"], d1["open_orders"], d1["balance"]) == (
            "blocked", "over_limit", 150_000, 120_000, 30_000)
        # As of 02-05, before the release: I1 30,000 + O4 70,000; 1 more is over.
        assert (check("D1", 1, "2026-02-05")["reason"], check("D1", 1, "2026-02-04")["exposure"]) == (
            "over_limit", 30_000)
        assert check("D2", 1, "2026-02-02")["reason"] == "on_hold"
        assert check("D3", 1, "2026-03-02")["decision"] == "approved"
        d3 = check("D3", 1, "2026-03-03")
        assert (d3["reason"], d3["max_days_past_due"], d3["overdue_beyond_tolerance"],
                d3["oldest_overdue_invoice"]) == ("overdue_beyond_tolerance", 31, 10_000, "K1")
        assert check("D3", 1, "2026-03-05")["decision"] == "approved"  # disputed from 03-04
        missing = cli(kafka_env, "check", "--customer", "NOPE", "--amount", "1", check=False)
        assert missing.returncode != 0 and "unknown customer" in missing.stderr


# -- Alerts -------------------------------------------------------------------------------------------

# The bundled config, with a grade that moves only with broken promises (30 points for one): the grade
# downgrades of this scenario are then known exactly (100 → 70 is A → B).
ALERTS_CONFIG = DEFAULT_CONFIG_PATH.read_text().split("[grading.factors.average_days_delinquent]")[0] + """
[grading.factors.broken_promises]
weight = 30
start = 0
full_at = 1

[grading.thresholds]
A = 85
B = 70
C = 50
"""


class Pipeline:
    """The four workers in this process on the real broker; the alerts worker's clock is `self.today`."""

    def __init__(self, settings: Settings, config_text: str) -> None:
        ensure_topics(settings)
        self.settings = settings
        self.ingest = IngestWorker(settings, Ledger(settings.store_url))
        self.relay = Relay(settings, Ledger(settings.store_url))
        self.projector = Projector(settings)
        self.config = parse_config(config_text)
        self.today = dt.date(2026, 1, 1)
        self.alerts = self.new_alerts_worker()
        self.sent = 0
        self.ingested = 0

    def new_alerts_worker(self) -> AlertsWorker:
        return AlertsWorker(self.settings, self.projector, self.config, today=lambda: self.today)

    def send(self, envelopes: list[dict[str, Any]]) -> None:
        publish_lines(self.settings, [json.dumps(e).encode() for e in envelopes])
        self.sent += len(envelopes)

    def settle(self) -> None:
        """Step ingest, relay and projector until every record sent is ingested and three rounds were idle."""
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        quiet = 0
        while quiet < 3:
            assert time.monotonic() < deadline, f"ingested {self.ingested} of {self.sent}"
            ingested = self.ingest.run_once(200)
            self.ingested += ingested
            work = ingested + self.relay.run_once() + self.projector.run_once(100)
            quiet = quiet + 1 if work == 0 and self.ingested >= self.sent else 0

    def evaluate(self, on: dt.date, worker: AlertsWorker | None = None) -> None:
        """The daily evaluation of `on`, as the worker does it at the first idle moment of the day."""
        worker = worker or self.alerts
        self.today = on
        deadline = time.monotonic() + 30
        while worker.evaluated_on != on:
            assert time.monotonic() < deadline, f"no evaluation of {on}"
            worker.run_once(pipeline_idle=True)

    def close(self) -> None:
        for worker in (self.ingest, self.relay, self.alerts, self.projector):
            worker.close()


ALERT_SCENARIO = [
    # A1, limit 1,000.00: 950.00 on 03-02 is 95 % (> 90 %: utilisation, episode from 03-02); 100.00 more on 03-05
    # crosses the limit (breach, once); paid in full 03-20 (0 %); 920.00 on 03-25 is a new episode (92 %).
    register("A1", 100_000),
    sale("A1", "S1", 95_000, "2026-03-02"), sale("A1", "S2", 10_000, "2026-03-05"),
    payment("A1", "P1", 105_000, "2026-03-20"), sale("A1", "S3", 92_000, "2026-03-25"),
    payment("A1", "P2", 92_000, "2026-04-20"),
    # A2: T1 due 03-31 never paid: 1-30 on 04-01 (and the first overdue item), 31-60 on 05-01. T2 due 04-09 is
    # paid that day by an explicit allocation: never overdue.
    register("A2", 1_000_000),
    sale("A2", "T1", 50_000, "2026-03-01"), sale("A2", "T2", 20_000, "2026-03-10"),
    payment("A2", "P1", 20_000, "2026-04-09", allocations=[{"invoice_id": "T2", "amount": 20_000}]),
    # A3: U1 due 03-03: 1-30 on 03-04 (first overdue), 31-60 on 04-03, 61-90 on 05-03. PR1 (03-10 → 03-20) gets
    # nothing: broken on 03-21, and one broken promise takes the grade from A (100) to B (70) that day. PR2
    # (03-22 → 03-31) gets 40.00 of 100.00: partly kept, no alert.
    register("A3", 1_000_000),
    sale("A3", "U1", 30_000, "2026-02-01"),
    promise("A3", "PR1", 30_000, "2026-03-10", "2026-03-20"),
    promise("A3", "PR2", 10_000, "2026-03-22", "2026-03-31"),
    payment("A3", "P1", 4_000, "2026-03-25"),
]

EXPECTED_ALERTS = {  # alert_id → the business day it is raised on
    "utilisation|A1||2026-03-02": "2026-03-02",
    "breach|A1|S2|2026-03-05": "2026-03-05",
    "utilisation|A1||2026-03-25": "2026-03-25",
    "aging_bucket|A2|T1#1|1-30": "2026-04-01",
    "first_overdue|A2||": "2026-04-01",
    "aging_bucket|A2|T1#1|31-60": "2026-05-01",
    "aging_bucket|A3|U1#1|1-30": "2026-03-04",
    "first_overdue|A3||": "2026-03-04",
    "promise_broken|A3|PR1|2026-03-20": "2026-03-21",
    "grade_downgrade|A3||2026-03-21": "2026-03-21",
    "aging_bucket|A3|U1#1|31-60": "2026-04-03",
    "aging_bucket|A3|U1#1|61-90": "2026-05-03",
}


@pytest.mark.slow
def test_every_alert_kind_is_raised_once_on_its_day_and_never_again(kafka_settings: Settings) -> None:
    pipeline = Pipeline(kafka_settings, ALERTS_CONFIG)
    try:
        pipeline.send(ALERT_SCENARIO)
        pipeline.settle()
        raised_on: dict[str, str] = {}
        for on in days("2026-02-25", "2026-05-10"):
            before = {row["alert_id"] for row in alert_rules.recorded_alerts(pipeline.projector.connection)}
            pipeline.evaluate(on)
            for row in alert_rules.recorded_alerts(pipeline.projector.connection):
                if row["alert_id"] not in before:
                    raised_on[row["alert_id"]] = on.isoformat()
        assert raised_on == EXPECTED_ALERTS
        assert set(alert_rules.KINDS) == {alert_id.split("|")[0] for alert_id in raised_on}

        # Event-driven: a sale crossing the limit today raises breach and utilisation without a new day.
        pipeline.send([sale("A1", "S4", 110_000, "2026-05-10")])
        pipeline.settle()
        deadline = time.monotonic() + 30
        wanted = {"breach|A1|S4|2026-05-10", "utilisation|A1||2026-05-10"}
        while not wanted <= {r["alert_id"] for r in alert_rules.recorded_alerts(pipeline.projector.connection)}:
            assert time.monotonic() < deadline, "no event-driven alert"
            pipeline.alerts.run_once(pipeline_idle=False)

        # A restarted worker, and one on a read model rebuilt without the alerts table, raise nothing again.
        pipeline.alerts.close()
        pipeline.alerts = pipeline.new_alerts_worker()
        pipeline.evaluate(day("2026-05-10"))
        pipeline.projector.connection.execute("DROP TABLE alerts; DROP TABLE alert_offsets")
        pipeline.alerts.close()
        pipeline.alerts = pipeline.new_alerts_worker()
        pipeline.evaluate(day("2026-05-11"))

        records = [r.json() for r in read_topic(kafka_settings, TOPIC_ALERTS, at_least=len(EXPECTED_ALERTS) + 2)]
        counts = Counter(r["alert_id"] for r in records)
        assert counts == Counter({**dict.fromkeys(EXPECTED_ALERTS, 1), **dict.fromkeys(wanted, 1)}), counts
        by_id = {r["alert_id"]: r for r in records}
        assert by_id["breach|A1|S2|2026-03-05"]["figures"] == {
            "invoice_id": "S2", "exposure": 105_000, "credit_limit": 100_000, "breached_on": "2026-03-05"}
        assert by_id["promise_broken|A3|PR1|2026-03-20"]["figures"]["paid"] == 0
        assert (by_id["grade_downgrade|A3||2026-03-21"]["figures"]["from_grade"],
                by_id["grade_downgrade|A3||2026-03-21"]["figures"]["to_grade"]) == ("A", "B")
        assert by_id["utilisation|A1||2026-03-25"]["figures"]["exposure"] == 92_000
        assert all(r["raised_at"].endswith("Z") for r in records)
        # The table, folded back from ar.alerts after the drop, holds each alert once too.
        table = Counter(r["alert_id"] for r in alert_rules.recorded_alerts(pipeline.projector.connection))
        assert table == counts
    finally:
        pipeline.close()


# -- Worklist, promises, grades -------------------------------------------------------------------------

COLLECTIONS = [
    # W1 (ana): V1 due 01-31, V2 due 02-10. Actions: email on V1 02-02; call on V2 02-26; letter for the
    # customer as a whole 03-05.
    register("W1", 10_000_000, salesperson="ana"),
    sale("W1", "V1", 100_000, "2026-01-01"), sale("W1", "V2", 40_000, "2026-01-11"),
    action("W1", "email", "2026-02-02", "V1"), action("W1", "call", "2026-02-26", "V2"),
    action("W1", "letter", "2026-03-05"),
    # W2 (bob): X1 due 01-31, X2 due 02-04, X3 due 02-09 (disputed 02-01 .. 03-01).
    # P1 (02-10 → 02-20, 250.00, no invoice) covers the oldest item X1 (300.00 ≥ 250.00) and gets nothing: broken.
    # P2 (02-10 → 02-25, 50.00 on X2) is kept by the 50.00 of 02-24. P3 (03-03 → 03-10, 200.00) covers X1 and
    # gets 80.00 on 03-06: partly kept.
    register("W2", 10_000_000, salesperson="bob"),
    sale("W2", "X1", 30_000, "2026-01-01"), sale("W2", "X2", 20_000, "2026-01-05"),
    sale("W2", "X3", 10_000, "2026-01-10"),
    fact("W2", "dispute.opened", "2026-02-01", {"invoice_id": "X3", "reason": "short delivery"}),
    promise("W2", "P1", 25_000, "2026-02-10", "2026-02-20"),
    promise("W2", "P2", 5_000, "2026-02-10", "2026-02-25", invoice="X2"),
    payment("W2", "Y1", 5_000, "2026-02-24", allocations=[{"invoice_id": "X2", "amount": 5_000}]),
    fact("W2", "dispute.resolved", "2026-03-01", {"invoice_id": "X3", "resolution": "delivered"}),
    promise("W2", "P3", 20_000, "2026-03-03", "2026-03-10"),
    payment("W2", "Y2", 8_000, "2026-03-06"),  # applied to X1 (oldest due): X1 220.00 open
    # G1 (grades, bundled config): Y1 paid on its due date; Y2 (due 03-03) never paid, promised for 04-10 in vain,
    # written off 05-15.
    register("G1", 1_000_000),
    sale("G1", "GY1", 100_000, "2026-01-01"), payment("G1", "GP1", 100_000, "2026-01-31"),
    sale("G1", "GY2", 100_000, "2026-02-01"),
    promise("G1", "GPR", 100_000, "2026-04-01", "2026-04-10"),
    fact("G1", "invoice.written_off", "2026-05-15", {"invoice_id": "GY2", "reason": "insolvency"}),
]

# as_of → [(invoice, installment, step, broken_promise)] in worklist order.
WORKLIST_CALENDAR = {
    "2026-01-28": [],                                  # V1 is 3 days before due: a reminder, but not overdue
    "2026-01-31": [],                                  # due today: not overdue
    "2026-02-01": [("V1", "email", False), ("X1", "email", False)],
    "2026-02-02": [("X1", "email", False)],            # email on V1 recorded; X2 (due 02-04) not yet overdue
    "2026-02-05": [("X1", "email", False), ("X2", "email", False)],  # X3 disputed
    "2026-02-12": [("V2", "email", False)],            # X1 covered by P1, X2 by P2; the email on V1 is not V2's
    "2026-02-15": [("V1", "call", False), ("V2", "email", False)],   # V1 15 days: the email does not do a call
    "2026-02-21": [("X1", "call", True), ("V1", "call", False), ("V2", "email", False)],  # P1 broken on 02-20
    "2026-02-26": [("X1", "call", True), ("V1", "call", False), ("X2", "call", False)],   # call on V2; P2 over
    "2026-03-02": [("X1", "letter", True), ("V1", "letter", False), ("X2", "call", False), ("X3", "call", False)],
    "2026-03-05": [("X2", "call", False), ("X3", "call", False)],  # letter for W1 as a whole; X1 under P3
    "2026-03-11": [("X1", "letter", True), ("X2", "letter", False), ("X3", "letter", False)],
    "2026-03-17": [("X1", "visit", True), ("V1", "visit", False), ("X2", "letter", False), ("X3", "letter", False)],
    "2026-05-31": [("X1", "litigation", True), ("V1", "litigation", False), ("V2", "agency", False),
                   ("X2", "agency", False), ("X3", "agency", False)],
}


@pytest.fixture(scope="module")
def collections_read_model(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory):
    """COLLECTIONS through `arledger run` and `arledger ingest --wait`; yields (env, snapshot connection)."""
    from helpers import env_of, settings_on

    home = tmp_path_factory.mktemp("collections")
    settings = settings_on(kafka_bootstrap, home, f"t{uuid.uuid4().hex[:8]}.")
    env = env_of(settings)
    with running_workers(env, log_path=home / "workers.log"):
        counts = ingest_wait(env, write_jsonl(home / "in.jsonl", COLLECTIONS))
        assert counts["accepted"] == len(COLLECTIONS), counts
    connection = schema.connect(str(settings.snapshot_path), read_only=True)
    try:
        yield env, connection
    finally:
        connection.close()


def test_worklist_follows_the_ladder_on_a_calendar_of_dates(collections_read_model) -> None:
    _, connection = collections_read_model
    ladder = load_config().ladder
    for as_of, expected in WORKLIST_CALENDAR.items():
        rows = [r for r in worklist.worklist_rows(connection, ladder, day(as_of)) if r["customer_id"] in ("W1", "W2")]
        assert [(r["invoice_id"], r["step"], r["broken_promise"]) for r in rows] == expected, as_of


def test_worklist_rows_carry_the_step_figures_and_filter_by_salesperson(collections_read_model) -> None:
    env, connection = collections_read_model
    report = json.loads(cli(env, "worklist", "--as-of", "2026-03-02", "--salesperson", "bob",
                            "--format", "json").stdout)
    assert (report["as_of"], report["salesperson"], report["known_at"]) == ("2026-03-02", "bob", None)
    assert [step["action"] for step in report["ladder"]][:3] == ["reminder", "email", "call"]
    first = report["rows"][0]
    assert {k: first[k] for k in ("customer_id", "invoice_id", "installment", "due_on", "days_past_due",
                                  "open_amount", "step", "step_offset_days", "channel", "owner",
                                  "broken_promise", "promise_id")} == {
        "customer_id": "W2", "invoice_id": "X1", "installment": 1, "due_on": "2026-01-31", "days_past_due": 30,
        "open_amount": 30_000, "step": "letter", "step_offset_days": 30, "channel": "post", "owner": "collector",
        "broken_promise": True, "promise_id": "P1"}
    assert [r["invoice_id"] for r in report["rows"]] == ["X1", "X2", "X3"]
    v1 = worklist.worklist_rows(connection, load_config().ladder, day("2026-02-26"), salesperson="ana")
    assert [(r["invoice_id"], r["last_action"], r["last_action_on"]) for r in v1] == [("V1", "email", "2026-02-02")]


def test_promises_are_kept_partly_kept_or_broken_once_their_date_has_passed(collections_read_model) -> None:
    _, connection = collections_read_model

    def statuses(as_of: str) -> dict[str, tuple[str, int]]:
        return {p.promise_id: (p.status, p.paid) for p in worklist.promises(connection, day(as_of))
                if p.customer_id == "W2"}

    assert statuses("2026-02-20") == {"P1": ("open", 0), "P2": ("open", 0)}
    assert statuses("2026-02-21") == {"P1": ("broken", 0), "P2": ("open", 0)}
    assert statuses("2026-02-24") == {"P1": ("broken", 0), "P2": ("kept", 5_000)}
    assert statuses("2026-03-10") == {"P1": ("broken", 0), "P2": ("kept", 5_000), "P3": ("open", 8_000)}
    assert statuses("2026-03-11") == {"P1": ("broken", 0), "P2": ("kept", 5_000), "P3": ("partly_kept", 8_000)}


def test_collection_figures_per_salesperson(collections_read_model) -> None:
    env, _ = collections_read_model
    report = json.loads(cli(env, "worklist", "--by", "salesperson", "--from", "2026-03-01", "--to",
                            "2026-03-11", "--format", "json").stdout)
    rows = {row["salesperson"]: row for row in report["rows"]}
    # bob: 80.00 collected 03-06; overdue on 03-11: X1 220.00 + X2 150.00 + X3 100.00; P3 due in the period,
    # partly kept; worklist X1, X2, X3.
    assert {k: rows["bob"][k] for k in ("collected", "overdue", "worklist_items", "worklist_amount",
                                        "promises_due", "promises_kept", "promises_partly_kept",
                                        "promises_broken", "open_promises")} == {
        "collected": 8_000, "overdue": 47_000, "worklist_items": 3, "worklist_amount": 47_000,
        "promises_due": 1, "promises_kept": 0, "promises_partly_kept": 1, "promises_broken": 0,
        "open_promises": 0}
    # ana: nothing collected; V1 + V2 overdue; listed: neither (letter for the customer 03-05 covers both).
    assert (rows["ana"]["collected"], rows["ana"]["overdue"], rows["ana"]["worklist_items"]) == (0, 140_000, 0)
    # G1 has no salesperson: key "".
    assert rows[""]["customers"] == 1


@pytest.mark.parametrize("as_of, grade, score, average_days, broken, write_off_bp", [
    ("2026-02-01", "A", 100, 0, 0, 0),     # GY1 paid on its due date: 0 days
    ("2026-03-31", "A", 91, 14, 0, 0),     # (100,000 × 0 + 100,000 × 28) / 200,000 = 14 → 40 × 14/60 = 9.33
    ("2026-04-30", "B", 76, 29, 1, 0),     # 58 days → 29; PR broken: 15 × 1/3; 100 − 19.33 − 5 = 75.67
    ("2026-05-31", "C", 51, 36, 1, 5000),  # written off 73 days late → 36.5 → 36; 100 − 24 − 5 − 20 = 51
])
def test_computed_grade_follows_payment_behaviour(collections_read_model, as_of, grade, score, average_days,
                                                  broken, write_off_bp) -> None:
    env, connection = collections_read_model
    row = grading.computed_grades(connection, load_config().grading, day(as_of))["G1"]
    assert (row["computed_grade"], row["score"], row["average_days_delinquent"], row["broken_promises"],
            row["write_off_bp"], row["grade"]) == (grade, score, average_days, broken, write_off_bp, None)
    if as_of == "2026-05-31":
        report = json.loads(cli(env, "grades", "--as-of", as_of, "--customer", "G1", "--format", "json").stdout)
        (reported,) = report["rows"]
        # Grade C suggests half the limit and 15 days; reported, never applied.
        assert (reported["computed_grade"], reported["suggested_credit_limit"],
                reported["suggested_payment_terms_days"], reported["credit_limit"]) == ("C", 500_000, 15, 1_000_000)


def test_the_ledger_records_grades_that_the_read_model_computes_alike(collections_read_model) -> None:
    env, connection = collections_read_model
    policy = load_config().grading
    columns = ("customer_id", "trigger", "computed_on", "grade", "score", "previous_grade")
    recorded = [dict(zip(columns, row)) for row in connection.execute(
        f"SELECT {', '.join(columns)} FROM computed_grades ORDER BY position").fetchall()]
    # G1 fact by fact (figures worked out in the parametrised test above): recorded on a change and at each
    # month end, the month end when the first fact after it arrives.
    assert [(r["trigger"], r["computed_on"].isoformat(), r["grade"], r["score"], r["previous_grade"])
            for r in recorded if r["customer_id"] == "G1"] == [
        ("event", "2026-01-01", "A", 100, None), ("month_end", "2026-01-31", "A", 100, "A"),
        ("month_end", "2026-02-28", "A", 100, "A"), ("month_end", "2026-03-31", "A", 91, "A"),
        ("month_end", "2026-04-30", "B", 76, "A"), ("event", "2026-05-15", "C", 51, "B")]
    # Every recorded month-end grade equals what the read model computes independently as of that day.
    month_ends = [r for r in recorded if r["trigger"] == "month_end"]
    assert len({r["customer_id"] for r in month_ends}) >= 3
    inputs = ", ".join(GRADING_INPUTS)
    for row in month_ends:
        live = grading.computed_grades(connection, policy, row["computed_on"])[row["customer_id"]]
        stored = connection.execute(
            f"SELECT {inputs} FROM computed_grades WHERE customer_id = ? AND trigger = 'month_end' "
            f"AND computed_on = ?", [row["customer_id"], row["computed_on"]]).fetchone()
        assert (row["grade"], row["score"], *stored) == (
            live["computed_grade"], live["score"], *(live[name] for name in GRADING_INPUTS)), row
    # The report shows the latest recorded grade as of the date, with when and why it was computed.
    report = json.loads(cli(env, "grades", "--as-of", "2026-05-14", "--customer", "G1", "--format", "json").stdout)
    (g1,) = report["rows"]
    assert (g1["computed_grade"], g1["computed_on"], g1["trigger"], g1["score"], g1["broken_promises"]) == (
        "B", "2026-04-30", "month_end", 76, 1)


# -- Benchmark hook -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_decision_latency_hook_measures_every_order_under_background_load(kafka_settings: Settings) -> None:
    from consumers.credit_client import measure_decision_latency

    result = measure_decision_latency(kafka_settings, orders_per_s=20, background_events_per_s=60, duration_s=3,
                                      warmup_s=0.5, customers=5)
    assert result["orders_sent"] >= 55 and result["background_sent"] >= 170
    assert (result["decisions"], result["missing"]) == (result["orders_sent"], 0)
    assert result["outcomes"] == {"approved": result["orders_sent"]}
    assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]


# -- Sharded projectors -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_alerts_are_raised_once_across_projector_shards(kafka_env: dict[str, str], tmp_path: Path) -> None:
    """`arledger run --workers 2`: each shard raises its own customers' alerts and folds the ar.alerts
    partitions of those customers; `arledger alerts` reads the union of the shards."""
    from helpers import wait_until

    customers = [f"H{n}" for n in range(6)]
    facts = []
    for cid in customers:  # 950.00 of 1,000.00, due 2026-01-31: as of today above 90 %, 90+ past due
        facts += [register(cid, 100_000, on="2026-01-01"), sale(cid, "I1", 95_000, "2026-01-01")]
    with running_workers(kafka_env, "--workers", "2", log_path=tmp_path / "workers.log"):
        ingest_wait(kafka_env, write_jsonl(tmp_path / "in.jsonl", facts))

        def alerts() -> list[dict[str, Any]]:
            return json.loads(cli(kafka_env, "alerts", "--format", "json").stdout)["rows"]

        # utilisation right after the events; aging and first overdue with the next full evaluation (≤ 30 s).
        wait_until(lambda: len(alerts()) >= 18, "18 alerts from two shards", timeout_s=120)
        rows = alerts()
    assert Counter(row["alert_id"] for row in rows) == Counter(
        [f"utilisation|{cid}||2026-01-01" for cid in customers]
        + [f"aging_bucket|{cid}|I1#1|90+" for cid in customers] + [f"first_overdue|{cid}||" for cid in customers])
    assert len(list(tmp_path.glob("snapshot-*-of-2.duckdb"))) == 2
