"""Reading older stored event versions (STYLE §4: add fields with defaults, or a new version with an upcaster).

Events are stored, hashed and published in the version they were recorded in,
forever: the hash chains cover that stored form, so history is never rewritten.
Readers bring each event up to `SCHEMA_VERSION` when they read it:

- `upcast(kind, data, schema_version)` for one event's data (the aggregate,
  `StoredLedgerEvent.event`, verify);
- `upcast_record(raw)` for one ar.ledger record as JSON bytes (the projector's
  fold, which knows only the current field names).

Each step is a pure function `(kind, data) -> data` from version N to N+1,
kept forever so that history stays readable. A frozen sample of every event
type at every version lives in tests/fixtures/events_vN/ (tests/unit/test_upcasting.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from ledger.events import SCHEMA_VERSION

Upcaster = Callable[[str, dict[str, Any]], dict[str, Any]]

# UPCASTERS[n] turns version n into n+1. Version 1 is current: nothing to do yet.
UPCASTERS: dict[int, Upcaster] = {}


def upcast(kind: str, data: dict[str, Any], schema_version: int) -> dict[str, Any]:
    assert schema_version <= SCHEMA_VERSION, f"event from the future: version {schema_version}"
    while schema_version < SCHEMA_VERSION:
        data = UPCASTERS[schema_version](kind, data)
        schema_version += 1
    return data


class _VersionProbe(msgspec.Struct):
    schema_version: int = 1


_probe_decoder = msgspec.json.Decoder(_VersionProbe)


def upcast_record(raw: bytes) -> bytes:
    """An ar.ledger record (JSON) with its `data` in the current version; `schema_version` keeps the recorded one.

    The record's hashes still cover the recorded form: check them on the store or an export, not on this.
    """
    if SCHEMA_VERSION == 1:  # no older version exists: the common case costs nothing
        return raw
    if _probe_decoder.decode(raw).schema_version >= SCHEMA_VERSION:
        return raw
    record = msgspec.json.decode(raw)
    record["data"] = upcast(record["kind"], record["data"], record["schema_version"])
    return msgspec.json.encode(record)
