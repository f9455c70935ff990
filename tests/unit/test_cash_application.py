"""Application of cash and credit (docs/contract.md §7, §8): given facts → when a fact → then the events it records.

Figures are small and computed by hand in the comments.
"""

from __future__ import annotations

import pytest

from ledger import events as e
from ledger.account import cash_application
from ledger.errors import AllocationExceedsOpen, CreditNoteExceedsInvoice, InvalidAmount, InvalidState
from tests.builders import (
    allocations,
    assert_cash_invariant,
    credit_note,
    day,
    dispute_opened,
    dispute_resolved,
    given,
    of_kind,
    payment,
    reversal,
    sale,
    write_off,
)

# -- Automatic application (FIFO) ------------------------------------------------------------------


def test_payment_without_allocations_settles_the_oldest_due_date_first() -> None:
    account = given(
        sale("I2", 100, issued_on="2026-03-01", due_on="2026-03-20"),
        sale("I1", 100, issued_on="2026-03-05", due_on="2026-03-10"),
    )

    events = account.when(payment("P1", 150, received_on="2026-03-15"))

    assert allocations(events) == [("I1", 1, 100), ("I2", 1, 50)]
    assert account.open("I1") == 0 and account.open("I2") == 50
    assert account.state.unapplied() == 0


def test_equal_due_dates_are_settled_by_invoice_id_then_installment() -> None:
    account = given(
        sale("B", 50, issued_on="2026-03-01", due_on="2026-04-01"),
        sale("A", 50, issued_on="2026-03-02", installments=[("2026-04-01", 30), ("2026-04-01", 20)]),
    )

    events = account.when(payment("P1", 90, received_on="2026-03-15"))

    assert allocations(events) == [("A", 1, 30), ("A", 2, 20), ("B", 1, 40)]


def test_cash_beyond_the_open_items_stays_unapplied() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"))

    events = account.when(payment("P1", 130, received_on="2026-03-02"))

    assert allocations(events) == [("I1", 1, 100)]
    assert account.state.unapplied() == 30
    assert account.state.balance_as_of(day("2026-12-31")) == -30


def test_explicit_allocations_apply_first_spread_over_installments_in_due_order() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01", due_on="2026-03-10"),
        sale("I2", 100, issued_on="2026-03-01", installments=[("2026-04-01", 40), ("2026-05-01", 60)]),
    )

    events = account.when(payment("P1", 150, received_on="2026-03-15", allocations=[("I2", 70)]))

    # 70 to I2 (#1 40, #2 30), then the remaining 80 oldest due first: I1.
    assert allocations(events) == [("I2", 1, 40), ("I2", 2, 30), ("I1", 1, 80)]
    assert [event.explicit for event in of_kind(events, e.CashAllocated)] == [True, True, False]
    assert (account.open("I1"), account.open("I2", 1), account.open("I2", 2)) == (20, 0, 30)


def test_allocation_above_the_invoice_open_amount_is_rejected_and_changes_nothing() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"), payment("P0", 30, received_on="2026-03-02"))
    before = len(account.history)

    with pytest.raises(AllocationExceedsOpen):
        account.when(payment("P1", 100, received_on="2026-03-03", allocations=[("I1", 40), ("I1", 40)]))

    assert len(account.history) == before
    assert "P1" not in account.state.payments


def test_unapplied_cash_is_applied_automatically_to_a_later_sale() -> None:
    account = given(payment("P1", 100, received_on="2026-03-01"))
    assert account.state.unapplied() == 100

    events = account.when(sale("I1", 60, issued_on="2026-03-10"))

    (allocated,) = of_kind(events, e.CashAllocated)
    assert (allocated.source_id, allocated.amount, allocated.effective_on) == ("P1", 60, day("2026-03-10"))
    assert account.state.unapplied() == 40
    assert account.open("I1") == 0


def test_several_unapplied_sources_are_used_oldest_source_date_first() -> None:
    account = given(
        payment("P-late", 50, received_on="2026-03-05"),
        payment("P-early", 50, received_on="2026-03-01"),  # recorded second, dated first
    )

    events = account.when(sale("I1", 70, issued_on="2026-03-10"))

    assert [(a.source_id, a.amount) for a in of_kind(events, e.CashAllocated)] == [("P-early", 50), ("P-late", 20)]


# -- The invariant ----------------------------------------------------------------------------------

