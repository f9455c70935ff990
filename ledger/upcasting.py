"""Reading older stored event versions (STYLE §4: add fields with defaults, or a new version with an upcaster).

`upcast(kind, data, schema_version)` brings a stored event's data to
`SCHEMA_VERSION`. Each step is a pure function `(kind, data) -> data` from
version N to N+1, kept forever so that history stays readable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
