"""How the ledger's own events are turned into stored rows and back: msgspec instead of the json module.

eventsourcing's `Mapper` encodes an event's attributes with its `JSONTranscoder` (the json module, a
Python hook per custom object) and decodes with an object hook called for every JSON object. The
ledger's hot events — `CustomerAccount.Opened` / `Recorded` and `EnvelopeReceipt.Accepted` — hold only
strings, integers, builtins data (from `msgspec.to_builtins`) and one datetime, the store's timestamp.
`MsgspecMapper` writes those with msgspec, byte for byte what the JSONTranscoder writes (the timestamp
as `{"_type_":"datetime_iso","_data_":...}`, compact separators, UTF-8), and reads them back with
msgspec when the timestamp is their only transcoded value. Everything else (snapshots, the chain,
an event with a compressor or cipher configured) goes through eventsourcing's own path unchanged, so
stores written before and after are the same format.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec
from eventsourcing.persistence import Mapper, StoredEvent, find_id_convertor
from eventsourcing.utils import get_topic, resolve_topic

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_TYPE_MARK = b'"_type_"'
_DATETIME = "datetime_iso"


class MsgspecMapper(Mapper):
    """A Mapper with a msgspec fast path for the event classes given to `fast_classes`."""

    fast_classes: frozenset[type] = frozenset()

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        cls = type(domain_event)
        if cls not in self.fast_classes or self.cipher or self.compressor:
            return super().to_stored_event(domain_event)
        state = dict(vars(domain_event))
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        timestamp = state["timestamp"]
        if type(timestamp) is not dt.datetime:  # noqa: E721 - exactly what the fast path knows
            return super().to_stored_event(domain_event)
        state["timestamp"] = {"_type_": _DATETIME, "_data_": timestamp.isoformat()}
        return StoredEvent(originator_id=originator_id, originator_version=originator_version,
                           topic=_topic(cls), state=_encode(state))

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        cls = resolve_topic(stored_event.topic)
        state_bytes = stored_event.state
        if (cls not in self.fast_classes or self.cipher or self.compressor
                or bytes(state_bytes).count(_TYPE_MARK) != 1):
            return super().to_domain_event(stored_event)
        try:
            state = _decode(state_bytes)
            stamp = state["timestamp"]
            if stamp["_type_"] != _DATETIME or len(stamp) != 2:
                raise ValueError(stamp)
            state["timestamp"] = dt.datetime.fromisoformat(stamp["_data_"])
        except Exception:  # noqa: BLE001 - not the shape the fast path knows: eventsourcing's path says why
            return super().to_domain_event(stored_event)
        state["originator_id"] = find_id_convertor(cls, type(stored_event.originator_id))(stored_event.originator_id)
        state["originator_version"] = stored_event.originator_version
        if getattr(cls, "class_version", 1) != 1 or "class_version" in state:
            return super().to_domain_event(stored_event)
        domain_event = object.__new__(cls)
        object.__setattr__(domain_event, "__dict__", state)
        return domain_event


_topics: dict[type, str] = {}


def _topic(cls: type) -> str:
    topic = _topics.get(cls)
    if topic is None:
        topic = _topics[cls] = get_topic(cls)
    return topic


def mapper_class(fast: tuple[type, ...]) -> type[MsgspecMapper]:
    """A MsgspecMapper subclass whose fast path covers the event classes `fast`."""
    return type("LedgerMapper", (MsgspecMapper,), {"fast_classes": frozenset(fast)})
