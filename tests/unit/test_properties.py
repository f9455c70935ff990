"""Property-based tests (Hypothesis): random histories of facts keep the accounting rules of docs/contract.md §7.

After every fact: the cash invariant; no open amount negative, also as of every
business date; a payment or credit note never allocates more than it has; the
balance equals sales − credit notes − payments + reversed payments − write-offs;
the as-of views that projections fold from the events (events.py docstring)
agree with the ledger's own; a rejected fact changes nothing. Over whole
histories: replaying the stored events, reloading, and reloading from a
snapshot give the same state, and the Ledger service agrees with the pure rules.
"""

from __future__ import annotations

import datetime as dt
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import builders as b
from ledger import events as e
from ledger.account import AccountState, CreditPolicy
from ledger.aggregate import account_id
from ledger.application import InboundRecord, Ledger
from ledger.errors import REASON_CODES, Rejection
from ledger.policy import parse_config
from tests.support import CONFIG_FILE

GRADING = CreditPolicy(grading=parse_config(CONFIG_FILE.read_text()).grading)

DAY0 = dt.date(2026, 3, 1)
FAR_FUTURE = dt.date(2100, 1, 1)
DAYS_SPAN = 60


def iso(offset: int) -> str:
    return (DAY0 + dt.timedelta(days=offset)).isoformat()


offsets = st.integers(0, DAYS_SPAN)
amounts = st.integers(1, 500)
KINDS = (  # weighted: sales and payments most often
    ["sale"] * 6 + ["payment"] * 5 + ["credit_note"] * 2 + ["reversal"] * 2 + ["write_off"]
    + ["dispute_opened"] * 2 + ["dispute_resolved"] * 2 + ["order_placed"] * 2 + ["order_cancelled"]
    + ["order_released"] + ["hold_placed", "hold_released", "limit_changed", "terms_changed"]
)


