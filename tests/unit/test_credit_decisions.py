"""Orders, credit decisions, breaches, holds, limits and terms (docs/contract.md §3, §7, §8), on the pure rules."""

from __future__ import annotations

import pytest

from tests.builders import (
    day,
    dispute_opened,
    given,
    hold_placed,
    hold_released,
    limit_changed,
    of_kind,
    order_cancelled,
    order_placed,
    order_released,
    payment,
    registered,
    sale,
    terms_changed,
)
from ledger import events as e
from ledger.account import CreditPolicy
from ledger.errors import CurrencyMismatch, DuplicateReference, InvalidState, UnknownOrder


def decision(events: list[e.DomainEvent]) -> e.OrderDecided:
    (decided,) = [event for event in events if isinstance(event, e.OrderDecided)]
    return decided


def verdict(events: list[e.DomainEvent]) -> tuple[str, str | None]:
    decided = decision(events)
    return ("approved" if isinstance(decided, e.OrderApproved) else "blocked", decided.reason)


# -- Decisions and their figures ------------------------------------------------------------------


def test_order_within_the_limit_is_approved_with_its_figures() -> None:
    account = given(registered(limit=1000), sale("I1", 600, issued_on="2026-03-01"))

    events = account.when(order_placed("O1", 400, on="2026-03-05"))

    decided = decision(events)
    assert isinstance(decided, e.OrderApproved) and decided.reason is None
    # exposure + amount = 1000 ≤ 1000; the reported exposure excludes the order itself.
    assert (decided.credit_limit, decided.exposure, decided.available) == (1000, 600, 400)
    assert (decided.amount, decided.currency, decided.decided_on) == (400, "EUR", day("2026-03-05"))
    assert of_kind(events, e.OrderPlaced)[0].order_id == "O1"


def test_order_over_the_limit_is_blocked_with_its_figures() -> None:
    account = given(registered(limit=1000), sale("I1", 600, issued_on="2026-03-01"))

    events = account.when(order_placed("O1", 401, on="2026-03-05"))

    decided = decision(events)
    assert verdict(events) == ("blocked", "over_limit")
    assert (decided.credit_limit, decided.exposure, decided.available) == (1000, 600, 400)


def test_decision_reasons_are_checked_on_hold_then_overdue_then_over_limit() -> None:
    account = given(
        registered(limit=100),
        sale("I1", 200, issued_on="2026-01-01", due_on="2026-01-31"),  # over the limit, and overdue by March
        hold_placed(on="2026-03-01"),
    )

    assert verdict(account.when(order_placed("O1", 10, on="2026-03-10"))) == ("blocked", "on_hold")
    account.when(hold_released(on="2026-03-11"))
    assert verdict(account.when(order_placed("O2", 10, on="2026-03-12"))) == ("blocked", "overdue_beyond_tolerance")
    account.when(dispute_opened("I1", on="2026-03-12"))  # disputed items do not count as overdue
    assert verdict(account.when(order_placed("O3", 10, on="2026-03-13"))) == ("blocked", "over_limit")


@pytest.mark.parametrize("order_on, expected", [
    ("2026-03-31", ("approved", None)),  # exactly 30 days past due passes
    ("2026-04-01", ("blocked", "overdue_beyond_tolerance")),  # 31 days blocks
])
def test_overdue_tolerance_is_thirty_days(order_on: str, expected) -> None:
    account = given(sale("I1", 100, issued_on="2026-02-01", due_on="2026-03-01"))

    assert verdict(account.when(order_placed("O1", 10, on=order_on))) == expected


def test_overdue_tolerance_is_configurable() -> None:
    account = given(sale("I1", 100, issued_on="2026-02-01", due_on="2026-03-01"),
                    policy=CreditPolicy(overdue_tolerance_days=10))

    assert verdict(account.when(order_placed("O1", 10, on="2026-03-11"))) == ("approved", None)
    assert verdict(account.when(order_placed("O2", 10, on="2026-03-12"))) == ("blocked", "overdue_beyond_tolerance")


