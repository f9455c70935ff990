"""Bad input on the real broker: every bad record lands on ar.rejected with its reason and original bytes,
the good records around it are applied, duplicates are no-ops, and `ingest --wait` still returns."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from arledger.settings import TOPIC_DECISIONS, TOPIC_INBOUND, TOPIC_REJECTED, Settings
from helpers import ingest_wait, line, produce, read_topic, report, running_workers, write_jsonl
from tests.builders import fact, payment, registered, sale

AS_OF = "2026-04-15"

B1_REGISTERED = registered(limit=500_000, terms=30, on="2026-01-02", customer_id="B1", id="b1-reg", name="Bravo One")
B2_REGISTERED = registered(limit=100_000, terms=30, currency="USD", on="2026-01-03", customer_id="B2", id="b2-reg",
                           name="Bravo Two", salesperson="dee")
# Due 03-01 + 30 d = 03-31.
B1_SALE = sale("INV-1", 100_000, issued_on="2026-03-01", customer_id="B1", id="b1-s1")
B1_PAYMENT = payment("P-1", 40_000, received_on="2026-03-15", customer_id="B1", id="b1-p1")
B2_SALE = sale("INV-B2", 5_000, issued_on="2026-04-01", currency="USD", customer_id="B2", id="b2-s1")
NEGATIVE = sale("INV-2", -500, issued_on="2026-03-02", customer_id="B1", id="b1-neg")

# Each bad line with the reason it must be rejected for.
MALFORMED_JSON = b'{"id": "bad-json", "type": "sale.recorded", "customer_id": "B1", "data": {'
NOT_UTF8 = b'{"id": "caf\xe9-1", "type": "customer.registered", "customer_id": "B3", "data": {}}'
UNKNOWN_TYPE = fact("invoice.teleported", {"invoice_id": "INV-1"},
                    id="b1-teleport", customer_id="B1", on="2026-03-03")
UNKNOWN_CUSTOMER = sale("INV-9", 1_000, issued_on="2026-03-03", customer_id="NOBODY", id="nobody-s1")
CONFLICTING_DUPLICATE = {**B1_SALE, "data": {**B1_SALE["data"], "amount": 999_999}}
# Same id and content as B1_SALE, only key order and spacing differ: an exact duplicate.
EXACT_DUPLICATE = (b'{"customer_id": "B1", "time": "2026-03-01T10:00:00Z", "type": "sale.recorded", "id": "b1-s1", '
                   b'"source": "test", "data": {"issued_on": "2026-03-01", "currency": "EUR", "amount": 100000, '
                   b'"invoice_id": "INV-1"}}')
WRONG_KEY = sale("INV-B3", 1_000, issued_on="2026-04-02", currency="USD", customer_id="B2", id="b2-wrong-key")

FILE = [B1_REGISTERED, MALFORMED_JSON, B1_SALE, NOT_UTF8, UNKNOWN_TYPE, B2_REGISTERED, UNKNOWN_CUSTOMER,
        CONFLICTING_DUPLICATE, NEGATIVE, EXACT_DUPLICATE, B1_PAYMENT, B2_SALE]
EXPECTED_REASONS = {
    line(MALFORMED_JSON): "invalid_json", NOT_UTF8: "invalid_json", line(UNKNOWN_TYPE): "unknown_type",
    line(UNKNOWN_CUSTOMER): "unknown_customer", line(CONFLICTING_DUPLICATE): "duplicate_conflict",
    line(NEGATIVE): "invalid_amount", line(WRONG_KEY): "invalid_envelope",
}


def test_bad_records_are_rejected_with_reason_and_original_bytes_while_good_ones_apply(
        kafka_settings: Settings, kafka_env: dict[str, str], tmp_path: Path) -> None:
    with running_workers(kafka_env, log_path=tmp_path / "workers.log"):
        # Keyed by B1 but naming B2: per-customer order depends on the key, so it is refused.
        produce(kafka_settings, TOPIC_INBOUND, b"B1", line(WRONG_KEY))
        counts = ingest_wait(kafka_env, write_jsonl(tmp_path / "facts.jsonl", FILE))
        rejects = [record.json() for record in read_topic(kafka_settings, TOPIC_REJECTED, at_least=7)]
        aging = report(kafka_env, "aging", "--as-of", AS_OF)

    assert counts == {"accepted": 5, "rejected": 6, "duplicate": 1, "rejected invalid_json": 2,
                      "rejected unknown_type": 1, "rejected unknown_customer": 1, "rejected duplicate_conflict": 1,
                      "rejected invalid_amount": 1}
    inbound = {(r.partition, r.offset): r for r in read_topic(kafka_settings, TOPIC_INBOUND, at_least=13)}
    assert len(rejects) == len(EXPECTED_REASONS)
    by_original = {}
    for reject in rejects:
        source = inbound[(reject["partition"], reject["offset"])]  # topic/partition/offset name the source
        assert reject["topic"] == kafka_settings.topic(TOPIC_INBOUND)
        assert original_bytes(reject) == source.value
        assert reject["key"] == (source.key.decode() if source.key is not None else None)
        assert reject["message"]
        by_original[source.value] = reject["reason"]
    assert by_original == EXPECTED_REASONS  # each bad record once; the exact duplicate is not a reject
    [not_utf8] = [r for r in rejects if r["original"] is None]
    assert base64.b64decode(not_utf8["original_base64"]) == NOT_UTF8
    # The good records around the bad ones are all applied: INV-1 100,000 − 40,000 due 03-31 (15 d) and INV-B2.
    assert aging["rows"] == [
        aging_row("B1", "Bravo One", "EUR", "", {"1-30": 60_000}),
        aging_row("B2", "Bravo Two", "USD", "dee", {"current": 5_000}),
    ]


def test_a_rejected_record_can_be_re_sent_fixed_under_the_same_id(
        kafka_settings: Settings, kafka_env: dict[str, str], tmp_path: Path) -> None:
    fixed = {**NEGATIVE, "data": {**NEGATIVE["data"], "amount": 7_000}}
    with running_workers(kafka_env, log_path=tmp_path / "workers.log"):
        first = ingest_wait(kafka_env, write_jsonl(tmp_path / "first.jsonl", [B1_REGISTERED, NEGATIVE]))
        second = ingest_wait(kafka_env, write_jsonl(tmp_path / "second.jsonl", [fixed, fixed]))
        aging = report(kafka_env, "aging", "--as-of", AS_OF)

    assert first == {"accepted": 1, "rejected": 1, "duplicate": 0, "rejected invalid_amount": 1}
    assert second == {"accepted": 1, "rejected": 0, "duplicate": 1}
    # INV-2 7,000 issued 03-02, due 04-01: 14 days past due on 04-15.
    assert aging["rows"] == [aging_row("B1", "Bravo One", "EUR", "", {"1-30": 7_000})]


def test_orders_get_one_decision_none_for_a_duplicate_or_a_rejected_one(
        kafka_settings: Settings, kafka_env: dict[str, str], tmp_path: Path) -> None:
    placed = fact("order.placed", {"order_id": "O-1", "amount": 20_000, "currency": "EUR"},
                  id="b1-o1", customer_id="B1", on="2026-03-05")
    wrong_currency = fact("order.placed", {"order_id": "O-2", "amount": 20_000, "currency": "USD"},
                          id="b1-o2", customer_id="B1", on="2026-03-05")
    with running_workers(kafka_env, log_path=tmp_path / "workers.log"):
        counts = ingest_wait(kafka_env, write_jsonl(tmp_path / "orders.jsonl",
                                                    [B1_REGISTERED, B1_SALE, placed, wrong_currency, placed]))
        # Anything on ar.decisions has been published before the ingest group committed past the orders.
        records = read_topic(kafka_settings, TOPIC_DECISIONS, at_least=1)

    assert counts == {"accepted": 3, "rejected": 1, "duplicate": 1, "rejected currency_mismatch": 1}
    [record] = records
    assert record.key == b"B1"
    decision = record.json()
    assert decision.pop("decided_at").endswith("Z")
    # 03-05: INV-1 100,000 is not yet due; 100,000 + 20,000 ≤ 500,000.
    assert decision == {"order_id": "O-1", "customer_id": "B1", "decision": "approved", "reason": None,
                        "amount": 20_000, "currency": "EUR", "credit_limit": 500_000, "exposure": 100_000,
                        "available": 400_000, "inbound_id": "b1-o1"}


def original_bytes(reject: dict[str, Any]) -> bytes:
    if reject["original"] is not None:
        assert reject["original_base64"] is None
        return reject["original"].encode()
    return base64.b64decode(reject["original_base64"])


def aging_row(cid: str, name: str, currency: str, salesperson: str, amounts: dict[str, int]) -> dict[str, Any]:
    buckets = {bucket: amounts.get(bucket, 0) for bucket in ("current", "1-30", "31-60", "61-90", "90+")}
    total = sum(buckets.values())
    return {"customer_id": cid, "name": name, "currency": currency, "salesperson": salesperson, **buckets,
            "open": total, "unapplied": 0, "total": total}
