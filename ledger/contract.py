"""The inbound contract (topic ar.inbound): the envelope and one Struct per fact type (docs/contract.md §3, §8).

Decoding goes in the order §8 prescribes, first failure wins:
envelope shape → (duplicate id, checked by the application) → unknown type →
data fields → installments/allocations sums. `decode_envelope` does the first
step, `decode_data` the rest, so the application can look up the id between them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from ledger.errors import (
    InvalidAmount,
    InvalidEnvelope,
    InvalidField,
    InvalidJson,
    UnknownType,
)

# Bounds on strings keep one record small and a hostile sender harmless.
Id = Annotated[str, Meta(min_length=1, max_length=128, description="An identifier, 1-128 characters.")]
EnvelopeId = Annotated[str, Meta(min_length=1, max_length=128, description="Idempotency key, 1-128 characters.")]
Text = Annotated[str, Meta(max_length=2000)]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Currency = Annotated[str, Meta(pattern="^[A-Z]{3}$", description="ISO 4217 code, three upper-case letters.")]
# 2**53 - 1: exact in every JSON reader, and sums of many still fit the read models' BIGINT.
AMOUNT_MAX = 2**53 - 1
Amount = Annotated[int, Meta(gt=0, le=AMOUNT_MAX, description="Integer amount in minor units (cents), > 0.")]
Limit = Annotated[int, Meta(ge=0, le=AMOUNT_MAX, description="Credit limit in minor units, >= 0.")]
TermsDays = Annotated[int, Meta(ge=0, le=3650, description="Payment terms in days, >= 0.")]
Grade = Literal["A", "B", "C", "D"]
CollectionActionKind = Literal[
    "reminder", "call", "email", "letter", "visit", "lawyer_letter", "agency", "litigation"
]
INSTALLMENTS_MAX = 360  # thirty years of monthly installments
ALLOCATIONS_MAX = 1000  # one bank line settling many invoices


class Data(Struct, frozen=True, kw_only=True):
    """Base of every `data` payload; unknown fields are ignored (§8)."""


class CustomerRegisteredData(Data, frozen=True, kw_only=True):
    name: Name
    currency: Currency
    credit_limit: Limit
    payment_terms_days: TermsDays
    grade: Grade | None = None
    salesperson: Annotated[str, Meta(max_length=200)] | None = None


class CreditLimitChangedData(Data, frozen=True, kw_only=True):
    credit_limit: Limit
    reason: Text | None = None
    approved_by: Text | None = None


class PaymentTermsChangedData(Data, frozen=True, kw_only=True):
    payment_terms_days: TermsDays


class CreditGradeAssignedData(Data, frozen=True, kw_only=True):
    grade: Grade
    score: int | float | None = None
    reason: Text | None = None


class CreditHoldPlacedData(Data, frozen=True, kw_only=True):
    reason: Text


class CreditHoldReleasedData(Data, frozen=True, kw_only=True):
    reason: Text


class OrderPlacedData(Data, frozen=True, kw_only=True):
    order_id: Id
    amount: Amount
    currency: Currency


class OrderCancelledData(Data, frozen=True, kw_only=True):
    order_id: Id


class OrderReleasedData(Data, frozen=True, kw_only=True):
    order_id: Id
    by: Text
    reason: Text


class Installment(Struct, frozen=True, kw_only=True):
    due_on: dt.date
    amount: Amount


class SaleRecordedData(Data, frozen=True, kw_only=True):
    invoice_id: Id
    amount: Amount
    currency: Currency
    issued_on: dt.date
    due_on: dt.date | None = None
    order_id: Id | None = None
    salesperson: Annotated[str, Meta(max_length=200)] | None = None
    installments: Annotated[list[Installment], Meta(max_length=INSTALLMENTS_MAX)] | None = None


class CreditNoteIssuedData(Data, frozen=True, kw_only=True):
    credit_note_id: Id
    invoice_id: Id
    amount: Amount
    reason: Text


class Allocation(Struct, frozen=True, kw_only=True):
    invoice_id: Id
    amount: Amount


class PaymentReceivedData(Data, frozen=True, kw_only=True):
    payment_id: Id
    amount: Amount
    currency: Currency
    received_on: dt.date
    method: Text | None = None
    reference: Text | None = None
    allocations: Annotated[list[Allocation], Meta(max_length=ALLOCATIONS_MAX)] | None = None


class PaymentReversedData(Data, frozen=True, kw_only=True):
    payment_id: Id
    reason: Text


class CollectionActionData(Data, frozen=True, kw_only=True):
    action: CollectionActionKind
    invoice_id: Id | None = None
    outcome: Text | None = None
    note: Text | None = None
    by: Text | None = None


class PromiseMadeData(Data, frozen=True, kw_only=True):
    promise_id: Id
    amount: Amount
    promised_on: dt.date
    invoice_id: Id | None = None


class DisputeOpenedData(Data, frozen=True, kw_only=True):
    invoice_id: Id
    amount: Amount | None = None
    reason: Text


class DisputeResolvedData(Data, frozen=True, kw_only=True):
    invoice_id: Id
    amount: Amount | None = None
    resolution: Text


class InvoiceWrittenOffData(Data, frozen=True, kw_only=True):
    invoice_id: Id
    amount: Amount | None = None
    reason: Text


DATA_TYPES: dict[str, type[Data]] = {
    "customer.registered": CustomerRegisteredData,
    "credit_limit.changed": CreditLimitChangedData,
    "payment_terms.changed": PaymentTermsChangedData,
    "credit_grade.assigned": CreditGradeAssignedData,
    "credit_hold.placed": CreditHoldPlacedData,
    "credit_hold.released": CreditHoldReleasedData,
    "order.placed": OrderPlacedData,
    "order.cancelled": OrderCancelledData,
    "order.released": OrderReleasedData,
    "sale.recorded": SaleRecordedData,
    "credit_note.issued": CreditNoteIssuedData,
    "payment.received": PaymentReceivedData,
    "payment.reversed": PaymentReversedData,
    "collection.action": CollectionActionData,
    "promise.made": PromiseMadeData,
    "dispute.opened": DisputeOpenedData,
    "dispute.resolved": DisputeResolvedData,
    "invoice.written_off": InvoiceWrittenOffData,
}
INBOUND_TYPES: tuple[str, ...] = tuple(DATA_TYPES)


class RawEnvelope(Struct, frozen=True, kw_only=True):
    """The envelope shape, `data` still undecoded (§8 checks the shape first)."""

    id: EnvelopeId
    type: Annotated[str, Meta(min_length=1, max_length=64)]
    time: dt.datetime
    customer_id: Id
    data: dict[str, Any]
    source: Annotated[str, Meta(max_length=200)] | None = None


class Envelope(Struct, frozen=True, kw_only=True):
    """A fully decoded inbound fact."""

    id: str
    type: str
    time: dt.datetime  # always timezone-aware UTC
    customer_id: str
    data: Data
    source: str | None = None

    @property
    def business_date(self) -> dt.date:
        """`issued_on`/`received_on` where the fact has them, else the UTC date of `time` (§7)."""
        data = self.data
        if isinstance(data, SaleRecordedData):
            return data.issued_on
        if isinstance(data, PaymentReceivedData):
            return data.received_on
        return self.time.date()

    def digest(self) -> str:
        """SHA-256 of the canonical decoded envelope: absent and null optional fields compare equal (§8)."""
        builtins = msgspec.to_builtins(
            {"id": self.id, "type": self.type, "time": self.time, "customer_id": self.customer_id,
             "source": self.source, "data": self.data}
        )
        return hashlib.sha256(_canonical(_drop_nulls(builtins))).hexdigest()


_raw_decoder = msgspec.json.Decoder(RawEnvelope)
_canonical_encoder = msgspec.json.Encoder(order="sorted")


def _canonical(value: Any) -> bytes:
    return _canonical_encoder.encode(value)


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def decode_envelope(raw: bytes) -> RawEnvelope:
    """Check the JSON and the envelope shape; `data` stays a dict. Raises InvalidJson/InvalidEnvelope."""
    try:
        envelope = _raw_decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise InvalidEnvelope(f"envelope: {error}") from None
    except msgspec.DecodeError as error:
        raise InvalidJson(f"not a JSON object: {error}") from None
    except UnicodeDecodeError as error:  # msgspec raises this, not DecodeError, for a string that is not UTF-8
        raise InvalidJson(f"not UTF-8: {error}") from None
    if envelope.time.tzinfo is None:  # no offset means UTC (§8)
        envelope = msgspec.structs.replace(envelope, time=envelope.time.replace(tzinfo=dt.UTC))
    else:
        try:
            envelope = msgspec.structs.replace(envelope, time=envelope.time.astimezone(dt.UTC))
        except OverflowError:  # e.g. 9999-12-31T23:00:00-05:00: a poison record if it escaped as an error
            raise InvalidEnvelope(f"envelope: time {envelope.time.isoformat()} is out of range in UTC") from None
    return envelope


# msgspec reports a broken numeric bound as "Expected `int` >= 0" and the like.
_BOUND_MESSAGE = re.compile(r"^Expected `int` (>=|>|<=|<) ")
_AMOUNT_FIELDS = re.compile(r"\.(amount|credit_limit)`?$")


def decode_data(raw: RawEnvelope) -> Envelope:
    """Decode `data` by type and check the sums. Raises UnknownType/InvalidField/InvalidAmount."""
    data_type = DATA_TYPES.get(raw.type)
    if data_type is None:
        raise UnknownType(f"unknown type {raw.type!r}; known: {', '.join(INBOUND_TYPES)}")
    try:
        data = msgspec.convert(raw.data, data_type, strict=True)
    except msgspec.ValidationError as error:
        message = str(error)
        path = message.rpartition(" - at `")[2].rstrip("`")
        if _BOUND_MESSAGE.match(message) and _AMOUNT_FIELDS.search("." + path.rpartition(".")[2]):
            raise InvalidAmount(f"data: {message}") from None
        raise InvalidField(f"data: {message}") from None
    data = _empty_lists_as_none(data)
    _check_sums(data)
    return Envelope(
        id=raw.id, type=raw.type, time=raw.time, customer_id=raw.customer_id, data=data, source=raw.source
    )


def _empty_lists_as_none(data: Data) -> Data:
    """An empty installments/allocations list means none (§8), so it also digests like an absent one."""
    if isinstance(data, SaleRecordedData) and data.installments == []:
        return msgspec.structs.replace(data, installments=None)
    if isinstance(data, PaymentReceivedData) and data.allocations == []:
        return msgspec.structs.replace(data, allocations=None)
    return data


def _check_sums(data: Data) -> None:
    if isinstance(data, SaleRecordedData) and data.installments:
        due_dates = [installment.due_on for installment in data.installments]
        if due_dates != sorted(due_dates):
            raise InvalidField(f"data.installments: due dates must not decrease, got {[str(d) for d in due_dates]}")
        total = sum(installment.amount for installment in data.installments)
        if total != data.amount:
            raise InvalidAmount(f"data.installments sum to {total}, not the sale amount {data.amount}")
    if isinstance(data, PaymentReceivedData) and data.allocations:
        total = sum(allocation.amount for allocation in data.allocations)
        if total > data.amount:
            raise InvalidAmount(f"data.allocations sum to {total}, above the payment amount {data.amount}")


def decode(raw: bytes) -> Envelope:
    """Both steps at once, for callers that do not check idempotency in between."""
    return decode_data(decode_envelope(raw))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the inbound contract: one envelope variant per type, generated from the Structs."""
    variants = []
    for type_name, data_type in DATA_TYPES.items():
        variant = msgspec.defstruct(
            "Envelope_" + type_name.replace(".", "_"),
            [
                ("id", EnvelopeId),
                ("type", Literal[type_name]),
                ("time", Annotated[dt.datetime, Meta(description="Business date-time; no offset means UTC.")]),
                ("customer_id", Id),
                ("data", data_type),
                ("source", Annotated[str, Meta(max_length=200)] | None, None),
            ],
            kw_only=True,
        )
        variants.append(variant)
    schemas, components = msgspec.json.schema_components(variants, ref_template="#/$defs/{name}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "arledger inbound fact (topic ar.inbound)",
        "description": "One JSON object per Kafka record; the record key must equal customer_id.",
        "oneOf": list(schemas),
        "$defs": components,
    }
