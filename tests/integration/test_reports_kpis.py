"""KPIs (docs/contract.md §7, §8) on a real ledger → DuckDB fold, for February 2026 (28 days); figures by hand.

K1 (EUR, Ann): 01-15 sale 30,000 (due 02-14) · 02-10 sale 20,000 (due 03-12) · 02-20 paid 25,000 (→ the
    January sale) · 02-25 credit note 5,000 on the February sale.
    AR(01-31) 30,000 · AR(02-28) 20,000, current 15,000 · sales 20,000 − 5,000 = 15,000.
K2 (EUR, Ann): nothing. K3 (EUR, no salesperson): 02-05 payment 1,000, unapplied (AR −1,000).
K4 (USD, Ann): 2025-12-20 sale 10,000, unpaid.
K5 (USD, Bob): 01-10 sale 10,000 · 02-05 sale 3,000 (due 03-07) · 03-05 sale 5,000, recorded in February,
    with a credit note of 2,000 dated 02-20: February sales 1,000, but the credit note only reduces AR
    from 03-05 → AR(02-28) 13,000 exceeds every sale walked back: countback DSO null.
"""

from __future__ import annotations

import datetime as dt

import pytest

from ledger_fixture import LedgerFixture
from tests import builders as b
from projections.kpis import KPI_FIELDS, countback_dso, kpis, month_bounds


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


FEB = (d("2026-02-01"), d("2026-02-28"))


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> LedgerFixture:
    fx = LedgerFixture(tmp_path_factory.mktemp("kpis") / "p.duckdb")
    fx.batch(
        b.registered(customer_id="K1", salesperson="Ann"),
        b.registered(customer_id="K2", salesperson="Ann"),
        b.registered(customer_id="K3"),
        b.registered(customer_id="K4", currency="USD", salesperson="Ann"),
        b.registered(customer_id="K5", currency="USD", salesperson="Bob"),
        b.sale("K4a", 10_000, issued_on="2025-12-20", currency="USD", customer_id="K4"),
        b.sale("K1a", 30_000, issued_on="2026-01-15", due_on="2026-02-14", customer_id="K1"),
        b.sale("K5a", 10_000, issued_on="2026-01-10", due_on="2026-02-09", currency="USD", customer_id="K5"),
        at="2026-01-31T12:00:00Z")
    fx.batch(
        b.sale("K1b", 20_000, issued_on="2026-02-10", due_on="2026-03-12", customer_id="K1"),
        b.payment("K3p", 1_000, received_on="2026-02-05", customer_id="K3"),
        b.sale("K5c", 3_000, issued_on="2026-02-05", due_on="2026-03-07", currency="USD", customer_id="K5"),
        b.sale("K5b", 5_000, issued_on="2026-03-05", due_on="2026-04-04", currency="USD", customer_id="K5"),
        b.credit_note("K5cn", "K5b", 2_000, on="2026-02-20", customer_id="K5"),
        at="2026-02-21T12:00:00Z")
    fx.batch(
        b.payment("K1p", 25_000, received_on="2026-02-20", customer_id="K1"),
        b.credit_note("K1cn", "K1b", 5_000, on="2026-02-25", customer_id="K1"),
        at="2026-03-01T12:00:00Z")
    return fx


def approx(figures: dict) -> dict:
    return {key: pytest.approx(value) if isinstance(value, float) else value for key, value in figures.items()}


def test_kpis_of_a_customer_by_hand(ledger: LedgerFixture) -> None:
    report = kpis(ledger.connection, *FEB)
    assert (report["from"], report["to"], report["known_at"]) == ("2026-02-01", "2026-02-28", None)
    k1 = report["customers"]["K1"]
    assert list(k1) == list(KPI_FIELDS)
    assert k1 == approx({
        "ar_start": 30_000, "ar_end": 20_000, "current_end": 15_000, "sales": 15_000, "days": 28,
        "dso": 20_000 / 15_000 * 28,                      # 37.33
        "countback_dso": 28 + 5_000 / 30_000 * 31,        # February 15,000 of 20,000, then 5,000 of January
        "best_possible_dso": 28.0,
        "add": 20_000 / 15_000 * 28 - 28.0,
        "cei": 25_000 / 30_000 * 100,                     # (30,000 + 15,000 − 20,000) / (45,000 − 15,000)
        "turnover": 0.6,                                  # 15,000 / ((30,000 + 20,000) / 2)
        "collection_rate": 25_000 / 45_000 * 100,
    })


