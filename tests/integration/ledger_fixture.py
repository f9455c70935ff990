"""A DuckDB read model built from real ledger events, without Kafka: for the report tests.

`LedgerFixture.batch(*envelopes, at=...)` runs the envelopes through the real
`Ledger` (memory:// event store, recorded time = `at`), reads the new events
in notification order exactly as the relay does, turns them into ar.ledger
records (`consumers.relay.ledger_record`, global hash chain included) and
folds them with `projections.fold.apply_batch`. Each call is one ledger batch
and one projection batch, so `known_at` between two calls is well defined.

The fact builders are the suite's one set (`tests/builders.py`).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from consumers.relay import ledger_record
from ledger.application import Ledger
from ledger.hashing import GENESIS_HASH
from ledger.records import record_encoder
from projections import fold, schema
from tests import builders

LEDGER_TOPIC = "ar.ledger"
READ_BATCH_EVENTS_MAX = 10_000


def instant(text: str) -> dt.datetime:
    """'2026-07-01T12:00:00Z' or '2026-07-01' (noon UTC) → an aware datetime."""
    if len(text) == 10:
        return dt.datetime.fromisoformat(f"{text}T12:00:00+00:00")
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


class LedgerFixture:
    """Ledger (in memory) → ar.ledger records → DuckDB file, batch by batch, with a controlled clock."""

    def __init__(self, path: Path | str, *, start: str = "2026-01-01T00:00:00Z") -> None:
        self.now = instant(start)
        self.ledger = Ledger("memory://", clock=lambda: self.now)
        self.connection = schema.connect(str(path))
        schema.create_schema(self.connection)
        self._last_notification_id = 0
        self._position = 0
        self._prev_hash = GENESIS_HASH

    def batch(self, *envelopes: dict[str, Any], at: str | None = None, expect_all_accepted: bool = True) -> list:
        """Process `envelopes` as one ledger batch recorded at `at` (default: one hour after the last) and project."""
        self.now = instant(at) if at else self.now + dt.timedelta(hours=1)
        outcomes = self.ledger.process_batch([builders.record(raw) for raw in envelopes])
        if expect_all_accepted:
            rejected = [(o.envelope_id, o.reason, o.message) for o in outcomes if o.status != "accepted"]
            assert not rejected, f"rejected: {rejected}"
        self._project()
        return outcomes

    def _project(self) -> None:
        records = []
        while True:
            stored = self.ledger.read_ledger(self._last_notification_id, READ_BATCH_EVENTS_MAX)
            if not stored:
                break
            for notification_id, event in stored:
                self._position += 1
                record = ledger_record(self._position, notification_id, event, self._prev_hash)
                self._prev_hash = record.hash_global
                self._last_notification_id = notification_id
                records.append(record_encoder.encode(record))
        fold.apply_batch(self.connection, records, {(LEDGER_TOPIC, 0): self._position})

    def recorded_at_of_last_batch(self) -> dt.datetime:
        return self.now

    def close(self) -> None:
        self.connection.close()
