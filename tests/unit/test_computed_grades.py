"""Computed grades recorded by the ledger as `credit_grade.computed` (docs/contract.md §8), on the pure rules.

The shipped config (consumers/arledger.toml): window 365 days; penalties average_days_delinquent 40 over 0..60,
utilisation_pct 15 over 80..120, broken_promises 15 over 0..3, disputes 10 over 0..4, write_off_bp 20 over
0..500; A ≥ 85, B ≥ 70, C ≥ 50, else D. Every figure below is worked out by hand from those.
"""

from __future__ import annotations

from fractions import Fraction
import pytest

from tests.builders import day, dispute_opened, fact, given, of_kind, order_placed, payment, promise, registered, sale
from ledger import events as e
from ledger.account import MONTH_END_GRADES_MAX, CreditPolicy
from ledger.errors import UnknownInvoice
from ledger.policy import divide_half_even, parse_config
from tests.support import CONFIG_FILE

CONFIG = CONFIG_FILE
GRADING = CreditPolicy(grading=parse_config(CONFIG.read_text()).grading)


def grades(events: list[e.DomainEvent]) -> list[tuple]:
    return [(g.trigger, g.computed_on.isoformat(), g.grade, g.score, g.previous_grade)
            for g in of_kind(events, e.CreditGradeComputed)]


def test_without_a_grading_policy_nothing_is_computed() -> None:
    account = given(sale("I1", 100_000, issued_on="2026-01-01"), payment("P1", 100_000, received_on="2026-03-10"))
    assert of_kind(account.history, e.CreditGradeComputed) == []


def test_grades_on_changes_and_at_every_month_end_follow_payment_behaviour() -> None:
    # The G1 customer of the integration test, fact by fact.
    account = given(registered(limit=1_000_000), policy=GRADING)
    # First relevant fact: nothing late, 10 % utilised → 100, A (nothing was computed before: recorded).
    assert grades(account.when(sale("Y1", 100_000, issued_on="2026-01-01"))) == [
        ("event", "2026-01-01", "A", 100, None)]
    assert grades(account.when(payment("P1", 100_000, received_on="2026-01-31"))) == []  # on its due date: still A
    # 02-01: January has ended → its month-end grade (as of 01-31, Y2 not in it); then A again: not recorded.
    assert grades(account.when(sale("Y2", 100_000, issued_on="2026-02-01"))) == [
        ("month_end", "2026-01-31", "A", 100, "A")]
    # 04-01: February and March ended. 03-31: Y2 (due 03-03) 28 days late → (0 + 28 × 100,000) / 200,000 = 14
    # days → 40 × 14/60 = 9.33 → 91, A. As of 04-01: 14.5 → 14 (half-even), A: no change, not recorded.
    assert grades(account.when(promise("PR", 100_000, promised_on="2026-04-10", on="2026-04-01"))) == [
        ("month_end", "2026-02-28", "A", 100, "A"), ("month_end", "2026-03-31", "A", 91, "A")]
    # 05-15: April ended: 58 days → 29 → 19.33, PR broken → 5: 75.67 → 76, B. The write-off (73 days after the
    # due date → 36.5 → 36 → 24) of all of Y2 against 200,000 of sales = 5,000 bp → 20; 100 − 24 − 5 − 20 = 51, C.
    events = account.when(fact("invoice.written_off", {"invoice_id": "Y2", "reason": "insolvency"}, on="2026-05-15"))
    assert grades(events) == [("month_end", "2026-04-30", "B", 76, "A"), ("event", "2026-05-15", "C", 51, "B")]
    april, may = of_kind(events, e.CreditGradeComputed)
    assert (april.average_days_delinquent, april.broken_promises, april.write_off_bp, april.window_days) == (
        29, 1, 0, 365)
    assert (may.average_days_delinquent, may.broken_promises, may.write_off_bp, may.utilisation_pct,
            may.disputes) == (36, 1, 5_000, 0, 0)
    # The grade events come after the fact's own events, and the state keeps the last one.
    assert type(events[0]) is e.InvoiceWrittenOff
    assert (account.state.computed_grade, account.state.graded_through) == ("C", day("2026-04-30"))


