"""The workload generator: deterministic, contract-shaped, valid in file order, streamed."""

from __future__ import annotations

import collections
import datetime as dt
import json
import re
import tracemalloc

import msgspec
import pytest

from arledger import cli
from arledger.generate import BAD_KINDS, generate, generate_labelled, write_jsonl
from ledger.application import InboundRecord, Ledger

INBOUND_TYPES = {
    "customer.registered", "credit_limit.changed", "payment_terms.changed", "credit_grade.assigned",
    "credit_hold.placed", "credit_hold.released", "order.placed", "order.cancelled", "order.released",
    "sale.recorded", "credit_note.issued", "payment.received", "payment.reversed", "collection.action",
    "promise.made", "dispute.opened", "dispute.resolved", "invoice.written_off",
}
ENVELOPE_FIELDS = {"id", "type", "source", "time", "customer_id", "data"}
TIME_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _is_bad(label: str) -> bool:
    return label.startswith("bad:") or label == "duplicate"


@pytest.fixture(scope="module")
def year() -> list[tuple[str, bytes]]:
    """200 customers over 12 months: about 19,000 labelled lines."""
    return list(generate_labelled(200, 12, 7))


@pytest.fixture(scope="module")
def good(year) -> list[dict]:
    return [json.loads(line) for label, line in year if not _is_bad(label)]


def test_same_seed_gives_identical_bytes():
    assert list(generate(40, 3, 11)) == list(generate(40, 3, 11))


def test_different_seed_gives_a_different_history():
    assert list(generate(40, 3, 11)) != list(generate(40, 3, 12))


def test_every_line_is_one_json_object_except_the_truncated_ones(year):
    for label, line in year:
        assert b"\n" not in line
        if label == "bad:invalid_json":
            with pytest.raises(msgspec.DecodeError):
                msgspec.json.decode(line)
        else:
            assert isinstance(msgspec.json.decode(line), dict)


def test_good_lines_are_exactly_the_contract_envelope(good):
    for envelope in good:
        assert set(envelope) == ENVELOPE_FIELDS
        assert TIME_FORMAT.match(envelope["time"])
        assert envelope["type"] in INBOUND_TYPES and isinstance(envelope["data"], dict)
        assert envelope["source"] in {"erp-eu", "billing-us", "bank-feed", "crm"}


def test_every_inbound_type_appears_in_a_year_of_200_customers(year):
    assert {label for label, _ in year if not _is_bad(label)} == INBOUND_TYPES


def test_bad_lines_are_about_one_percent_and_of_every_kind(year):
    counts = collections.Counter(label for label, _ in year if _is_bad(label))
    assert {label.removeprefix("bad:") for label in counts} == set(BAD_KINDS)
    share = sum(counts.values()) / len(year)
    assert 0.006 < share < 0.015


def test_no_bad_lines_when_the_share_is_zero():
    assert not any(_is_bad(label) for label, _ in generate_labelled(40, 3, 5, bad_share=0.0))


def test_time_never_goes_back(year):
    times = []
    for label, line in year:
        if label in ("bad:invalid_json", "bad:invalid_envelope"):
            continue  # no time to read (truncated, or the missing field may be `time`)
        times.append(msgspec.json.decode(line)["time"])
    assert times == sorted(times)


def test_envelope_ids_are_unique_except_intended_resends(year):
    seen: dict[str, bytes] = {}
    previous = b""
    for label, line in year:
        if label in ("bad:invalid_json",):
            continue
        envelope = msgspec.json.decode(line)
        envelope_id = envelope.get("id")
        if label == "duplicate":
            assert line == previous and seen[envelope_id] == line  # the very same bytes again
        elif label == "bad:duplicate_conflict":
            assert envelope_id in seen and seen[envelope_id] != line
        elif envelope_id is not None:
            assert envelope_id not in seen
            assert envelope_id.startswith("gen-7-")
            seen[envelope_id] = line
        previous = line


def test_customers_register_before_anything_else_and_keep_their_currency(good):
    currency: dict[str, str] = {}
    for envelope in good:
        data = envelope["data"]
        if envelope["type"] == "customer.registered":
            assert envelope["customer_id"] not in currency
            currency[envelope["customer_id"]] = data["currency"]
            continue
        assert envelope["customer_id"] in currency
        if "currency" in data:
            assert data["currency"] == currency[envelope["customer_id"]]
    assert len(currency) == 200
    assert good[0]["type"] == "customer.registered"
    on_start = [e for e in good if e["type"] == "customer.registered" and e["time"].startswith("2025-01-01")]
    assert 150 < len(on_start) < 200  # most on the start date, some trickle in later


