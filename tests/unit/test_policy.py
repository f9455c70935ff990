"""The credit-control policy, pure (ledger/policy.py): dunning ladder, promises, score and grades, config."""

from __future__ import annotations

import datetime as dt
from fractions import Fraction
import pytest

from ledger.policy import (
    PROMISE_BROKEN,
    PROMISE_KEPT,
    PROMISE_OPEN,
    PROMISE_PARTLY_KEPT,
    AlertPolicy,
    ConfigError,
    OpenItem,
    average_days,
    basis_points,
    is_downgrade,
    parse_config,
    promise_cover,
    promise_status,
    utilisation_pct,
)
from tests.support import CONFIG_FILE



@pytest.fixture(scope="module")
def config():
    return parse_config(CONFIG_FILE.read_text())


def day(text: str) -> dt.date:
    return dt.date.fromisoformat(text)


# -- The bundled config -------------------------------------------------------------------------------

def test_bundled_config_has_the_ladder_of_the_issue(config) -> None:
    assert [(s.action, s.offset_days) for s in config.ladder.steps] == [
        ("reminder", -3), ("email", 1), ("call", 15), ("letter", 30), ("visit", 45), ("lawyer_letter", 60),
        ("agency", 90), ("litigation", 120)]
    assert all(step.channel and step.owner for step in config.ladder.steps)
    assert config.alerts.utilisation_threshold == Fraction(9, 10)


# -- Ladder ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("days_past_due, step", [
    (-4, None), (-3, "reminder"), (0, "reminder"), (1, "email"), (14, "email"), (15, "call"), (29, "call"),
    (30, "letter"), (45, "visit"), (59, "visit"), (60, "lawyer_letter"), (89, "lawyer_letter"), (90, "agency"),
    (119, "agency"), (120, "litigation"), (4000, "litigation"),
])
def test_due_step_is_the_highest_step_whose_offset_is_reached(config, days_past_due, step) -> None:
    index = config.ladder.due_step(days_past_due)
    assert (None if index is None else config.ladder.steps[index].action) == step


def test_a_step_is_done_by_itself_or_a_later_step_only(config) -> None:
    call = config.ladder.index_of("call")
    assert config.ladder.done(call, ["call"])
    assert config.ladder.done(call, ["letter"])
    assert not config.ladder.done(call, ["email", "reminder"])
    assert not config.ladder.done(call, [])


@pytest.mark.parametrize("toml, message", [
    ('[[dunning.steps]]\naction="call"\noffset_days=5\nchannel="p"\nowner="o"\n'
     '[[dunning.steps]]\naction="email"\noffset_days=5\nchannel="e"\nowner="o"', "strictly increase"),
    ('[[dunning.steps]]\naction="fax"\noffset_days=5\nchannel="p"\nowner="o"', "unknown action"),
    ('[[dunning.steps]]\naction="call"\noffset_days="5"\nchannel="p"\nowner="o"', "offset_days"),
])
def test_a_malformed_ladder_is_refused_naming_the_key(config, toml, message) -> None:
    text = CONFIG_FILE.read_text().split("[[dunning.steps]]")[0] + toml + "\n" + \
        CONFIG_FILE.read_text()[CONFIG_FILE.read_text().index("# -- Alerts"):]
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


# -- Promises -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("paid, as_of, status", [
    (0, "2026-03-10", PROMISE_OPEN),        # its date has not passed
    (0, "2026-03-15", PROMISE_OPEN),        # the promised day itself is still open
    (400, "2026-03-15", PROMISE_OPEN),
    (1000, "2026-03-12", PROMISE_KEPT),     # kept as soon as the payments reach the amount
    (1200, "2026-03-16", PROMISE_KEPT),
    (400, "2026-03-16", PROMISE_PARTLY_KEPT),
    (0, "2026-03-16", PROMISE_BROKEN),
])
def test_promise_status_on_and_after_its_date(paid, as_of, status) -> None:
    assert promise_status(1000, paid, day("2026-03-15"), day(as_of)) == status


ITEMS = [
    OpenItem(("I3", 1), day("2026-03-01"), 300),
    OpenItem(("I1", 2), day("2026-02-15"), 200),
    OpenItem(("I1", 1), day("2026-01-15"), 500),
    OpenItem(("I2", 1), day("2026-02-15"), 100),
]


def test_a_promise_naming_an_invoice_covers_all_its_items() -> None:
    assert promise_cover("I1", 1, ITEMS) == {("I1", 1), ("I1", 2)}


