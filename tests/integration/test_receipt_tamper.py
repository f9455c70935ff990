"""Idempotency receipts are tamper-evident: `verify` names a receipt altered, deleted or forged by hand.

A receipt decides an outcome (a re-sent envelope is a duplicate, a redelivered one re-publishes its
decision), so it is covered like the events: its hash chains its claims (envelope id, digest, customer,
type, versions, recorded time, origin) to the customer hash of the last event its envelope produced.
These tests edit the SQLite store directly, then run the store checks of `verify` (no Kafka needed).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from arledger.settings import Settings
from consumers import audit
from ledger.aggregate import EnvelopeReceipt, receipt_id
from ledger.application import Ledger
from tests import builders as b

RECEIPT_TOPIC = "ledger.aggregate:EnvelopeReceipt.Accepted"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(f"sqlite:///{path}")
    b.process(ledger, b.registered(), b.sale("I1", 1_000, issued_on="2026-01-02"),
              b.payment("P1", 400, received_on="2026-01-05"), b.order_placed("O1", 300, on="2026-01-06"))
    ledger.close()
    return path


def verify(path: Path) -> audit.VerifyReport:
    settings = Settings(home=path.parent, broker_port=1, kafka_bootstrap="unused:1", store_url=f"sqlite:///{path}")
    return audit.verify(settings, skip=frozenset({"topic", "projection"}))


def receipt_rows(path: Path) -> list[tuple[int, str, bytes]]:
    """(rowid, originator id, state) of every stored receipt, in recorded order."""
    with sqlite3.connect(path) as connection:
        return [(rowid, originator, bytes(state)) for rowid, originator, state in connection.execute(
            "SELECT rowid, originator_id, state FROM stored_events WHERE topic = ? ORDER BY rowid", [RECEIPT_TOPIC])]


def edit(path: Path, sql: str, parameters: list[Any]) -> None:
    connection = sqlite3.connect(path)
    connection.execute(sql, parameters)
    connection.commit()
    connection.close()


def receipt_problems(report: audit.VerifyReport) -> list[str]:
    return [problem.describe() for problem in report.problems if problem.check == "receipts"]


def test_untouched_receipts_verify_and_carry_a_hash(store: Path):
    report = verify(store)
    assert report.ok, [problem.describe() for problem in report.problems]
    assert report.receipts == len(receipt_rows(store)) == 4
    _, _, state = receipt_rows(store)[0]
    envelope_id = state.split(b'"envelope_id":"', 1)[1].split(b'"', 1)[0].decode()
    ledger = Ledger(f"sqlite:///{store}")
    try:
        receipt = ledger.receipt(envelope_id)
        assert isinstance(receipt, EnvelopeReceipt) and receipt.hash and len(receipt.hash) == 64
        assert ledger.receipt("never-accepted") is None
    finally:
        ledger.close()


@pytest.mark.parametrize("field", ["digest", "type", "recorded_at", "origin"])
def test_verify_names_a_receipt_altered_by_hand(store: Path, field: str):
    rowid, originator, state = receipt_rows(store)[2]
    anchor = f'"{field}":'.encode()
    assert anchor in state
    index = state.index(anchor) + len(anchor)
    if field == "origin":  # null → a made-up offset: the record would pass for a redelivery
        changed = state[:index] + state[index:].replace(b"null", b'"ar.inbound:0:7"', 1)
    else:
        value_at = index + 2  # after the opening quote, one character in
        changed = state[:value_at] + (b"0" if state[value_at:value_at + 1] != b"0" else b"1") + state[value_at + 1:]
    assert changed != state
    edit(store, "UPDATE stored_events SET state = ? WHERE rowid = ?", [changed, rowid])
    report = verify(store)
    assert not report.ok
    problems = receipt_problems(report)
    assert len(problems) == 1 and "does not match its hash" in problems[0], problems
    assert report.problems[0].notification_id == rowid


def test_verify_names_a_deleted_receipt(store: Path):
    rowid, _, state = receipt_rows(store)[1]
    envelope_id = state.split(b'"envelope_id":"', 1)[1].split(b'"', 1)[0].decode()
    edit(store, "DELETE FROM stored_events WHERE rowid = ?", [rowid])
    report = verify(store)
    assert not report.ok
    problems = receipt_problems(report)
    assert len(problems) == 1 and f"events of envelope {envelope_id} have no receipt" in problems[0], problems


def test_verify_names_a_forged_receipt(store: Path):
    """A copy of a real receipt re-filed under a new envelope id: its claims no longer match its events."""
    _, _, state = receipt_rows(store)[1]
    envelope_id = state.split(b'"envelope_id":"', 1)[1].split(b'"', 1)[0].decode()
    forged_state = state.replace(envelope_id.encode(), b"forged-envelope")
    edit(store, "INSERT INTO stored_events (originator_id, originator_version, topic, state) VALUES (?, 1, ?, ?)",
         [receipt_id("forged-envelope").hex, RECEIPT_TOPIC, forged_state])
    report = verify(store)
    assert not report.ok
    problems = receipt_problems(report)
    assert problems and all("forged-envelope" in text for text in problems), problems


def test_verify_names_a_receipt_whose_hash_was_removed(store: Path):
    rowid, _, state = receipt_rows(store)[3]
    start = state.index(b',"hash":"')
    stripped = state[:start] + state[start + len(b',"hash":"') + 64 + 1:]  # the field and its value
    edit(store, "UPDATE stored_events SET state = ? WHERE rowid = ?", [stripped, rowid])
    report = verify(store)
    assert not report.ok
    problems = receipt_problems(report)
    assert len(problems) == 1 and "carry no hash" in problems[0], problems