def test_an_item_paid_after_the_order_date_still_counts_as_overdue_on_that_date() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-02-01", due_on="2026-03-01"),
        payment("P1", 100, received_on="2026-04-05"),  # recorded first, value date after the order
    )

    assert verdict(account.when(order_placed("O1", 10, on="2026-04-01"))) == ("blocked", "overdue_beyond_tolerance")
    assert verdict(account.when(order_placed("O2", 10, on="2026-04-05"))) == ("approved", None)


def test_an_item_disputed_after_the_order_date_still_counts_as_overdue_on_that_date() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-02-01", due_on="2026-03-01"),
        dispute_opened("I1", on="2026-04-10"),
    )

    assert verdict(account.when(order_placed("O1", 10, on="2026-04-05"))) == ("blocked", "overdue_beyond_tolerance")
    assert verdict(account.when(order_placed("O2", 10, on="2026-04-10"))) == ("approved", None)


def test_decision_figures_are_as_of_the_order_business_date() -> None:
    account = given(
        registered(limit=1000),
        sale("I1", 300, issued_on="2026-03-01"),
        sale("I2", 500, issued_on="2026-03-20"),  # recorded before the order, issued after it
        limit_changed(2000, on="2026-03-10"),
    )

    decided = decision(account.when(order_placed("O1", 100, on="2026-03-05")))

    assert (decided.credit_limit, decided.exposure, decided.available) == (1000, 300, 700)


def test_order_in_another_currency_is_rejected() -> None:
    account = given()

    with pytest.raises(CurrencyMismatch):
        account.when(order_placed("O1", 100, on="2026-03-01", currency="USD"))


# -- Open orders in exposure ----------------------------------------------------------------------


def test_approved_orders_count_in_exposure_until_invoiced() -> None:
    account = given(registered(limit=1000), order_placed("O1", 400, on="2026-03-01"))
    assert account.state.exposure_as_of(day("2026-03-01")) == 400

    assert decision(account.when(order_placed("O2", 100, on="2026-03-02"))).exposure == 400

    events = account.when(sale("I1", 450, issued_on="2026-03-03", order_id="O1"))  # amounts need not match
    (invoiced,) = of_kind(events, e.OrderInvoiced)
    assert (invoiced.order_id, invoiced.invoice_id, invoiced.was_in_exposure) == ("O1", "I1", True)
    assert account.state.open_orders_as_of(day("2026-03-03")) == 100  # only O2
    assert account.state.exposure_as_of(day("2026-03-03")) == 550
    assert account.state.exposure_as_of(day("2026-03-02")) == 500  # as of the day before: both orders


def test_approved_orders_count_in_exposure_until_cancelled() -> None:
    account = given(registered(limit=1000), order_placed("O1", 400, on="2026-03-01"))

    events = account.when(order_cancelled("O1", on="2026-03-04"))

    (cancelled,) = of_kind(events, e.OrderCancelled)
    assert cancelled.was_in_exposure
    assert account.state.exposure_as_of(day("2026-03-03")) == 400
    assert account.state.exposure_as_of(day("2026-03-04")) == 0


def test_blocked_orders_do_not_count_in_exposure() -> None:
    account = given(registered(limit=100), order_placed("O1", 400, on="2026-03-01"))

    assert account.state.exposure_as_of(day("2026-03-01")) == 0


def test_a_sale_naming_an_unknown_order_is_accepted() -> None:
    account = given()

    events = account.when(sale("I1", 100, issued_on="2026-03-01", order_id="nope"))

    assert of_kind(events, e.OrderInvoiced) == []
    assert account.open("I1") == 100


