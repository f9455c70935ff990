"""The alerts worker: evaluates the alert rules over the projection and publishes each new alert on ar.alerts.

It runs in the projector's process and uses the projector's DuckDB connection
(DuckDB allows one writer per file), between the projector's batches:

1. fold ar.alerts into the `alerts` table (offsets in `alert_offsets`, same transaction): the topic is the
   record of what was raised, so a crash between publishing and storing, or a projection rebuilt from
   ar.ledger, never raises an alert twice;
2. after new ledger events (at most every EVENT_EVALUATION_INTERVAL_S) evaluate the event-driven rules
   (breach, utilisation, grade downgrade) as of today; once per business day, at the first moment the
   pipeline is idle, evaluate every rule as of that day (docs/contract.md §8 "time-driven alerts"), and again when
   ledger events arrived since (at most every FULL_EVALUATION_INTERVAL_S: a backlog projected after the
   day's first evaluation is not left for tomorrow). Today is the wall-clock UTC date; the same day
   gives the same alert ids, so re-evaluating never raises an alert twice;
3. publish the alerts whose `alert_id` is not in the table yet (acks from all replicas), then store them.

Alert records are at-least-once on the topic in one corner (`arledger alerts --publish` racing the
worker for the same alert): readers dedupe by `alert_id`, as the table does.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterable
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import msgspec
import structlog
from kafka import KafkaConsumer, KafkaProducer

from arledger.settings import TOPIC_ALERTS, Settings
from consumers import clients
from ledger.policy import ConfigError, CreditConfig, parse_config
from projections import alerts as rules

CONFIG_ENV = "ARLEDGER_CONFIG"
# Package data, so a non-editable install (the container image) has it too; $ARLEDGER_CONFIG overrides it.
DEFAULT_CONFIG_PATH: Traversable = resources.files("consumers") / "arledger.toml"
EVENT_EVALUATION_INTERVAL_S = 2.0  # event-driven rules re-run at most this often: a few seconds of alert delay
FULL_EVALUATION_INTERVAL_S = 30.0  # every rule again after new events: bounds the cost of the aging/grade queries
FAILURE_BACKOFF_S = 30.0  # a failing evaluation is retried this much later, never stopping ingest or projection
CATCH_UP_RECORDS_MAX = 5_000
CATCH_UP_TIMEOUT_S = 60.0
log = structlog.get_logger("arledger.alerts")
_json = msgspec.json.Encoder()


def config_path() -> Path | Traversable:
    """$ARLEDGER_CONFIG, or the configuration shipped with the package (consumers/arledger.toml)."""
    override = os.environ.get(CONFIG_ENV)
    return Path(override).expanduser() if override else DEFAULT_CONFIG_PATH


def load_config(path: Path | Traversable | None = None) -> CreditConfig:
    """The credit-control configuration (dunning ladder, alerts, grading), read with tomllib.

    Raises ConfigError (never SystemExit: the command line decides how to stop) when the file cannot be
    read or a key is wrong."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the credit-control config {path}: {error.strerror or error}") from None
    return parse_config(text)


def utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def utc_now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def publish_alerts(producer: KafkaProducer, settings: Settings,
                   alerts: Iterable[rules.Alert]) -> list[tuple[int, int, bytes]]:
    """Send alerts to ar.alerts (key = customer_id) and wait for every acknowledgement: [(partition, offset, value)]."""
    raised_at = utc_now_iso()
    pending = []
    for alert in alerts:
        value = _json.encode(alert.record(raised_at))
        pending.append((value, producer.send(settings.topic(TOPIC_ALERTS), key=alert.customer_id.encode(),
                                             value=value)))
    producer.flush()
    published = []
    for value, future in pending:
        metadata = future.get(timeout=60)
        published.append((metadata.partition, metadata.offset, value))
    return published