INVARIANT_SCENARIOS = {
    "payment then sales": [
        payment("P1", 100, received_on="2026-03-01"),
        sale("I1", 40, issued_on="2026-03-02"),
        sale("I2", 40, issued_on="2026-03-03"),
        sale("I3", 40, issued_on="2026-03-04"),
    ],
    "credit note excess": [
        sale("I1", 100, issued_on="2026-03-01"),
        sale("I2", 100, issued_on="2026-03-02"),
        payment("P1", 100, received_on="2026-03-03", allocations=[("I1", 100)]),
        credit_note("CN1", "I1", 60, on="2026-03-04"),
    ],
    "dispute resolved": [
        sale("I1", 100, issued_on="2026-03-01"),
        dispute_opened("I1", on="2026-03-02"),
        payment("P1", 70, received_on="2026-03-03"),
        dispute_resolved("I1", on="2026-03-04"),
    ],
    "reversal reopens": [
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 100, received_on="2026-03-02"),
        payment("P2", 60, received_on="2026-03-03"),
        reversal("P1", on="2026-03-04"),
    ],
    "write-off then cash": [
        sale("I1", 100, issued_on="2026-03-01"),
        write_off("I1", on="2026-03-02"),
        payment("P1", 60, received_on="2026-03-03"),
        sale("I2", 30, issued_on="2026-03-04"),
    ],
}


@pytest.mark.parametrize("facts", INVARIANT_SCENARIOS.values(), ids=INVARIANT_SCENARIOS.keys())
def test_no_unapplied_cash_while_an_eligible_open_item_exists(facts) -> None:
    account = given()
    for fact in facts:
        account.when(fact)
        assert_cash_invariant(account.state)


# -- Disputes ----------------------------------------------------------------------------------------


def test_disputed_items_are_skipped_by_automatic_application() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01", due_on="2026-03-10"),
        sale("I2", 100, issued_on="2026-03-01", due_on="2026-03-20"),
        dispute_opened("I1", on="2026-03-05"),
    )

    events = account.when(payment("P1", 150, received_on="2026-03-15"))

    assert allocations(events) == [("I2", 1, 100)]
    assert account.state.unapplied() == 50
    assert account.open("I1") == 100
    assert_cash_invariant(account.state)


def test_a_resolved_dispute_picks_up_the_unapplied_cash() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01", due_on="2026-03-10"),
        sale("I2", 100, issued_on="2026-03-01", due_on="2026-03-20"),
        dispute_opened("I1", on="2026-03-05"),
        payment("P1", 150, received_on="2026-03-15"),
    )

    events = account.when(dispute_resolved("I1", on="2026-03-25"))

    (allocated,) = of_kind(events, e.CashAllocated)
    assert (allocated.invoice_id, allocated.amount, allocated.effective_on) == ("I1", 50, day("2026-03-25"))
    assert account.open("I1") == 50 and account.state.unapplied() == 0


def test_explicit_allocation_to_a_disputed_invoice_is_applied() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"), dispute_opened("I1", on="2026-03-02"))

    events = account.when(payment("P1", 100, received_on="2026-03-03", allocations=[("I1", 60)]))

    assert allocations(events) == [("I1", 1, 60)]
    assert account.open("I1") == 40
    assert account.state.unapplied() == 40  # the rest skips the disputed item


def test_dispute_on_an_invoice_already_in_dispute_is_invalid_state() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"), dispute_opened("I1", on="2026-03-02"))

    with pytest.raises(InvalidState):
        account.when(dispute_opened("I1", on="2026-03-03"))


def test_dispute_resolved_with_none_open_is_invalid_state() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"))

    with pytest.raises(InvalidState):
        account.when(dispute_resolved("I1", on="2026-03-03"))


# -- Credit notes -------------------------------------------------------------------------------------


def test_credit_note_reduces_the_latest_installment_first() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01", installments=[("2026-04-01", 40), ("2026-05-01", 60)]))

    events = account.when(credit_note("CN1", "I1", 70, on="2026-03-10"))

    applied = [(a.installment, a.amount, a.effective_on) for a in of_kind(events, e.CreditNoteApplied)]
    assert applied == [(2, 60, day("2026-03-10")), (1, 10, day("2026-03-10"))]
    assert (account.open("I1", 1), account.open("I1", 2)) == (30, 0)
    assert account.state.unapplied() == 0


