"""Credit-control policy, pure: dunning ladder, promise outcomes and cover, behaviour score, grades
(docs/contract.md §8).

Everything here is built from the TOML configuration by `parse_config` (the
caller reads the file) and takes its dates as arguments: no I/O, no clock.
Ratios are exact `Fraction`s built from decimal strings; scores are integers.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

# The actions a collector can record (`collection.action`, docs/contract.md §3): a ladder step must be one of them.
ACTIONS = ("reminder", "call", "email", "letter", "visit", "lawyer_letter", "agency", "litigation")
GRADES = ("A", "B", "C", "D")  # best first
GRADING_INPUTS = ("average_days_delinquent", "utilisation_pct", "broken_promises", "disputes", "write_off_bp")
SCORE_MAX = 100
SCORE_CACHE_MAX = 100_000
UTILISATION_PCT_CAP = 999  # a zero limit with exposure: "infinitely" used, kept an integer

# Promise outcomes (§8).
PROMISE_OPEN = "open"
PROMISE_KEPT = "kept"
PROMISE_PARTLY_KEPT = "partly_kept"
PROMISE_BROKEN = "broken"


class ConfigError(ValueError):
    """The credit-control configuration is malformed; the message names the key."""


# -- Dunning ladder ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LadderStep:
    action: str
    offset_days: int
    channel: str
    owner: str


@dataclass(frozen=True)
class Ladder:
    """Steps in increasing offset order (days past due; negative = before the due date)."""

    steps: tuple[LadderStep, ...]

    def __post_init__(self) -> None:
        offsets = [step.offset_days for step in self.steps]
        if not self.steps:
            raise ConfigError("dunning.steps: at least one step is needed")
        if offsets != sorted(set(offsets)):
            raise ConfigError(f"dunning.steps: offsets must strictly increase, got {offsets}")
        actions = [step.action for step in self.steps]
        if len(set(actions)) != len(actions):
            raise ConfigError(f"dunning.steps: each action may appear once, got {actions}")
        unknown = [action for action in actions if action not in ACTIONS]
        if unknown:
            raise ConfigError(f"dunning.steps: unknown action(s) {unknown}; choose from {', '.join(ACTIONS)}")

    def due_step(self, days_past_due: int) -> int | None:
        """Index of the highest step whose offset <= days past due (None when none is due yet)."""
        due = None
        for index, step in enumerate(self.steps):
            if step.offset_days <= days_past_due:
                due = index
        return due

    def index_of(self, action: str) -> int | None:
        for index, step in enumerate(self.steps):
            if step.action == action:
                return index
        return None

    def done(self, due_index: int, recorded_actions: Iterable[str]) -> bool:
        """True when the due step or a later one is among the recorded actions (actions off the ladder count not)."""
        for action in recorded_actions:
            index = self.index_of(action)
            if index is not None and index >= due_index:
                return True
        return False


# -- Promises to pay --------------------------------------------------------------------------------

def promise_status(amount: int, paid: int, promised_on: dt.date, as_of: dt.date) -> str:
    """§8: kept when the payments received from its making through `promised_on` reach its amount, partly kept
    if some arrived, broken if none; until the promised date has passed a short promise is still open."""
    if paid >= amount:
        return PROMISE_KEPT
    if as_of <= promised_on:
        return PROMISE_OPEN
    return PROMISE_PARTLY_KEPT if paid > 0 else PROMISE_BROKEN


@dataclass(frozen=True)
class OpenItem:
    """An open item of one customer, as the promise cover needs it."""

    key: tuple[str, int]  # (invoice_id, installment)
    due_on: dt.date
    open_amount: int


def promise_cover(invoice_id: str | None, amount: int, items: Sequence[OpenItem]) -> set[tuple[str, int]]:
    """The items a promise covers (§8): those of the invoice it names, or else the customer's oldest items
    (due date, then invoice id and installment) until their open amounts reach the promised amount."""
    if invoice_id is not None:
        return {item.key for item in items if item.key[0] == invoice_id}
    covered: set[tuple[str, int]] = set()
    reached = 0
    for item in sorted(items, key=lambda i: (i.due_on, i.key)):
        if reached >= amount:
            break
        covered.add(item.key)
        reached += item.open_amount
    return covered


# -- Behaviour score and grades ---------------------------------------------------------------------

@dataclass(frozen=True)
class Factor:
    """penalty = weight × clamp((value − start) / (full_at − start), 0, 1)."""

    name: str
    weight: int
    start: Fraction
    full_at: Fraction

    def penalty(self, value: int | Fraction) -> Fraction:
        share = (Fraction(value) - self.start) / (self.full_at - self.start)
        return self.weight * min(max(share, Fraction(0)), Fraction(1))


@dataclass(frozen=True)
class Suggestion:
    credit_limit_factor: Fraction
    payment_terms_days: int


@dataclass(frozen=True)
class Score:
    score: int
    grade: str
    penalties: dict[str, float]  # per factor, for the report (rounded to 2 decimals there)


@dataclass(frozen=True)
class GradingPolicy:
    window_days: int
    factors: tuple[Factor, ...]
    thresholds: dict[str, int]  # grade → lowest score (A, B, C); below C is D
    suggestions: dict[str, Suggestion] = field(default_factory=dict)
    # Scores already worked out, by input values: exact Fractions are slow and the ledger scores after most
    # facts, with inputs that repeat (small integers).
    _scores: dict[tuple[int, ...], Score] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.window_days < 1:
            raise ConfigError("grading.window_days must be >= 1")
        if sum(factor.weight for factor in self.factors) > SCORE_MAX:
            raise ConfigError(f"grading.factors: weights add up to more than {SCORE_MAX}")
        values = [self.thresholds[grade] for grade in GRADES[:-1] if grade in self.thresholds]
        complete = len(values) == len(GRADES) - 1
        if not complete or values != sorted(values, reverse=True) or len(set(values)) != len(values):
            raise ConfigError(f"grading.thresholds: A > B > C needed, got {self.thresholds}")

    def score(self, inputs: Mapping[str, int]) -> Score:
        key = tuple(inputs[factor.name] for factor in self.factors)
        known = self._scores.get(key)
        if known is None:
            if len(self._scores) >= SCORE_CACHE_MAX:
                self._scores.clear()
            known = self._scores[key] = self._score(inputs)
        return known

    def _score(self, inputs: Mapping[str, int]) -> Score:
        penalties = {factor.name: factor.penalty(inputs[factor.name]) for factor in self.factors}
        score = max(0, round(SCORE_MAX - sum(penalties.values(), Fraction(0))))  # round() on Fraction: half-even
        return Score(score=score, grade=self.grade_of(score),
                     penalties={name: float(value) for name, value in penalties.items()})

    def grade_of(self, score: int) -> str:
        for grade in GRADES[:-1]:
            if score >= self.thresholds[grade]:
                return grade
        return GRADES[-1]

    def suggest(self, grade: str, credit_limit: int) -> tuple[int | None, int | None]:
        """(suggested credit limit, suggested terms) for a grade; (None, None) when the config has none."""
        suggestion = self.suggestions.get(grade)
        if suggestion is None:
            return None, None
        return round(credit_limit * suggestion.credit_limit_factor), suggestion.payment_terms_days


def is_downgrade(before: str | None, after: str | None) -> bool:
    """A computed grade moved towards D."""
    return before in GRADES and after in GRADES and GRADES.index(after) > GRADES.index(before)


def divide_half_even(numerator: int, denominator: int) -> int:
    """numerator ÷ denominator (> 0) rounded half-even, in integers: round(Fraction(n, d)) without a Fraction
    (the ledger computes these after most facts)."""
    quotient, remainder = divmod(numerator, denominator)
    twice = 2 * remainder
    if twice > denominator or (twice == denominator and quotient % 2 == 1):
        return quotient + 1
    return quotient


def average_days(weighted_days: int, amount: int) -> int:
    """Amount-weighted average days, rounded half-even (0 when nothing was due)."""
    return divide_half_even(weighted_days, amount) if amount > 0 else 0


def utilisation_pct(exposure: int, credit_limit: int) -> int:
    if exposure <= 0:
        return 0
    if credit_limit <= 0:
        return UTILISATION_PCT_CAP
    return min(UTILISATION_PCT_CAP, divide_half_even(exposure * 100, credit_limit))


def basis_points(part: int, whole: int) -> int:
    if part <= 0:
        return 0
    if whole <= 0:
        return 10_000
    return divide_half_even(part * 10_000, whole)


# -- Alerts -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AlertPolicy:
    utilisation_threshold: Fraction = Fraction(9, 10)
    aging_bounds: tuple[int, ...] = (0, 30, 60, 90)

    def __post_init__(self) -> None:
        if self.utilisation_threshold <= 0:
            raise ConfigError("alerts.utilisation_threshold must be > 0")
        bounds = list(self.aging_bounds)
        if not bounds or bounds[0] != 0 or bounds != sorted(set(bounds)):
            raise ConfigError(f"alerts.aging_bounds must start at 0 and increase, got {bounds}")

    def above_threshold(self, exposure: int, credit_limit: int) -> bool:
        """exposure / limit > threshold, exactly; a zero limit has no utilisation (§8) and never alerts."""
        return credit_limit > 0 and exposure * self.utilisation_threshold.denominator > (
            self.utilisation_threshold.numerator * credit_limit)


# -- The whole configuration ------------------------------------------------------------------------

@dataclass(frozen=True)
class CreditConfig:
    ladder: Ladder
    grading: GradingPolicy
    alerts: AlertPolicy
    fingerprint: str  # sha256 of the TOML text: which configuration produced a figure


def decimal(value: Any, key: str) -> Fraction:
    """A ratio from the config: a decimal string ("0.90") or an integer; floats are refused (no binary floats)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ConfigError(f"{key}: expected a decimal string such as \"0.90\" or an integer, got {value!r}")
    try:
        return Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"{key}: not a decimal number: {value!r}") from None


