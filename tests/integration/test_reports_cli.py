"""`arledger report NAME` as a user runs it, on a read model built without Kafka: shapes, --by, formats."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import duckdb
import pytest

from arledger.cli import main
from ledger_fixture import LedgerFixture
from tests import builders as b


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ARLEDGER_HOME with a projections.duckdb: two salespeople, two currencies, a name that needs quoting."""
    home = tmp_path_factory.mktemp("home")
    fx = LedgerFixture(home / "projections.duckdb")
    fx.batch(
        b.registered(customer_id="C1", salesperson="Ann", grade="A", limit=50_000),
        b.registered(customer_id="C2", salesperson="Bob", grade="B", name='Acme, "the" Co'),
        b.registered(customer_id="C3", salesperson="Ann", currency="USD"),
        b.sale("I1", 12_000, issued_on="2026-05-01", due_on="2026-05-31", customer_id="C1"),
        b.sale("I2", 3_000, issued_on="2026-06-10", due_on="2026-07-10", customer_id="C1"),
        b.sale("I3", 8_000, issued_on="2026-03-01", due_on="2026-03-31", customer_id="C2"),
        b.sale("I4", 5_000, issued_on="2026-06-01", due_on="2026-06-15", currency="USD", customer_id="C3"),
        b.payment("P1", 2_000, received_on="2026-06-05", customer_id="C2"),
        b.grade_assigned("C", on="2026-06-20", customer_id="C1"),
        at="2026-06-30T12:00:00Z")
    fx.close()
    return home