def test_credit_note_excess_over_the_open_amount_becomes_unapplied_cash() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 70, received_on="2026-03-02"),
    )

    events = account.when(credit_note("CN1", "I1", 50, on="2026-03-10"))

    # 30 still open on I1 is credited; the other 20 is a credit on the account.
    assert [a.amount for a in of_kind(events, e.CreditNoteApplied)] == [30]
    assert [(x.credit_note_id, x.amount) for x in of_kind(events, e.CreditNoteExcessUnapplied)] == [("CN1", 20)]
    assert account.state.unapplied() == 20
    assert account.state.balance_as_of(day("2026-12-31")) == -20


def test_credit_note_excess_is_applied_to_other_open_items() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01"),
        sale("I2", 100, issued_on="2026-03-02"),
        payment("P1", 100, received_on="2026-03-03", allocations=[("I1", 100)]),
    )

    events = account.when(credit_note("CN1", "I1", 60, on="2026-03-10"))

    (allocated,) = of_kind(events, e.CashAllocated)
    assert (allocated.source_kind, allocated.source_id, allocated.invoice_id, allocated.amount) == (
        "credit_note", "CN1", "I2", 60)
    assert allocated.effective_on == day("2026-03-10")
    assert account.open("I2") == 40 and account.state.unapplied() == 0


def test_credit_note_above_the_invoice_minus_earlier_notes_is_rejected() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"), credit_note("CN1", "I1", 60, on="2026-03-02"))

    with pytest.raises(CreditNoteExceedsInvoice):
        account.when(credit_note("CN2", "I1", 41, on="2026-03-03"))

    account.when(credit_note("CN2", "I1", 40, on="2026-03-03"))
    assert account.open("I1") == 0


# -- Write-offs ---------------------------------------------------------------------------------------


def test_write_off_without_amount_takes_all_that_is_open() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01", installments=[("2026-04-01", 40), ("2026-05-01", 60)]),
        payment("P1", 50, received_on="2026-03-02"),  # I1#1 40, I1#2 10
    )

    events = account.when(write_off("I1", on="2026-06-30"))

    (written_off,) = of_kind(events, e.InvoiceWrittenOff)
    assert written_off.amount == 50
    assert [(x.installment, x.amount) for x in of_kind(events, e.ItemWrittenOff)] == [(2, 50)]
    assert account.item("I1", 2).written_off


def test_partial_write_off_takes_the_earliest_installment_first() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01", installments=[("2026-04-01", 40), ("2026-05-01", 60)]))

    events = account.when(write_off("I1", on="2026-06-30", amount=50))

    assert [(x.installment, x.amount) for x in of_kind(events, e.ItemWrittenOff)] == [(1, 40), (2, 10)]
    assert (account.open("I1", 1), account.open("I1", 2)) == (0, 50)


def test_write_off_above_the_open_amount_is_invalid_amount() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"), payment("P1", 30, received_on="2026-03-02"))

    with pytest.raises(InvalidAmount):
        account.when(write_off("I1", on="2026-03-03", amount=71))


def test_write_off_with_nothing_open_is_invalid_state() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-01"), payment("P1", 100, received_on="2026-03-02"))

    with pytest.raises(InvalidState):
        account.when(write_off("I1", on="2026-03-03"))


def test_written_off_item_takes_no_more_cash_even_after_a_reversal_reopens_it() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 60, received_on="2026-03-02"),
        write_off("I1", on="2026-03-03"),  # the remaining 40
        payment("P2", 50, received_on="2026-03-04"),
    )
    assert account.state.unapplied() == 50

    events = account.when(reversal("P1", on="2026-03-05"))

    assert of_kind(events, e.CashAllocated) == []
    assert account.open("I1") == 60 and account.item("I1").written_off
    assert account.state.unapplied() == 50
    with pytest.raises(AllocationExceedsOpen):  # not even explicitly
        account.when(payment("P3", 10, received_on="2026-03-06", allocations=[("I1", 10)]))


# -- Reversals ---------------------------------------------------------------------------------------