def test_amounts_are_positive_integers_and_installments_sum_to_the_amount(good):
    split = 0
    for envelope in good:
        data = envelope["data"]
        if "amount" in data:
            assert type(data["amount"]) is int and data["amount"] > 0
        installments = data.get("installments")
        if installments:
            split += 1
            assert sum(part["amount"] for part in installments) == data["amount"]
            due_dates = [part["due_on"] for part in installments]
            assert due_dates == sorted(due_dates)
            assert all(type(part["amount"]) is int and part["amount"] > 0 for part in installments)
    assert split > 0


def test_every_good_line_is_accepted_and_every_bad_one_gets_its_reason_from_the_ledger():
    """Replay through the real Ledger (memory store), keyed by customer_id as `arledger ingest` sends it."""
    lines = list(generate_labelled(40, 12, 3, bad_share=0.05))
    ledger = Ledger("memory://")
    records = []
    for _, line in lines:
        try:
            customer_id = msgspec.json.decode(line).get("customer_id")
        except msgspec.DecodeError:
            customer_id = None
        records.append(InboundRecord(value=line, key=customer_id.encode() if isinstance(customer_id, str) else None))
    outcomes = []
    for start in range(0, len(records), 2_000):
        outcomes += ledger.process_batch(records[start:start + 2_000])
    wrong = []
    for (label, line), outcome in zip(lines, outcomes):
        got = "bad:" + outcome.reason if outcome.status == "rejected" else outcome.status
        wanted = label if _is_bad(label) else "accepted"
        if got != wanted:
            wrong.append((label, got, outcome.message, line[:200]))
    assert not wrong, wrong[:5]
    every_kind = {kind if kind == "duplicate" else f"bad:{kind}" for kind in BAD_KINDS}
    assert {label for label, _ in lines if _is_bad(label)} == every_kind


def test_grade_d_customers_are_chased_far_more_than_grade_a(good):
    grade = {e["customer_id"]: e["data"]["grade"] for e in good if e["type"] == "customer.registered"}
    per_grade = collections.defaultdict(collections.Counter)
    for envelope in good:
        per_grade[grade[envelope["customer_id"]]][envelope["type"]] += 1

    def chased(g: str) -> float:
        return per_grade[g]["collection.action"] / per_grade[g]["sale.recorded"]

    assert chased("D") > 3 * chased("A")
    assert per_grade["D"]["invoice.written_off"] > per_grade["A"]["invoice.written_off"]


def test_sales_follow_the_seasons(good):
    by_month = collections.Counter(e["time"][5:7] for e in good if e["type"] == "sale.recorded")
    assert by_month["11"] > 1.3 * by_month["08"]


def test_volume_is_a_few_to_a_dozen_events_per_customer_month(year):
    per_customer_month = len(year) / (200 * 12)
    assert 4 < per_customer_month < 14


def test_generate_is_lazy():
    lines = generate(5_000, 120, 1)  # all of it would take minutes
    assert iter(lines) is lines
    assert b'"customer.registered"' in next(lines)


def test_memory_stays_well_below_the_output_size():
    tracemalloc.start()
    try:
        size = sum(len(line) for line in generate(40, 24, 5))  # peak/size is about 0.25
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 0.5 * size


def test_write_jsonl_counts_match_the_file(tmp_path):
    path = tmp_path / "facts.jsonl"
    counts = write_jsonl(path, 30, 2, 4, start=dt.date(2026, 3, 1), bad_share=0.05)
    lines = path.read_bytes().splitlines()
    assert counts["lines"] == len(lines) and counts["bytes"] == path.stat().st_size
    assert counts["good"] == sum(counts["by_type"].values())
    assert counts["lines"] - counts["good"] == sum(counts["bad"].values())
    assert lines == list(generate(30, 2, 4, start=dt.date(2026, 3, 1), bad_share=0.05))
    assert lines[0].startswith(b'{"id":"gen-4-1","type":"customer.registered"')
    assert b'"time":"2026-03-01T' in lines[0]


def test_cli_writes_the_file_and_prints_counts_by_type(tmp_path, capsys):
    path = tmp_path / "out.jsonl"
    code = cli.main(["generate", "--customers", "20", "--months", "2", "--seed", "9", "--out", str(path),
                     "--quiet", "--json"])
    assert code == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["lines"] == len(path.read_bytes().splitlines())
    assert counts["by_type"]["customer.registered"] == 20


def test_cli_rejects_a_bad_share_above_one_half(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["generate", "--bad-share", "0.9", "--out", str(tmp_path / "x.jsonl")])
    assert "between 0 and 0.5" in capsys.readouterr().err
