"""The ledger contract (topic ar.ledger, docs/contract.md §4): one record per accepted domain event.

`LedgerRecord` is what the relay publishes and what projections and auditors
read. The customer hash chain is computed by the ledger at write time; the
global chain by the relay, in position order, over the record without its
global hash fields (`global_hash_body`).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ledger.hashing import chain_hash


class LedgerRecord(msgspec.Struct, frozen=True, kw_only=True):
    position: int  # 1, 2, 3 … without gaps, in the event store's recorded order
    notification_id: int  # the event store's own sequence number (has gaps: receipts live there too)
    customer_id: str
    version: int  # customer stream version
    kind: str
    envelope_id: str
    recorded_at: str
    schema_version: int
    data: dict[str, Any]
    prev_hash_customer: str
    hash_customer: str
    prev_hash_global: str
    hash_global: str


_GLOBAL_HASH_FIELDS = tuple(name for name in LedgerRecord.__struct_fields__
                            if name not in ("prev_hash_global", "hash_global"))


def global_hash_body(record: LedgerRecord) -> dict[str, Any]:
    """The record without its global hash fields: what the global chain covers (read field by field:
    the relay hashes every event with it, and the fields already hold JSON builtins)."""
    return {name: getattr(record, name) for name in _GLOBAL_HASH_FIELDS}


def with_global_hash(record: LedgerRecord, prev_hash_global: str) -> LedgerRecord:
    """Chain `record` after `prev_hash_global`."""
    unhashed = msgspec.structs.replace(record, prev_hash_global=prev_hash_global, hash_global="")
    return msgspec.structs.replace(unhashed, hash_global=chain_hash(prev_hash_global, global_hash_body(unhashed)))


record_encoder = msgspec.json.Encoder()
record_decoder = msgspec.json.Decoder(LedgerRecord)
