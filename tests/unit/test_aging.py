"""Aging bucket edges (docs/contract.md §7): days past due = as_of − due_on; ≤ 0 current, then 1-30, 31-60, 61-90, 90+.

The ledger records every movement with its effective date; aging as of D is
`Item.open_as_of(D)` bucketed by days past due. The small bucketing helper
lives here; the read models do the same in SQL.
"""

from __future__ import annotations

import datetime as dt

import pytest

from tests.builders import day, given, payment, reversal, sale
from ledger.account import AccountState

BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")


def bucket_of(days_past_due: int, bounds: tuple[int, ...] = (30, 60, 90)) -> str:
    if days_past_due <= 0:
        return "current"
    for name, upper in zip(BUCKETS[1:], bounds):
        if days_past_due <= upper:
            return name
    return BUCKETS[-1]


def aging_as_of(state: AccountState, as_of: dt.date) -> dict[str, int]:
    """Open amount per bucket, counting items issued on or before `as_of` (§8)."""
    totals = dict.fromkeys(BUCKETS, 0)
    for item in state.items.values():
        if item.issued_on > as_of:
            continue
        totals[bucket_of((as_of - item.due_on).days)] += item.open_as_of(as_of)
    return totals


AS_OF = day("2026-06-30")


@pytest.mark.parametrize("days_past_due, expected", [
    (-5, "current"), (0, "current"), (1, "1-30"), (30, "1-30"), (31, "31-60"), (60, "31-60"),
    (61, "61-90"), (90, "61-90"), (91, "90+"), (400, "90+"),
])
def test_item_lands_in_its_bucket_by_days_past_due(days_past_due: int, expected: str) -> None:
    due_on = AS_OF - dt.timedelta(days=days_past_due)
    account = given(sale("I1", 100, issued_on=(due_on - dt.timedelta(days=30)).isoformat(),
                         due_on=due_on.isoformat()))

    aging = aging_as_of(account.state, AS_OF)

    assert aging == {name: (100 if name == expected else 0) for name in BUCKETS}


def test_aging_counts_allocations_only_from_their_effective_date() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-04-01", due_on="2026-05-01"),
        payment("P1", 40, received_on="2026-07-05"),  # recorded now, value date after June 30
    )

    assert aging_as_of(account.state, AS_OF) == {**dict.fromkeys(BUCKETS, 0), "31-60": 100}
    assert aging_as_of(account.state, day("2026-07-05")) == {**dict.fromkeys(BUCKETS, 0), "61-90": 60}


def test_aging_leaves_out_items_issued_after_as_of() -> None:
    account = given(sale("I1", 100, issued_on="2026-07-01", due_on="2026-06-01"))

    assert aging_as_of(account.state, AS_OF) == dict.fromkeys(BUCKETS, 0)


def test_aging_shows_a_reversed_payment_until_the_day_before_the_reversal() -> None:
    account = given(
        sale("I1", 100, issued_on="2026-05-01", due_on="2026-05-31"),
        payment("P1", 100, received_on="2026-06-10"),
        reversal("P1", on="2026-06-30"),
    )

    assert aging_as_of(account.state, day("2026-06-29")) == dict.fromkeys(BUCKETS, 0)
    assert aging_as_of(account.state, AS_OF) == {**dict.fromkeys(BUCKETS, 0), "1-30": 100}


def test_installments_age_separately() -> None:
    account = given(sale("I1", 300, issued_on="2026-03-01",
                         installments=[("2026-04-30", 100), ("2026-05-15", 100), ("2026-07-31", 100)]))

    # 61, 46 and -31 days past due on June 30
    assert aging_as_of(account.state, AS_OF) == {"current": 100, "1-30": 0, "31-60": 100, "61-90": 100, "90+": 0}
