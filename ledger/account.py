"""The rules of a customer account (docs/contract.md §3, §7, §8), pure: no storage, no clock.

`AccountState.handle(envelope, emit, policy)` checks a fact against the
current state and, only when every check passes, emits domain events through
`emit`. Every state change goes through `AccountState.fold(event)`, which the
emitter calls for each event, so replaying the stored events rebuilds the
same state. Checks happen before the first emit: a rejected fact changes
nothing.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from msgspec import Struct, field

from ledger import contract as c
from ledger import events as e
from ledger.errors import (
    AllocationExceedsOpen,
    AlreadyReversed,
    CreditNoteExceedsInvoice,
    CurrencyMismatch,
    CustomerExists,
    DuplicateReference,
    InvalidAmount,
    InvalidField,
    InvalidState,
    UnknownCustomer,
    UnknownInvoice,
    UnknownOrder,
    UnknownPayment,
)
from ledger.policy import PROMISE_BROKEN, GradingPolicy, average_days, basis_points, promise_status, utilisation_pct

START_OF_TIME = dt.date.min  # registration values hold from the start of time (§8)
MONTH_END_GRADES_MAX = 24  # a fact after a long silence records at most this many missed month-end grades
Emit = Callable[[e.DomainEvent], None]


class _Ordered(Protocol):
    """Anything sorted as due dates are (dates; day numbers)."""

    def __lt__(self, other: Any, /) -> bool: ...


DueT_co = TypeVar("DueT_co", bound=_Ordered, covariant=True)
ItemT = TypeVar("ItemT", bound="Applicable[Any]")
SourceT = TypeVar("SourceT", bound="Unapplied")


class CreditPolicy(Struct, frozen=True, kw_only=True):
    """Configurable parts of the credit rules."""

    overdue_tolerance_days: int = 30
    # Behaviour grading (docs/contract.md §8 "computed grades"): None records no `credit_grade.computed` events.
    grading: GradingPolicy | None = None


class Item(Struct, kw_only=True):
    """One installment of an invoice: the unit of aging and of cash application."""

    invoice_id: str
    installment: int
    amount: int
    issued_on: dt.date
    due_on: dt.date
    open: int
    written_off: bool = False
    reopened_on: dt.date | None = None
    last_effective_on: dt.date
    movements: list[tuple[dt.date, int]] = field(default_factory=list)  # (effective_on, delta)

    @property
    def key(self) -> str:
        return item_key(self.invoice_id, self.installment)

    def open_as_of(self, as_of: dt.date) -> int:
        return sum(delta for effective_on, delta in self.movements if effective_on <= as_of)


class Invoice(Struct, kw_only=True):
    invoice_id: str
    amount: int
    issued_on: dt.date
    installment_count: int
    credit_noted: int = 0
    disputed: bool = False
    dispute_periods: list[tuple[dt.date, dt.date | None]] = field(default_factory=list)

    def disputed_on(self, day: dt.date) -> bool:
        return any(opened <= day and (resolved is None or resolved > day) for opened, resolved in self.dispute_periods)


class CashSource(Struct, kw_only=True):
    """Cash or credit waiting to be applied: a payment's remainder or a credit note's excess."""

    kind: str  # "payment" | "credit_note"
    source_id: str
    source_on: dt.date
    seq: int
    remaining: int


class PaymentRecord(Struct, kw_only=True):
    payment_id: str
    amount: int
    received_on: dt.date
    reversed: bool = False
    reversed_on: dt.date | None = None
    # (invoice_id, installment, amount, effective_on)
    allocations: list[tuple[str, int, int, dt.date]] = field(default_factory=list)


class OrderRecord(Struct, kw_only=True):
    order_id: str
    amount: int
    currency: str
    placed_on: dt.date
    status: str = "placed"  # placed → approved | blocked → invoiced | cancelled
    in_exposure_from: dt.date | None = None
    closed_on: dt.date | None = None


class Dated(Struct, array_like=True):
    """A value in force from `on` (ties broken by recorded order `seq`)."""

    on: dt.date
    seq: int
    value: Any


def item_key(invoice_id: str, installment: int) -> str:
    return f"{invoice_id}#{installment}"


def _latest_as_of(history: list[Dated], as_of: dt.date, default: Any) -> Any:
    best: Dated | None = None
    for entry in history:
        if entry.on <= as_of and (best is None or (entry.on, entry.seq) >= (best.on, best.seq)):
            best = entry
    return default if best is None else best.value


class AccountState(Struct, kw_only=True):
    """Everything the rules need to know about one customer; changed only by `fold`."""

    customer_id: str
    registered: bool = False
    name: str = ""
    currency: str = ""
    salesperson: str | None = None
    payment_terms_days: int = 0
    limits: list[Dated] = field(default_factory=list)
    grades: list[Dated] = field(default_factory=list)
    holds: list[Dated] = field(default_factory=list)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    items: dict[str, Item] = field(default_factory=dict)
    open_keys: dict[str, None] = field(default_factory=dict)  # items with open > 0, insertion-ordered set
    sources: list[CashSource] = field(default_factory=list)
    payments: dict[str, PaymentRecord] = field(default_factory=dict)
    credit_notes: dict[str, int] = field(default_factory=dict)
    orders: dict[str, OrderRecord] = field(default_factory=dict)
    promises: dict[str, int] = field(default_factory=dict)
    # What the behaviour grade needs beyond the rules' state (see `grading_inputs`):
    registered_on: dt.date | None = None
    promise_dates: dict[str, tuple[dt.date, dt.date]] = field(default_factory=dict)  # (made_on, promised_on)
    item_write_offs: list[tuple[str, int, int, dt.date]] = field(default_factory=list)  # invoice, inst., amount, on
    write_off_totals: list[tuple[dt.date, int]] = field(default_factory=list)  # (written_off_on, amount)
    computed_grade: str | None = None  # the last credit_grade.computed, in recorded order
    graded_through: dt.date | None = None  # the last month end with a recorded month-end grade
    balance_deltas: dict[str, int] = field(default_factory=dict)  # ISO effective date → Σ balance change
    # Σ balance_deltas and its latest date, kept from registration on (None: a state from before they were
    # kept, e.g. an old snapshot — then every balance is summed from the deltas).
    balance_total: int = 0
    balance_last_day: str | None = None
    seq: int = 0

    # -- Views as of a business date -------------------------------------------------------

    def credit_limit_as_of(self, as_of: dt.date) -> int:
        limit: int = _latest_as_of(self.limits, as_of, 0)
        return limit

    def grade_as_of(self, as_of: dt.date) -> str | None:
        grade: str | None = _latest_as_of(self.grades, as_of, None)
        return grade

    def on_hold_as_of(self, as_of: dt.date) -> bool:
        return bool(_latest_as_of(self.holds, as_of, False))

    def balance_as_of(self, as_of: dt.date) -> int:
        """Open items − unapplied cash, counting only movements effective on or before `as_of`."""
        cutoff = as_of.isoformat()
        if self.balance_last_day is not None and cutoff >= self.balance_last_day:
            return self.balance_total  # the common question, "as of today": no scan
        return sum(delta for day, delta in self.balance_deltas.items() if day <= cutoff)

    def open_orders_as_of(self, as_of: dt.date) -> int:
        """Approved orders dated ≤ as_of and not invoiced or cancelled by then (§8)."""
        return sum(
            order.amount
            for order in self.orders.values()
            if order.in_exposure_from is not None
            and order.in_exposure_from <= as_of
            and (order.closed_on is None or order.closed_on > as_of)
        )

    def exposure_as_of(self, as_of: dt.date) -> int:
        return self.balance_as_of(as_of) + self.open_orders_as_of(as_of)

    def has_item_overdue_beyond(self, as_of: dt.date, tolerance_days: int) -> bool:
        """An undisputed item open on `as_of` more than `tolerance_days` past due (30 passes, 31 blocks)."""
        for item in self.items.values():
            if (as_of - item.due_on).days <= tolerance_days or item.issued_on > as_of:
                continue
            if item.open == 0 and item.last_effective_on <= as_of:
                continue  # settled before as_of and untouched since
            if item.open_as_of(as_of) > 0 and not self.invoices[item.invoice_id].disputed_on(as_of):
                return True
        return False

    def unapplied(self) -> int:
        return sum(source.remaining for source in self.sources)

    def invoice_items(self, invoice_id: str) -> list[Item]:
        invoice = self.invoices[invoice_id]
        return [self.items[item_key(invoice_id, n)] for n in range(1, invoice.installment_count + 1)]

    def grading_inputs(self, as_of: dt.date, window_days: int) -> dict[str, int]:
        """The behaviour figures of the grade as of `as_of`, over the window (as_of − window_days, as_of]
        (the same definitions as `projections.grading`, which computes them from the read model):

        - average_days_delinquent: amount-weighted days after the due date over cash of payments not
          reversed by `as_of` applied in the window (on time counts 0), amounts written off in the window,
          and what is open past due on `as_of` (as_of − due_on);
        - utilisation_pct: exposure / credit limit × 100 on `as_of`;
        - broken_promises: promises dated in the window, before `as_of`, that got no payment at all;
        - disputes: disputes opened in the window;
        - write_off_bp: written off in the window ÷ sales issued in it, in basis points.
        """
        start = as_of - dt.timedelta(days=window_days - 1) if as_of.toordinal() > window_days else dt.date.min
        items = self.items
        base = weighted = 0
        live_payments = [payment for payment in self.payments.values()
                         if payment.reversed_on is None or payment.reversed_on > as_of]
        settled = (allocation for payment in live_payments for allocation in payment.allocations)
        for invoice_id, installment, amount, effective_on in itertools.chain(settled, self.item_write_offs):
            if start <= effective_on <= as_of:
                base += amount
                due_on = items[item_key(invoice_id, installment)].due_on
                if effective_on > due_on:
                    weighted += amount * (effective_on - due_on).days
        for item in items.values():
            if item.due_on >= as_of:
                continue
            open_amount = item.open if item.last_effective_on <= as_of else item.open_as_of(as_of)
            if open_amount:
                base += open_amount
                weighted += open_amount * (as_of - item.due_on).days
        broken = 0
        for promise_id, (made_on, promised_on) in self.promise_dates.items():
            if not (start <= promised_on < as_of and made_on <= as_of):
                continue
            paid_until = min(promised_on, as_of)
            paid = sum(payment.amount for payment in live_payments if made_on <= payment.received_on <= paid_until)
            if promise_status(self.promises[promise_id], paid, promised_on, as_of) == PROMISE_BROKEN:
                broken += 1
        disputes = sum(1 for invoice in self.invoices.values() for opened_on, _ in invoice.dispute_periods
                       if start <= opened_on <= as_of)
        written_off = sum(amount for on, amount in self.write_off_totals if start <= on <= as_of)
        sales = sum(invoice.amount for invoice in self.invoices.values() if start <= invoice.issued_on <= as_of)
        return {
            "average_days_delinquent": average_days(weighted, base),
            "utilisation_pct": utilisation_pct(self.exposure_as_of(as_of), self.credit_limit_as_of(as_of)),
            "broken_promises": broken,
            "disputes": disputes,
            "write_off_bp": basis_points(written_off, sales),
        }

    # -- Commands ----------------------------------------------------------------------------

    def handle(self, envelope: c.Envelope, emit: Emit, policy: CreditPolicy = CreditPolicy()) -> None:
        """Check one inbound fact and emit its events; raises a Rejection before any emit."""
        if not self.registered and not isinstance(envelope.data, c.CustomerRegisteredData):
            raise UnknownCustomer(f"unknown customer {self.customer_id!r}")
        handler = _HANDLERS[type(envelope.data)]
        day = envelope.business_date
        handler(self, envelope.data, day, emit, policy)
        if policy.grading is not None and self.registered:
            self._grade(type(envelope.data) in GRADE_RELEVANT, day, emit, policy.grading)

    def _grade(self, relevant: bool, day: dt.date, emit: Emit, grading: GradingPolicy) -> None:
        """After an accepted fact: the month-end grades of every month that ended before its business date
        and was not graded yet (as of each month end, so the fact itself is not in them: its effects are
        dated on or after `day`), then, for a fact that moves the behaviour figures, the grade as of `day`
        when it differs from the last computed one (docs/contract.md §8 "computed grades")."""
        if self.graded_through is not None:
            month_end = _month_end(self.graded_through + dt.timedelta(days=1))
        elif self.registered_on is not None:
            month_end = _month_end(self.registered_on)
        else:
            month_end = dt.date.max  # a state from before grading was recorded: no month ends to catch up
        due: list[dt.date] = []
        while month_end < day:
            due.append(month_end)
            month_end = _month_end(month_end + dt.timedelta(days=1))
        for month_end in due[-MONTH_END_GRADES_MAX:]:
            self._emit_grade(month_end, "month_end", emit, grading)
        if relevant:
            inputs = self.grading_inputs(day, grading.window_days)
            if grading.score(inputs).grade != self.computed_grade:
                self._emit_grade(day, "event", emit, grading, inputs)

    def _emit_grade(self, as_of: dt.date, trigger: str, emit: Emit, grading: GradingPolicy,
                    inputs: dict[str, int] | None = None) -> None:
        inputs = inputs if inputs is not None else self.grading_inputs(as_of, grading.window_days)
        score = grading.score(inputs)
        emit(e.CreditGradeComputed(grade=score.grade, score=score.score, previous_grade=self.computed_grade,
                                   trigger=trigger, window_days=grading.window_days, computed_on=as_of, **inputs))

    def _register(self, data: c.CustomerRegisteredData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        if self.registered:
            raise CustomerExists(f"customer {self.customer_id!r} is already registered")
        emit(e.CustomerRegistered(
            name=data.name, currency=data.currency, credit_limit=data.credit_limit,
            payment_terms_days=data.payment_terms_days, grade=data.grade, salesperson=data.salesperson,
            registered_on=day,
        ))

    def _change_limit(self, data: c.CreditLimitChangedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        emit(e.CreditLimitChanged(
            credit_limit=data.credit_limit, previous_credit_limit=self.credit_limit_as_of(day),
            reason=data.reason, approved_by=data.approved_by, effective_on=day,
        ))

    def _change_terms(self, data: c.PaymentTermsChangedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        emit(e.PaymentTermsChanged(payment_terms_days=data.payment_terms_days, effective_on=day))

    def _assign_grade(self, data: c.CreditGradeAssignedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        emit(e.CreditGradeAssigned(grade=data.grade, score=data.score, reason=data.reason, effective_on=day))

    def _place_hold(self, data: c.CreditHoldPlacedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        emit(e.CreditHoldPlaced(reason=data.reason, effective_on=day))

    def _release_hold(self, data: c.CreditHoldReleasedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        if not self.on_hold_as_of(day):
            raise InvalidState(f"no credit hold in effect on {day} to release")
        emit(e.CreditHoldReleased(reason=data.reason, effective_on=day))

    def _check_currency(self, currency: str) -> None:
        if currency != self.currency:
            raise CurrencyMismatch(f"currency {currency!r} differs from the account's {self.currency!r}")

    def _decision(self, order_id: str, amount: int, currency: str, day: dt.date, policy: CreditPolicy,
                  reason_if_approved: str | None = None) -> e.OrderDecided:
        limit = self.credit_limit_as_of(day)
        exposure = self.exposure_as_of(day)
        if self.on_hold_as_of(day):
            reason: str | None = "on_hold"
        elif self.has_item_overdue_beyond(day, policy.overdue_tolerance_days):
            reason = "overdue_beyond_tolerance"
        elif exposure + amount > limit:
            reason = "over_limit"
        else:
            reason = None
        decision: type[e.OrderApproved | e.OrderBlocked] = e.OrderApproved if reason is None else e.OrderBlocked
        return decision(order_id=order_id, amount=amount, currency=currency, credit_limit=limit, exposure=exposure,
                        available=limit - exposure, decided_on=day,
                        reason=reason_if_approved if reason is None else reason)

    def _place_order(self, data: c.OrderPlacedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        self._check_currency(data.currency)
        existing = self.orders.get(data.order_id)
        if existing is not None and existing.in_exposure_from is not None:  # ever approved or released (§8)
            raise DuplicateReference(f"order {data.order_id!r} already exists ({existing.status})")
        decision = self._decision(data.order_id, data.amount, data.currency, day, policy)
        emit(e.OrderPlaced(order_id=data.order_id, amount=data.amount, currency=data.currency, placed_on=day))
        emit(decision)

    def _cancel_order(self, data: c.OrderCancelledData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        order = self._order(data.order_id)
        if order.status in ("invoiced", "cancelled"):
            raise InvalidState(f"order {data.order_id!r} is already {order.status}")
        emit(e.OrderCancelled(order_id=order.order_id, amount=order.amount,
                              was_in_exposure=order.status == "approved", cancelled_on=day))

    def _release_order(self, data: c.OrderReleasedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        order = self._order(data.order_id)
        if order.status != "blocked":
            raise InvalidState(f"order {data.order_id!r} is {order.status}, only a blocked order can be released")
        limit = self.credit_limit_as_of(day)
        exposure = self.exposure_as_of(day)
        emit(e.OrderReleased(order_id=order.order_id, by=data.by, reason=data.reason, released_on=day))
        emit(e.OrderApproved(order_id=order.order_id, amount=order.amount, currency=order.currency,
                             reason="released", credit_limit=limit, exposure=exposure,
                             available=limit - exposure, decided_on=day))

    def _order(self, order_id: str) -> OrderRecord:
        order = self.orders.get(order_id)
        if order is None:
            raise UnknownOrder(f"unknown order {order_id!r} for customer {self.customer_id!r}")
        return order

    def _invoice(self, invoice_id: str) -> Invoice:
        invoice = self.invoices.get(invoice_id)
        if invoice is None:
            raise UnknownInvoice(f"unknown invoice {invoice_id!r} for customer {self.customer_id!r}")
        return invoice

    def _record_sale(self, data: c.SaleRecordedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        self._check_currency(data.currency)
        if data.invoice_id in self.invoices:
            raise DuplicateReference(f"invoice {data.invoice_id!r} already exists")
        if data.installments:
            schedule = [(inst.due_on, inst.amount) for inst in data.installments]
        else:
            due_on = data.due_on or _default_due_on(data.issued_on, self.payment_terms_days)
            schedule = [(due_on, data.amount)]
        exposure_before = self.exposure_as_of(day)
        emit(e.SaleRecorded(
            invoice_id=data.invoice_id, amount=data.amount, currency=data.currency, issued_on=data.issued_on,
            due_on=schedule[-1][0], order_id=data.order_id, salesperson=data.salesperson,
            installment_count=len(schedule),
        ))
        for number, (due_on, amount) in enumerate(schedule, start=1):
            emit(e.ItemOpened(invoice_id=data.invoice_id, installment=number, amount=amount,
                              issued_on=data.issued_on, due_on=due_on))
        order = self.orders.get(data.order_id) if data.order_id else None
        if order is not None and order.status in ("approved", "blocked", "placed"):
            emit(e.OrderInvoiced(order_id=order.order_id, invoice_id=data.invoice_id, amount=order.amount,
                                 was_in_exposure=order.status == "approved", invoiced_on=day))
        self._apply_cash(day, emit)
        limit = self.credit_limit_as_of(day)
        exposure = self.exposure_as_of(day)
        if exposure > limit:
            emit(e.CreditLimitBreached(invoice_id=data.invoice_id, exposure=exposure, credit_limit=limit,
                                       crossing=exposure_before <= limit, breached_on=day))

    def _issue_credit_note(self, data: c.CreditNoteIssuedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        invoice = self._invoice(data.invoice_id)
        if data.credit_note_id in self.credit_notes:
            raise DuplicateReference(f"credit note {data.credit_note_id!r} already exists")
        creditable = invoice.amount - invoice.credit_noted
        if data.amount > creditable:
            raise CreditNoteExceedsInvoice(
                f"credit note of {data.amount} exceeds what invoice {invoice.invoice_id!r} still allows ({creditable})")
        emit(e.CreditNoteIssued(credit_note_id=data.credit_note_id, invoice_id=invoice.invoice_id,
                                amount=data.amount, reason=data.reason, issued_on=day))
        left = data.amount
        for item in reversed(self.invoice_items(invoice.invoice_id)):  # latest installment first
            if left == 0:
                break
            if item.written_off or item.open == 0:
                continue
            amount = min(left, item.open)
            emit(e.CreditNoteApplied(credit_note_id=data.credit_note_id, invoice_id=item.invoice_id,
                                     installment=item.installment, amount=amount,
                                     effective_on=_effective(item, day, day)))
            left -= amount
        if left:
            emit(e.CreditNoteExcessUnapplied(credit_note_id=data.credit_note_id, amount=left, effective_on=day))
        self._apply_cash(day, emit)

    def _receive_payment(self, data: c.PaymentReceivedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        self._check_currency(data.currency)
        if data.payment_id in self.payments:
            raise DuplicateReference(f"payment {data.payment_id!r} already exists")
        wanted: dict[str, int] = {}
        for allocation in data.allocations or ():
            self._invoice(allocation.invoice_id)
            wanted[allocation.invoice_id] = wanted.get(allocation.invoice_id, 0) + allocation.amount
        for invoice_id, amount in wanted.items():
            allocatable = sum(i.open for i in self.invoice_items(invoice_id) if not i.written_off)
            if amount > allocatable:
                raise AllocationExceedsOpen(
                    f"allocation of {amount} to invoice {invoice_id!r} exceeds its open amount {allocatable}")
        emit(e.PaymentReceived(payment_id=data.payment_id, amount=data.amount, currency=data.currency,
                               received_on=day, method=data.method, reference=data.reference))
        for allocation in data.allocations or ():
            left = allocation.amount
            for item in self.invoice_items(allocation.invoice_id):  # installments in due order
                if left == 0:
                    break
                if item.written_off or item.open == 0:
                    continue
                amount = min(left, item.open)
                emit(e.CashAllocated(source_kind="payment", source_id=data.payment_id, invoice_id=item.invoice_id,
                                     installment=item.installment, amount=amount, explicit=True,
                                     effective_on=_effective(item, day, day)))
                left -= amount
        self._apply_cash(day, emit)

    def _reverse_payment(self, data: c.PaymentReversedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        payment = self.payments.get(data.payment_id)
        if payment is None:
            raise UnknownPayment(f"unknown payment {data.payment_id!r} for customer {self.customer_id!r}")
        if payment.reversed:
            raise AlreadyReversed(f"payment {data.payment_id!r} is already reversed")
        remaining = sum(s.remaining for s in self.sources if s.kind == "payment" and s.source_id == payment.payment_id)
        allocations = list(payment.allocations)
        # Cash leaves the account from the reversal date, but never before it arrived (a reversal dated
        # before its payment's received_on would otherwise leave negative unapplied cash in between);
        # the event carries that date, so roll-forwards by `reversed_on` agree with the movements.
        removed_on = max(day, payment.received_on)
        emit(e.PaymentReversed(payment_id=payment.payment_id, amount=payment.amount, reason=data.reason,
                               reversed_on=removed_on))
        for invoice_id, installment, amount, effective_on in allocations:
            if effective_on > removed_on:
                # Allocated after the reversal date: from the reversal on, that cash was never there.
                emit(e.UnappliedCashRemoved(source_id=payment.payment_id, amount=amount, effective_on=removed_on,
                                            from_remainder=False))
            emit(e.AllocationReversed(payment_id=payment.payment_id, invoice_id=invoice_id, installment=installment,
                                      amount=amount, effective_on=max(day, effective_on)))
            if effective_on > removed_on:
                emit(e.UnappliedCashReturned(source_id=payment.payment_id, amount=amount,
                                             effective_on=effective_on))
        if remaining:
            emit(e.UnappliedCashRemoved(source_id=payment.payment_id, amount=remaining, effective_on=removed_on))
        self._apply_cash(day, emit)

    def _write_off(self, data: c.InvoiceWrittenOffData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        invoice = self._invoice(data.invoice_id)
        items = self.invoice_items(invoice.invoice_id)
        open_total = sum(item.open for item in items)
        if open_total == 0:
            raise InvalidState(f"invoice {invoice.invoice_id!r} has nothing open to write off")
        if data.amount is not None and data.amount > open_total:
            raise InvalidAmount(f"write-off of {data.amount} exceeds the open amount {open_total} "
                                f"of invoice {invoice.invoice_id!r}")
        amount_total = open_total if data.amount is None else data.amount
        emit(e.InvoiceWrittenOff(invoice_id=invoice.invoice_id, amount=amount_total, reason=data.reason,
                                 written_off_on=day))
        left = amount_total
        for item in items:  # earliest installment first
            if left == 0:
                break
            if item.open == 0:
                continue
            amount = min(left, item.open)
            emit(e.ItemWrittenOff(invoice_id=item.invoice_id, installment=item.installment, amount=amount,
                                  effective_on=_effective(item, day, day), closes_item=amount == item.open))
            left -= amount

    def _open_dispute(self, data: c.DisputeOpenedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        invoice = self._invoice(data.invoice_id)
        if invoice.disputed:
            raise InvalidState(f"invoice {invoice.invoice_id!r} is already in dispute")
        emit(e.DisputeOpened(invoice_id=invoice.invoice_id, amount=data.amount, reason=data.reason, opened_on=day))

    def _resolve_dispute(self, data: c.DisputeResolvedData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        invoice = self._invoice(data.invoice_id)
        if not invoice.disputed:
            raise InvalidState(f"invoice {invoice.invoice_id!r} has no open dispute to resolve")
        emit(e.DisputeResolved(invoice_id=invoice.invoice_id, amount=data.amount, resolution=data.resolution,
                               resolved_on=day))
        self._apply_cash(day, emit)

    def _record_action(self, data: c.CollectionActionData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        if data.invoice_id is not None:
            self._invoice(data.invoice_id)
        emit(e.CollectionActionRecorded(action=data.action, invoice_id=data.invoice_id, outcome=data.outcome,
                                        note=data.note, by=data.by, action_on=day))

    def _make_promise(self, data: c.PromiseMadeData, day: dt.date, emit: Emit, policy: CreditPolicy) -> None:
        if data.promise_id in self.promises:
            raise DuplicateReference(f"promise {data.promise_id!r} already exists")
        if data.invoice_id is not None:
            self._invoice(data.invoice_id)
        emit(e.PromiseMade(promise_id=data.promise_id, amount=data.amount, promised_on=data.promised_on,
                           invoice_id=data.invoice_id, made_on=day))

    def _apply_cash(self, cause_on: dt.date, emit: Emit) -> None:
        """Apply every unapplied source to eligible items: the invariant of §7."""
        if not self.sources:
            return
        eligible = [self.items[key] for key in self.open_keys
                    if not self.items[key].written_off and not self.invoices[self.items[key].invoice_id].disputed]
        if not eligible:
            return
        sources = sorted(self.sources, key=lambda s: (s.source_on, s.seq))
        for source, item, amount in cash_application(sources, eligible):
            emit(e.CashAllocated(  # its fold books the allocation before the next one is worked out
                source_kind=source.kind, source_id=source.source_id, invoice_id=item.invoice_id,
                installment=item.installment, amount=amount, explicit=False,
                effective_on=_effective(item, cause_on, source.source_on),
            ))

    # -- Fold ----------------------------------------------------------------------------------

    def fold(self, event: e.DomainEvent) -> None:
        """Apply one event to the state; the only way the state changes."""
        self.seq += 1
        _FOLDERS[type(event)](self, event)

    def _move_balance(self, day: dt.date, delta: int) -> None:
        key = day.isoformat()
        self.balance_deltas[key] = self.balance_deltas.get(key, 0) + delta
        if self.balance_last_day is not None:
            self.balance_total += delta
            self.balance_last_day = max(self.balance_last_day, key)

    def _move_item(self, invoice_id: str, installment: int, day: dt.date, delta: int) -> Item:
        item = self.items[item_key(invoice_id, installment)]
        item.open += delta
        assert item.open >= 0, f"open amount of {item.key} would go negative"
        item.movements.append((day, delta))
        item.last_effective_on = max(item.last_effective_on, day)
        if item.open:
            self.open_keys[item.key] = None
        else:
            self.open_keys.pop(item.key, None)
        return item

    def _take_from_source(self, kind: str, source_id: str, amount: int) -> None:
        for index, source in enumerate(self.sources):
            if source.kind == kind and source.source_id == source_id:
                source.remaining -= amount
                assert source.remaining >= 0, f"source {source_id} would go negative"
                if source.remaining == 0:
                    del self.sources[index]
                return
        raise AssertionError(f"no unapplied source {kind}:{source_id}")

    def _fold_registered(self, event: e.CustomerRegistered) -> None:
        self.registered = True
        self.name, self.currency, self.salesperson = event.name, event.currency, event.salesperson
        self.payment_terms_days = event.payment_terms_days
        self.registered_on = event.registered_on
        self.balance_last_day = ""
        self.limits.append(Dated(START_OF_TIME, self.seq, event.credit_limit))
        if event.grade is not None:
            self.grades.append(Dated(START_OF_TIME, self.seq, event.grade))

    def _fold_limit(self, event: e.CreditLimitChanged) -> None:
        self.limits.append(Dated(event.effective_on, self.seq, event.credit_limit))

    def _fold_terms(self, event: e.PaymentTermsChanged) -> None:
        self.payment_terms_days = event.payment_terms_days

    def _fold_grade(self, event: e.CreditGradeAssigned) -> None:
        self.grades.append(Dated(event.effective_on, self.seq, event.grade))

    def _fold_grade_computed(self, event: e.CreditGradeComputed) -> None:
        self.computed_grade = event.grade
        if event.trigger == "month_end":
            self.graded_through = max(self.graded_through or event.computed_on, event.computed_on)

    def _fold_hold_placed(self, event: e.CreditHoldPlaced) -> None:
        self.holds.append(Dated(event.effective_on, self.seq, True))

    def _fold_hold_released(self, event: e.CreditHoldReleased) -> None:
        self.holds.append(Dated(event.effective_on, self.seq, False))

    def _fold_order_placed(self, event: e.OrderPlaced) -> None:
        self.orders[event.order_id] = OrderRecord(
            order_id=event.order_id, amount=event.amount, currency=event.currency, placed_on=event.placed_on)

    def _fold_order_approved(self, event: e.OrderApproved) -> None:
        order = self.orders[event.order_id]
        order.status = "approved"
        order.in_exposure_from = max(order.placed_on, event.decided_on)

    def _fold_order_blocked(self, event: e.OrderBlocked) -> None:
        self.orders[event.order_id].status = "blocked"

    def _fold_order_closed(self, event: e.OrderCancelled | e.OrderInvoiced) -> None:
        order = self.orders[event.order_id]
        if isinstance(event, e.OrderCancelled):
            order.status, order.closed_on = "cancelled", event.cancelled_on
        else:
            order.status, order.closed_on = "invoiced", event.invoiced_on

    def _fold_nothing(self, event: e.DomainEvent) -> None:
        pass

    def _fold_sale(self, event: e.SaleRecorded) -> None:
        self.invoices[event.invoice_id] = Invoice(
            invoice_id=event.invoice_id, amount=event.amount, issued_on=event.issued_on,
            installment_count=event.installment_count)

    def _fold_item_opened(self, event: e.ItemOpened) -> None:
        item = Item(invoice_id=event.invoice_id, installment=event.installment, amount=event.amount,
                    issued_on=event.issued_on, due_on=event.due_on, open=0, last_effective_on=event.issued_on)
        self.items[item.key] = item
        self._move_item(event.invoice_id, event.installment, event.issued_on, event.amount)
        self._move_balance(event.issued_on, event.amount)

    def _fold_credit_note(self, event: e.CreditNoteIssued) -> None:
        self.credit_notes[event.credit_note_id] = event.amount
        self.invoices[event.invoice_id].credit_noted += event.amount

    def _fold_credit_note_applied(self, event: e.CreditNoteApplied) -> None:
        self._move_item(event.invoice_id, event.installment, event.effective_on, -event.amount)
        self._move_balance(event.effective_on, -event.amount)

    def _fold_credit_note_excess(self, event: e.CreditNoteExcessUnapplied) -> None:
        self.sources.append(CashSource(kind="credit_note", source_id=event.credit_note_id,
                                       source_on=event.effective_on, seq=self.seq, remaining=event.amount))
        self._move_balance(event.effective_on, -event.amount)

    def _fold_payment(self, event: e.PaymentReceived) -> None:
        self.payments[event.payment_id] = PaymentRecord(
            payment_id=event.payment_id, amount=event.amount, received_on=event.received_on)
        self.sources.append(CashSource(kind="payment", source_id=event.payment_id, source_on=event.received_on,
                                       seq=self.seq, remaining=event.amount))
        self._move_balance(event.received_on, -event.amount)

    def _fold_allocated(self, event: e.CashAllocated) -> None:
        self._move_item(event.invoice_id, event.installment, event.effective_on, -event.amount)
        self._take_from_source(event.source_kind, event.source_id, event.amount)
        if event.source_kind == "payment":
            self.payments[event.source_id].allocations.append(
                (event.invoice_id, event.installment, event.amount, event.effective_on))
        # item −amount and unapplied −amount on the same day: the balance does not move

    def _fold_payment_reversed(self, event: e.PaymentReversed) -> None:
        payment = self.payments[event.payment_id]
        payment.reversed, payment.reversed_on = True, event.reversed_on

    def _fold_allocation_reversed(self, event: e.AllocationReversed) -> None:
        item = self._move_item(event.invoice_id, event.installment, event.effective_on, event.amount)
        item.reopened_on = max(item.reopened_on or START_OF_TIME, event.effective_on)
        self._move_balance(event.effective_on, event.amount)

    def _fold_unapplied_removed(self, event: e.UnappliedCashRemoved) -> None:
        if event.from_remainder:
            self._take_from_source("payment", event.source_id, event.amount)
        self._move_balance(event.effective_on, event.amount)

    def _fold_unapplied_returned(self, event: e.UnappliedCashReturned) -> None:
        self._move_balance(event.effective_on, -event.amount)

    def _fold_item_written_off(self, event: e.ItemWrittenOff) -> None:
        item = self._move_item(event.invoice_id, event.installment, event.effective_on, -event.amount)
        if event.closes_item:
            item.written_off = True
        self._move_balance(event.effective_on, -event.amount)
        self.item_write_offs.append((event.invoice_id, event.installment, event.amount, event.effective_on))

    def _fold_written_off(self, event: e.InvoiceWrittenOff) -> None:
        self.write_off_totals.append((event.written_off_on, event.amount))

    def _fold_dispute_opened(self, event: e.DisputeOpened) -> None:
        invoice = self.invoices[event.invoice_id]
        invoice.disputed = True
        invoice.dispute_periods.append((event.opened_on, None))

    def _fold_dispute_resolved(self, event: e.DisputeResolved) -> None:
        invoice = self.invoices[event.invoice_id]
        invoice.disputed = False
        opened_on, _ = invoice.dispute_periods[-1]
        invoice.dispute_periods[-1] = (opened_on, event.resolved_on)

    def _fold_promise(self, event: e.PromiseMade) -> None:
        self.promises[event.promise_id] = event.amount
        self.promise_dates[event.promise_id] = (event.made_on, event.promised_on)


class Applicable(Protocol[DueT_co]):
    """An open item as automatic cash application sees it: the ledger's `Item`, or a model of one (the
    workload generator's, whose due dates are day numbers: anything ordered as the dates are works)."""

    @property
    def invoice_id(self) -> str: ...
    @property
    def installment(self) -> int: ...
    @property
    def due_on(self) -> DueT_co: ...
    @property
    def open(self) -> int: ...


