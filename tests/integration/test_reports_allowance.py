"""Bad-debt allowance (docs/contract.md §7, §8) on a real ledger → DuckDB fold, as of 2026-06-30; figures by hand.

Provision matrix (default rates current 1 %, 1-30 3 %, 31-60 10 %, 61-90 25 %, 90+ 50 %):
  L1 EUR: current 1,050 → 10.50 → 10 (half-even)
  L2 EUR: current 1,150 → 11.50 → 12
  L3 EUR: current 150 (1.50) + 1-30 50 (1.50) = 3.00 → 3 (rounding each bucket first would give 4)
  L4 USD: 90+ 1,001, disputed → 500.50 → 500; its 300 of unapplied cash does not reduce it
  L5 EUR: only unapplied cash → no row
Historical loss rates (GBP, customer H):
  Ha 10,000 issued 01-01 due 01-31, 4,000 paid 02-15, 6,000 written off 04-15
  Hb  5,000 issued 02-01 due 03-03, paid 03-10
  Hc  2,000 issued 06-20 due 07-20
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from ledger_fixture import LedgerFixture
from tests import builders as b
from projections.allowance import DEFAULT_RATES, allowance, buckets_for, parse_rates, provision


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


AS_OF = d("2026-06-30")


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> LedgerFixture:
    fx = LedgerFixture(tmp_path_factory.mktemp("allowance") / "p.duckdb")
    fx.batch(
        *(b.registered(customer_id=c) for c in ("L1", "L2", "L3", "L5")),
        b.registered(customer_id="L4", currency="USD"),
        b.registered(customer_id="H", currency="GBP"),
        b.sale("L1a", 1_050, issued_on="2026-06-15", due_on="2026-07-15", customer_id="L1"),
        b.sale("L2a", 1_150, issued_on="2026-06-20", due_on="2026-07-20", customer_id="L2"),
        b.sale("L3a", 150, issued_on="2026-06-01", due_on="2026-07-01", customer_id="L3"),
        b.sale("L3b", 50, issued_on="2026-05-01", due_on="2026-06-10", customer_id="L3"),
        b.sale("L4a", 1_001, issued_on="2026-01-01", due_on="2026-03-01", currency="USD", customer_id="L4"),
        b.dispute_opened("L4a", on="2026-04-01", customer_id="L4"),
        b.payment("L4p", 300, received_on="2026-05-01", currency="USD", customer_id="L4"),
        b.payment("L5p", 700, received_on="2026-05-01", customer_id="L5"),
        b.sale("Ha", 10_000, issued_on="2026-01-01", due_on="2026-01-31", currency="GBP", customer_id="H"),
        b.sale("Hb", 5_000, issued_on="2026-02-01", due_on="2026-03-03", currency="GBP", customer_id="H"),
        b.payment("Hp1", 4_000, received_on="2026-02-15", currency="GBP", customer_id="H"),
        b.payment("Hp2", 5_000, received_on="2026-03-10", currency="GBP", allocations=[("Hb", 5_000)],
                  customer_id="H"),
        at="2026-06-30T12:00:00Z")
    fx.batch(b.write_off("Ha", on="2026-04-15", customer_id="H"),
             b.sale("Hc", 2_000, issued_on="2026-06-20", due_on="2026-07-20", currency="GBP", customer_id="H"),
             at="2026-07-01T12:00:00Z")
    return fx


def rows_of(report: dict) -> dict[str, dict]:
    return {row["customer_id"]: row for row in report["rows"]}


def test_allowance_report_shape_and_default_rates(ledger: LedgerFixture) -> None:
    report = allowance(ledger.connection, AS_OF)
    assert list(report) == ["as_of", "known_at", "rates", "rows", "totals", "historical_loss_rates"]
    assert (report["as_of"], report["known_at"]) == ("2026-06-30", None)
    assert report["rates"] == {"current": 0.01, "1-30": 0.03, "31-60": 0.1, "61-90": 0.25, "90+": 0.5}
    row = rows_of(report)["L3"]
    assert {k: row[k] for k in ("customer_id", "currency", "current", "1-30", "31-60", "61-90", "90+",
                                "allowance")} == {
        "customer_id": "L3", "currency": "EUR", "current": 150, "1-30": 50, "31-60": 0, "61-90": 0, "90+": 0,
        "allowance": 3}


def test_allowance_rounds_half_even_once_per_customer(ledger: LedgerFixture) -> None:
    rows = rows_of(allowance(ledger.connection, AS_OF))
    assert {customer: row["allowance"] for customer, row in rows.items()} == {
        "L1": 10, "L2": 12, "L3": 3, "L4": 500, "H": 20}  # H: current 2,000 → 20
    assert "L5" not in rows  # unapplied cash only: no open items


def test_unapplied_cash_does_not_reduce_the_allowance(ledger: LedgerFixture) -> None:
    l4 = rows_of(allowance(ledger.connection, AS_OF))["L4"]
    assert (l4["90+"], l4["allowance"]) == (1_001, 500)


def test_totals_per_currency_are_sums_of_rounded_rows(ledger: LedgerFixture) -> None:
    assert allowance(ledger.connection, AS_OF)["totals"] == {"EUR": 25, "GBP": 20, "USD": 500}


def test_configurable_rates_define_the_buckets(ledger: LedgerFixture) -> None:
    rates = parse_rates("current=0.005, 1-45=0.05, 45+=1")
    report = allowance(ledger.connection, AS_OF, rates=rates)
    assert report["rates"] == {"current": 0.005, "1-45": 0.05, "45+": 1.0}
    rows = rows_of(report)
    # L1 5.25 → 5; L2 5.75 → 6; L3 0.75 + 2.50 = 3.25 → 3; L4 1,001 × 1
    assert {c: rows[c]["allowance"] for c in ("L1", "L2", "L3", "L4")} == {"L1": 5, "L2": 6, "L3": 3, "L4": 1_001}
    assert (rows["L3"]["current"], rows["L3"]["1-45"], rows["L3"]["45+"]) == (150, 50, 0)
    assert set(report["historical_loss_rates"]["GBP"]) == {"current", "1-45", "45+"}


def test_historical_loss_rates_by_hand(ledger: LedgerFixture) -> None:
    rates = allowance(ledger.connection, AS_OF)["historical_loss_rates"]
    assert rates["GBP"] == {
        "current": pytest.approx(6_000 / 17_000),  # Ha 10,000 + Hb 5,000 + Hc 2,000 on issue; 6,000 written off
        "1-30": pytest.approx(0.4),                # Ha 10,000 on 02-01 + Hb 5,000 on 03-04; Hc not yet due
        "31-60": 1.0,                              # Ha 6,000 open on 03-03, Hb paid by 04-03
        "61-90": 1.0,                              # Ha 6,000 on 04-02, written off 04-15
        "90+": None,                               # Ha was written off before 05-02, Hb paid: nothing entered open
    }
    assert set(rates) == {"EUR", "GBP", "USD"}
    assert rates["EUR"]["current"] == 0.0 and rates["EUR"]["90+"] is None
    assert rates["USD"] == {"current": 0.0, "1-30": 0.0, "31-60": 0.0, "61-90": 0.0, "90+": 0.0}  # L4a entered 90+ on 05-31


def test_historical_loss_rates_as_of_a_past_date_and_known_at(ledger: LedgerFixture) -> None:
    before = allowance(ledger.connection, d("2026-03-31"))["historical_loss_rates"]["GBP"]
    assert before == {"current": 0.0, "1-30": 0.0, "31-60": 0.0, "61-90": None, "90+": None}
    unknown = allowance(ledger.connection, AS_OF, dt.datetime(2026, 7, 1, tzinfo=dt.UTC))
    assert unknown["historical_loss_rates"]["GBP"]["current"] == 0.0  # write-off not yet recorded
    assert rows_of(unknown)["H"]["90+"] == 6_000 and rows_of(unknown)["H"]["allowance"] == 3_000
    assert unknown["known_at"] == "2026-07-01T00:00:00Z"


def test_allowance_in_the_past(ledger: LedgerFixture) -> None:
    report = allowance(ledger.connection, d("2026-05-31"))
    rows = rows_of(report)
    assert set(rows) == {"L3", "L4"}  # L3b issued 05-01 (current until 06-10); L1, L2, L3a, Hc not yet issued
    assert (rows["L3"]["current"], rows["L3"]["allowance"]) == (50, 0)  # 0.50 → 0
    assert report["totals"] == {"EUR": 0, "USD": 500}


def test_provision_is_exact_decimal_arithmetic() -> None:
    rates = {"current": Decimal("0.015"), "1-30": Decimal("0.035")}
    assert provision({"current": 100, "1-30": 100}, rates) == 5      # 1.5 + 3.5
    assert provision({"current": 300, "1-30": 0}, rates) == 4         # 4.5 → 4
    assert provision({"current": 100, "1-30": 30}, rates) == 3        # 1.5 + 1.05 = 2.55 → 3
    assert provision(dict.fromkeys(DEFAULT_RATES, 10**15), DEFAULT_RATES) == 89 * 10**13


@pytest.mark.parametrize("text", ["current=0.01", "current=0.01,1-30=x,30+=0.5", "current=0.01,1-30=0.03,31+=1",
                                  "1-30=0.03,30+=0.5", "current=0.01,1-30=2,30+=0.5", "current=0.01,30+"])
def test_bad_rates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rates(text)


def test_default_rate_names_are_the_default_buckets() -> None:
    assert buckets_for(DEFAULT_RATES).bounds == (0, 30, 60, 90)