def test_reversal_reopens_everything_the_payment_settled_and_removes_its_remainder() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 150, received_on="2026-03-02"),  # I1 100, 50 unapplied
        sale("I2", 30, issued_on="2026-03-05"),  # 30 of P1's remainder, allocated later
    )

    events = account.when(reversal("P1", on="2026-03-10"))

    (reversed_,) = of_kind(events, e.PaymentReversed)
    assert (reversed_.amount, reversed_.reversed_on) == (150, day("2026-03-10"))
    assert [(r.invoice_id, r.amount, r.effective_on) for r in of_kind(events, e.AllocationReversed)] == [
        ("I1", 100, day("2026-03-10")), ("I2", 30, day("2026-03-10"))]
    assert [(r.source_id, r.amount) for r in of_kind(events, e.UnappliedCashRemoved)] == [("P1", 20)]
    assert (account.open("I1"), account.open("I2"), account.state.unapplied()) == (100, 30, 0)
    assert account.state.balance_as_of(day("2026-12-31")) == 130


def test_reopened_items_take_other_unapplied_cash_from_the_reversal_date() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 100, received_on="2026-03-02"),
        payment("P2", 40, received_on="2026-03-03"),  # unapplied: nothing open
    )

    events = account.when(reversal("P1", on="2026-03-10"))

    (allocated,) = of_kind(events, e.CashAllocated)
    assert (allocated.source_id, allocated.amount, allocated.effective_on) == ("P2", 40, day("2026-03-10"))
    assert account.open("I1") == 60 and account.state.unapplied() == 0


def test_a_payment_is_reversed_only_once() -> None:
    from ledger.errors import AlreadyReversed

    account = given(payment("P1", 100, received_on="2026-03-02"), reversal("P1", on="2026-03-03"))

    with pytest.raises(AlreadyReversed):
        account.when(reversal("P1", on="2026-03-04"))


def test_reversed_payment_allocations_count_until_the_day_before_the_reversal() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 100, received_on="2026-03-05"),
        reversal("P1", on="2026-03-20"),
    )
    item = account.item("I1")

    assert [item.open_as_of(day(d)) for d in ("2026-03-04", "2026-03-05", "2026-03-19", "2026-03-20")] == [
        100, 0, 0, 100]
    assert account.state.balance_as_of(day("2026-03-19")) == 0
    assert account.state.balance_as_of(day("2026-03-20")) == 100


def test_reversal_removes_the_remainder_allocated_after_the_reversal_date_from_that_date() -> None:
    """§7: a reversal removes, from R on, every allocation of its payment and the payment's unapplied remainder."""
    account = given(
        payment("P1", 100, received_on="2026-03-01"),
        sale("I1", 60, issued_on="2026-03-10"),  # 60 of P1, effective 10 March
        reversal("P1", on="2026-03-05"),  # recorded later, dated earlier
    )

    assert account.item("I1").open_as_of(day("2026-03-10")) == 60
    assert account.state.balance_as_of(day("2026-03-04")) == -100
    # From 5 March the payment is gone: no unapplied cash, no allocation.
    assert account.state.balance_as_of(day("2026-03-07")) == 0
    assert account.state.balance_as_of(day("2026-03-10")) == 60


# -- Effective dates ---------------------------------------------------------------------------------

EFFECTIVE_DATE_CASES = {
    # name: (facts, the fact that allocates, expected effective date)
    "the sale's issued_on, cash received earlier": (
        [payment("P1", 100, received_on="2026-03-01")],
        sale("I1", 50, issued_on="2026-03-10"), "2026-03-10"),
    "the cash date, sale back-dated": (
        [payment("P1", 100, received_on="2026-03-10")],
        sale("I1", 50, issued_on="2026-03-01"), "2026-03-10"),
    "the payment's received_on": (
        [sale("I1", 50, issued_on="2026-03-01")],
        payment("P1", 100, received_on="2026-03-10"), "2026-03-10"),
    "issued_on, payment dated before the invoice": (
        [sale("I1", 50, issued_on="2026-03-10")],
        payment("P1", 100, received_on="2026-03-01", allocations=[("I1", 50)]), "2026-03-10"),
    "the credit note's date": (
        [payment("P1", 100, received_on="2026-03-01", allocations=None), sale("I1", 100, issued_on="2026-03-02"),
         sale("I2", 50, issued_on="2026-03-03")],
        credit_note("CN1", "I1", 50, on="2026-03-15"), "2026-03-15"),
    "the dispute resolution's date": (
        [sale("I1", 50, issued_on="2026-03-01"), dispute_opened("I1", on="2026-03-02"),
         payment("P1", 100, received_on="2026-03-03")],
        dispute_resolved("I1", on="2026-03-20"), "2026-03-20"),
    "the reopening date": (
        [sale("I1", 50, issued_on="2026-03-01"), payment("P1", 50, received_on="2026-03-02"),
         payment("P2", 50, received_on="2026-03-03")],
        reversal("P1", on="2026-03-25"), "2026-03-25"),
}