class Unapplied(Protocol):
    """Cash or credit waiting to be applied: the ledger's `CashSource`, or a model of one."""

    @property
    def remaining(self) -> int: ...


def cash_application(sources: Iterable[SourceT], eligible: Iterable[ItemT]) -> Iterator[tuple[SourceT, ItemT, int]]:
    """Automatic cash application (docs/contract.md §7): each source in the order given (the caller's: oldest
    first) goes to the eligible items (open, undisputed, not written off: the caller's choice too), oldest due
    date first, ties by invoice id then installment, each item up to its open amount; what no item takes stays
    unapplied. Yields (source, item, amount) lazily: the caller books each allocation (lowers the source's
    `remaining` and the item's `open` by `amount`) before it asks for the next one."""
    items = sorted(eligible, key=lambda item: (item.due_on, item.invoice_id, item.installment))
    position, count = 0, len(items)
    for source in sources:
        while source.remaining > 0 and position < count:
            item = items[position]
            if item.open == 0:
                position += 1  # settled by an earlier source (or by nothing: it had nothing open)
                continue
            yield source, item, min(source.remaining, item.open)
        if position == count:
            return


def _default_due_on(issued_on: dt.date, terms_days: int) -> dt.date:
    """issued_on + terms; past the last representable date it is a bad date, not a crash (a poison record)."""
    try:
        return issued_on + dt.timedelta(days=terms_days)
    except OverflowError:
        raise InvalidField(f"issued_on {issued_on} plus {terms_days} days of payment terms is past "
                           f"{dt.date.max}; give due_on") from None


