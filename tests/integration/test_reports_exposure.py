"""Exposure and open-items reports on a real ledger → DuckDB fold (no Kafka); figures worked out by hand."""

from __future__ import annotations

import datetime as dt

import pytest

from ledger_fixture import LedgerFixture
from tests import builders as b
from projections import exposure as exposure_report
from projections.reports import balances


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


@pytest.fixture(scope="module")
def credit(tmp_path_factory: pytest.TempPathFactory) -> LedgerFixture:
    """A over its limit with open orders, B over a zero limit, C in USD with a late-known payment, D idle."""
    fx = LedgerFixture(tmp_path_factory.mktemp("exposure") / "p.duckdb")
    fx.batch(
        b.registered(customer_id="A", limit=20_000, salesperson="Ann", grade="B"),
        b.registered(customer_id="B", limit=0, salesperson="Bo"),
        b.registered(customer_id="C", limit=100_000, currency="USD", salesperson="Ann"),
        b.registered(customer_id="D", limit=50_000),
        b.sale("IA1", 8_000, issued_on="2026-03-01", due_on="2026-03-31", customer_id="A"),
        b.order_placed("O1", 3_000, on="2026-03-05", customer_id="A"),  # 8,000 + 3,000 ≤ 20,000: approved
        b.order_placed("O2", 2_000, on="2026-03-06", customer_id="A"),  # 13,000: approved
        b.order_placed("O3", 1_000, on="2026-03-07", customer_id="A"),  # 14,000: approved
        # 18,000 open + 6,000 open orders = 24,000 > 20,000: first breach (a crossing)
        b.sale("IA2", 10_000, issued_on="2026-03-10", due_on="2026-04-09", customer_id="A"),
        b.order_cancelled("O2", on="2026-03-15", customer_id="A"),
        # invoices O3: 19,000 + 3,000 = 22,000 > 20,000: second breach, not a crossing
        b.sale("IA3", 1_000, issued_on="2026-03-25", due_on="2026-04-24", order_id="O3", customer_id="A"),
        b.sale("IB1", 5_000, issued_on="2026-03-02", due_on="2026-04-01", customer_id="B"),  # over a zero limit
        b.sale("IC1", 50_000, issued_on="2026-03-03", due_on="2026-04-02", currency="USD", customer_id="C"),
        at="2026-03-26T12:00:00Z")
    fx.batch(b.payment("PC1", 20_000, received_on="2026-03-20", currency="USD", customer_id="C"),
             at="2026-03-27T12:00:00Z")
    return fx


def by_customer(report: dict) -> dict[str, dict]:
    return {row["customer_id"]: row for row in report["rows"]}


def test_exposure_is_balance_plus_open_orders_against_the_limit(credit: LedgerFixture) -> None:
    report = exposure_report.exposure(credit.connection, d("2026-03-31"))
    assert (report["as_of"], report["known_at"]) == ("2026-03-31", None)
    a = by_customer(report)["A"]
    assert {k: a[k] for k in ("balance", "open_orders", "exposure", "credit_limit", "available", "utilisation",
                              "over_limit", "breaches")} == {
        "balance": 19_000, "open_orders": 3_000, "exposure": 22_000, "credit_limit": 20_000, "available": -2_000,
        "utilisation": 1.1, "over_limit": True, "breaches": 2}
    assert a["crossings"] == 1
    c = by_customer(report)["C"]
    assert (c["balance"], c["exposure"], c["utilisation"], c["over_limit"]) == (30_000, 30_000, 0.3, False)


def test_a_zero_limit_has_no_utilisation_and_is_over_with_any_exposure(credit: LedgerFixture) -> None:
    b_row = by_customer(exposure_report.exposure(credit.connection, d("2026-03-31")))["B"]
    assert (b_row["exposure"], b_row["credit_limit"], b_row["utilisation"], b_row["over_limit"],
            b_row["breaches"]) == (5_000, 0, None, True, 1)