def test_zero_denominators_give_null(ledger: LedgerFixture) -> None:
    report = kpis(ledger.connection, *FEB)
    assert report["customers"]["K2"] == {
        "ar_start": 0, "ar_end": 0, "current_end": 0, "sales": 0, "days": 28, "dso": None,
        "countback_dso": 0.0, "best_possible_dso": None, "add": None, "cei": None, "turnover": None,
        "collection_rate": None}
    k3 = report["customers"]["K3"]
    assert (k3["ar_end"], k3["sales"], k3["dso"], k3["countback_dso"], k3["cei"], k3["collection_rate"]) == (
        -1_000, 0, None, 0.0, None, None)
    assert str(k3["turnover"]) == "0.0"  # 0 / ((0 − 1,000) / 2), not -0.0


def test_countback_walks_whole_months_to_an_exact_stop(ledger: LedgerFixture) -> None:
    k4 = kpis(ledger.connection, *FEB)["customers"]["K4"]
    # February and January have no sales (full days), December's 10,000 = the remaining AR: 28 + 31 + 31
    assert k4["countback_dso"] == 90.0
    assert (k4["dso"], k4["cei"], k4["turnover"], k4["collection_rate"]) == (None, 0.0, 0.0, 0.0)


def test_countback_is_null_once_the_walk_passes_the_earliest_sale_month(ledger: LedgerFixture) -> None:
    k5 = kpis(ledger.connection, *FEB)["customers"]["K5"]
    assert k5 == approx({
        "ar_start": 10_000, "ar_end": 13_000, "current_end": 3_000, "sales": 1_000, "days": 28,
        "dso": 364.0, "countback_dso": None, "best_possible_dso": 84.0, "add": 280.0,
        "cei": -2_000 / 8_000 * 100, "turnover": 1_000 / 11_500, "collection_rate": -2_000 / 11_000 * 100})


def test_salespeople_and_overall_never_add_currencies(ledger: LedgerFixture) -> None:
    report = kpis(ledger.connection, *FEB)
    assert sorted(report["salespeople"]) == ["", "Ann", "Bob"]
    assert sorted(report["salespeople"]["Ann"]) == ["EUR", "USD"]
    assert report["salespeople"]["Ann"]["EUR"] == report["customers"]["K1"]  # K2 adds zeros
    assert report["salespeople"]["Ann"]["USD"] == report["customers"]["K4"]
    assert report["salespeople"][""]["EUR"] == report["customers"]["K3"]
    eur = report["overall"]["EUR"]
    assert eur == approx({
        "ar_start": 30_000, "ar_end": 19_000, "current_end": 15_000, "sales": 15_000, "days": 28,
        "dso": 19_000 / 15_000 * 28, "countback_dso": 28 + 4_000 / 30_000 * 31, "best_possible_dso": 28.0,
        "add": 19_000 / 15_000 * 28 - 28.0, "cei": 26_000 / 30_000 * 100, "turnover": 15_000 / 24_500,
        "collection_rate": 26_000 / 45_000 * 100})
    usd = report["overall"]["USD"]
    assert (usd["ar_start"], usd["ar_end"], usd["current_end"], usd["sales"]) == (20_000, 23_000, 3_000, 1_000)
    # 23,000: February 1,000, January 10,000, December 10,000 → 2,000 left and no sale before December
    assert usd["countback_dso"] is None


def test_kpis_known_at_before_the_february_payment(ledger: LedgerFixture) -> None:
    report = kpis(ledger.connection, *FEB, dt.datetime(2026, 2, 28, tzinfo=dt.UTC))
    assert report["known_at"] == "2026-02-28T00:00:00Z"
    k1 = report["customers"]["K1"]
    assert (k1["ar_end"], k1["current_end"], k1["sales"]) == (50_000, 20_000, 20_000)
    assert k1["dso"] == pytest.approx(50_000 / 20_000 * 28)
    assert k1["countback_dso"] == pytest.approx(28 + 30_000 / 30_000 * 31)  # exact stop at January's end
    assert k1["collection_rate"] == 0.0


