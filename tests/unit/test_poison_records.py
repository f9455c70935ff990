"""A record that makes the ledger's own code fail (a bug, not a rule) is set aside; it never stalls a batch."""

from __future__ import annotations

import pytest

from consumers.ingest import IngestWorker
from ledger import account
from ledger.application import Ledger, PoisonRecord
from tests.builders import record, registered, sale


@pytest.fixture
def buggy_sales(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a bug: the sale rule crashes on invoice BUG."""
    original = account._HANDLERS[account.c.SaleRecordedData]

    def crashing(state, data, day, emit, policy):  # noqa: ANN001
        if data.invoice_id == "BUG":
            raise ZeroDivisionError("a bug in a rule")
        return original(state, data, day, emit, policy)

    monkeypatch.setitem(account._HANDLERS, account.c.SaleRecordedData, crashing)


def batch() -> list:
    return [record(registered()), record(sale("I1", 100, issued_on="2026-03-01")),
            record(sale("BUG", 100, issued_on="2026-03-01")), record(sale("I2", 50, issued_on="2026-03-02"))]


def test_a_failing_record_saves_nothing_of_the_batch_and_names_itself(buggy_sales: None) -> None:
    ledger = Ledger("memory://")

    with pytest.raises(PoisonRecord) as raised:
        ledger.process_batch(batch())

    assert raised.value.index == 2
    assert isinstance(raised.value.error, ZeroDivisionError)
    assert ledger.account("C1") is None  # nothing saved, nothing cached


def test_the_ingest_worker_sets_the_record_aside_and_applies_the_rest(buggy_sales: None) -> None:
    worker = IngestWorker.__new__(IngestWorker)  # only its ledger step, no Kafka needed here
    worker.ledger = Ledger("memory://")

    outcomes = worker._apply_isolating_poison(batch())

    assert [(o.status, o.reason) for o in outcomes] == [
        ("accepted", None), ("accepted", None), ("rejected", "internal_error"), ("accepted", None)]
    state = worker.ledger.account("C1")
    assert sorted(state.invoices) == ["I1", "I2"]