def test_a_blocked_order_may_be_placed_again_and_gets_a_new_decision() -> None:
    account = given(
        registered(limit=1000),
        order_placed("O1", 400, on="2026-03-01"),
        order_placed("O2", 700, on="2026-03-02"),  # 400 + 700 > 1000
        order_cancelled("O1", on="2026-03-03"),
    )

    events = account.when(order_placed("O2", 700, on="2026-03-04"))

    assert verdict(events) == ("approved", None)
    assert decision(events).exposure == 0


@pytest.mark.parametrize("closing", ["none", "invoiced", "cancelled"])
def test_reusing_the_id_of_an_approved_order_is_a_duplicate_reference(closing: str) -> None:
    account = given(order_placed("O1", 100, on="2026-03-01"))
    if closing == "invoiced":
        account.when(sale("I1", 100, issued_on="2026-03-02", order_id="O1"))
    elif closing == "cancelled":
        account.when(order_cancelled("O1", on="2026-03-02"))

    with pytest.raises(DuplicateReference):
        account.when(order_placed("O1", 100, on="2026-03-03"))


def test_releasing_a_blocked_order_approves_it_and_counts_it_in_exposure() -> None:
    account = given(registered(limit=100), sale("I1", 80, issued_on="2026-03-01"),
                    order_placed("O1", 50, on="2026-03-02"))

    events = account.when(order_released("O1", on="2026-03-03"))

    assert of_kind(events, e.OrderReleased)[0].order_id == "O1"
    decided = decision(events)
    assert verdict(events) == ("approved", "released")
    assert (decided.amount, decided.credit_limit, decided.exposure, decided.available) == (50, 100, 80, 20)
    assert account.state.exposure_as_of(day("2026-03-03")) == 130
    with pytest.raises(DuplicateReference):  # a released order is an approved one
        account.when(order_placed("O1", 50, on="2026-03-04"))


def test_releasing_an_order_that_is_not_blocked_is_invalid_state() -> None:
    account = given(order_placed("O1", 50, on="2026-03-02"))

    with pytest.raises(InvalidState):
        account.when(order_released("O1", on="2026-03-03"))


def test_releasing_or_cancelling_an_unknown_order_is_unknown_order() -> None:
    account = given()

    with pytest.raises(UnknownOrder):
        account.when(order_released("O9", on="2026-03-03"))
    with pytest.raises(UnknownOrder):
        account.when(order_cancelled("O9", on="2026-03-03"))


# -- Breaches ---------------------------------------------------------------------------------------


def test_every_sale_leaving_exposure_over_the_limit_records_a_breach_crossing_only_from_within() -> None:
    account = given(registered(limit=1000))

    assert of_kind(account.when(sale("I1", 600, issued_on="2026-03-01")), e.CreditLimitBreached) == []
    (first,) = of_kind(account.when(sale("I2", 500, issued_on="2026-03-02")), e.CreditLimitBreached)
    (second,) = of_kind(account.when(sale("I3", 100, issued_on="2026-03-03")), e.CreditLimitBreached)
    account.when(payment("P1", 700, received_on="2026-03-04"))  # exposure 500
    (third,) = of_kind(account.when(sale("I4", 600, issued_on="2026-03-05")), e.CreditLimitBreached)

    assert [(b.invoice_id, b.exposure, b.credit_limit, b.crossing) for b in (first, second, third)] == [
        ("I2", 1100, 1000, True), ("I3", 1200, 1000, False), ("I4", 1100, 1000, True)]
    assert first.breached_on == day("2026-03-02")


def test_breach_is_judged_after_the_order_is_closed_and_cash_applied() -> None:
    account = given(
        registered(limit=1000),
        payment("P1", 300, received_on="2026-03-01"),
        order_placed("O1", 900, on="2026-03-02"),  # exposure -300 + 900 = 600
    )

    events = account.when(sale("I1", 1200, issued_on="2026-03-03", order_id="O1"))

    # Without the order and with P1 applied: exposure 900 ≤ 1000, no breach.
    assert of_kind(events, e.CreditLimitBreached) == []
    assert account.state.exposure_as_of(day("2026-03-03")) == 900