def pick(draw: st.DrawFn, known: list[str], fresh: str, fresh_weight: int = 1) -> str:
    """An id the account knows, or a new one (weighted), so that most references hit."""
    index = draw(st.integers(0, 2 * len(known) + fresh_weight - 1))
    return known[index // 2] if index < 2 * len(known) else fresh


def draw_sale(draw: st.DrawFn, state: AccountState) -> dict[str, Any]:
    cid = state.customer_id
    invoice_id = pick(draw, sorted(state.invoices), f"I{len(state.invoices)}", fresh_weight=8)
    amount, issued = draw(amounts), draw(offsets)
    order_id = pick(draw, sorted(state.orders), "O-unknown") if draw(st.booleans()) else None
    shape = draw(st.sampled_from(["terms", "due_on", "installments"]))
    if shape == "terms":
        return b.sale(invoice_id, amount, issued_on=iso(issued), order_id=order_id, customer_id=cid)
    if shape == "due_on":
        return b.sale(invoice_id, amount, issued_on=iso(issued), due_on=iso(issued + draw(st.integers(0, 45))),
                      order_id=order_id, customer_id=cid)
    parts = min(amount, draw(st.integers(1, 3)))
    cuts = sorted(draw(st.sets(st.integers(1, amount - 1), min_size=parts - 1, max_size=parts - 1))) if parts > 1 else []
    pieces = [high - low for low, high in zip([0, *cuts], [*cuts, amount])]
    dues = sorted(draw(st.lists(st.integers(-10, 60), min_size=len(pieces), max_size=len(pieces))))
    return b.sale(invoice_id, amount, issued_on=iso(issued), order_id=order_id, customer_id=cid,
                  installments=[(iso(issued + due), piece) for due, piece in zip(dues, pieces)])


def draw_payment(draw: st.DrawFn, state: AccountState) -> dict[str, Any]:
    payment_id = pick(draw, sorted(state.payments), f"P{len(state.payments)}", fresh_weight=8)
    amount = draw(st.integers(1, 600))
    allocations = None
    if draw(st.booleans()):
        allocations = [(pick(draw, sorted(state.invoices), "I-unknown"), draw(st.integers(1, 200)))
                       for _ in range(draw(st.integers(0, 2)))]
        if sum(part for _, part in allocations) > amount:
            allocations = None
    return b.payment(payment_id, amount, received_on=iso(draw(offsets)), allocations=allocations,
                     customer_id=state.customer_id)


@st.composite
def next_fact(draw: st.DrawFn, state: AccountState) -> dict[str, Any]:
    """The next fact for this account; ids mostly ones it knows (built lazily: strategies are costly)."""
    kind = draw(st.sampled_from(KINDS))
    cid, on = state.customer_id, iso(draw(offsets))
    if kind == "sale":
        return draw_sale(draw, state)
    if kind == "payment":
        return draw_payment(draw, state)
    invoice = pick(draw, sorted(state.invoices), "I-unknown")
    if kind == "credit_note":
        credit_note_id = pick(draw, sorted(state.credit_notes), f"CN{len(state.credit_notes)}", fresh_weight=8)
        return b.credit_note(credit_note_id, invoice, draw(st.integers(1, 300)), on=on, customer_id=cid)
    if kind == "reversal":
        return b.reversal(pick(draw, sorted(state.payments), "P-unknown"), on=on, customer_id=cid)
    if kind == "write_off":
        amount = draw(st.integers(1, 300)) if draw(st.booleans()) else None
        return b.write_off(invoice, on=on, amount=amount, customer_id=cid)
    if kind == "dispute_opened":
        return b.dispute_opened(invoice, on=on, customer_id=cid)
    if kind == "dispute_resolved":
        disputed = sorted(i for i, invoice in state.invoices.items() if invoice.disputed)
        return b.dispute_resolved(pick(draw, disputed, invoice), on=on, customer_id=cid)
    order = pick(draw, sorted(state.orders), f"O{len(state.orders)}")
    if kind == "order_placed":
        return b.order_placed(order, draw(amounts), on=on, customer_id=cid)
    if kind == "order_cancelled":
        return b.order_cancelled(order, on=on, customer_id=cid)
    if kind == "order_released":
        blocked = sorted(o for o, record in state.orders.items() if record.status == "blocked")
        return b.order_released(pick(draw, blocked, order), on=on, customer_id=cid)
    if kind == "hold_placed":
        return b.hold_placed(on=on, customer_id=cid)
    if kind == "hold_released":
        return b.hold_released(on=on, customer_id=cid)
    if kind == "limit_changed":
        return b.limit_changed(draw(st.integers(0, 2000)), on=on, customer_id=cid)
    assert kind == "terms_changed", kind
    return b.terms_changed(draw(st.integers(0, 60)), on=on, customer_id=cid)


def registration(customer_id: str) -> st.SearchStrategy[dict[str, Any]]:
    return st.builds(lambda limit, terms: b.registered(limit=limit, terms=terms, customer_id=customer_id),
                     st.integers(0, 2000), st.integers(0, 60))


# -- What projections fold from the events (the events.py docstring) ------------------------------

def folded_deltas(history: list[e.DomainEvent]) -> list[tuple[dt.date, str | None, int]]:
    """(effective date, item key or None for unapplied cash, delta), as a read model folds the events."""
    deltas: list[tuple[dt.date, str | None, int]] = []
    for event in history:
        key = f"{getattr(event, 'invoice_id', '')}#{getattr(event, 'installment', '')}"
        if isinstance(event, e.ItemOpened):
            deltas.append((event.issued_on, key, event.amount))
        elif isinstance(event, (e.CreditNoteApplied, e.ItemWrittenOff)):
            deltas.append((event.effective_on, key, -event.amount))
        elif isinstance(event, e.AllocationReversed):
            deltas.append((event.effective_on, key, event.amount))
        elif isinstance(event, e.CashAllocated):
            deltas += [(event.effective_on, key, -event.amount), (event.effective_on, None, -event.amount)]
        elif isinstance(event, e.PaymentReceived):
            deltas.append((event.received_on, None, event.amount))
        elif isinstance(event, (e.CreditNoteExcessUnapplied, e.UnappliedCashReturned)):
            deltas.append((event.effective_on, None, event.amount))
        elif isinstance(event, e.UnappliedCashRemoved):
            deltas.append((event.effective_on, None, -event.amount))
    return sorted(deltas, key=lambda delta: delta[0])


def folded_views(history: list[e.DomainEvent]) -> dict[dt.date, tuple[dict[str, int], int]]:
    """As of each date where something moves (and the day before): open per item and unapplied cash."""
    deltas = folded_deltas(history)
    dates = sorted({d for d, _, _ in deltas} | {d - dt.timedelta(days=1) for d, _, _ in deltas})
    views: dict[dt.date, tuple[dict[str, int], int]] = {}
    opened: dict[str, int] = defaultdict(int)
    unapplied, index = 0, 0
    for as_of in dates:
        while index < len(deltas) and deltas[index][0] <= as_of:
            _, key, delta = deltas[index]
            if key is None:
                unapplied += delta
            else:
                opened[key] += delta
            index += 1
        views[as_of] = (dict(opened), unapplied)
    return views


# -- The checks after each fact ---------------------------------------------------------------------

class Books:
    """The expected balance, kept from the accepted facts: sales − notes − payments + reversed − written off."""

    def __init__(self) -> None:
        self.balance = 0
        self.payment_amounts: dict[str, int] = {}

    def record(self, raw: dict[str, Any], events: list[e.DomainEvent]) -> None:
        data = raw["data"]
        if raw["type"] == "sale.recorded":
            self.balance += data["amount"]
        elif raw["type"] == "credit_note.issued":
            self.balance -= data["amount"]
        elif raw["type"] == "payment.received":
            self.balance -= data["amount"]
            self.payment_amounts[data["payment_id"]] = data["amount"]
        elif raw["type"] == "payment.reversed":
            self.balance += self.payment_amounts[data["payment_id"]]
        elif raw["type"] == "invoice.written_off":
            (written_off,) = b.of_kind(events, e.InvoiceWrittenOff)
            assert data.get("amount") in (None, written_off.amount)
            self.balance -= written_off.amount


def check_account(account: b.Account, books: Books) -> None:
    state, history = account.state, account.history
    b.assert_cash_invariant(state)
    assert state.unapplied() >= 0
    assert all(item.open >= 0 for item in state.items.values())
    assert state.balance_as_of(FAR_FUTURE) == books.balance
    assert state.balance_as_of(FAR_FUTURE) == sum(i.open for i in state.items.values()) - state.unapplied()

    for as_of, (folded, unapplied) in folded_views(history).items():
        for key, item in state.items.items():
            open_as_of = item.open_as_of(as_of)
            assert open_as_of >= 0, f"{key} open {open_as_of} as of {as_of}"
            assert folded.get(key, 0) == open_as_of, f"{key} as of {as_of}"
        assert unapplied >= 0, f"unapplied {unapplied} as of {as_of}"
        assert state.balance_as_of(as_of) == sum(folded.values()) - unapplied, f"balance as of {as_of}"

    allocated: dict[tuple[str, str], int] = defaultdict(int)
    for event in history:
        if isinstance(event, e.CashAllocated):
            allocated[(event.source_kind, event.source_id)] += event.amount
        elif isinstance(event, e.CreditNoteApplied):
            allocated[("credit_note", event.credit_note_id)] += event.amount
    for (kind, source_id), total in allocated.items():
        limit = state.payments[source_id].amount if kind == "payment" else state.credit_notes[source_id]
        assert total <= limit, f"{kind} {source_id} allocated {total} of {limit}"
    for record in state.payments.values():
        live = sum(amount for _, _, amount, _ in record.allocations)
        assert live <= record.amount


# -- Credit figures recomputed from the events alone (as an auditor or a read model would) ------------

def latest_as_of(entries: list[tuple[dt.date, int, Any]], as_of: dt.date, default: Any) -> Any:
    """The value of the latest (business date, recorded order) entry dated on or before `as_of`."""
    dated = [entry for entry in entries if entry[0] <= as_of]
    return max(dated, key=lambda entry: entry[:2])[2] if dated else default


class Figures:
    """Limit, hold, exposure and overdue items as of a date, from an event history only."""

    def __init__(self, history: list[e.DomainEvent]) -> None:
        self.history = history
        self.limits: list[tuple[dt.date, int, Any]] = []
        self.holds: list[tuple[dt.date, int, Any]] = []
        self.due: dict[str, tuple[dt.date, dt.date]] = {}  # item key → (issued_on, due_on)
        self.disputes: dict[str, list[list[Any]]] = defaultdict(list)  # invoice → [[opened, resolved|None]]
        self.orders: dict[str, dict[str, Any]] = {}
        for seq, event in enumerate(history):
            if isinstance(event, e.CustomerRegistered):
                self.limits.append((dt.date.min, seq, event.credit_limit))
            elif isinstance(event, e.CreditLimitChanged):
                self.limits.append((event.effective_on, seq, event.credit_limit))
            elif isinstance(event, (e.CreditHoldPlaced, e.CreditHoldReleased)):
                self.holds.append((event.effective_on, seq, isinstance(event, e.CreditHoldPlaced)))
            elif isinstance(event, e.ItemOpened):
                self.due[f"{event.invoice_id}#{event.installment}"] = (event.issued_on, event.due_on)
            elif isinstance(event, e.DisputeOpened):
                self.disputes[event.invoice_id].append([event.opened_on, None])
            elif isinstance(event, e.DisputeResolved):
                self.disputes[event.invoice_id][-1][1] = event.resolved_on
            elif isinstance(event, e.OrderPlaced):
                self.orders[event.order_id] = {"amount": event.amount, "placed_on": event.placed_on,
                                               "from": None, "closed_on": None}
            elif isinstance(event, e.OrderApproved):
                order = self.orders[event.order_id]
                order["from"] = max(order["placed_on"], event.decided_on)
            elif isinstance(event, (e.OrderCancelled, e.OrderInvoiced)):
                self.orders[event.order_id]["closed_on"] = getattr(event, "cancelled_on", None) or event.invoiced_on

    def limit(self, as_of: dt.date) -> int:
        return latest_as_of(self.limits, as_of, 0)

    def on_hold(self, as_of: dt.date) -> bool:
        return latest_as_of(self.holds, as_of, False)

    def views(self, as_of: dt.date) -> tuple[dict[str, int], int]:
        deltas = [delta for delta in folded_deltas(self.history) if delta[0] <= as_of]
        opened: dict[str, int] = defaultdict(int)
        for _, key, delta in deltas:
            if key is not None:
                opened[key] += delta
        return dict(opened), sum(delta for _, key, delta in deltas if key is None)

    def exposure(self, as_of: dt.date) -> int:
        opened, unapplied = self.views(as_of)
        open_orders = sum(order["amount"] for order in self.orders.values()
                          if order["from"] is not None and order["from"] <= as_of
                          and (order["closed_on"] is None or order["closed_on"] > as_of))
        return sum(opened.values()) - unapplied + open_orders

    def overdue_beyond(self, as_of: dt.date, tolerance_days: int) -> bool:
        opened, _ = self.views(as_of)
        for key, (issued_on, due_on) in self.due.items():
            invoice_id = key.rpartition("#")[0]
            disputed = any(opened_on <= as_of and (resolved is None or resolved > as_of)
                           for opened_on, resolved in self.disputes[invoice_id])
            if issued_on <= as_of and (as_of - due_on).days > tolerance_days and opened.get(key, 0) > 0 and not disputed:
                return True
        return False


def check_credit_figures(before: list[e.DomainEvent], events: list[e.DomainEvent]) -> None:
    """Decisions and breaches agree with figures recomputed from the events (§7, §8)."""
    released = any(isinstance(event, e.OrderReleased) for event in events)
    for event in events:
        if isinstance(event, e.OrderDecided):
            figures, day = Figures(before), event.decided_on
            limit, exposure = figures.limit(day), figures.exposure(day)
            assert (event.credit_limit, event.exposure, event.available) == (limit, exposure, limit - exposure)
            if released:
                assert isinstance(event, e.OrderApproved) and event.reason == "released"
                continue
            expected = ("on_hold" if figures.on_hold(day)
                        else "overdue_beyond_tolerance" if figures.overdue_beyond(day, 30)
                        else "over_limit" if exposure + event.amount > limit else None)
            assert event.reason == expected
            assert isinstance(event, e.OrderBlocked if expected else e.OrderApproved)
    sales = [event for event in events if isinstance(event, e.SaleRecorded)]
    if sales:
        (recorded,) = sales
        day, after = recorded.issued_on, Figures([*before, *events])
        exposure, limit = after.exposure(day), after.limit(day)
        breaches = [event for event in events if isinstance(event, e.CreditLimitBreached)]
        assert bool(breaches) == (exposure > limit), f"exposure {exposure}, limit {limit}"
        if breaches:
            (breach,) = breaches
            assert (breach.exposure, breach.credit_limit) == (exposure, limit)
            assert breach.crossing == (Figures(before).exposure(day) <= limit)


def check_reductions(before: list[e.DomainEvent], events: list[e.DomainEvent], business_date: dt.date) -> None:
    """Every reduction's effective date and the order of automatic application (§7, §8)."""
    history = [*before, *events]
    sources: dict[tuple[str, str], tuple[dt.date, int]] = {}  # (kind, id) → (source date, recorded order)
    issued: dict[str, dt.date] = {}
    due: dict[str, tuple[dt.date, str, int]] = {}
    reopened: dict[str, dt.date] = {}
    disputed: dict[str, bool] = defaultdict(bool)
    written_off: set[str] = set()
    auto: list[tuple[tuple[dt.date, int], tuple[dt.date, str, int]]] = []
    for seq, event in enumerate(history):
        key = f"{getattr(event, 'invoice_id', '')}#{getattr(event, 'installment', '')}"
        ours = seq >= len(before)
        if isinstance(event, e.PaymentReceived):
            sources[("payment", event.payment_id)] = (event.received_on, seq)
        elif isinstance(event, e.CreditNoteIssued):
            sources[("credit_note", event.credit_note_id)] = (event.issued_on, seq)
        elif isinstance(event, e.ItemOpened):
            issued[key], due[key] = event.issued_on, (event.due_on, event.invoice_id, event.installment)
        elif isinstance(event, e.AllocationReversed):
            reopened[key] = max(reopened.get(key, dt.date.min), event.effective_on)
        elif isinstance(event, (e.DisputeOpened, e.DisputeResolved)):
            disputed[event.invoice_id] = isinstance(event, e.DisputeOpened)
        elif isinstance(event, e.ItemWrittenOff) and event.closes_item:
            written_off.add(key)
        if not ours or not isinstance(event, (e.CashAllocated, e.CreditNoteApplied, e.ItemWrittenOff)):
            continue
        if isinstance(event, e.CashAllocated):
            source_on = sources[(event.source_kind, event.source_id)][0]
            assert key not in written_off, f"cash allocated to written-off {key}"
            if not event.explicit:
                assert not disputed[event.invoice_id], f"automatic allocation to disputed {key}"
                auto.append((sources[(event.source_kind, event.source_id)], due[key]))
        elif isinstance(event, e.CreditNoteApplied):
            source_on = sources[("credit_note", event.credit_note_id)][0]
        else:
            source_on = business_date
        expected = max(business_date, issued[key], source_on, reopened.get(key, dt.date.min))
        assert event.effective_on == expected, f"{type(event).__name__} {key}: {event.effective_on} != {expected}"
    # Sources oldest first; within a source, items by (due_on, invoice_id, installment).
    for (source, item), (next_source, next_item) in zip(auto, auto[1:]):
        assert source <= next_source, "sources out of order"
        if source == next_source:
            assert item < next_item, "items out of order"


class Run:
    """The pure rules driven fact by fact, checked after each; remembers the facts and which were accepted."""

    def __init__(self, customer_id: str, policy: CreditPolicy = CreditPolicy()) -> None:
        self.account, self.books = b.Account(customer_id=customer_id, policy=policy), Books()
        self.facts: list[dict[str, Any]] = []
        self.accepted: list[bool] = []

    def apply(self, raw: dict[str, Any]) -> None:
        self.facts.append(raw)
        before = msgspec.to_builtins(self.account.state)
        try:
            events = self.account.when(raw)
        except Rejection:
            assert msgspec.to_builtins(self.account.state) == before, "a rejected fact changed the state"
            self.accepted.append(False)
            return
        self.accepted.append(True)
        self.books.record(raw, events)
        check_account(self.account, self.books)
        check_credit_figures(self.account.history[:-len(events)], events)
        check_reductions(self.account.history[:-len(events)], events, b.envelope(raw).business_date)


def draw_history(data: st.DataObject, customer_id: str, steps_max: int,
                 policy: CreditPolicy = CreditPolicy()) -> Run:
    run = Run(customer_id, policy)
    run.apply(data.draw(registration(customer_id), label=f"{customer_id} registration"))
    for _ in range(data.draw(st.integers(3, steps_max), label=f"{customer_id} steps")):
        run.apply(data.draw(next_fact(run.account.state)))
    return run


# -- Properties ---------------------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_histories_keep_the_accounting_rules(data: st.DataObject) -> None:
    run = draw_history(data, b.CUSTOMER, steps_max=40)

    replayed = AccountState(customer_id=b.CUSTOMER)
    for event in run.account.history:
        replayed.fold(event)
    assert msgspec.to_builtins(replayed) == msgspec.to_builtins(run.account.state)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data(), st.randoms(use_true_random=False), st.integers(1, 6))