def _month_end(day: dt.date) -> dt.date:
    """The last day of `day`'s month."""
    if day.month == 12:
        return day.replace(day=31)
    return day.replace(month=day.month + 1, day=1) - dt.timedelta(days=1)


def _effective(item: Item, cause_on: dt.date, source_on: dt.date) -> dt.date:
    """max(causing event's date, issued_on, cash/credit source's date, latest reopening) — §7, §8."""
    return max(cause_on, item.issued_on, source_on, item.reopened_on or START_OF_TIME)


_HANDLERS: dict[type, Callable[..., None]] = {
    c.CustomerRegisteredData: AccountState._register,
    c.CreditLimitChangedData: AccountState._change_limit,
    c.PaymentTermsChangedData: AccountState._change_terms,
    c.CreditGradeAssignedData: AccountState._assign_grade,
    c.CreditHoldPlacedData: AccountState._place_hold,
    c.CreditHoldReleasedData: AccountState._release_hold,
    c.OrderPlacedData: AccountState._place_order,
    c.OrderCancelledData: AccountState._cancel_order,
    c.OrderReleasedData: AccountState._release_order,
    c.SaleRecordedData: AccountState._record_sale,
    c.CreditNoteIssuedData: AccountState._issue_credit_note,
    c.PaymentReceivedData: AccountState._receive_payment,
    c.PaymentReversedData: AccountState._reverse_payment,
    c.CollectionActionData: AccountState._record_action,
    c.PromiseMadeData: AccountState._make_promise,
    c.DisputeOpenedData: AccountState._open_dispute,
    c.DisputeResolvedData: AccountState._resolve_dispute,
    c.InvoiceWrittenOffData: AccountState._write_off,
}

