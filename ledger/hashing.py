"""Hash chains over the ledger (docs/contract.md §4): SHA-256 of the previous hash and the canonical JSON of an event.

Canonical JSON = sorted keys, no whitespace, UTF-8. `chain_hash(prev, body)` is
`sha256(prev_hex_ascii + canonical(body))` in hex. The customer chain runs in
stream-version order (computed by the ledger at write time); the global chain
runs in ledger position order (computed by the relay before publishing).
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

GENESIS_HASH = "0" * 64
_encoder = msgspec.json.Encoder(order="sorted")


def canonical_json(body: Any) -> bytes:
    return _encoder.encode(body)


def chain_hash(prev_hash: str, body: Any) -> str:
    return hashlib.sha256(prev_hash.encode("ascii") + canonical_json(body)).hexdigest()


def customer_hash_body(*, kind: str, customer_id: str, envelope_id: str, version: int, recorded_at: str,
                       schema_version: int, data: dict[str, Any]) -> dict[str, Any]:
    """The fields the customer chain covers: the event without hash fields and without its global position."""
    return {"kind": kind, "customer_id": customer_id, "envelope_id": envelope_id, "version": version,
            "recorded_at": recorded_at, "schema_version": schema_version, "data": data}


def receipt_hash_body(*, envelope_id: str, digest: str, customer_id: str, type: str, first_version: int,
                      last_version: int, recorded_at: str, origin: str | None) -> dict[str, Any]:
    """What an idempotency receipt claims: the fields its hash covers."""
    return {"envelope_id": envelope_id, "digest": digest, "customer_id": customer_id, "type": type,
            "first_version": first_version, "last_version": last_version, "recorded_at": recorded_at,
            "origin": origin}


def receipt_hash(last_event_hash: str, body: dict[str, Any]) -> str:
    """A receipt's hash, chained to the customer hash of the last event its envelope produced: a receipt
    altered by hand no longer matches it, and the event's hash is itself covered by both chains."""
    return chain_hash(last_event_hash, body)
