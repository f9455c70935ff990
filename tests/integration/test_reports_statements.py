"""Statement, month-end history and the AR roll-forward on a real ledger → DuckDB fold (no Kafka).

Customer S (EUR), by business date:
  01-05 sale S1 10,000            01-20 P1 3,000 → S1
  02-01 P2 5,000 → S1             02-10 sale S2 4,000 (due 03-12)
  02-12 CN1 3,000 on S1: 2,000 applied, 1,000 excess → S2
  02-20 P3 6,000: 3,000 → S2, 3,000 unapplied
  03-05 sale S3 2,000: takes 2,000 of P3's unapplied cash
  P3 reversed, dated 03-01 (recorded after S3): S2 reopens from 03-01; P3's cash (the 2,000 that went to
      S3 on 03-05 included) leaves the account from 03-01; S3 reopens on 03-05
  03-20 S3 written off
AR: 12-31: 0 · 01-31: 7,000 · 02-28: −3,000 (unapplied P3) · 03-31: 3,000 (S2).
Customer U (USD): 02-01 sale 7,000, 02-15 paid.
"""

from __future__ import annotations

import datetime as dt

import pytest

from ledger_fixture import LedgerFixture
from tests import builders as b
from projections import statements
from projections.reports import aging


def d(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


BEFORE_REVERSAL = dt.datetime(2026, 4, 1, 11, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory: pytest.TempPathFactory) -> LedgerFixture:
    fx = LedgerFixture(tmp_path_factory.mktemp("statements") / "p.duckdb")
    fx.batch(b.registered(customer_id="S", salesperson="Sam"),
             b.registered(customer_id="U", currency="USD", salesperson="Sam"),
             b.sale("S1", 10_000, issued_on="2026-01-05", customer_id="S"),
             b.payment("P1", 3_000, received_on="2026-01-20", customer_id="S"),
             at="2026-01-21T12:00:00Z")
    fx.batch(b.payment("P2", 5_000, received_on="2026-02-01", customer_id="S"),
             b.sale("S2", 4_000, issued_on="2026-02-10", customer_id="S"),
             b.credit_note("CN1", "S1", 3_000, on="2026-02-12", customer_id="S"),
             b.payment("P3", 6_000, received_on="2026-02-20", customer_id="S"),
             b.sale("U1", 7_000, issued_on="2026-02-01", currency="USD", customer_id="U"),
             b.payment("PU1", 7_000, received_on="2026-02-15", currency="USD", customer_id="U"),
             at="2026-02-21T12:00:00Z")
    fx.batch(b.sale("S3", 2_000, issued_on="2026-03-05", customer_id="S"), at="2026-03-06T12:00:00Z")
    fx.batch(b.reversal("P3", on="2026-03-01", customer_id="S"), at="2026-04-01T12:00:00Z")
    fx.batch(b.write_off("S3", on="2026-03-20", customer_id="S"), at="2026-04-02T12:00:00Z")
    return fx


def lines(report: dict) -> list[tuple]:
    return [(row["effective_on"], row["kind"], row["document_id"], row["amount"], row["balance"])
            for row in report["rows"]]


def test_statement_lists_every_movement_between_opening_and_closing(ledger: LedgerFixture) -> None:
    report = statements.statement(ledger.connection, "S", d("2026-02-01"), d("2026-02-28"))
    assert {k: report[k] for k in ("customer_id", "currency", "from", "to", "known_at", "opening_balance",
                                   "closing_balance")} == {
        "customer_id": "S", "currency": "EUR", "from": "2026-02-01", "to": "2026-02-28", "known_at": None,
        "opening_balance": 7_000, "closing_balance": -3_000}
    assert lines(report) == [
        ("2026-02-01", "payment", "P2", -5_000, 2_000),
        ("2026-02-10", "sale", "S2", 4_000, 6_000),
        ("2026-02-12", "credit_note", "CN1", -3_000, 3_000),  # 2,000 on S1 + 1,000 excess on account
        ("2026-02-20", "payment", "P3", -6_000, -3_000),
    ]
    assert report["rows"][2]["invoice_id"] == "S1"
    assert (report["rows"][0]["debit"], report["rows"][0]["credit"]) == (0, 5_000)


def test_statement_shows_a_back_dated_reversal_on_its_date(ledger: LedgerFixture) -> None:
    report = statements.statement(ledger.connection, "S", d("2026-03-01"), d("2026-03-31"))
    assert (report["opening_balance"], report["closing_balance"]) == (-3_000, 3_000)
    assert lines(report) == [
        ("2026-03-01", "reversal", "P3", 6_000, 3_000),
        ("2026-03-05", "sale", "S3", 2_000, 5_000),
        ("2026-03-20", "write_off", "S3", -2_000, 3_000),
    ]


def test_statement_known_at_before_the_reversal(ledger: LedgerFixture) -> None:
    report = statements.statement(ledger.connection, "S", d("2026-03-01"), d("2026-03-31"), BEFORE_REVERSAL)
    assert report["known_at"] == "2026-04-01T11:00:00Z"
    assert lines(report) == [("2026-03-05", "sale", "S3", 2_000, -1_000)]
    assert report["closing_balance"] == -1_000


def test_statement_of_an_unknown_customer_is_an_error(ledger: LedgerFixture) -> None:
    with pytest.raises(LookupError):
        statements.statement(ledger.connection, "NOPE", d("2026-03-01"), d("2026-03-31"))


def test_history_gives_balance_and_exposure_at_each_month_end(ledger: LedgerFixture) -> None:
    report = statements.history(ledger.connection, "S", d("2026-01-01"), d("2026-03-31"))
    assert [(row["as_of"], row["open"], row["unapplied"], row["balance"], row["exposure"], row["available"])
            for row in report["rows"]] == [
        ("2026-01-31", 7_000, 0, 7_000, 7_000, 93_000),
        ("2026-02-28", 0, 3_000, -3_000, -3_000, 103_000),
        ("2026-03-31", 3_000, 0, 3_000, 3_000, 97_000),
    ]
    assert all(row["month_end"] for row in report["rows"])


def test_history_ends_on_to_when_it_is_not_a_month_end(ledger: LedgerFixture) -> None:
    report = statements.history(ledger.connection, "S", d("2026-02-15"), d("2026-03-10"))
    assert [(row["as_of"], row["month_end"], row["balance"]) for row in report["rows"]] == [
        ("2026-02-28", True, -3_000), ("2026-03-10", False, 5_000)]


def figures(row: dict) -> tuple:
    return tuple(row[column] for column in statements.ROLLFORWARD_COLUMNS)


def test_rollforward_identity_per_currency_over_the_quarter(ledger: LedgerFixture) -> None:
    report = statements.rollforward(ledger.connection, d("2026-01-01"), d("2026-03-31"))
    assert (report["from"], report["to"], report["known_at"], report["by"]) == (
        "2026-01-01", "2026-03-31", None, "currency")
    # opening, sales, credit notes, cash, reversed cash, write-offs, closing, check
    assert {row["currency"]: figures(row) for row in report["rows"]} == {
        "EUR": (0, 16_000, 3_000, 14_000, 6_000, 2_000, 3_000, 0),
        "USD": (0, 7_000, 0, 7_000, 0, 0, 0, 0),
    }


@pytest.mark.parametrize("date_from, date_to, expected", [
    ("2026-01-01", "2026-01-31", (0, 10_000, 0, 3_000, 0, 0, 7_000, 0)),
    ("2026-02-01", "2026-02-28", (7_000, 4_000, 3_000, 11_000, 0, 0, -3_000, 0)),
    ("2026-03-01", "2026-03-31", (-3_000, 2_000, 0, 0, 6_000, 2_000, 3_000, 0)),
    ("2026-03-02", "2026-03-19", (3_000, 2_000, 0, 0, 0, 0, 5_000, 0)),
])
def test_rollforward_per_customer_month_by_month(ledger: LedgerFixture, date_from: str, date_to: str,
                                                 expected: tuple) -> None:
    report = statements.rollforward(ledger.connection, d(date_from), d(date_to), by="customer")
    rows = {row["customer_id"]: row for row in report["rows"]}
    assert figures(rows["S"]) == expected


def test_rollforward_known_at_before_the_reversal(ledger: LedgerFixture) -> None:
    report = statements.rollforward(ledger.connection, d("2026-03-01"), d("2026-03-31"), BEFORE_REVERSAL)
    eur = next(row for row in report["rows"] if row["currency"] == "EUR")
    assert figures(eur) == (-3_000, 2_000, 0, 0, 0, 0, -1_000, 0)


def test_rollforward_closing_is_the_aging_total(ledger: LedgerFixture) -> None:
    for day in ("2026-01-31", "2026-02-20", "2026-03-01", "2026-03-05", "2026-03-31"):
        report = statements.rollforward(ledger.connection, d("2026-01-01"), d(day), by="customer")
        totals = {row["customer_id"]: row["total"] for row in aging(ledger.connection, d(day))["rows"]}
        for row in report["rows"]:
            assert row["closing"] == totals.get(row["customer_id"], 0)
            assert row["check"] == 0


def test_rollforward_holds_every_day_and_every_known_at(ledger: LedgerFixture) -> None:
    """The identity is exact for any window, also as known between batches."""
    known_ats = [None, dt.datetime(2026, 2, 22, tzinfo=dt.UTC), dt.datetime(2026, 3, 7, tzinfo=dt.UTC),
                 BEFORE_REVERSAL]
    start = d("2025-12-30")
    for known_at in known_ats:
        for offset in range(0, 100, 7):
            date_from = start + dt.timedelta(days=offset)
            for length in (0, 20):
                report = statements.rollforward(ledger.connection, date_from, date_from + dt.timedelta(days=length),
                                                known_at, by="customer")
                assert all(row["check"] == 0 for row in report["rows"]), (known_at, date_from, report)


def test_rollforward_by_salesperson_never_adds_currencies(ledger: LedgerFixture) -> None:
    report = statements.rollforward(ledger.connection, d("2026-02-01"), d("2026-02-28"), by="salesperson")
    assert [(row["salesperson"], row["currency"], row["sales"]) for row in report["rows"]] == [
        ("Sam", "EUR", 4_000), ("Sam", "USD", 7_000)]


def test_ar_as_of_every_day_agrees_with_the_ledger(ledger: LedgerFixture) -> None:
    """The projected AR (what the statement and roll-forward add up to) is the aggregate's own balance."""
    days = [d("2026-01-01") + dt.timedelta(days=n) for n in range(0, 100)]
    projected = statements.balances_at(ledger.connection, days)
    for customer_id in ("S", "U"):
        state = ledger.ledger.account(customer_id)
        for day in days:
            assert projected[(customer_id, day)]["balance"] == state.balance_as_of(day), (customer_id, day)
