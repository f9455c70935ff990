"""Edges where the contract's wording decides: ids of never-approved orders, huge amounts, early reversals."""

from __future__ import annotations

from ledger.application import Ledger
from ledger import events as e
from tests.builders import (
    day,
    given,
    of_kind,
    order_cancelled,
    order_placed,
    payment,
    process,
    registered,
    reversal,
    sale,
)


def test_a_blocked_order_cancelled_may_be_placed_again_under_its_id() -> None:
    """§8: only approved or released orders keep their id; a blocked one never was."""
    account = given(
        registered(limit=100),
        order_placed("O1", 500, on="2026-03-01"),  # blocked: over the limit
        order_cancelled("O1", on="2026-03-02"),
    )

    events = account.when(order_placed("O1", 50, on="2026-03-03"))

    assert [type(event) for event in events] == [e.OrderPlaced, e.OrderApproved]


def test_an_amount_above_two_to_the_53_is_an_invalid_amount() -> None:
    ledger = Ledger("memory://")
    outcomes = process(ledger, registered(), sale("I1", 2**53, issued_on="2026-03-01"))

    assert [(o.status, o.reason) for o in outcomes] == [("accepted", None), ("rejected", "invalid_amount")]


def test_a_reversal_dated_before_its_payment_is_dated_on_the_payment() -> None:
    account = given(
        registered(),
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 100, received_on="2026-03-10"),
    )

    events = account.when(reversal("P1", on="2026-03-05"))

    (reversed_event,) = of_kind(events, e.PaymentReversed)
    assert reversed_event.reversed_on == day("2026-03-10")
    item = account.state.items["I1#1"]
    assert [item.open_as_of(day(d)) for d in ("2026-03-09", "2026-03-10")] == [100, 100]