# -- Holds, limits, grades and terms as of a date ---------------------------------------------------


def test_hold_is_in_force_from_its_business_date() -> None:
    account = given(hold_placed(on="2026-03-10"))

    assert verdict(account.when(order_placed("O1", 10, on="2026-03-09"))) == ("approved", None)
    assert verdict(account.when(order_placed("O2", 10, on="2026-03-10"))) == ("blocked", "on_hold")
    account.when(hold_released(on="2026-03-20"))
    assert verdict(account.when(order_placed("O3", 10, on="2026-03-20"))) == ("approved", None)
    assert verdict(account.when(order_placed("O4", 10, on="2026-03-19"))) == ("blocked", "on_hold")


def test_releasing_a_hold_with_none_in_effect_is_invalid_state() -> None:
    account = given()

    with pytest.raises(InvalidState):
        account.when(hold_released(on="2026-03-05"))


def test_releasing_a_hold_before_its_business_date_is_invalid_state() -> None:
    account = given(hold_placed(on="2026-03-10"))

    with pytest.raises(InvalidState):
        account.when(hold_released(on="2026-03-05"))


def test_limit_as_of_a_date_is_the_latest_change_dated_on_or_before_it() -> None:
    account = given(
        registered(limit=1000),
        limit_changed(2000, on="2026-03-10"),
        limit_changed(500, on="2026-03-05"),  # recorded later, dated earlier
        limit_changed(700, on="2026-03-10"),  # same date: the later recorded wins
    )

    limits = [account.state.credit_limit_as_of(day(d)) for d in ("2026-01-01", "2026-03-04", "2026-03-05",
                                                                  "2026-03-09", "2026-03-10")]
    assert limits == [1000, 1000, 500, 500, 700]


def test_registration_limit_holds_from_the_start_of_time() -> None:
    account = given(registered(limit=1000, on="2026-06-01"))

    assert account.state.credit_limit_as_of(day("2020-01-01")) == 1000


def test_grade_as_of_a_date_is_the_latest_assignment_dated_on_or_before_it() -> None:
    from tests.builders import grade_assigned

    account = given(registered(grade="A"), grade_assigned("C", on="2026-03-10"))

    assert account.state.grade_as_of(day("2026-03-09")) == "A"
    assert account.state.grade_as_of(day("2026-03-10")) == "C"


def test_default_due_date_is_issued_on_plus_the_terms_in_force() -> None:
    account = given(registered(terms=30))
    assert account.when(sale("I1", 100, issued_on="2026-03-01"))[0].due_on == day("2026-03-31")

    account.when(terms_changed(10, on="2026-03-05"))

    (recorded,) = of_kind(account.when(sale("I2", 100, issued_on="2026-03-06")), e.SaleRecorded)
    assert recorded.due_on == day("2026-03-16")
    assert account.item("I2").due_on == day("2026-03-16")


def test_explicit_due_on_overrides_the_terms() -> None:
    account = given(registered(terms=30))

    account.when(sale("I1", 100, issued_on="2026-03-01", due_on="2026-03-15"))

    assert account.item("I1").due_on == day("2026-03-15")


def test_installments_override_due_on_and_are_numbered_in_listed_order() -> None:
    account = given(registered(terms=30))

    events = account.when(sale("I1", 100, issued_on="2026-03-01", due_on="2026-03-15",
                               installments=[("2026-04-01", 30), ("2026-05-01", 30), ("2026-05-01", 40)]))

    opened = [(x.installment, x.amount, x.due_on) for x in of_kind(events, e.ItemOpened)]
    assert opened == [(1, 30, day("2026-04-01")), (2, 30, day("2026-05-01")), (3, 40, day("2026-05-01"))]
    assert of_kind(events, e.SaleRecorded)[0].installment_count == 3