def test_customers_over_the_limit_come_first_then_by_utilisation(credit: LedgerFixture) -> None:
    report = exposure_report.exposure(credit.connection, d("2026-03-31"))
    # B (zero limit: unbounded) and A (110 %) are over; then C 30 %, D 0 %
    assert [row["customer_id"] for row in report["rows"]] == ["B", "A", "C", "D"]
    assert by_customer(report)["D"]["utilisation"] == 0.0


def test_exposure_as_of_a_past_date(credit: LedgerFixture) -> None:
    report = exposure_report.exposure(credit.connection, d("2026-03-06"))
    a = by_customer(report)["A"]
    # IA1 8,000 + O1 3,000 + O2 2,000 (O3 is dated 03-07); no breach yet
    assert (a["balance"], a["open_orders"], a["exposure"], a["over_limit"], a["breaches"]) == (
        8_000, 5_000, 13_000, False, 0)
    assert [row["customer_id"] for row in report["rows"]] == ["B", "A", "C", "D"]  # A 65 % > C 50 %
    assert by_customer(report)["C"]["utilisation"] == 0.5


def test_exposure_known_at_before_the_late_payment(credit: LedgerFixture) -> None:
    known_at = dt.datetime(2026, 3, 27, 11, tzinfo=dt.UTC)
    report = exposure_report.exposure(credit.connection, d("2026-03-31"), known_at)
    assert report["known_at"] == "2026-03-27T11:00:00Z"
    assert by_customer(report)["C"]["balance"] == 50_000
    assert by_customer(exposure_report.exposure(credit.connection, d("2026-03-31")))["C"]["balance"] == 30_000


def test_exposure_agrees_with_balances(credit: LedgerFixture) -> None:
    for as_of in ("2026-03-01", "2026-03-12", "2026-03-31"):
        exposure_rows = by_customer(exposure_report.exposure(credit.connection, d(as_of)))
        for row in balances(credit.connection, d(as_of))["rows"]:
            mine = exposure_rows[row["customer_id"]]
            assert (mine["balance"], mine["open_orders"], mine["exposure"], mine["available"]) == (
                row["balance"], row["open_orders"], row["exposure"], row["available"])


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> LedgerFixture:
    """Customer E: paid, installment, disputed, written-off and future items."""
    fx = LedgerFixture(tmp_path_factory.mktemp("open-items") / "p.duckdb")
    fx.batch(
        b.registered(customer_id="E"),
        b.registered(customer_id="F"),
        b.sale("I1", 10_000, issued_on="2026-01-01", due_on="2026-01-31", customer_id="E"),
        b.sale("I4", 2_000, issued_on="2026-01-10", due_on="2026-02-09", customer_id="E"),
        b.sale("I2", 6_000, issued_on="2026-02-01", installments=[("2026-02-28", 3_000), ("2026-03-31", 3_000)],
               customer_id="E"),
        b.payment("P1", 10_000, received_on="2026-02-10", allocations=[("I1", 10_000)], customer_id="E"),
        b.sale("I3", 4_000, issued_on="2026-02-15", due_on="2026-03-17", customer_id="E"),
        b.dispute_opened("I3", on="2026-03-01", customer_id="E"),
        b.payment("P2", 4_000, received_on="2026-03-05", allocations=[("I2", 4_000)], customer_id="E"),
        b.dispute_resolved("I3", on="2026-03-20", customer_id="E"),
        b.sale("I5", 1_000, issued_on="2026-04-05", customer_id="E"),
        b.sale("J1", 700, issued_on="2026-03-01", due_on="2026-03-31", customer_id="F"),
        at="2026-04-06T12:00:00Z")
    fx.batch(b.write_off("I4", on="2026-03-15", customer_id="E"), at="2026-04-07T12:00:00Z")
    return fx


def item_rows(report: dict) -> list[tuple]:
    return [(row["invoice_id"], row["installment"], row["open_amount"], row["days_past_due"], row["status"],
             row["disputed"]) for row in report["rows"]]


