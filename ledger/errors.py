"""Rejections: a broken business or validation rule, named, each with its reason code (docs/contract.md §8)."""

from __future__ import annotations


class Rejection(Exception):
    """A fact the ledger refuses; `code` is the machine-readable reason on ar.rejected."""

    code = "rejected"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidJson(Rejection):
    code = "invalid_json"


class InvalidEnvelope(Rejection):
    code = "invalid_envelope"


class InvalidField(Rejection):
    code = "invalid_field"


class UnknownType(Rejection):
    code = "unknown_type"


class InvalidAmount(Rejection):
    code = "invalid_amount"


class UnknownCustomer(Rejection):
    code = "unknown_customer"


class CustomerExists(Rejection):
    code = "customer_exists"


class UnknownInvoice(Rejection):
    code = "unknown_invoice"


class UnknownPayment(Rejection):
    code = "unknown_payment"


class UnknownOrder(Rejection):
    code = "unknown_order"


class DuplicateReference(Rejection):
    code = "duplicate_reference"


class CurrencyMismatch(Rejection):
    code = "currency_mismatch"


class AllocationExceedsOpen(Rejection):
    code = "allocation_exceeds_open"


class CreditNoteExceedsInvoice(Rejection):
    code = "credit_note_exceeds_invoice"


class AlreadyReversed(Rejection):
    code = "already_reversed"


class DuplicateConflict(Rejection):
    code = "duplicate_conflict"


class InvalidState(Rejection):
    code = "invalid_state"


REASON_CODES: tuple[str, ...] = tuple(
    cls.code for cls in Rejection.__subclasses__()
)