def test_the_ledger_service_agrees_with_the_rules_and_replays_reloads_and_snapshots_the_same(
        data: st.DataObject, random, batch_size: int) -> None:
    runs = {cid: draw_history(data, cid, steps_max=20) for cid in ("C1", "C2")}
    # Interleave the two customers at random, each keeping its own order.
    lanes = [cid for cid, run in runs.items() for _ in run.facts]
    random.shuffle(lanes)
    cursors = {cid: iter(run.facts) for cid, run in runs.items()}
    interleaved = [next(cursors[cid]) for cid in lanes]

    with tempfile.TemporaryDirectory() as directory:
        store_url = f"sqlite:///{Path(directory) / 'ledger.sqlite'}"
        ledger = Ledger(store_url)
        outcomes = []
        for start in range(0, len(interleaved), batch_size):
            outcomes += b.process(ledger, *interleaved[start:start + batch_size])

        for customer_id, run in runs.items():
            own = [o.status == "accepted" for o, raw in zip(outcomes, interleaved) if raw["customer_id"] == customer_id]
            assert own == run.accepted
            state = msgspec.to_builtins(run.account.state)
            assert msgspec.to_builtins(ledger.account(customer_id)) == state

            replayed = AccountState(customer_id=customer_id)
            for stored in ledger.stored_events(customer_id):
                replayed.fold(stored.event)
            assert msgspec.to_builtins(replayed) == state

            assert msgspec.to_builtins(Ledger(store_url).account(customer_id)) == state
            ledger.take_snapshot(account_id(customer_id))
            assert msgspec.to_builtins(Ledger(store_url).account(customer_id)) == state

        # Sent again: every accepted fact is a duplicate (a rejected one may now pass: it claimed no id).
        again = b.process(Ledger(store_url), *interleaved)
        assert [o.status == "duplicate" for o in again] == [o.status == "accepted" for o in outcomes]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_histories_with_grading_keep_the_rules_and_record_the_same_grades_on_replay(
        data: st.DataObject) -> None:
    run = draw_history(data, b.CUSTOMER, steps_max=40, policy=GRADING)
    computed = [event for event in run.account.history if isinstance(event, e.CreditGradeComputed)]
    replayed = AccountState(customer_id=b.CUSTOMER)
    for event in run.account.history:
        replayed.fold(event)
    assert msgspec.to_builtins(replayed) == msgspec.to_builtins(run.account.state)
    # Month ends strictly increase; an event-triggered grade always differs from the one before it.
    month_ends = [g.computed_on for g in computed if g.trigger == "month_end"]
    assert month_ends == sorted(set(month_ends))
    assert all(g.grade != g.previous_grade for g in computed if g.trigger == "event")
    # The same facts through the service (SQLite, batches) record exactly the same events.
    with tempfile.TemporaryDirectory() as directory:
        ledger = Ledger(f"sqlite:///{Path(directory) / 'ledger.sqlite'}", policy=GRADING)
        b.process(ledger, *run.facts)
        stored = [stored.event for stored in ledger.stored_events(b.CUSTOMER)]
    assert stored == run.account.history


