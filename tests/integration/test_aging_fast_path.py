"""Aging as of a date on or after every effective date reads the items' current open amounts (fast path);
it must agree exactly with the movement-summing path, and never be taken when it would not."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from projections import reports
from tests import builders
from tests.integration.ledger_fixture import LedgerFixture

B = builders


def scenario(tmp_path: Path) -> LedgerFixture:
    fixture = LedgerFixture(tmp_path / "p.duckdb")
    fixture.batch(B.registered(customer_id="C1"), B.registered(customer_id="C2", currency="USD"))
    fixture.batch(
        B.sale("I1", 10_000, issued_on="2026-01-05", customer_id="C1"),
        B.sale("I2", 5_000, issued_on="2026-02-10", customer_id="C1",
               installments=[("2026-03-10", 2_500), ("2026-04-10", 2_500)]),
        B.payment("P1", 12_000, received_on="2026-03-01", customer_id="C1"),
        B.sale("I3", 7_000, issued_on="2026-01-20", customer_id="C2", currency="USD"),
        B.payment("P2", 4_000, received_on="2026-02-01", customer_id="C2", currency="USD"),
        B.reversal("P1", on="2026-03-15", customer_id="C1"),
        B.write_off("I3", on="2026-04-01", customer_id="C2"),
    )
    return fixture


def test_the_fast_path_agrees_with_summing_the_movements(tmp_path: Path) -> None:
    connection = scenario(tmp_path).connection
    as_of = dt.date(2026, 6, 30)
    assert reports.everything_effective_by(connection, as_of)

    fast = reports.aging(connection, as_of)
    slow = reports.aging(connection, as_of, known_at=reports.FAR_FUTURE)  # the movement path, same knowledge

    assert fast["rows"] == slow["rows"] and fast["totals"] == slow["totals"]
    assert fast["rows"], "the scenario leaves something open"


def test_a_date_before_the_last_movement_sums_the_movements(tmp_path: Path) -> None:
    connection = scenario(tmp_path).connection
    as_of = dt.date(2026, 3, 5)  # after P1, before its reversal: I1 was paid then
    assert not reports.everything_effective_by(connection, as_of)

    rows = {row["customer_id"]: row for row in reports.aging(connection, as_of)["rows"]}

    assert rows["C1"]["open"] == 10_000 + 5_000 - 12_000