@pytest.mark.parametrize("facts, trigger, expected", EFFECTIVE_DATE_CASES.values(), ids=EFFECTIVE_DATE_CASES.keys())
def test_allocation_takes_effect_on_the_latest_of_cause_issue_cash_and_reopening_dates(
        facts, trigger, expected) -> None:
    account = given(*facts)

    events = account.when(trigger)

    dates = {a.effective_on for a in of_kind(events, e.CashAllocated)}
    assert dates == {day(expected)}


def test_explicit_allocation_to_a_reopened_item_takes_effect_from_the_reopening() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-03-01"),
        payment("P1", 100, received_on="2026-03-02"),
        reversal("P1", on="2026-03-20"),
    )

    events = account.when(payment("P2", 100, received_on="2026-03-10", allocations=[("I1", 100)]))

    (allocated,) = of_kind(events, e.CashAllocated)
    assert allocated.effective_on == day("2026-03-20")
    assert account.item("I1").open_as_of(day("2026-03-19")) == 0  # P1 still counted
    assert account.item("I1").open_as_of(day("2026-03-20")) == 0  # P2 from the reopening on


def test_credit_note_reduction_before_issue_takes_effect_on_issued_on() -> None:
    account = given(sale("I1", 100, issued_on="2026-03-10"))

    events = account.when(credit_note("CN1", "I1", 30, on="2026-03-01"))

    (applied,) = of_kind(events, e.CreditNoteApplied)
    assert applied.effective_on == day("2026-03-10")
    assert account.item("I1").open_as_of(day("2026-03-09")) == 0  # not issued yet: never negative


def test_reversal_dated_before_its_payment_removes_the_cash_from_the_payment_date() -> None:
    """Found by the property tests: the cash never goes negative as of the days before it arrived."""
    account = given(
        payment("P1", 100, received_on="2026-03-10"),
        sale("I1", 60, issued_on="2026-03-01"),  # 60 of P1, effective 10 March (the cash date)
        reversal("P1", on="2026-03-05"),  # dated before the payment itself
    )

    removed = {(r.amount, r.effective_on) for r in account.history if isinstance(r, e.UnappliedCashRemoved)}
    assert removed == {(40, day("2026-03-10"))}
    assert account.state.balance_as_of(day("2026-03-09")) == 60  # the sale, never the payment
    assert account.state.balance_as_of(day("2026-03-10")) == 60
    assert account.item("I1").open_as_of(day("2026-03-10")) == 60


# -- The rule on its own (what the workload generator asks: its items carry day numbers) ----------


class _ModelItem:
    def __init__(self, invoice_id: str, installment: int, due_on: int, open: int) -> None:
        self.invoice_id, self.installment, self.due_on, self.open = invoice_id, installment, due_on, open


class _ModelCash:
    def __init__(self, remaining: int) -> None:
        self.remaining = remaining


def test_cash_application_by_due_then_invoice_then_installment_each_source_in_turn() -> None:
    items = [_ModelItem("B", 1, 10, 50), _ModelItem("A", 2, 10, 20), _ModelItem("A", 1, 10, 30),
             _ModelItem("C", 1, 5, 40), _ModelItem("D", 1, 3, 0)]
    first, second, third = _ModelCash(60), _ModelCash(50), _ModelCash(100)
    booked = []

    for source, item, amount in cash_application([first, second, third], items):
        booked.append(([first, second, third].index(source), item.invoice_id, item.installment, amount))
        source.remaining -= amount  # the caller books each allocation before the next is worked out
        item.open -= amount

    # C (due 5) first; D has nothing open; then A#1, A#2, B at due 10, by invoice id then installment.
    assert booked == [(0, "C", 1, 40), (0, "A", 1, 20), (1, "A", 1, 10), (1, "A", 2, 20), (1, "B", 1, 20),
                      (2, "B", 1, 30)]
    assert (first.remaining, second.remaining, third.remaining) == (0, 0, 70)  # 70 stays unapplied