# -- Hostile input never raises out of the service (a poison record would stall its partition) ----

EDGE_STRINGS = ["", "2026-03-01", "9999-12-31", "0001-01-01", "2026-02-29", "2026-03-01T10:00:00Z",
                "9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59", "EUR", "eur", "I1", "P1", "O1", "C1",
                "\u0000", "x" * 129]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from(EDGE_STRINGS) | st.text(max_size=4),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(
        ["due_on", "amount", "invoice_id"]), children, max_size=2),
    max_leaves=6)


def base_facts() -> list[dict[str, Any]]:
    return [
        b.sale("I2", 100, issued_on="2026-03-01", installments=[("2026-04-01", 50), ("2026-05-01", 50)]),
        b.payment("P2", 80, received_on="2026-03-02", allocations=[("I1", 30)]),
        b.credit_note("CN1", "I1", 20, on="2026-03-03"), b.reversal("P1", on="2026-03-04"),
        b.write_off("I1", on="2026-03-05", amount=10), b.dispute_opened("I1", on="2026-03-06"),
        b.dispute_resolved("I1", on="2026-03-07"), b.order_placed("O2", 10, on="2026-03-08"),
        b.order_cancelled("O1", on="2026-03-09"), b.order_released("O1", on="2026-03-09"),
        b.hold_placed(on="2026-03-10"), b.hold_released(on="2026-03-11"), b.limit_changed(500, on="2026-03-12"),
        b.terms_changed(10, on="2026-03-13"), b.grade_assigned("B", on="2026-03-14"),
        b.collection_action("call", on="2026-03-15", invoice_id="I1"),
        b.promise("PR1", 10, promised_on="2026-04-01", on="2026-03-16"), b.registered(customer_id="C2"),
    ]


