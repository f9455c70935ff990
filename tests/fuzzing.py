"""Fuzzed inbound records: valid envelopes, then mutated — fields dropped, retyped, oversized, ids duplicated,
keys wrong — and plain garbage (random bytes, JSON that is not an envelope, truncated or non-UTF-8 text).

Two front ends over the same mutations: Hypothesis strategies (`records()`) for the property test of
`Ledger.process_batch`, and a seeded generator (`fuzzed_lines()`) for the integration test through the broker.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from hypothesis import strategies as st

CUSTOMERS = ("C1", "C2")
DAYS = ("2026-01-05", "2026-01-20", "2026-02-10")
# Values of every JSON type and edge: what a retyped field becomes.
ODD_VALUES: tuple[Any, ...] = (None, 0, -1, 1.5, 100.0, 2**70, -(2**63), True, False, "", "x", "100", "EUR",
                               "2026-13-45", "2026-01-05T10:00:00Z", [], [1, 2], {}, {"a": 1}, "é\u0000\ud7ff",
                               "C1", "\u202e")
OVERSIZED_CHARS = (129, 4_096, 300_000)  # over the 128-char id limit, big, and a record of ~300 KB


def valid_envelopes(customer_id: str) -> list[dict[str, Any]]:
    """A small, valid history of one customer (each type of docs/contract.md §3 at least once)."""
    def env(n: int, type_: str, on: str, data: dict[str, Any]) -> dict[str, Any]:
        return {"id": f"{customer_id}-{n}", "type": type_, "source": "fuzz", "time": f"{on}T10:00:00Z",
                "customer_id": customer_id, "data": data}

    d1, d2, d3 = DAYS
    return [
        env(1, "customer.registered", d1, {"name": f"Customer {customer_id}", "currency": "EUR",
                                          "credit_limit": 100_000, "payment_terms_days": 30, "grade": "B"}),
        env(2, "order.placed", d1, {"order_id": "O1", "amount": 20_000, "currency": "EUR"}),
        env(3, "sale.recorded", d1, {"invoice_id": "I1", "amount": 20_000, "currency": "EUR", "issued_on": d1,
                                    "order_id": "O1", "installments": [{"due_on": d2, "amount": 5_000},
                                                                       {"due_on": d3, "amount": 15_000}]}),
        env(4, "credit_note.issued", d2, {"credit_note_id": "CN1", "invoice_id": "I1", "amount": 1_000,
                                         "reason": "damaged"}),
        env(5, "payment.received", d2, {"payment_id": "P1", "amount": 6_000, "currency": "EUR", "received_on": d2,
                                       "allocations": [{"invoice_id": "I1", "amount": 4_000}]}),
        env(6, "dispute.opened", d2, {"invoice_id": "I1", "reason": "price"}),
        env(7, "dispute.resolved", d3, {"invoice_id": "I1", "resolution": "upheld"}),
        env(8, "collection.action", d3, {"action": "call", "invoice_id": "I1", "by": "ann"}),
        env(9, "promise.made", d3, {"promise_id": "PR1", "amount": 2_000, "promised_on": d3}),
        env(10, "credit_limit.changed", d3, {"credit_limit": 50_000, "reason": "review"}),
        env(11, "credit_hold.placed", d3, {"reason": "late"}),
        env(12, "payment.reversed", d3, {"payment_id": "P1", "reason": "bounced"}),
        env(13, "invoice.written_off", d3, {"invoice_id": "I1", "reason": "insolvent"}),
    ]


BASE = [envelope for customer in CUSTOMERS for envelope in valid_envelopes(customer)]
FIELD_PATHS = [("id",), ("type",), ("source",), ("time",), ("customer_id",), ("data",)]


def _paths(envelope: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Every field path of an envelope, nested lists and objects included."""
    found: list[tuple[Any, ...]] = []

    def walk(value: Any, path: tuple[Any, ...]) -> None:
        if path:
            found.append(path)
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, (*path, key))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, (*path, index))

    walk(envelope, ())
    return found


def _parent(envelope: dict[str, Any], path: tuple[Any, ...]) -> Any:
    node: Any = envelope
    for step in path[:-1]:
        node = node[step]
    return node