class AlertsWorker:
    """Raises alerts from the projector's read model; see the module docstring."""

    def __init__(self, settings: Settings, projector: Any, config: CreditConfig, *,
                 today: Callable[[], dt.date] = utc_today, producer: KafkaProducer | None = None,
                 consumer: KafkaConsumer | None = None) -> None:
        self.settings = settings
        self.projector = projector
        self.config = config
        self.today = today
        self.topic = settings.topic(TOPIC_ALERTS)
        self.producer = producer or clients.producer(settings, "arledger-alerts")
        self.consumer = consumer or clients.assigned_consumer(settings, "arledger-alerts", CATCH_UP_RECORDS_MAX)
        # A projector shard holds whole customers (ar.ledger partitions p % N == I); ar.alerts is keyed by
        # customer with as many partitions, so the same partition numbers carry that shard's alerts.
        self.partitions = [partition for partition in clients.partitions_of(self.consumer, self.topic)
                           if settings.shard is None or partition.partition % settings.shard[1] == settings.shard[0]]
        self.consumer.assign(self.partitions)
        self._connection = None
        self._catch_up_target: dict[Any, int] = {}
        self._evaluated_position: int | None = None
        self._evaluated_at = 0.0
        self._daily_done_on: dt.date | None = None
        self._full_position: int | None = None
        self._full_at = 0.0
        self._retry_after = 0.0

    def _attach(self) -> Any:
        """The projector's current connection (a rebuilt file may have been swapped in): tables and offsets."""
        connection = self.projector.connection
        if connection is not self._connection:
            rules.create_alert_tables(connection)
            stored = rules.alert_offsets(connection)
            for partition in self.partitions:
                if partition.partition in stored:
                    self.consumer.seek(partition, stored[partition.partition])
                else:
                    self.consumer.seek_to_beginning(partition)
            # Nothing is evaluated before the table holds all ar.alerts had at this moment (see run_once).
            self._catch_up_target = self.consumer.end_offsets(self.partitions)
            self._connection = connection
        return connection

    def caught_up(self) -> bool:
        """The table holds every alert ar.alerts held when this file was attached."""
        if not self._catch_up_target:
            return True
        if any(self.consumer.position(tp) < offset for tp, offset in self._catch_up_target.items()):
            return False
        self._catch_up_target = {}
        return True

    def catch_up(self, timeout_ms: int = 0) -> int:
        """Fold what ar.alerts holds beyond the stored offsets into the table."""
        connection = self._attach()
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=CATCH_UP_RECORDS_MAX)
        records, offsets = [], {}
        for partition, batch in polled.items():
            records.extend((partition.partition, record.offset, record.value) for record in batch)
            offsets[partition.partition] = batch[-1].offset + 1
        if not records:
            return 0
        inserted = rules.fold_alert_records(connection, records, offsets, staging_dir=self.projector.path.parent)
        self._touch()
        log.info("batch_committed", worker="alerts", topic=self.topic, records=len(records), inserted=inserted,
                 offsets={str(p): o for p, o in offsets.items()})
        return len(records)

    def run_once(self, pipeline_idle: bool) -> int:
        """One bounded step; returns the records folded plus the alerts raised."""
        done = self.catch_up()
        now = time.monotonic()
        if now < self._retry_after or not self.caught_up():
            return done
        day = self.today()
        connection = self._attach()
        position = _max_position(connection)
        new_day = self._daily_done_on != day
        if pipeline_idle and done == 0 and (new_day or (
                position != self._full_position and now - self._full_at >= FULL_EVALUATION_INTERVAL_S)):
            kinds: tuple[str, ...] = rules.KINDS
        elif position != self._evaluated_position and now - self._evaluated_at >= EVENT_EVALUATION_INTERVAL_S:
            kinds = rules.EVENT_DRIVEN_KINDS
        else:
            return done
        try:
            raised = self.raise_alerts(day, kinds)
        except Exception:  # an alerts bug must not stop ingest or projection: log it, retry later
            log.exception("alerts_evaluation_failed", worker="alerts", day=day.isoformat(), kinds=kinds)
            self._retry_after = now + FAILURE_BACKOFF_S
            return done
        self._evaluated_position, self._evaluated_at = position, now
        if kinds == rules.KINDS:
            self._daily_done_on, self._full_position, self._full_at = day, position, now
        return done + raised

    @property
    def evaluated_on(self) -> dt.date | None:
        """The business day of the last evaluation of every rule."""
        return self._daily_done_on

    def raise_alerts(self, day: dt.date, kinds: Iterable[str] = rules.KINDS) -> int:
        """Evaluate `kinds` as of `day`, publish the alerts not raised before and store them; returns how many."""
        connection = self._attach()
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not self.caught_up():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.topic}: could not fold the alerts raised so far")
            self.catch_up(timeout_ms=200)
        started = time.perf_counter()
        candidates = _unique(rules.evaluate(connection, self.config, day, kinds))
        known = rules.recorded_ids(connection, [alert.alert_id for alert in candidates])
        fresh = [alert for alert in candidates if alert.alert_id not in known]
        if fresh:
            published = publish_alerts(self.producer, self.settings, fresh)
            rules.fold_alert_records(connection, published, {}, staging_dir=self.projector.path.parent)
            self._touch()
        log.info("alerts_evaluated", worker="alerts", day=day.isoformat(), kinds=list(kinds),
                 candidates=len(candidates), raised=len(fresh),
                 duration_ms=round((time.perf_counter() - started) * 1000, 1))
        return len(fresh)

    def _touch(self) -> None:
        # The projector publishes its snapshot only when something changed: alerts are a change.
        self.projector._dirty = True

    def close(self) -> None:
        self.consumer.close()
        self.producer.close(timeout=10)


def _unique(alerts: list[rules.Alert]) -> list[rules.Alert]:
    seen: dict[str, rules.Alert] = {}
    for alert in alerts:
        seen.setdefault(alert.alert_id, alert)
    return list(seen.values())


def _max_position(connection: Any) -> int | None:
    row = connection.execute("SELECT value FROM projection_meta WHERE key = 'max_position'").fetchone()
    return int(row[0]) if row and row[0] is not None else None