@st.composite
def hostile_records(draw: st.DrawFn) -> bytes:
    raw = dict(draw(st.sampled_from(base_facts())))
    raw["data"] = dict(raw["data"])
    for _ in range(draw(st.integers(0, 2))):
        target = draw(st.sampled_from(["data", "data", "data", "envelope"]))
        if target == "data" and isinstance(raw["data"], dict):
            raw["data"][draw(st.sampled_from(sorted(raw["data"]) + ["due_on", "installments", "allocations"]))] = (
                draw(json_values))
        elif target == "envelope":
            raw[draw(st.sampled_from(["id", "type", "time", "customer_id", "data", "source"]))] = draw(json_values)
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=20))
    return msgspec.json.encode(raw)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile_records(), min_size=1, max_size=8))
def test_hostile_records_get_an_outcome_and_never_raise(values: list[bytes]) -> None:
    ledger = Ledger("memory://")
    b.process(ledger, b.registered(), b.sale("I1", 100, issued_on="2026-03-01"),
              b.payment("P1", 50, received_on="2026-03-01"), b.order_placed("O1", 10**9, on="2026-03-01"))

    outcomes = ledger.process_batch([InboundRecord(value=value, key=b"C1") for value in values])

    assert len(outcomes) == len(values)
    for outcome in outcomes:
        assert outcome.status in ("accepted", "rejected", "duplicate")
        assert (outcome.reason in REASON_CODES) if outcome.status == "rejected" else outcome.reason is None
    check_account(_account_from_store(ledger), _books_from_store(ledger))


def _account_from_store(ledger: Ledger) -> b.Account:
    account = b.Account()
    for stored in ledger.stored_events("C1"):
        event = stored.event
        account.state.fold(event)
        account.history.append(event)
    return account


def _books_from_store(ledger: Ledger) -> Books:
    """The expected balance from the stored facts' own events (the inputs were mutated at random)."""
    books = Books()
    for stored in ledger.stored_events("C1"):
        event = stored.event
        if isinstance(event, e.SaleRecorded):
            books.balance += event.amount
        elif isinstance(event, (e.CreditNoteIssued, e.PaymentReceived, e.InvoiceWrittenOff)):
            books.balance -= event.amount
        elif isinstance(event, e.PaymentReversed):
            books.balance += event.amount
    return books
