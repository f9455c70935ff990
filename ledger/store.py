"""The one door into the event store's internals: the only module of arledger that touches eventsourcing's
`_record`, `_notify`, `ProcessingEvent` and the events table's SQL. Everything else — the relay, rebuild,
audit, bench — reads and writes through `ledger.application.Ledger`'s methods.

`record_in_order` saves a batch's events in one transaction in the order they were recorded across
customers; `select_first_versions` finds which aggregates exist, in one query per 500 ids.

The mapper: how the ledger's own events are turned into stored rows and back, msgspec instead of the json module.

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
import uuid
from collections.abc import Callable, Hashable, Iterable
from typing import Any, cast

import msgspec
from eventsourcing.application import Application, ProcessingEvent
from eventsourcing.persistence import Mapper, StoredEvent, find_id_convertor
from eventsourcing.postgres import PostgresDatastore
from eventsourcing.sqlite import SQLiteDatastore
from eventsourcing.utils import get_topic, resolve_topic

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode
_TYPE_MARK = b'"_type_"'
_DATETIME = "datetime_iso"


class MsgspecMapper(Mapper[uuid.UUID]):
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
        # lru_cache types its arguments as Hashable: eventsourcing's own Mapper casts the same way
        id_type = cast(Hashable, type(stored_event.originator_id))
        state["originator_id"] = find_id_convertor(cls, id_type)(stored_event.originator_id)
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


# -- Writing and looking up rows ----------------------------------------------------------------

LOOKUP_CHUNK = 500  # SQLite allows 999 bound parameters per statement


def record_in_order(app: Application[uuid.UUID], events: list[Any], aggregates: list[Any],
                    then: Callable[[], None] = lambda: None) -> None:
    """Save `events` (new events of `aggregates`, in the order they were recorded across aggregates) in
    one transaction, run `then` (e.g. snapshots), and notify eventsourcing's followers of the recordings."""
    for aggregate in aggregates:
        aggregate.collect_events()  # taken in `events` already, in recorded order
    processing_event: ProcessingEvent[uuid.UUID] = ProcessingEvent()
    processing_event.events.extend(events)  # collect_events() would isinstance-check a Protocol per event
    processing_event.aggregates.update({aggregate.id: aggregate for aggregate in aggregates})
    recordings = app._record(processing_event)  # noqa: SLF001 - the one door (module docstring)
    then()
    app._notify(recordings)  # noqa: SLF001


def _events_table(app: Application[uuid.UUID]) -> tuple[str, SQLiteDatastore | PostgresDatastore] | None:
    """The events table and datastore of an SQLite or PostgreSQL recorder (None for any other)."""
    events_table = getattr(app.recorder, "events_table_name", None)
    datastore = getattr(app.recorder, "datastore", None)
    if isinstance(events_table, str) and isinstance(datastore, (SQLiteDatastore, PostgresDatastore)):
        return events_table, datastore
    return None


def can_select_first_versions(app: Application[uuid.UUID]) -> bool:
    return _events_table(app) is not None


def select_first_versions(app: Application[uuid.UUID], originator_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """Which of `originator_ids` have a stored version 1 (SQLite or PostgreSQL: see can_select_first_versions)."""
    table = _events_table(app)
    assert table is not None, "neither SQLite nor PostgreSQL: ask can_select_first_versions first"
    events_table, datastore = table
    found: set[uuid.UUID] = set()
    chunks = [originator_ids[start:start + LOOKUP_CHUNK] for start in range(0, len(originator_ids), LOOKUP_CHUNK)]
    if isinstance(datastore, SQLiteDatastore):
        with datastore.transaction(commit=False) as cursor:
            for chunk in chunks:
                cursor.execute(f"SELECT originator_id FROM {events_table} WHERE originator_version = 1 "
                               f"AND originator_id IN ({','.join('?' * len(chunk))})", [key.hex for key in chunk])
                found.update(uuid.UUID(row[0]) for row in cursor.fetchall())
    else:
        with datastore.transaction(commit=False) as pg_cursor:
            for chunk in chunks:
                pg_cursor.execute(f'SELECT originator_id FROM "{datastore.schema}"."{events_table}" '
                                  f"WHERE originator_version = 1 AND originator_id = ANY(%s::uuid[])", [chunk])
                found.update(row["originator_id"] for row in pg_cursor.fetchall())
    return found


# -- Recovering a lost store from ar.ledger ------------------------------------------------------

def stored_event_count(app: Application[uuid.UUID]) -> int:
    """Rows in the events table (account events, receipts, the chain): 0 for an empty store."""
    return int(app.recorder.max_notification_id() or 0)


def write_with_notification_ids(app: Application[uuid.UUID], rows: Iterable[tuple[int, Any]],
                                on_written: Callable[[int], None] = lambda count: None) -> int:
    """Write domain events, each with the notification id given beside it, in ONE transaction of an empty
    SQLite or PostgreSQL store; returns how many. An exception raised while `rows` is iterated (a record
    that fails its checks) rolls every row back: the store is left as it was. eventsourcing itself only
    appends at the next id; recovery must put each event back at the id ar.ledger says it had."""
    found = _events_table(app)
    if found is None:
        raise TypeError("recovering needs a SQLite or PostgreSQL event store")
    events_table, datastore = found
    to_stored = app.mapper.to_stored_event
    written = 0
    if isinstance(datastore, SQLiteDatastore):
        sqlite, table = True, events_table
        statement = (f"INSERT INTO {events_table} (rowid, originator_id, originator_version, topic, state) "
                     f"VALUES (?, ?, ?, ?, ?)")
    else:
        sqlite, table = False, f'"{datastore.schema}"."{events_table}"'
        statement = (f"INSERT INTO {table} (notification_id, originator_id, originator_version, topic, state) "
                     f"VALUES (%s, %s, %s, %s, %s)")
    highest = 0
    with datastore.transaction(commit=True) as cursor:
        for notification_id, event in rows:
            stored = to_stored(event)
            originator_id = stored.originator_id
            if sqlite and isinstance(originator_id, uuid.UUID):
                originator_id = originator_id.hex
            cursor.execute(statement, (notification_id, originator_id, stored.originator_version, stored.topic,
                                       stored.state))
            highest = max(highest, notification_id)
            written += 1
            if written % 1_000 == 0:
                on_written(written)
        if not sqlite and highest:  # the next event eventsourcing appends gets the id after the highest
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'notification_id'), %s)", (highest,))
    on_written(written)
    return written
