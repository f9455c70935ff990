"""docs/inbound.schema.json: the JSON Schema of ar.inbound, generated from the contract's Structs, kept fresh."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec

from ledger import contract as c

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "docs" / "inbound.schema.json"


def generated() -> str:
    """Exactly what `arledger schema` prints."""
    return json.dumps(c.json_schema(), indent=2, sort_keys=True) + "\n"


def test_committed_schema_is_fresh() -> None:
    assert SCHEMA_FILE.exists(), "missing: run `arledger schema > docs/inbound.schema.json`"
    assert SCHEMA_FILE.read_text(encoding="utf-8") == generated(), (
        "docs/inbound.schema.json is stale: regenerate with `arledger schema > docs/inbound.schema.json`")


def schema() -> dict[str, Any]:
    return json.loads(generated())


def test_schema_has_one_envelope_variant_per_inbound_type() -> None:
    document = schema()
    variants = [document["$defs"][ref["$ref"].rpartition("/")[2]] for ref in document["oneOf"]]

    assert [variant["properties"]["type"]["enum"] for variant in variants] == [[t] for t in c.INBOUND_TYPES]
    for variant in variants:
        assert variant["required"] == ["id", "type", "time", "customer_id", "data"]


def test_schema_requires_the_data_fields_the_decoder_requires() -> None:
    definitions = schema()["$defs"]

    for data_type in c.DATA_TYPES.values():
        required = [f.name for f in msgspec.structs.fields(data_type) if f.required]
        assert definitions[data_type.__name__].get("required", []) == required, data_type.__name__


def test_schema_says_amounts_are_positive_integers_and_limits_not_negative() -> None:
    definitions = schema()["$defs"]

    assert definitions["SaleRecordedData"]["properties"]["amount"] == {
        "description": "Integer amount in minor units (cents), > 0.", "exclusiveMinimum": 0,
        "maximum": 2**53 - 1, "type": "integer"}
    assert definitions["CustomerRegisteredData"]["properties"]["credit_limit"]["minimum"] == 0
    assert definitions["CustomerRegisteredData"]["properties"]["payment_terms_days"]["minimum"] == 0
    assert definitions["SaleRecordedData"]["properties"]["issued_on"]["format"] == "date"
