"""Projector poison events (issue 17): a record the fold cannot apply is set aside with its error, the rest
keeps flowing, the offsets advance, and a redrive folds it once the fold is fixed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ledger_fixture import LEDGER_TOPIC, LedgerFixture, builders as b
from projections import fold


@pytest.fixture
def fx(tmp_path: Path) -> LedgerFixture:
    fixture = LedgerFixture(tmp_path / "p.duckdb")
    fixture.batch(b.registered(customer_id="D1"), b.registered(customer_id="D2"))
    yield fixture
    fixture.close()


def _records(fx: LedgerFixture, *envelopes) -> list[bytes]:
    """ar.ledger records of `envelopes` (through the real ledger), not folded yet."""
    import ledger_fixture

    folded: list[bytes] = []
    original = fold.apply_batch

    ledger_fixture.fold.apply_batch = lambda connection, records, offsets, **_: folded.extend(records)
    try:
        fx.batch(*envelopes)
    finally:
        ledger_fixture.fold.apply_batch = original
    return folded


def _origins(records: list[bytes]) -> list[tuple[str, int, int]]:
    return [(LEDGER_TOPIC, 0, 100 + index) for index in range(len(records))]


def _poison(record: bytes) -> bytes:
    """The same record with an amount the fold cannot cast to BIGINT: a deliberately failing event."""
    decoded = json.loads(record)
    decoded["data"]["amount"] = "not a number"
    return json.dumps(decoded).encode()


def test_a_failing_record_is_set_aside_and_the_rest_keeps_flowing(fx: LedgerFixture) -> None:
    records = _records(fx, b.sale("S1", 1_000, issued_on="2026-01-10", customer_id="D1"),
                       b.sale("S2", 2_000, issued_on="2026-01-10", customer_id="D2"),
                       b.payment("P2", 500, received_on="2026-01-20", customer_id="D2"))
    kinds = [json.loads(r)["kind"] for r in records]
    poisoned = kinds.index("sale.recorded")  # S1's sale record
    records[poisoned] = _poison(records[poisoned])
    result, dead = fold.fold_or_set_aside(fx.connection, records, {(LEDGER_TOPIC, 0): 100 + len(records)},
                                          _origins(records))
    assert [letter.index for letter in dead] == [poisoned]
    assert result.applied == len(records) - 1
    letters = fold.dead_letters(fx.connection)
    assert [(l["record_offset"], l["kind"], l["customer_id"]) for l in letters] == [
        (100 + poisoned, "sale.recorded", "D1")]
    assert "Conversion" in letters[0]["error"]
    assert fold.stored_offsets(fx.connection, LEDGER_TOPIC) == {0: 100 + len(records)}
    balances = dict(fx.connection.execute("SELECT customer_id, balance FROM customer_balances").fetchall())
    assert balances["D2"] == 1_500  # D2's records all folded
    # again (a replay after a crash): nothing applied twice, the letter counted once more
    fold.fold_or_set_aside(fx.connection, records, {(LEDGER_TOPIC, 0): 100 + len(records)}, _origins(records))
    assert fx.connection.execute("SELECT attempts FROM dead_letters").fetchone() == (2,)
    assert dict(fx.connection.execute("SELECT customer_id, balance FROM customer_balances").fetchall())["D2"] == 1_500


def test_redrive_folds_the_record_once_the_fold_is_fixed(fx: LedgerFixture, monkeypatch) -> None:
    records = _records(fx, b.sale("S1", 1_000, issued_on="2026-01-10", customer_id="D1"),
                       b.payment("P1", 400, received_on="2026-01-20", allocations=[("S1", 400)], customer_id="D1"))
    # A bug in the fold: item.opened records fail (the statement inserting items casts a bad string).
    broken = tuple(s.replace("(data->>'$.amount')::BIGINT, c.currency", "('x' || (data->>'$.amount'))::BIGINT, "
                             "c.currency") for s in fold.FOLD_STATEMENTS)
    assert broken != fold.FOLD_STATEMENTS
    monkeypatch.setattr(fold, "FOLD_STATEMENTS", broken)
    _, dead = fold.fold_or_set_aside(fx.connection, records, {(LEDGER_TOPIC, 0): 200}, _origins(records))
    opened = [json.loads(records[letter.index])["kind"] for letter in dead]
    assert opened == ["item.opened"]
    assert fold.redrive(fx.connection) == (0, 1)  # not fixed yet: still set aside
    monkeypatch.undo()  # the fix
    assert fold.redrive(fx.connection) == (1, 0)
    assert fold.dead_letters(fx.connection) == []
    # the allocation folded while the item was set aside counts now: 1,000 − 400
    assert fx.connection.execute("SELECT open_amount FROM items WHERE invoice_id = 'S1'").fetchone() == (600,)
    assert fx.connection.execute("SELECT balance FROM customer_balances WHERE customer_id = 'D1'").fetchone() == (600,)
