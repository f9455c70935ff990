"""The inbound contract (docs/contract.md §3, §8): decoding, field types, bounds, sums and reason codes, no ledger state."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from tests.builders import encode, payment, registered, sale
from ledger import contract as c
from ledger.errors import (
    REASON_CODES,
    InvalidAmount,
    InvalidEnvelope,
    InvalidField,
    InvalidJson,
    UnknownType,
)


def decode(raw: dict[str, Any]) -> c.Envelope:
    return c.decode(encode(raw))


def with_data(raw: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**raw, "data": {**raw["data"], **changes}}


SALE = sale("I1", 100, issued_on="2026-03-01")
PAYMENT = payment("P1", 100, received_on="2026-03-01")
REGISTRATION = registered()


def test_a_well_formed_sale_decodes_to_its_struct() -> None:
    envelope = decode(SALE)

    assert isinstance(envelope.data, c.SaleRecordedData)
    assert (envelope.data.invoice_id, envelope.data.amount, envelope.data.issued_on) == ("I1", 100, dt.date(2026, 3, 1))
    assert envelope.business_date == dt.date(2026, 3, 1)


@pytest.mark.parametrize("value", [100.0, "100", True, None, [100]])
@pytest.mark.parametrize("raw, field", [
    (SALE, "amount"), (PAYMENT, "amount"), (REGISTRATION, "credit_limit"), (REGISTRATION, "payment_terms_days"),
])
def test_amounts_limits_and_terms_must_be_json_integers(raw, field: str, value: Any) -> None:
    with pytest.raises(InvalidField):
        decode(with_data(raw, **{field: value}))


@pytest.mark.parametrize("amount", [0, -1, -100])
@pytest.mark.parametrize("raw", [SALE, PAYMENT], ids=["sale", "payment"])
def test_amounts_must_be_positive(raw, amount: int) -> None:
    with pytest.raises(InvalidAmount):
        decode(with_data(raw, amount=amount))


def test_negative_credit_limit_is_invalid_amount_and_zero_is_allowed() -> None:
    with pytest.raises(InvalidAmount):
        decode(with_data(REGISTRATION, credit_limit=-1))
    assert decode(with_data(REGISTRATION, credit_limit=0)).data.credit_limit == 0


def test_negative_payment_terms_are_invalid_field_and_zero_is_allowed() -> None:
    with pytest.raises(InvalidField):
        decode(with_data(REGISTRATION, payment_terms_days=-1))
    assert decode(with_data(REGISTRATION, payment_terms_days=0)).data.payment_terms_days == 0


@pytest.mark.parametrize("nested", ["installment", "allocation"])
def test_negative_nested_amounts_are_invalid_amount(nested: str) -> None:
    if nested == "installment":
        raw = with_data(SALE, installments=[{"due_on": "2026-04-01", "amount": 150}, {"due_on": "2026-05-01",
                                                                                      "amount": -50}])
    else:
        raw = with_data(PAYMENT, allocations=[{"invoice_id": "I1", "amount": -1}])

    with pytest.raises(InvalidAmount):
        decode(raw)


@pytest.mark.parametrize("value", ["2026/03/01", "2026-3-1", "01.03.2026", "2026-03-01T00:00:00Z", "2026-02-30", 20260301])
def test_dates_are_strict_iso(value: Any) -> None:
    with pytest.raises(InvalidField):
        decode(with_data(SALE, issued_on=value))


@pytest.mark.parametrize("currency", ["eur", "EURO", "E1R", "", 978])
def test_currency_is_three_upper_case_letters(currency: Any) -> None:
    with pytest.raises(InvalidField):
        decode(with_data(SALE, currency=currency))


def test_grade_is_a_to_d() -> None:
    assert decode(with_data(REGISTRATION, grade="D")).data.grade == "D"
    with pytest.raises(InvalidField):
        decode(with_data(REGISTRATION, grade="E"))


def test_a_missing_required_data_field_is_invalid_field() -> None:
    data = dict(SALE["data"])
    del data["invoice_id"]

    with pytest.raises(InvalidField):
        decode({**SALE, "data": data})


def test_optional_fields_may_be_null_or_absent_and_unknown_data_fields_are_ignored() -> None:
    absent = decode(SALE)
    null = decode(with_data(SALE, due_on=None, order_id=None, salesperson=None, installments=None, colour="red"))

    assert absent.data == null.data


def test_empty_installments_and_allocations_mean_none() -> None:
    assert not decode(with_data(SALE, installments=[])).data.installments
    assert not decode(with_data(PAYMENT, allocations=[])).data.allocations


def test_installments_must_sum_to_the_amount() -> None:
    with pytest.raises(InvalidAmount):
        decode(with_data(SALE, installments=[{"due_on": "2026-04-01", "amount": 60},
                                             {"due_on": "2026-05-01", "amount": 50}]))


def test_installment_due_dates_must_not_decrease() -> None:
    with pytest.raises(InvalidField):
        decode(with_data(SALE, installments=[{"due_on": "2026-05-01", "amount": 50},
                                             {"due_on": "2026-04-01", "amount": 50}]))
    same_day = decode(with_data(SALE, installments=[{"due_on": "2026-05-01", "amount": 50},
                                                    {"due_on": "2026-05-01", "amount": 50}]))
    assert len(same_day.data.installments) == 2


def test_allocations_above_the_payment_are_invalid_amount() -> None:
    with pytest.raises(InvalidAmount):
        decode(with_data(PAYMENT, allocations=[{"invoice_id": "I1", "amount": 60},
                                               {"invoice_id": "I2", "amount": 41}]))
    assert decode(with_data(PAYMENT, allocations=[{"invoice_id": "I1", "amount": 100}])).data.allocations


# -- The envelope --------------------------------------------------------------------------------


def test_time_without_offset_means_utc() -> None:
    envelope = decode({**SALE, "time": "2026-03-01T23:30:00"})

    assert envelope.time == dt.datetime(2026, 3, 1, 23, 30, tzinfo=dt.UTC)


def test_time_with_an_offset_is_converted_to_utc_and_gives_the_utc_business_date() -> None:
    envelope = decode({**REGISTRATION, "time": "2026-03-01T01:00:00+02:00"})

    assert envelope.time == dt.datetime(2026, 2, 28, 23, 0, tzinfo=dt.UTC)
    assert envelope.business_date == dt.date(2026, 2, 28)


@pytest.mark.parametrize("change", [
    {"id": ""}, {"id": "x" * 129}, {"id": 7}, {"type": None}, {"time": "2026-03-01"}, {"time": "yesterday"},
    {"time": 1772355600}, {"customer_id": ""}, {"data": None}, {"data": []}, {"data": "{}"},
])
def test_a_malformed_envelope_is_invalid_envelope(change: dict[str, Any]) -> None:
    with pytest.raises(InvalidEnvelope):
        decode({**SALE, **change})


@pytest.mark.parametrize("missing", ["id", "type", "time", "customer_id", "data"])
def test_a_missing_envelope_field_is_invalid_envelope(missing: str) -> None:
    raw = {k: v for k, v in SALE.items() if k != missing}

    with pytest.raises(InvalidEnvelope):
        decode(raw)


def test_id_of_128_characters_and_no_source_are_fine() -> None:
    raw = {k: v for k, v in SALE.items() if k != "source"}

    assert decode({**raw, "id": "x" * 128}).source is None


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b"\xff\xfe", b'{"id": "x",}'])
def test_bad_json_is_invalid_json(value: bytes) -> None:
    with pytest.raises(InvalidJson):
        c.decode(value)


def test_json_that_is_not_an_object_is_invalid_envelope() -> None:
    with pytest.raises(InvalidEnvelope):
        c.decode(b"[1, 2]")


def test_unknown_type_is_unknown_type_before_the_data_is_looked_at() -> None:
    with pytest.raises(UnknownType):
        decode({**SALE, "type": "sale.deleted", "data": {"amount": "lots"}})


def test_every_inbound_type_has_a_data_struct_and_decodes() -> None:
    assert set(c.INBOUND_TYPES) == {
        "customer.registered", "credit_limit.changed", "payment_terms.changed", "credit_grade.assigned",
        "credit_hold.placed", "credit_hold.released", "order.placed", "order.cancelled", "order.released",
        "sale.recorded", "credit_note.issued", "payment.received", "payment.reversed", "collection.action",
        "promise.made", "dispute.opened", "dispute.resolved", "invoice.written_off",
    }


def test_reason_codes_are_exactly_those_of_the_contract() -> None:
    assert sorted(REASON_CODES) == sorted([
        "invalid_json", "invalid_envelope", "invalid_field", "unknown_type", "invalid_amount", "unknown_customer",
        "customer_exists", "unknown_invoice", "unknown_payment", "unknown_order", "duplicate_reference",
        "currency_mismatch", "allocation_exceeds_open", "credit_note_exceeds_invoice", "already_reversed",
        "duplicate_conflict", "invalid_state",
    ])
    assert len(set(REASON_CODES)) == len(REASON_CODES)


def test_digest_ignores_null_versus_absent_and_the_time_offset_notation() -> None:
    plain = decode(SALE)
    same = decode({**with_data(SALE, due_on=None, extra=1), "source": SALE["source"],
                   "time": "2026-03-01T11:00:00+01:00"})

    assert plain.digest() == same.digest()
    assert plain.digest() != decode(with_data(SALE, amount=101)).digest()


def test_digest_treats_an_empty_installments_list_as_none() -> None:
    assert decode(SALE).digest() == decode(with_data(SALE, installments=[])).digest()
    assert decode(PAYMENT).digest() == decode(with_data(PAYMENT, allocations=[])).digest()


def test_decoded_envelopes_are_json_encodable_for_the_rejected_topic() -> None:
    envelope = decode(SALE)

    assert json.loads(c.msgspec.json.encode(envelope))["data"]["invoice_id"] == "I1"