def test_orders_do_not_regrade_but_a_new_month_still_records_the_month_end() -> None:
    account = given(registered(limit=100_000, on="2026-01-05"), sale("I1", 10_000, issued_on="2026-01-05"),
                    policy=GRADING)
    assert grades(account.history) == [("event", "2026-01-05", "A", 100, None)]
    # 95 % utilised would cost 15 × 15/40 points, but an order is not a regrading fact; February's first
    # fact records January's month end all the same (I1 open, not yet due, 10 % utilised).
    events = account.when(order_placed("O1", 85_000, on="2026-02-02"))
    assert grades(events) == [("month_end", "2026-01-31", "A", 100, "A")]


def test_disputes_and_utilisation_count_in_the_grade() -> None:
    account = given(registered(limit=100_000), sale("I1", 110_000, issued_on="2026-01-01"), policy=GRADING)
    # 110 % utilised: 15 × 30/40 = 11.25 → 88.75 → 89, A.
    assert grades(account.history) == [("event", "2026-01-01", "A", 89, None)]
    for n, invoice in enumerate(("I2", "I3", "I4"), start=2):
        account.when(sale(invoice, 1, issued_on=f"2026-01-0{n}"))
    # Each dispute opened costs 10 × 1/4: one → 86.25 → 86, still A; two → 83.75 → 84, B (recorded);
    # three → 81.25 → 81, still B (not recorded).
    assert grades(account.when(dispute_opened("I1", on="2026-01-10"))) == []
    assert grades(account.when(dispute_opened("I2", on="2026-01-11"))) == [("event", "2026-01-11", "B", 84, "A")]
    assert grades(account.when(dispute_opened("I3", on="2026-01-12"))) == []
    assert account.state.grading_inputs(day("2026-01-12"), 365)["disputes"] == 3


def test_a_long_silence_records_at_most_the_latest_month_ends() -> None:
    account = given(registered(limit=100_000, on="2020-01-01"), policy=GRADING)
    events = account.when(sale("I1", 1_000, issued_on="2026-01-15"))
    month_ends = [g for g in of_kind(events, e.CreditGradeComputed) if g.trigger == "month_end"]
    assert len(month_ends) == MONTH_END_GRADES_MAX
    assert (month_ends[0].computed_on, month_ends[-1].computed_on) == (day("2024-01-31"), day("2025-12-31"))


def test_a_rejected_fact_records_no_grade() -> None:
    account = given(registered(limit=100_000), sale("I1", 1_000, issued_on="2026-01-01"), policy=GRADING)
    before = len(account.history)
    with pytest.raises(UnknownInvoice):
        account.when(dispute_opened("nope", on="2026-03-01"))
    assert len(account.history) == before and account.state.graded_through is None


def test_grading_inputs_ignore_a_payment_reversed_by_the_date_and_count_it_before() -> None:
    account = given(registered(limit=1_000_000), sale("I1", 100_000, issued_on="2026-01-01"),  # due 01-31
                    payment("P1", 100_000, received_on="2026-03-02"),  # 30 days late
                    fact("payment.reversed", {"payment_id": "P1", "reason": "bounced"}, on="2026-03-10"),
                    policy=GRADING)
    # Before the reversal: the cash applied 30 days late. After: I1 is open again, 38 days past due on 03-10.
    assert account.state.grading_inputs(day("2026-03-05"), 365)["average_days_delinquent"] == 30
    assert account.state.grading_inputs(day("2026-03-10"), 365)["average_days_delinquent"] == 38


@pytest.mark.parametrize("numerator, denominator", [
    (0, 7), (1, 2), (3, 2), (5, 2), (-1, 2), (-3, 2), (29, 2), (7, 3), (-7, 3), (10**18 + 1, 2), (99_999, 100_000),
])
def test_integer_half_even_division_equals_rounding_the_exact_fraction(numerator, denominator) -> None:
    assert divide_half_even(numerator, denominator) == round(Fraction(numerator, denominator))