def test_kpis_of_a_longer_period_use_its_days(ledger: LedgerFixture) -> None:
    report = kpis(ledger.connection, d("2026-01-01"), d("2026-02-28"))
    k1 = report["customers"]["K1"]
    assert (k1["ar_start"], k1["sales"], k1["days"]) == (0, 45_000, 59)
    assert k1["dso"] == pytest.approx(20_000 / 45_000 * 59)
    # CEI with the period's total sales: (0 + 45,000 − 20,000) / (0 + 45,000 − 15,000)
    assert k1["cei"] == pytest.approx(25_000 / 30_000 * 100)


def test_kpis_in_the_past_ignore_later_facts(ledger: LedgerFixture) -> None:
    january = kpis(ledger.connection, d("2026-01-01"), d("2026-01-31"))
    k5 = january["customers"]["K5"]
    assert (k5["ar_start"], k5["ar_end"], k5["sales"]) == (0, 10_000, 10_000)
    assert k5["countback_dso"] == 31.0  # January's sales are exactly the AR (February's credit note is later)


def test_default_period_is_the_calendar_month() -> None:
    assert month_bounds(d("2024-02-10")) == (d("2024-02-01"), d("2024-02-29"))
    assert month_bounds(d("2026-12-31")) == (d("2026-12-01"), d("2026-12-31"))


@pytest.mark.parametrize("ar_end, monthly, earliest, to, expected", [
    (0, {}, None, "2026-03-31", 0.0),                                     # AR ≤ 0
    (-500, {"2026-03-01": 100}, "2026-03-01", "2026-03-31", 0.0),
    (100, {"2026-03-01": 400}, "2026-03-01", "2026-03-20", 100 / 400 * 20),  # first step: 1..20 March, pro rata
    (400, {"2026-03-01": 400}, "2026-03-01", "2026-03-20", 20.0),         # stops as soon as nothing remains
    (500, {"2026-03-01": 400, "2026-02-01": 200}, "2026-02-01", "2026-03-20", 20 + 100 / 200 * 28),
    # Net sales < 0 (credit notes above sales): sales ≤ remaining, so the step adds its days and subtracts its
    # sales — the remaining AR grows by 50 (§8; issue 14 found the walk leaving it unchanged).
    (500, {"2026-03-01": -50, "2026-02-01": 1_000}, "2026-02-01", "2026-03-31", 31 + 550 / 1_000 * 28),
    # The example: AR(to) 333,300, March nets −19,800, February 353,100 → 31 + 28 days exactly.
    (333_300, {"2026-03-01": -19_800, "2026-02-01": 353_100}, "2026-02-01", "2026-03-31", 59.0),
    (500, {"2026-03-01": 0, "2026-01-01": 500}, "2026-01-01", "2026-03-31", 31 + 28 + 31),  # empty month: full
    (500, {"2026-03-01": 400}, "2026-03-01", "2026-03-31", None),         # history runs out
    (500, {"2026-02-01": 100}, "2026-02-01", "2026-03-31", None),
    (100, {"2026-03-01": 100}, None, "2026-03-31", None),                 # no sale at all
])
def test_countback_walk(ar_end: int, monthly: dict, earliest: str | None, to: str, expected: float | None) -> None:
    result = countback_dso(ar_end, {d(k): v for k, v in monthly.items()}, d(earliest) if earliest else None, d(to))
    assert result == (pytest.approx(expected) if expected is not None else None)


def test_countback_over_a_month_with_negative_net_sales(tmp_path) -> None:
    """Issue 14: AR(to) 333,300; March nets −19,800 (a credit note above its sales); February 353,100.
    March adds 31 days and its −19,800 raises the remaining AR to 353,100, which February's sales take
    exactly: 31 + 28 = 59.0 days (the walk used to leave the remaining AR unchanged: 57.43)."""
    fx = LedgerFixture(tmp_path / "p.duckdb")
    fx.batch(b.registered(customer_id="N1"),
             b.sale("N1a", 353_100, issued_on="2026-02-10", due_on="2026-05-10", customer_id="N1"),
             b.sale("N1b", 1_000, issued_on="2026-03-02", due_on="2026-05-10", customer_id="N1"),
             b.credit_note("N1cn", "N1a", 20_800, on="2026-03-15", customer_id="N1"), at="2026-03-20T12:00:00Z")
    figures = kpis(fx.connection, d("2026-03-01"), d("2026-03-31"))["customers"]["N1"]
    assert (figures["ar_end"], figures["sales"]) == (333_300, -19_800)
    assert figures["countback_dso"] == 59.0