# Facts after which the behaviour grade is recomputed (docs/contract.md §8): they move its figures. Orders move
# utilisation too, but only until invoiced or cancelled; leaving them out keeps the credit-decision path
# lean, and the next sale, payment or month end regrades.
GRADE_RELEVANT: frozenset[type] = frozenset({
    c.SaleRecordedData, c.CreditNoteIssuedData, c.PaymentReceivedData, c.PaymentReversedData,
    c.InvoiceWrittenOffData, c.DisputeOpenedData, c.DisputeResolvedData, c.PromiseMadeData,
    c.CreditLimitChangedData,
})

_FOLDERS: dict[type, Callable[[AccountState, Any], None]] = {
    e.CustomerRegistered: AccountState._fold_registered,
    e.CreditLimitChanged: AccountState._fold_limit,
    e.PaymentTermsChanged: AccountState._fold_terms,
    e.CreditGradeAssigned: AccountState._fold_grade,
    e.CreditGradeComputed: AccountState._fold_grade_computed,
    e.CreditHoldPlaced: AccountState._fold_hold_placed,
    e.CreditHoldReleased: AccountState._fold_hold_released,
    e.OrderPlaced: AccountState._fold_order_placed,
    e.OrderApproved: AccountState._fold_order_approved,
    e.OrderBlocked: AccountState._fold_order_blocked,
    e.OrderReleased: AccountState._fold_nothing,
    e.OrderCancelled: AccountState._fold_order_closed,
    e.OrderInvoiced: AccountState._fold_order_closed,
    e.SaleRecorded: AccountState._fold_sale,
    e.ItemOpened: AccountState._fold_item_opened,
    e.CreditNoteIssued: AccountState._fold_credit_note,
    e.CreditNoteApplied: AccountState._fold_credit_note_applied,
    e.CreditNoteExcessUnapplied: AccountState._fold_credit_note_excess,
    e.PaymentReceived: AccountState._fold_payment,
    e.CashAllocated: AccountState._fold_allocated,
    e.PaymentReversed: AccountState._fold_payment_reversed,
    e.AllocationReversed: AccountState._fold_allocation_reversed,
    e.UnappliedCashRemoved: AccountState._fold_unapplied_removed,
    e.UnappliedCashReturned: AccountState._fold_unapplied_returned,
    e.InvoiceWrittenOff: AccountState._fold_written_off,
    e.ItemWrittenOff: AccountState._fold_item_written_off,
    e.DisputeOpened: AccountState._fold_dispute_opened,
    e.DisputeResolved: AccountState._fold_dispute_resolved,
    e.CollectionActionRecorded: AccountState._fold_nothing,
    e.PromiseMade: AccountState._fold_promise,
    e.CreditLimitBreached: AccountState._fold_nothing,
}
assert set(_FOLDERS) == set(e.EVENT_TYPES.values()), "every domain event needs a fold"
assert set(_HANDLERS) == set(c.DATA_TYPES.values()), "every inbound type needs a handler"
