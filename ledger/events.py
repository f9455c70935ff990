"""Domain events of a customer account, past tense, one per accepted fact and one per derived fact.

Every reduction or increase of an open item or of unapplied cash carries its
effective business date (`effective_on`), so read models fold these events
into as-of views by summing, without re-deriving any accounting rule:

- open amount of an item as of D  = Σ item deltas with effective_on ≤ D
  (ItemOpened +amount at issued_on; CashAllocated, CreditNoteApplied,
  ItemWrittenOff −amount; AllocationReversed +amount);
- unapplied cash as of D = Σ unapplied deltas with effective_on ≤ D
  (PaymentReceived +amount; CreditNoteExcessUnapplied +amount;
  CashAllocated −amount; UnappliedCashRemoved −amount; UnappliedCashReturned +amount).

Events evolve only by adding fields with defaults (STYLE §4); `SCHEMA_VERSION`
is stamped on each stored event, and `ledger.upcasting` reads older versions.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from msgspec import Struct

SCHEMA_VERSION = 1


class DomainEvent(Struct, frozen=True, kw_only=True, tag_field="kind"):
    """Base class; `kind` is the tag (e.g. "sale.recorded")."""


# -- Customer master data ---------------------------------------------------------------------

class CustomerRegistered(DomainEvent, frozen=True, kw_only=True, tag="customer.registered"):
    name: str
    currency: str
    credit_limit: int
    payment_terms_days: int
    grade: str | None = None
    salesperson: str | None = None
    registered_on: dt.date


class CreditLimitChanged(DomainEvent, frozen=True, kw_only=True, tag="credit_limit.changed"):
    credit_limit: int
    previous_credit_limit: int
    reason: str | None = None
    approved_by: str | None = None
    effective_on: dt.date


class PaymentTermsChanged(DomainEvent, frozen=True, kw_only=True, tag="payment_terms.changed"):
    payment_terms_days: int
    effective_on: dt.date


class CreditGradeAssigned(DomainEvent, frozen=True, kw_only=True, tag="credit_grade.assigned"):
    grade: str
    score: int | float | None = None
    reason: str | None = None
    effective_on: dt.date


class CreditGradeComputed(DomainEvent, frozen=True, kw_only=True, tag="credit_grade.computed"):
    """The behaviour grade the ledger computed as of `computed_on` (docs/contract.md §8): on a relevant fact when the
    grade changed (`trigger` "event"), and at every month end (`trigger` "month_end"). The inputs are the
    figures over the window (computed_on − window_days, computed_on]; reported as `computed_grade`, never
    applied: `grade` stays the assigned one."""

    grade: str
    score: int
    previous_grade: str | None = None  # the last computed grade before this one
    trigger: str  # "event" | "month_end"
    window_days: int
    average_days_delinquent: int
    utilisation_pct: int
    broken_promises: int
    disputes: int
    write_off_bp: int
    computed_on: dt.date


class CreditHoldPlaced(DomainEvent, frozen=True, kw_only=True, tag="credit_hold.placed"):
    reason: str
    effective_on: dt.date


class CreditHoldReleased(DomainEvent, frozen=True, kw_only=True, tag="credit_hold.released"):
    reason: str
    effective_on: dt.date


# -- Orders and credit decisions --------------------------------------------------------------

class OrderPlaced(DomainEvent, frozen=True, kw_only=True, tag="order.placed"):
    order_id: str
    amount: int
    currency: str
    placed_on: dt.date


class OrderDecided(DomainEvent, frozen=True, kw_only=True):
    """Shared shape of a credit decision; figures as of `decided_on`, exposure without the order."""

    order_id: str
    amount: int
    currency: str
    reason: str | None
    credit_limit: int
    exposure: int
    available: int
    decided_on: dt.date


class OrderApproved(OrderDecided, frozen=True, kw_only=True, tag="order.approved"):
    pass


class OrderBlocked(OrderDecided, frozen=True, kw_only=True, tag="order.blocked"):
    pass


class OrderReleased(DomainEvent, frozen=True, kw_only=True, tag="order.released"):
    order_id: str
    by: str
    reason: str
    released_on: dt.date


class OrderCancelled(DomainEvent, frozen=True, kw_only=True, tag="order.cancelled"):
    order_id: str
    amount: int
    was_in_exposure: bool
    cancelled_on: dt.date


class OrderInvoiced(DomainEvent, frozen=True, kw_only=True, tag="order.invoiced"):
    order_id: str
    invoice_id: str
    amount: int
    was_in_exposure: bool
    invoiced_on: dt.date


# -- Sales, items, credit notes ---------------------------------------------------------------

class SaleRecorded(DomainEvent, frozen=True, kw_only=True, tag="sale.recorded"):
    invoice_id: str
    amount: int
    currency: str
    issued_on: dt.date
    due_on: dt.date
    order_id: str | None = None
    salesperson: str | None = None
    installment_count: int


class ItemOpened(DomainEvent, frozen=True, kw_only=True, tag="item.opened"):
    invoice_id: str
    installment: int
    amount: int
    issued_on: dt.date
    due_on: dt.date


class CreditNoteIssued(DomainEvent, frozen=True, kw_only=True, tag="credit_note.issued"):
    credit_note_id: str
    invoice_id: str
    amount: int
    reason: str
    issued_on: dt.date


class CreditNoteApplied(DomainEvent, frozen=True, kw_only=True, tag="credit_note.applied"):
    credit_note_id: str
    invoice_id: str
    installment: int
    amount: int
    effective_on: dt.date


class CreditNoteExcessUnapplied(DomainEvent, frozen=True, kw_only=True, tag="credit_note.excess_unapplied"):
    credit_note_id: str
    amount: int
    effective_on: dt.date


# -- Cash -------------------------------------------------------------------------------------

class PaymentReceived(DomainEvent, frozen=True, kw_only=True, tag="payment.received"):
    payment_id: str
    amount: int
    currency: str
    received_on: dt.date
    method: str | None = None
    reference: str | None = None


class CashAllocated(DomainEvent, frozen=True, kw_only=True, tag="cash.allocated"):
    source_kind: str  # "payment" | "credit_note"
    source_id: str
    invoice_id: str
    installment: int
    amount: int
    explicit: bool
    effective_on: dt.date


class PaymentReversed(DomainEvent, frozen=True, kw_only=True, tag="payment.reversed"):
    payment_id: str
    amount: int
    reason: str
    reversed_on: dt.date


class AllocationReversed(DomainEvent, frozen=True, kw_only=True, tag="allocation.reversed"):
    payment_id: str
    invoice_id: str
    installment: int
    amount: int
    effective_on: dt.date


class UnappliedCashRemoved(DomainEvent, frozen=True, kw_only=True, tag="unapplied_cash.removed"):
    """A reversal takes cash off the account from its date: the payment's remainder, or (from_remainder
    false) the part of a later allocation that, as of the days between the reversal and that allocation,
    was still unapplied."""

    source_id: str
    amount: int
    effective_on: dt.date
    from_remainder: bool = True


class UnappliedCashReturned(DomainEvent, frozen=True, kw_only=True, tag="unapplied_cash.returned"):
    """Undoes, on an allocation's own date, what that allocation took from unapplied cash, when the
    allocation was made void from an earlier reversal date (see UnappliedCashRemoved)."""

    source_id: str
    amount: int
    effective_on: dt.date


# -- Write-offs, disputes, collections --------------------------------------------------------

class InvoiceWrittenOff(DomainEvent, frozen=True, kw_only=True, tag="invoice.written_off"):
    invoice_id: str
    amount: int
    reason: str
    written_off_on: dt.date


class ItemWrittenOff(DomainEvent, frozen=True, kw_only=True, tag="item.written_off"):
    invoice_id: str
    installment: int
    amount: int
    effective_on: dt.date
    closes_item: bool = False  # the write-off took the item to zero: it takes no more cash, ever


class DisputeOpened(DomainEvent, frozen=True, kw_only=True, tag="dispute.opened"):
    invoice_id: str
    amount: int | None = None
    reason: str
    opened_on: dt.date


class DisputeResolved(DomainEvent, frozen=True, kw_only=True, tag="dispute.resolved"):
    invoice_id: str
    amount: int | None = None
    resolution: str
    resolved_on: dt.date


class CollectionActionRecorded(DomainEvent, frozen=True, kw_only=True, tag="collection.action_recorded"):
    action: str
    invoice_id: str | None = None
    outcome: str | None = None
    note: str | None = None
    by: str | None = None
    action_on: dt.date


class PromiseMade(DomainEvent, frozen=True, kw_only=True, tag="promise.made"):
    promise_id: str
    amount: int
    promised_on: dt.date
    invoice_id: str | None = None
    made_on: dt.date


class CreditLimitBreached(DomainEvent, frozen=True, kw_only=True, tag="credit_limit.breached"):
    invoice_id: str
    exposure: int
    credit_limit: int
    crossing: bool  # exposure was within the limit before this sale: alert once per crossing
    breached_on: dt.date


AnyDomainEvent = (
    CustomerRegistered | CreditLimitChanged | PaymentTermsChanged | CreditGradeAssigned | CreditGradeComputed |
    CreditHoldPlaced | CreditHoldReleased | OrderPlaced | OrderApproved | OrderBlocked | OrderReleased |
    OrderCancelled | OrderInvoiced | SaleRecorded | ItemOpened | CreditNoteIssued | CreditNoteApplied |
    CreditNoteExcessUnapplied | PaymentReceived | CashAllocated | PaymentReversed | AllocationReversed |
    UnappliedCashRemoved | UnappliedCashReturned | InvoiceWrittenOff | ItemWrittenOff | DisputeOpened |
    DisputeResolved | CollectionActionRecorded | PromiseMade | CreditLimitBreached
)
EVENT_TYPES: dict[str, type[DomainEvent]] = {
    cls.__struct_config__.tag: cls for cls in AnyDomainEvent.__args__
}


def event_kind(event: DomainEvent) -> str:
    """The event's `kind` tag, e.g. "sale.recorded" (msgspec types tags as str | int | None: ours are str)."""
    kind = event.__struct_config__.tag
    assert isinstance(kind, str), f"{type(event).__name__} has no string tag"
    return kind


def event_to_data(event: DomainEvent) -> dict[str, Any]:
    """The event's fields as JSON-ready builtins, without the `kind` tag."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    data.pop("kind", None)
    return data


def event_from_data(kind: str, data: dict[str, Any]) -> DomainEvent:
    """Inverse of `event_to_data`."""
    return msgspec.convert(data, EVENT_TYPES[kind])
