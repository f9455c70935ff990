"""`arledger status`: how far behind each worker is, read from Kafka, the event store and the snapshot."""

from __future__ import annotations

import time
from typing import Any

from kafka import TopicPartition

from arledger.settings import TOPIC_INBOUND, TOPIC_LEDGER, Settings
from consumers.broker import broker_answers
from consumers.ingest import INGEST_GROUP_ID
from consumers.publisher import end_offsets, snapshot_offsets
from consumers.topics import admin_client
from ledger.application import Ledger
from projections import schema

RELAY_BACKLOG_COUNT_MAX = 100_000  # counting further would take long; "at least" is enough to alarm


def status(settings: Settings) -> dict[str, Any]:
    """A dict per worker with its lag; `ok` false where a worker is behind or unreachable."""
    report: dict[str, Any] = {"kafka": settings.kafka_bootstrap, "store": _redact(settings.store_url)}
    if not broker_answers(settings.kafka_bootstrap):
        report["broker"] = {"ok": False, "error": "no Kafka broker answers"}
        return report
    report["broker"] = {"ok": True}
    inbound_end = end_offsets(settings, settings.topic(TOPIC_INBOUND))
    group_id = settings.topic(INGEST_GROUP_ID)
    with admin_client(settings) as admin:
        committed = admin.list_group_offsets(group_id).get(group_id, {})
    ingest_lag = {p: end - (committed[TopicPartition(settings.topic(TOPIC_INBOUND), p)].offset
                            if TopicPartition(settings.topic(TOPIC_INBOUND), p) in committed else 0)
                  for p, end in inbound_end.items()}
    report["ingest"] = {"lag": sum(ingest_lag.values()), "lag_by_partition": ingest_lag}
    ledger = Ledger(settings.store_url)
    try:
        chain = ledger.chain()
        backlog = len(ledger.read_ledger(chain.last_notification_id, RELAY_BACKLOG_COUNT_MAX))
        report["relay"] = {"published_position": chain.published_position, "chained_position": chain.last_position,
                           "unpublished_events": backlog + len(chain.pending)}
    finally:
        ledger.close()
    ledger_end = end_offsets(settings, settings.topic(TOPIC_LEDGER))
    applied = snapshot_offsets(settings)
    project_lag = {p: end - applied.get(p, 0) for p, end in ledger_end.items()}
    snapshot = settings.snapshot_path
    report["project"] = {"lag": sum(project_lag.values()), "lag_by_partition": project_lag,
                         "dead_letters": _dead_letters(settings),
                         "snapshot_age_s": round(time.time() - snapshot.stat().st_mtime, 1)
                         if snapshot.exists() else None}
    return report


def _dead_letters(settings: Settings) -> int | None:
    """Records the projector set aside (published snapshot); None without a snapshot."""
    paths = settings.snapshot_paths()
    if not paths:
        return None
    total = 0
    for path in paths:
        connection = schema.connect(str(path), read_only=True)
        try:
            found = connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'dead_letters' "
                                       "AND database_name = current_database()").fetchone()[0]
            total += connection.execute("SELECT count(*) FROM dead_letters").fetchone()[0] if found else 0
        finally:
            connection.close()
    return total


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url