def mutate(envelope: dict[str, Any], kind: str, path_index: int, choice: int) -> dict[str, Any] | Any:
    """One mutation of a copy of `envelope`: drop | retype | oversize | unknown_field | swap_customer."""
    mutated = copy.deepcopy(envelope)
    paths = _paths(mutated)
    path = paths[path_index % len(paths)]
    parent = _parent(mutated, path)
    if kind == "drop":
        if isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    elif kind == "retype":
        parent[path[-1]] = ODD_VALUES[choice % len(ODD_VALUES)]
    elif kind == "oversize":
        parent[path[-1]] = "x" * OVERSIZED_CHARS[choice % len(OVERSIZED_CHARS)]
    elif kind == "unknown_field":
        target = parent if isinstance(parent, dict) else mutated
        target[f"extra{choice}"] = ODD_VALUES[choice % len(ODD_VALUES)]
    elif kind == "swap_customer":
        mutated["customer_id"] = CUSTOMERS[(CUSTOMERS.index(mutated["customer_id"]) + 1) % len(CUSTOMERS)] \
            if mutated.get("customer_id") in CUSTOMERS else "C9"
    else:
        raise AssertionError(f"unknown mutation {kind}")
    return mutated


MUTATIONS = ("drop", "retype", "oversize", "unknown_field", "swap_customer")


def encode(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass")


def key_of(value: Any) -> bytes | None:
    """The Kafka key an upstream system would set: the customer_id if there is a string one."""
    if isinstance(value, dict) and isinstance(value.get("customer_id"), str):
        return value["customer_id"].encode("utf-8", "surrogatepass")
    return None


# -- Hypothesis ------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def fuzzed_record(draw: st.DrawFn) -> tuple[bytes, bytes | None]:
    """(value, key) of one record: a valid envelope, a mutated one, a duplicate id, or garbage."""
    form = draw(st.sampled_from(("valid", "mutated", "mutated", "mutated", "duplicate_id", "bytes", "json",
                                 "truncated", "wrong_key", "envelope_fields_random")))
    base = draw(st.sampled_from(BASE))
    if form == "valid":
        return encode(base), key_of(base)
    if form == "mutated":
        value = mutate(base, draw(st.sampled_from(MUTATIONS)), draw(st.integers(0, 60)), draw(st.integers(0, 60)))
        return encode(value), key_of(value)
    if form == "duplicate_id":  # another envelope's id, same or other content
        other = draw(st.sampled_from(BASE))
        value = {**other, "id": base["id"]}
        return encode(value), key_of(value)
    if form == "bytes":
        return draw(st.binary(max_size=200)), draw(st.none() | st.binary(max_size=8))
    if form == "json":
        return encode(draw(json_values)), draw(st.none() | st.sampled_from([b"C1", b"C2"]))
    if form == "truncated":
        raw = encode(base)
        return raw[:draw(st.integers(0, len(raw) - 1))], key_of(base)
    if form == "wrong_key":
        return encode(base), draw(st.sampled_from([b"C9", b"", b"c1", None]))
    fields = draw(st.dictionaries(st.sampled_from(("id", "type", "time", "customer_id", "data", "source")),
                                  json_values, max_size=6))
    return encode(fields), key_of(fields)


REGISTRATIONS = [(encode(envelope), key_of(envelope)) for envelope in BASE if envelope["type"] == "customer.registered"]


def records(max_size: int = 25) -> st.SearchStrategy[list[tuple[bytes, bytes | None]]]:
    """A fuzzed batch, most often after the customers' registrations (so that mutated facts reach the
    business rules instead of stopping at `unknown_customer`)."""
    fuzzed = st.lists(fuzzed_record(), min_size=1, max_size=max_size)
    return st.one_of(fuzzed, fuzzed.map(lambda batch: REGISTRATIONS + batch),
                     fuzzed.map(lambda batch: REGISTRATIONS + batch))


# -- Seeded, for the broker test -------------------------------------------------------------------------------

def fuzzed_lines(count: int, seed: int) -> list[bytes]:
    """`count` single-line records (JSON text has no raw newline; garbage bytes have theirs replaced), mostly
    mutated envelopes, some valid, re-sent or garbage; deterministic for a seed."""
    rng = random.Random(seed)
    lines: list[bytes] = [encode(envelope) for envelope in BASE[:: 2]]  # some valid history first
    while len(lines) < count:
        base = rng.choice(BASE)
        roll = rng.random()
        if roll < 0.6:
            value = mutate(base, rng.choice(MUTATIONS), rng.randrange(60), rng.randrange(60))
            line = encode(value)
        elif roll < 0.7:
            line = encode(base)  # valid, or an exact re-send
        elif roll < 0.8:
            line = encode({**rng.choice(BASE), "id": base["id"]})  # an id claimed by other content
        elif roll < 0.9:
            line = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 120)))
        else:
            raw = encode(base)
            line = raw[:rng.randrange(1, len(raw))]
        line = line.replace(b"\n", b" ").replace(b"\r", b" ")
        if line.strip():
            lines.append(line)
    return lines[:count]