def _integer(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    return value


def _text(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{key}: expected a non-empty string, got {value!r}")
    return value


def _table(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table")
    return value


def parse_config(text: str) -> CreditConfig:
    """Build the policy from TOML text (see consumers/arledger.toml); raises ConfigError naming the bad key."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"not valid TOML: {error}") from None
    steps = []
    for number, raw in enumerate(_table(document.get("dunning", {}), "dunning").get("steps", []), start=1):
        key = f"dunning.steps[{number}]"
        raw = _table(raw, key)
        steps.append(LadderStep(action=_text(raw.get("action"), f"{key}.action"),
                                offset_days=_integer(raw.get("offset_days"), f"{key}.offset_days"),
                                channel=_text(raw.get("channel"), f"{key}.channel"),
                                owner=_text(raw.get("owner"), f"{key}.owner")))
    alerts = _table(document.get("alerts", {}), "alerts")
    alert_policy = AlertPolicy(
        utilisation_threshold=decimal(alerts.get("utilisation_threshold", "0.90"), "alerts.utilisation_threshold"),
        aging_bounds=tuple(_integer(b, "alerts.aging_bounds") for b in alerts.get("aging_bounds", [0, 30, 60, 90])))
    grading = _table(document.get("grading"), "grading")
    factors = []
    for name, raw in _table(grading.get("factors"), "grading.factors").items():
        key = f"grading.factors.{name}"
        if name not in GRADING_INPUTS:
            raise ConfigError(f"{key}: unknown input; choose from {', '.join(GRADING_INPUTS)}")
        raw = _table(raw, key)
        factor = Factor(name=name, weight=_integer(raw.get("weight"), f"{key}.weight"),
                        start=decimal(raw.get("start", 0), f"{key}.start"),
                        full_at=decimal(raw.get("full_at"), f"{key}.full_at"))
        if factor.weight < 0 or factor.full_at <= factor.start:
            raise ConfigError(f"{key}: weight must be >= 0 and full_at > start")
        factors.append(factor)
    thresholds = {grade: _integer(value, f"grading.thresholds.{grade}")
                  for grade, value in _table(grading.get("thresholds"), "grading.thresholds").items()}
    suggestions = {}
    for grade, raw in _table(grading.get("suggestions", {}), "grading.suggestions").items():
        key = f"grading.suggestions.{grade}"
        if grade not in GRADES:
            raise ConfigError(f"{key}: grades are {', '.join(GRADES)}")
        raw = _table(raw, key)
        suggestions[grade] = Suggestion(
            credit_limit_factor=decimal(raw.get("credit_limit_factor"), f"{key}.credit_limit_factor"),
            payment_terms_days=_integer(raw.get("payment_terms_days"), f"{key}.payment_terms_days"))
    policy = GradingPolicy(window_days=_integer(grading.get("window_days", 365), "grading.window_days"),
                           factors=tuple(factors), thresholds=thresholds, suggestions=suggestions)
    return CreditConfig(ladder=Ladder(tuple(steps)), grading=policy, alerts=alert_policy,
                        fingerprint=hashlib.sha256(text.encode()).hexdigest()[:16])