@pytest.mark.parametrize("amount, covered", [
    (1, {("I1", 1)}),
    (500, {("I1", 1)}),
    (501, {("I1", 1), ("I1", 2)}),           # oldest first: due date, then invoice id and installment
    (700, {("I1", 1), ("I1", 2)}),
    (701, {("I1", 1), ("I1", 2), ("I2", 1)}),
    (10_000, {("I1", 1), ("I1", 2), ("I2", 1), ("I3", 1)}),
])
def test_a_promise_without_invoice_covers_the_oldest_items_up_to_its_amount(amount, covered) -> None:
    assert promise_cover(None, amount, ITEMS) == covered


# -- Score and grades -----------------------------------------------------------------------------------

CLEAN = {"average_days_delinquent": 0, "utilisation_pct": 50, "broken_promises": 0, "disputes": 0,
         "write_off_bp": 0}


def test_clean_behaviour_scores_100_and_grade_a(config) -> None:
    result = config.grading.score(CLEAN)
    assert (result.score, result.grade) == (100, "A")
    assert set(result.penalties.values()) == {0.0}


@pytest.mark.parametrize("inputs, score, grade", [
    # 40 × 24/60 = 16 → 84: B
    ({"average_days_delinquent": 24}, 84, "B"),
    # 40 × 22/60 = 14.67 → 85.33 → 85: A (the threshold is inclusive)
    ({"average_days_delinquent": 22}, 85, "A"),
    # 15 × (100 − 80)/40 = 7.5 → 92.5 → 92 (half-even)
    ({"utilisation_pct": 100}, 92, "A"),
    # capped at the full weight: 15 × 1
    ({"utilisation_pct": 999}, 85, "A"),
    # 15 × 1/3 = 5, 10 × 2/4 = 5 → 90
    ({"broken_promises": 1, "disputes": 2}, 90, "A"),
    # 40 + 15 + 15 + 10 + 20 = 100 → 0
    ({"average_days_delinquent": 90, "utilisation_pct": 200, "broken_promises": 5, "disputes": 9,
      "write_off_bp": 10_000}, 0, "D"),
    # 20 × 250/500 = 10, 40 × 30/60 = 20 → 70: B
    ({"average_days_delinquent": 30, "write_off_bp": 250}, 70, "B"),
    ({"average_days_delinquent": 45, "write_off_bp": 250}, 60, "C"),
])
def test_score_is_100_minus_the_weighted_penalties(config, inputs, score, grade) -> None:
    result = config.grading.score({**CLEAN, **inputs})
    assert (result.score, result.grade) == (score, grade)


def test_suggestions_follow_the_grade_and_are_rounded_half_even(config) -> None:
    assert config.grading.suggest("A", 100_002) == (125_002, 60)  # 125,002.5 → 125,002
    assert config.grading.suggest("C", 100_001) == (50_000, 15)   # 50,000.5 → 50,000
    assert config.grading.suggest("D", 100_000) == (0, 0)


def test_downgrade_means_towards_d() -> None:
    assert is_downgrade("A", "B") and is_downgrade("B", "D")
    assert not is_downgrade("B", "A") and not is_downgrade("C", "C") and not is_downgrade(None, "D")


def test_integer_inputs_are_rounded_half_even_and_guarded_against_zero() -> None:
    assert average_days(25, 10) == 2 and average_days(35, 10) == 4 and average_days(0, 0) == 0
    assert utilisation_pct(90_000, 100_000) == 90
    assert utilisation_pct(1, 0) == 999 and utilisation_pct(-5, 0) == 0 and utilisation_pct(0, 100) == 0
    assert basis_points(250, 10_000) == 250 and basis_points(1, 0) == 10_000 and basis_points(0, 0) == 0


def test_utilisation_threshold_is_exact_and_ignores_zero_limits() -> None:
    policy = AlertPolicy(utilisation_threshold=Fraction("0.9"))
    assert not policy.above_threshold(90_000, 100_000)  # exactly 90 % is not above
    assert policy.above_threshold(90_001, 100_000)
    assert not policy.above_threshold(10, 0)


@pytest.mark.parametrize("fragment, message", [
    ('[grading.thresholds]\nA = 70\nB = 85\nC = 50', "A > B > C"),
    ('[grading.factors.mood]\nweight = 1\nfull_at = 2', "unknown input"),
])
def test_a_malformed_grading_config_is_refused(fragment, message) -> None:
    text = CONFIG_FILE.read_text()
    if "thresholds" in fragment:
        text = text.replace("[grading.thresholds]\nA = 85\nB = 70\nC = 50", fragment)
    else:
        text += "\n" + fragment + "\n"
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_ratios_must_be_decimal_strings_not_floats() -> None:
    text = CONFIG_FILE.read_text().replace('utilisation_threshold = "0.90"', "utilisation_threshold = 0.9")
    with pytest.raises(ConfigError, match="decimal string"):
        parse_config(text)