@pytest.fixture
def run(home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    monkeypatch.setenv("ARLEDGER_HOME", str(home))

    def run(*argv: str) -> str:
        assert main(["report", *argv]) == 0
        return capsys.readouterr().out
    return run


def test_aging_json_keeps_the_contract_shape(run) -> None:
    report = json.loads(run("aging", "--as-of", "2026-06-30", "--format", "json"))
    assert list(report) == ["as_of", "known_at", "basis", "buckets", "rows", "totals"]
    assert list(report["rows"][0]) == ["customer_id", "name", "currency", "salesperson", "current", "1-30", "31-60",
                                       "61-90", "90+", "open", "unapplied", "total"]
    assert report["totals"] == {
        "EUR": {"current": 3_000, "1-30": 12_000, "31-60": 0, "61-90": 0, "90+": 6_000, "open": 21_000,
                "unapplied": 0, "total": 21_000},
        "USD": {"current": 0, "1-30": 5_000, "31-60": 0, "61-90": 0, "90+": 0, "open": 5_000, "unapplied": 0,
                "total": 5_000}}


def test_aging_by_salesperson_never_adds_currencies(run) -> None:
    report = json.loads(run("aging", "--as-of", "2026-06-30", "--by", "salesperson", "--format", "json"))
    assert report["by"] == "salesperson"
    assert [(r["salesperson"], r["currency"], r["customers"], r["open"]) for r in report["rows"]] == [
        ("Ann", "EUR", 1, 15_000), ("Ann", "USD", 1, 5_000), ("Bob", "EUR", 1, 6_000)]
    assert report["totals"]["EUR"]["open"] == 21_000


def test_aging_by_grade_uses_the_grade_as_of(run) -> None:
    june = json.loads(run("aging", "--as-of", "2026-06-30", "--by", "grade", "--format", "json"))
    assert [(r["grade"], r["currency"], r["open"]) for r in june["rows"]] == [
        ("", "USD", 5_000), ("B", "EUR", 6_000), ("C", "EUR", 15_000)]
    may = json.loads(run("aging", "--as-of", "2026-06-19", "--by", "grade", "--format", "json"))
    assert ("A", "EUR", 15_000) in [(r["grade"], r["currency"], r["open"]) for r in may["rows"]]


def test_aging_with_configured_buckets(run) -> None:
    report = json.loads(run("aging", "--as-of", "2026-06-30", "--buckets", "0,15,45", "--format", "json"))
    assert report["buckets"] == ["current", "1-15", "16-45", "45+"]
    c1 = report["rows"][0]
    assert (c1["current"], c1["1-15"], c1["16-45"], c1["45+"]) == (3_000, 0, 12_000, 0)  # I1 is 30 days past due


def test_exposure_json(run) -> None:
    report = json.loads(run("exposure", "--as-of", "2026-06-30", "--format", "json"))
    assert list(report) == ["as_of", "known_at", "rows"]
    first = report["rows"][0]
    for field in ("customer_id", "balance", "open_orders", "exposure", "credit_limit", "available", "utilisation",
                  "over_limit", "breaches"):
        assert field in first
    # utilisation: C1 15,000 / 50,000; C2 6,000 / 100,000; C3 5,000 / 100,000 (USD)
    assert [(row["customer_id"], row["utilisation"]) for row in report["rows"]] == [
        ("C1", 0.3), ("C2", 0.06), ("C3", 0.05)]


def test_open_items_csv_is_rfc4180(run) -> None:
    text = run("open-items", "--as-of", "2026-06-30", "--customer", "C2", "--format", "csv")
    assert text.endswith("\r\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["invoice_id"], r["open_amount"], r["status"], r["days_past_due"]) for r in rows] == [
        ("I3", "6000", "open", "91")]
    assert rows[0]["name"] == 'Acme, "the" Co'
    assert '"Acme, ""the"" Co"' in text


def test_statement_json(run) -> None:
    report = json.loads(run("statement", "--customer", "C2", "--from", "2026-06-01", "--to", "2026-06-30",
                            "--format", "json"))
    assert (report["opening_balance"], report["closing_balance"]) == (8_000, 6_000)
    assert [(r["effective_on"], r["kind"], r["document_id"], r["amount"], r["balance"]) for r in report["rows"]] == [
        ("2026-06-05", "payment", "P1", -2_000, 6_000)]


def test_statement_csv_has_opening_and_closing_lines(run) -> None:
    rows = list(csv.DictReader(io.StringIO(run("statement", "--customer", "C2", "--from", "2026-06-01",
                                               "--to", "2026-06-30", "--format", "csv"))))
    assert [(r["kind"], r["balance"]) for r in rows] == [
        ("opening_balance", "8000"), ("payment", "6000"), ("closing_balance", "6000")]


def test_kpis_default_to_the_calendar_month_of_as_of(run) -> None:
    report = json.loads(run("kpis", "--as-of", "2026-06-15", "--format", "json"))
    assert list(report) == ["from", "to", "known_at", "customers", "salespeople", "overall"]
    assert (report["from"], report["to"]) == ("2026-06-01", "2026-06-30")
    assert sorted(report["customers"]) == ["C1", "C2", "C3"]
    assert sorted(report["salespeople"]) == ["Ann", "Bob"]
    assert sorted(report["salespeople"]["Ann"]) == ["EUR", "USD"]
    assert report["overall"]["EUR"]["sales"] == 3_000
    assert report["customers"]["C2"]["sales"] == 0 and report["customers"]["C2"]["dso"] is None


def test_kpis_need_both_ends_of_the_period(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ARLEDGER_HOME", str(home))
    with pytest.raises(SystemExit):
        main(["report", "kpis", "--from", "2026-06-01"])


def test_allowance_json_and_rates_option(run) -> None:
    report = json.loads(run("allowance", "--as-of", "2026-06-30", "--format", "json"))
    assert list(report) == ["as_of", "known_at", "rates", "rows", "totals", "historical_loss_rates"]
    assert report["totals"] == {"EUR": 3_390, "USD": 150}  # C1 30 + 360; C2 3,000 (90+); C3 150 (1-30)
    custom = json.loads(run("allowance", "--as-of", "2026-06-30", "--rates", "current=0,1-60=0.1,60+=1",
                            "--format", "json"))
    assert custom["totals"] == {"EUR": 7_200, "USD": 500}


def test_history_and_rollforward_json(run) -> None:
    history = json.loads(run("history", "--customer", "C1", "--as-of", "2026-06-30", "--format", "json"))
    assert len(history["rows"]) == 12 and history["rows"][-1]["as_of"] == "2026-06-30"
    assert [row["balance"] for row in history["rows"][-3:]] == [0, 12_000, 15_000]
    rollforward = json.loads(run("rollforward", "--from", "2026-06-01", "--to", "2026-06-30", "--format", "json"))
    assert [(r["currency"], r["opening"], r["sales"], r["cash"], r["closing"], r["check"])
            for r in rollforward["rows"]] == [("EUR", 20_000, 3_000, 2_000, 21_000, 0), ("USD", 0, 5_000, 0, 5_000, 0)]


def test_parquet_export_has_the_rows_typed(run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run("open-items", "--as-of", "2026-06-30", "--format", "parquet", "--out", str(tmp_path / "exports"))
    path = tmp_path / "exports" / "open_items.parquet"
    table = duckdb.sql(f"SELECT * FROM '{path}' ORDER BY customer_id, invoice_id")
    types = dict(zip(table.columns, (str(t) for t in table.types)))
    assert (types["open_amount"], types["due_on"], types["disputed"]) == ("BIGINT", "DATE", "BOOLEAN")
    as_json = json.loads(run("open-items", "--as-of", "2026-06-30", "--format", "json"))
    assert table.fetchall().__len__() == len(as_json["rows"])
    run("kpis", "--from", "2026-06-01", "--to", "2026-06-30", "--format", "parquet",
        "--out", str(tmp_path / "k.parquet"))
    levels = duckdb.sql(f"SELECT level, count(*) FROM '{tmp_path / 'k.parquet'}' GROUP BY ALL ORDER BY 1").fetchall()
    assert levels == [("customer", 3), ("overall", 2), ("salesperson", 3)]


def test_out_writes_a_file(run, tmp_path: Path) -> None:
    target = tmp_path / "aging.json"
    assert run("aging", "--as-of", "2026-06-30", "--format", "json", "--out", str(target)) == ""
    assert json.loads(target.read_text())["totals"]["USD"]["open"] == 5_000


def test_table_output_of_every_report(run) -> None:
    for argv in (["aging"], ["balances"], ["exposure"], ["open-items"], ["kpis"], ["allowance"],
                 ["history", "--customer", "C1"], ["statement", "--customer", "C1", "--from", "2026-06-01",
                                                   "--to", "2026-06-30"],
                 ["rollforward", "--from", "2026-06-01", "--to", "2026-06-30", "--by", "customer"],
                 ["exposure", "--by", "salesperson"], ["allowance", "--by", "currency"]):
        extra = [] if "statement" in argv or "rollforward" in argv else ["--as-of", "2026-06-30"]
        assert run(*argv, *extra).strip(), argv


@pytest.mark.parametrize("name", ["exposure", "open-items", "statement", "kpis", "allowance", "history",
                                  "rollforward"])
def test_every_report_has_help_with_examples(name: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        main(["report", name, "--help"])
    assert "arledger report " + name in capsys.readouterr().out
