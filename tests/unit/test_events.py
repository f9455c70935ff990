"""Domain events as stored (STYLE §4): round trips, older forms without later-added fields, upcasting."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.builders import given, payment, reversal, sale
from ledger import events as e
from ledger.upcasting import upcast


def test_every_event_of_a_history_round_trips_through_its_stored_form() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01", installments=[("2026-04-01", 40), ("2026-05-01", 60)]),
        payment("P1", 150, received_on="2026-03-02"),
        reversal("P1", on="2026-03-03"),
    )

    for event in account.history:
        kind = event.__struct_config__.tag
        data = e.event_to_data(event)
        assert "kind" not in data
        assert e.event_from_data(kind, upcast(kind, data, e.SCHEMA_VERSION)) == event


def test_every_event_type_has_a_unique_tag_and_a_fold() -> None:
    from ledger.account import _FOLDERS

    tags = [cls.__struct_config__.tag for cls in e.AnyDomainEvent.__args__]
    assert len(tags) == len(set(tags)) == len(e.EVENT_TYPES)
    assert set(_FOLDERS) == set(e.EVENT_TYPES.values())


@pytest.mark.parametrize("kind, old_data, field, default", [
    ("unapplied_cash.removed", {"source_id": "P1", "amount": 5, "effective_on": "2026-03-01"}, "from_remainder", True),
    ("item.written_off", {"invoice_id": "I1", "installment": 1, "amount": 5, "effective_on": "2026-03-01"},
     "closes_item", False),
])
def test_an_event_stored_before_a_field_was_added_reads_with_its_default(kind, old_data, field, default) -> None:
    event = e.event_from_data(kind, upcast(kind, old_data, e.SCHEMA_VERSION))

    assert getattr(event, field) == default
    assert event.effective_on == dt.date(2026, 3, 1)


def test_upcast_leaves_current_events_alone_and_refuses_events_from_the_future() -> None:
    data = {"payment_id": "P1", "amount": 5, "reason": "bounced", "reversed_on": "2026-03-01"}

    assert upcast("payment.reversed", data, e.SCHEMA_VERSION) == data
    with pytest.raises(AssertionError):
        upcast("payment.reversed", data, e.SCHEMA_VERSION + 1)