def test_open_items_status_and_days_past_due_as_of_month_end(items: LedgerFixture) -> None:
    report = exposure_report.open_items(items.connection, d("2026-03-31"), customer_id="E")
    assert (report["as_of"], report["known_at"], report["customer_id"]) == ("2026-03-31", None, "E")
    assert item_rows(report) == [
        ("I1", 1, 0, 59, "paid", False),
        ("I4", 1, 0, 50, "written_off", False),
        ("I2", 1, 0, 31, "paid", False),
        ("I3", 1, 4_000, 14, "open", False),      # dispute resolved on 03-20
        ("I2", 2, 2_000, 0, "open", False),       # due today: not past due
    ]  # I5 is issued on 04-05: not listed
    first = report["rows"][0]
    assert (first["issued_on"], first["due_on"], first["amount"], first["currency"]) == (
        "2026-01-01", "2026-01-31", 10_000, "EUR")


def test_open_items_in_the_past_show_the_dispute_then_in_force(items: LedgerFixture) -> None:
    report = exposure_report.open_items(items.connection, d("2026-03-10"), customer_id="E")
    assert item_rows(report) == [
        ("I1", 1, 0, 38, "paid", False),
        ("I4", 1, 2_000, 29, "open", False),      # written off only on 03-15
        ("I2", 1, 0, 10, "paid", False),          # P2 on 03-05
        ("I3", 1, 4_000, 0, "disputed", True),
        ("I2", 2, 2_000, 0, "open", False),
    ]


def test_open_items_known_at_before_the_write_off(items: LedgerFixture) -> None:
    report = exposure_report.open_items(items.connection, d("2026-03-31"),
                                        dt.datetime(2026, 4, 7, 11, tzinfo=dt.UTC), customer_id="E")
    assert ("I4", 1, 2_000, 50, "open", False) in item_rows(report)


def test_open_items_of_every_customer_and_open_only(items: LedgerFixture) -> None:
    everyone = exposure_report.open_items(items.connection, d("2026-03-31"))
    assert [row["customer_id"] for row in everyone["rows"]] == ["E"] * 5 + ["F"]
    open_only = exposure_report.open_items(items.connection, d("2026-03-31"), include_settled=False)
    assert [(row["invoice_id"], row["installment"]) for row in open_only["rows"]] == [
        ("I3", 1), ("I2", 2), ("J1", 1)]


def test_views_are_the_reports_as_of_today_known_now(tmp_path) -> None:
    """Issue 14: "now" is defined once — as of today (UTC), as known now. On examples/small.jsonl (a write-off
    dated 2026-12-31, a reversed payment) the `customer_balances` and `open_items` views show exactly the rows
    of `report balances` and `report open-items` as of today."""
    import json
    from pathlib import Path

    from projections import reports

    small = Path(__file__).resolve().parents[2] / "examples" / "small.jsonl"
    fx = LedgerFixture(tmp_path / "p.duckdb", start="2026-11-01T00:00:00Z")
    fx.batch(*[json.loads(line) for line in small.read_text().splitlines() if line.strip()],
             expect_all_accepted=False)
    for _ in range(3):  # the views and the reports must read the same UTC day (a midnight in between: again)
        today = dt.datetime.now(dt.UTC).date()
        cursor = fx.connection.execute("SELECT * FROM customer_balances ORDER BY customer_id")
        view_balances = [dict(zip([c[0] for c in cursor.description], row)) for row in cursor.fetchall()]
        cursor = fx.connection.execute("SELECT * FROM open_items")
        view_items = [dict(zip([c[0] for c in cursor.description], row)) for row in cursor.fetchall()]
        report_balances = reports.balances(fx.connection, today)["rows"]
        report_items = exposure_report.open_items(fx.connection, today)["rows"]
        if dt.datetime.now(dt.UTC).date() == today:
            break
    for row in view_balances:
        row["last_payment_on"] = row["last_payment_on"] and row["last_payment_on"].isoformat()
    for row in view_items:
        row["issued_on"], row["due_on"] = row["issued_on"].isoformat(), row["due_on"].isoformat()
    assert view_balances == report_balances
    assert view_items == report_items
    if today < dt.date(2026, 12, 31):  # before the write-off's business date it is still owed
        assert any(row["overdue"] > 0 for row in view_balances)
        assert not any(row["status"] == "written_off" for row in view_items)
