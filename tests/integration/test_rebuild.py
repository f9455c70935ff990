"""`arledger rebuild` on the real broker: equal to the live projection, no loss while the projector runs, --check.

The scenario produces every ledger event type (the first test proves it).
Workers run as `arledger run` subprocesses; tables are compared row by row
with EXCEPT ALL both ways, written here independently of the code under test.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pytest

from arledger.settings import TOPIC_LEDGER, Settings
from helpers import (ARLEDGER, cli, env_of, ingest_wait, query, running_workers, settings_on, wait_until,
                     write_jsonl)
from tests import builders
from ledger.application import Ledger
from ledger.events import EVENT_TYPES
from projections import schema

REBUILD_RUN_TIMEOUT_S = 180.0


def every_event_type_facts(prefix: str = "rb") -> list[dict[str, Any]]:
    """Two customers, two currencies; between them every ledger event type is recorded at least once."""
    c1, c2 = "C1", "C2"
    n = iter(range(1, 1_000))

    def fact(type_: str, on: str, data: dict[str, Any], customer_id: str = c1) -> dict[str, Any]:
        return builders.fact(type_, data, id=f"{prefix}-{next(n)}", customer_id=customer_id, on=on)

    return [
        fact("customer.registered", "2026-01-01", {"name": "Alpha", "currency": "EUR", "credit_limit": 100_000,
                                                   "payment_terms_days": 30, "grade": "B", "salesperson": "Ann"}),
        fact("customer.registered", "2026-01-01", {"name": "Beta", "currency": "USD", "credit_limit": 50_000,
                                                   "payment_terms_days": 30}, c2),
        fact("credit_limit.changed", "2026-01-02", {"credit_limit": 120_000, "reason": "review"}),
        fact("payment_terms.changed", "2026-01-02", {"payment_terms_days": 45}),
        fact("credit_grade.assigned", "2026-01-03", {"grade": "A"}),
        fact("credit_hold.placed", "2026-01-04", {"reason": "rumours"}),
        fact("credit_hold.released", "2026-01-05", {"reason": "cleared"}),
        fact("order.placed", "2026-01-06", {"order_id": "O1", "amount": 50_000, "currency": "EUR"}),
        fact("order.placed", "2026-01-06", {"order_id": "O2", "amount": 500_000, "currency": "EUR"}),  # blocked
        fact("order.released", "2026-01-07", {"order_id": "O2", "by": "controller", "reason": "good payer"}),
        fact("order.cancelled", "2026-01-08", {"order_id": "O2"}),
        fact("sale.recorded", "2026-01-10", {"invoice_id": "INV1", "amount": 60_000, "currency": "EUR",
                                             "issued_on": "2026-01-10", "order_id": "O1"}),
        fact("sale.recorded", "2026-01-11", {"invoice_id": "INV2", "amount": 80_000, "currency": "EUR",
                                             "issued_on": "2026-01-11",
                                             "installments": [{"due_on": "2026-02-10", "amount": 40_000},
                                                              {"due_on": "2026-03-10", "amount": 40_000}]}),
        fact("credit_note.issued", "2026-01-12", {"credit_note_id": "CN1", "invoice_id": "INV1", "amount": 10_000,
                                                  "reason": "returned goods"}),
        fact("payment.received", "2026-01-20", {"payment_id": "P1", "amount": 30_000, "currency": "EUR",
                                                "received_on": "2026-01-20"}),
        fact("dispute.opened", "2026-01-21", {"invoice_id": "INV2", "reason": "damaged"}),
        fact("dispute.resolved", "2026-01-25", {"invoice_id": "INV2", "resolution": "accepted"}),
        fact("collection.action", "2026-02-15", {"action": "call", "invoice_id": "INV2", "outcome": "promised"}),
        fact("promise.made", "2026-02-15", {"promise_id": "PR1", "amount": 20_000, "promised_on": "2026-02-28",
                                            "invoice_id": "INV2"}),
        # Over-payment: unapplied cash remains; then a credit note on a settled invoice leaves excess credit.
        fact("payment.received", "2026-02-20", {"payment_id": "P2", "amount": 200_000, "currency": "EUR",
                                                "received_on": "2026-02-20",
                                                "allocations": [{"invoice_id": "INV1", "amount": 20_000}]}),
        fact("credit_note.issued", "2026-02-21", {"credit_note_id": "CN2", "invoice_id": "INV1", "amount": 5_000,
                                                  "reason": "rebate"}),
        fact("payment.reversed", "2026-02-22", {"payment_id": "P1", "reason": "bounced"}),
        # P2's unapplied cash pays INV3 on 03-10; P2 bounces dated 03-05: removed then returned (decisions.md).
        fact("sale.recorded", "2026-03-10", {"invoice_id": "INV3", "amount": 30_000, "currency": "EUR",
                                             "issued_on": "2026-03-10"}),
        fact("payment.reversed", "2026-03-05", {"payment_id": "P2", "reason": "charged back"}),
        fact("sale.recorded", "2026-03-15", {"invoice_id": "INV4", "amount": 10_000, "currency": "USD",
                                             "issued_on": "2026-03-15"}, c2),
        fact("invoice.written_off", "2026-05-01", {"invoice_id": "INV4", "reason": "insolvent"}, c2),
        fact("payment.received", "2026-03-20", {"payment_id": "P3", "amount": 7_000, "currency": "USD",
                                                "received_on": "2026-03-20"}, c2),
    ]


# -- Independent comparison -----------------------------------------------------------------------


def row_differences(a: Path, b: Path, *, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, int]]:
    """{table: (rows only in a, rows only in b)} for every ledger-folded table that differs, EXCEPT ALL both ways.

    Tables folded from other topics (the alerts worker's, from ar.alerts) are not the rebuild's business.
    """
    connection = duckdb.connect(str(a), read_only=True)
    try:
        connection.execute(f"ATTACH '{b}' AS other (READ_ONLY)")
        differences = {}
        for table in schema.TABLES:
            if table in skip:
                continue
            columns = ", ".join(f'"{row[0]}"' for row in connection.execute(
                "SELECT column_name FROM duckdb_columns() WHERE database_name = current_database() "
                "AND table_name = ? ORDER BY column_index", [table]).fetchall())
            mine, theirs = f"SELECT {columns} FROM main.{table}", f"SELECT {columns} FROM other.main.{table}"
            only_a = connection.execute(f"SELECT count(*) FROM ({mine} EXCEPT ALL {theirs})").fetchone()[0]
            only_b = connection.execute(f"SELECT count(*) FROM ({theirs} EXCEPT ALL {mine})").fetchone()[0]
            if only_a or only_b:
                differences[table] = (only_a, only_b)
        return differences
    finally:
        connection.close()


# -- The scenario, projected once per module ------------------------------------------------------


@dataclass
class Scenario:
    settings: Settings
    env: dict[str, str]
    events: int


@pytest.fixture(scope="module")
def scenario(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    home = tmp_path_factory.mktemp("rebuild")
    settings = settings_on(kafka_bootstrap, home, f"t{uuid.uuid4().hex[:8]}.")
    env = env_of(settings)
    facts = every_event_type_facts()
    with running_workers(env, log_path=home / "workers.log"):
        counts = ingest_wait(env, write_jsonl(home / "facts.jsonl", facts))
    assert counts["accepted"] == len(facts), counts
    events = query(settings.projection_path, "SELECT count(*) FROM ledger_events")[0][0]
    return Scenario(settings, env, events)


@pytest.fixture
def copy_of(scenario: Scenario, tmp_path: Path):
    """A private home with the scenario's store and projection (same topics): tests may alter it."""
    def make() -> tuple[Settings, dict[str, str]]:
        home = tmp_path / "home"
        home.mkdir()
        for name in ("ledger.sqlite", "projections.duckdb", "snapshot.duckdb"):
            shutil.copyfile(scenario.settings.home / name, home / name)
        settings = Settings(home=home, broker_port=scenario.settings.broker_port,
                            kafka_bootstrap=scenario.settings.kafka_bootstrap,
                            store_url=f"sqlite:///{home / 'ledger.sqlite'}", topic_prefix=scenario.settings.topic_prefix)
        return settings, env_of(settings)
    return make


def test_the_scenario_records_every_ledger_event_type(scenario: Scenario) -> None:
    kinds = {row[0] for row in query(scenario.settings.projection_path, "SELECT DISTINCT kind FROM ledger_events")}
    assert kinds == set(EVENT_TYPES)


@pytest.mark.parametrize("source", [[], ["--from-store"]], ids=["ledger", "store"])
def test_rebuild_check_finds_no_difference_in_an_untouched_projection(scenario: Scenario, source: list[str]) -> None:
    result = cli(scenario.env, "rebuild", "--check", *source, "--format", "json")
    report = json.loads(result.stdout)
    assert report["identical"] is True
    assert report["events"] == scenario.events
    assert all(t["only_live"] == t["only_rebuilt"] == 0 for t in report["tables"].values())


@pytest.mark.parametrize("source", [[], ["--from-store"]], ids=["ledger", "store"])
def test_rebuild_equals_the_live_projection_row_for_row(copy_of, source: list[str], tmp_path: Path) -> None:
    settings, env = copy_of()
    before = tmp_path / "before.duckdb"
    shutil.copyfile(settings.projection_path, before)
    result = json.loads(cli(env, "rebuild", *source, "--format", "json").stdout)
    assert result["handed_over"] == "installed"  # no projector runs: the rebuild installs the file itself
    assert result["source"] == ("store" if source else "ledger")
    # Nothing was published meanwhile, so even the offsets (read as ar.ledger's end for --from-store) agree.
    assert row_differences(before, settings.projection_path) == {}
    assert row_differences(before, settings.snapshot_path) == {}  # and the published snapshot is the new file
    assert not (settings.home / "projections.rebuilt.duckdb").exists()


ALTERATIONS = {
    "update": ("items", "UPDATE items SET open_amount = open_amount + 1 "
                        "WHERE (invoice_id, installment) = ('INV2', 2)"),
    "delete": ("allocations", "DELETE FROM allocations WHERE position = (SELECT min(position) FROM allocations)"),
    "insert": ("collection_actions", "INSERT INTO collection_actions SELECT position + 100000, customer_id, "
                                     "'visit', invoice_id, outcome, note, taken_by, action_on, recorded_at "
                                     "FROM collection_actions LIMIT 1"),
    "json": ("ledger_events", "UPDATE ledger_events SET data = json_object('amount', 1) "
                              "WHERE position = (SELECT max(position) FROM ledger_events)"),
}


@pytest.mark.parametrize("source", [[], ["--from-store"]], ids=["ledger", "store"])
@pytest.mark.parametrize("alteration", sorted(ALTERATIONS))
def test_rebuild_check_finds_a_row_altered_by_hand(copy_of, source: list[str], alteration: str) -> None:
    settings, env = copy_of()
    table, sql = ALTERATIONS[alteration]
    connection = duckdb.connect(str(settings.projection_path))
    connection.execute(sql)
    connection.close()
    result = cli(env, "rebuild", "--check", *source, "--format", "json", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["identical"] is False
    differing = {name for name, t in report["tables"].items() if t["only_live"] or t["only_rebuilt"]}
    assert differing == {table}
    counts = report["tables"][table]
    assert (counts["only_live"], counts["only_rebuilt"]) == {
        "update": (1, 1), "delete": (0, 1), "insert": (1, 0), "json": (1, 1)}[alteration]
    text = cli(env, "rebuild", "--check", *source, check=False)
    assert text.returncode == 1 and "DIFFERENCES FOUND" in text.stdout and table in text.stdout


def test_a_projector_started_later_adopts_a_rebuild_nobody_took(copy_of) -> None:
    settings, env = copy_of()
    holder = duckdb.connect(str(settings.projection_path), read_only=True)  # the file is in use: no install
    try:
        result = cli(env, "rebuild", "--timeout", "1", "--format", "json", check=False)
    finally:
        holder.close()
    assert result.returncode == 3, result.stdout + result.stderr
    assert json.loads(result.stdout)["handed_over"] == "pending"
    rebuilt = settings.home / "projections.rebuilt.duckdb"
    assert rebuilt.exists()
    with running_workers(env, "project", log_path=settings.home / "workers.log") as workers:
        wait_until(lambda: not rebuilt.exists(), "the projector to adopt the rebuilt file")
        wait_until(lambda: "rebuilt_adopted" in workers.log_tail(200) or workers.process.poll() is not None,
                   "the adoption to be logged")
    assert cli(env, "rebuild", "--check").returncode == 0


# -- A rebuild while the projector runs ------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("source", [[], ["--from-store"]], ids=["ledger", "store"])
def test_a_rebuild_while_the_projector_runs_loses_nothing(kafka_settings: Settings, kafka_env: dict[str, str],
                                                          tmp_path: Path, source: list[str]) -> None:
    from arledger.generate import generate

    env = kafka_env
    lines = list(generate(customers=40, months=6, seed=5, bad_share=0.0))
    first, second, third = lines[: len(lines) // 3], lines[len(lines) // 3: 2 * len(lines) // 3], \
        lines[2 * len(lines) // 3:]
    with running_workers(env, log_path=tmp_path / "workers.log") as workers:
        ingest_wait(env, _jsonl(tmp_path / "first.jsonl", first))
        # Ingest the second part while the rebuild runs, so events arrive before, during and after the swap.
        ingesting = subprocess.Popen([*ARLEDGER, "ingest", str(_jsonl(tmp_path / "second.jsonl", second))],
                                     env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)
        rebuilt = json.loads(cli(env, "rebuild", *source, "--format", "json",
                                 timeout_s=REBUILD_RUN_TIMEOUT_S).stdout)
        assert ingesting.wait(timeout=REBUILD_RUN_TIMEOUT_S) == 0, ingesting.stderr.read()
        ingest_wait(env, _jsonl(tmp_path / "third.jsonl", third))
        assert rebuilt["handed_over"] == "adopted"
        assert "rebuilt_adopted" in workers.log_tail(100_000)
    ledger = Ledger(kafka_settings.store_url)
    try:
        chained = ledger.chain().last_position
        assert ledger.relay_caught_up()
    finally:
        ledger.close()
    assert rebuilt["max_position"] < chained  # the projector kept folding new events after the swap
    positions = query(kafka_settings.projection_path,
                      "SELECT count(*), count(DISTINCT position), min(position), max(position) FROM ledger_events")
    assert positions == [(chained, chained, 1, chained)]
    # ... and what it folded is exactly what a fresh rebuild of ar.ledger gives.
    assert json.loads(cli(env, "rebuild", "--check", "--format", "json").stdout)["identical"] is True
    end = _end_offsets(kafka_settings)
    assert dict(query(kafka_settings.projection_path,
                      "SELECT partition, next_offset FROM projection_offsets")) == {p: o for p, o in end.items() if o}


def _jsonl(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(line.rstrip(b"\n") + b"\n" for line in lines))
    return path


def _end_offsets(settings: Settings) -> dict[int, int]:
    from consumers.publisher import end_offsets

    return end_offsets(settings, settings.topic(TOPIC_LEDGER))
