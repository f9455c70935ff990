"""Credit alerts: the rules evaluated over the read model as of a business day, and the `alerts` table.

Each alert has a dedupe key `alert_id` = kind|customer|subject|scope (docs/contract.md §8: (kind, subject, day or
bucket)), so evaluating the same day twice, or every day, raises each alert once:

| kind | fires when (as of D) | subject | scope |
|---|---|---|---|
| `breach` | a sale crossed the credit limit (`credit_limit.breached` with `crossing`) | invoice | breached_on |
| `utilisation` | exposure / limit > threshold; once per episode above it | — | first day above |
| `aging_bucket` | an open item is in a bucket after `current` | invoice#installment | bucket |
| `first_overdue` | the customer's first item ever open after its due date (earliest such day) | — | — |
| `promise_broken` | a promise's date has passed with no payment at all | promise | promised_on |
| `grade_downgrade` | the computed grade as of D is worse than as of D − 1 | — | D |

The `alerts` table is a fold of the ar.alerts topic (its own offsets in `alert_offsets`, same
transaction), not of ar.ledger: it is created here, outside `schema.TABLES`, so a projection rebuilt
from ar.ledger neither holds nor compares it; the alerts worker folds ar.alerts back into it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from ledger.policy import GRADING_INPUTS, PROMISE_BROKEN, CreditConfig, is_downgrade
from projections.fold import staged_transaction
from projections.grading import computed_grades
from projections.reports import FAR_FUTURE, OPEN_ITEMS_AS_OF, Buckets, balances
from projections.worklist import _rows, promises

KINDS = ("breach", "utilisation", "aging_bucket", "first_overdue", "promise_broken", "grade_downgrade")
EVENT_DRIVEN_KINDS = ("breach", "utilisation", "grade_downgrade")  # also evaluated right after new ledger events

ALERT_TABLES: dict[str, tuple[str, str]] = {
    "alerts": ("Alerts published on ar.alerts, once each (alert_id = kind|customer|subject|scope).", """
        alert_id VARCHAR PRIMARY KEY, kind VARCHAR, customer_id VARCHAR, subject VARCHAR, scope VARCHAR,
        business_date DATE, raised_at TIMESTAMPTZ, message VARCHAR, figures JSON, "partition" INTEGER,
        "offset" BIGINT"""),
    "alert_offsets": ("ar.alerts offsets folded into `alerts`, written in the same transaction.", """
        "partition" INTEGER PRIMARY KEY, next_offset BIGINT"""),
}


@dataclass(frozen=True)
class Alert:
    kind: str
    customer_id: str
    subject: str
    scope: str
    business_date: dt.date
    message: str
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def alert_id(self) -> str:
        return "|".join((self.kind, self.customer_id, self.subject, self.scope))

    def record(self, raised_at: str) -> dict[str, Any]:
        """The ar.alerts record (key = customer_id)."""
        return {"alert_id": self.alert_id, "kind": self.kind, "customer_id": self.customer_id,
                "subject": self.subject, "scope": self.scope, "business_date": self.business_date.isoformat(),
                "raised_at": raised_at, "message": self.message, "figures": self.figures}


def create_alert_tables(connection: duckdb.DuckDBPyConnection) -> None:
    for name, (_, columns) in ALERT_TABLES.items():
        connection.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")


def has_alert_tables(connection: duckdb.DuckDBPyConnection) -> bool:
    """An `alerts` table or view in the connection's own database (not only in an attached one)."""
    found = connection.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'alerts' AND table_schema = 'main' "
        "AND table_catalog = current_database()").fetchone()[0]
    return found > 0


def union_alerts(connection: duckdb.DuckDBPyConnection, databases: Sequence[str]) -> None:
    """On a connection over projector shards (attached as `databases`), `alerts` = the union of theirs:
    each shard folds the ar.alerts partitions of its own customers, so every alert is in one shard."""
    present = [name for name in databases if connection.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND table_name = 'alerts'",
        [name]).fetchone()[0]]
    if present:
        connection.execute("CREATE OR REPLACE VIEW alerts AS " + " UNION ALL ".join(
            f"SELECT * FROM {name}.main.alerts" for name in present))


def _money(amount: int) -> str:
    sign = "-" if amount < 0 else ""
    return f"{sign}{abs(amount) // 100:,}.{abs(amount) % 100:02d}"


# -- The rules --------------------------------------------------------------------------------------

BREACH_SQL = """
    SELECT customer_id, invoice_id, exposure, credit_limit, breached_on FROM breaches
    WHERE crossing AND breached_on <= $as_of ORDER BY position"""


def breach_alerts(connection: duckdb.DuckDBPyConnection, as_of: dt.date) -> list[Alert]:
    return [Alert("breach", row["customer_id"], row["invoice_id"], row["breached_on"].isoformat(), as_of,
                  f"{row['customer_id']} crossed its credit limit: exposure {_money(row['exposure'])} > limit "
                  f"{_money(row['credit_limit'])} after sale {row['invoice_id']} of {row['breached_on']}",
                  {"invoice_id": row["invoice_id"], "exposure": row["exposure"], "credit_limit": row["credit_limit"],
                   "breached_on": row["breached_on"].isoformat()})
            for row in _rows(connection, BREACH_SQL, {"as_of": as_of})]


# Exposure changes only on the effective dates of movements, order decisions and limit changes: on each such
# day per customer, exposure (a running sum) against the limit in force; the episode above the threshold
# started on the first day after the last day at or below it.
UTILISATION_EPISODES_SQL = """
    WITH changes AS (
        SELECT customer_id, effective_on AS day, amount AS delta FROM item_movements
        WHERE effective_on <= $as_of AND list_contains($customers, customer_id)
        UNION ALL SELECT customer_id, effective_on, -amount FROM unapplied_movements
        WHERE effective_on <= $as_of AND list_contains($customers, customer_id)
        UNION ALL SELECT customer_id, effective_on, exposure_delta FROM order_events
        WHERE exposure_delta <> 0 AND effective_on <= $as_of AND list_contains($customers, customer_id)
        UNION ALL SELECT customer_id, effective_on, 0 FROM credit_history
        WHERE attribute = 'credit_limit' AND effective_on <= $as_of AND list_contains($customers, customer_id)),
    daily AS (SELECT customer_id, day, sum(delta) AS delta FROM changes GROUP BY ALL),
    series AS (SELECT customer_id, day, sum(delta) OVER (PARTITION BY customer_id ORDER BY day) AS exposure
               FROM daily),
    limits AS (SELECT customer_id, effective_on, arg_max(value_int, position) AS credit_limit FROM credit_history
               WHERE attribute = 'credit_limit' AND list_contains($customers, customer_id) GROUP BY ALL),
    flagged AS (SELECT s.customer_id, s.day,
                       l.credit_limit > 0 AND s.exposure * $denominator > $numerator * l.credit_limit AS above
                FROM series s ASOF JOIN limits l ON s.customer_id = l.customer_id AND s.day >= l.effective_on),
    last_below AS (SELECT customer_id, max(day) AS day FROM flagged WHERE NOT above GROUP BY customer_id)
    SELECT f.customer_id, min(f.day) AS since
    FROM flagged f LEFT JOIN last_below b USING (customer_id)
    WHERE f.day > coalesce(b.day, DATE '0001-01-01')
    GROUP BY f.customer_id"""


def utilisation_alerts(connection: duckdb.DuckDBPyConnection, config: CreditConfig, as_of: dt.date) -> list[Alert]:
    threshold = config.alerts.utilisation_threshold
    above = {row["customer_id"]: row for row in balances(connection, as_of)["rows"]
             if config.alerts.above_threshold(row["exposure"], row["credit_limit"])}
    if not above:
        return []
    episodes = connection.execute(UTILISATION_EPISODES_SQL, {
        "as_of": as_of, "customers": sorted(above), "numerator": threshold.numerator,
        "denominator": threshold.denominator}).fetchall()
    alerts = []
    for customer_id, since in sorted(episodes):
        row = above[customer_id]
        alerts.append(Alert(
            "utilisation", customer_id, "", since.isoformat(), as_of,
            f"{customer_id} uses {row['utilisation']:.0%} of its credit limit (above {float(threshold):.0%} "
            f"since {since}): exposure {_money(row['exposure'])}, limit {_money(row['credit_limit'])}",
            {"exposure": row["exposure"], "credit_limit": row["credit_limit"], "utilisation": row["utilisation"],
             "threshold": str(threshold.numerator / threshold.denominator), "since": since.isoformat()}))
    return alerts


def aging_alerts(connection: duckdb.DuckDBPyConnection, config: CreditConfig, as_of: dt.date) -> list[Alert]:
    buckets = Buckets(config.alerts.aging_bounds)
    names = buckets.names
    sql = f"""
        WITH open_items AS ({OPEN_ITEMS_AS_OF}),
        disputes AS (SELECT customer_id, invoice_id, arg_max(kind, (effective_on, position)) = 'opened' AS disputed
                     FROM dispute_events WHERE effective_on <= $as_of GROUP BY ALL)
        SELECT o.customer_id, o.invoice_id, o.installment, o.due_on, o.open_amount::BIGINT AS open_amount,
               ($as_of - o.due_on) AS days_past_due, {buckets.case_sql("($as_of - o.due_on)")} AS bucket,
               coalesce(d.disputed, false) AS disputed
        FROM open_items o LEFT JOIN disputes d USING (customer_id, invoice_id)
        WHERE o.open_amount > 0 AND $as_of - o.due_on > 0
        ORDER BY o.customer_id, o.due_on, o.invoice_id, o.installment"""
    alerts = []
    for row in _rows(connection, sql, {"as_of": as_of, "known_at": FAR_FUTURE}):
        bucket = names[row["bucket"]]
        item = f"{row['invoice_id']}#{row['installment']}"
        alerts.append(Alert(
            "aging_bucket", row["customer_id"], item, bucket, as_of,
            f"{row['customer_id']} invoice {item}: {_money(row['open_amount'])} open, {row['days_past_due']} days "
            f"past due, now in bucket {bucket}" + (" (disputed)" if row["disputed"] else ""),
            {"invoice_id": row["invoice_id"], "installment": row["installment"], "bucket": bucket,
             "open_amount": row["open_amount"], "due_on": row["due_on"].isoformat(),
             "days_past_due": row["days_past_due"], "disputed": row["disputed"]}))
    return alerts


# An item is overdue on day d > due_on when it is open as of d; its open amount changes only on movement dates,
# so its first overdue day is the first of due_on + 1 and its later movement dates with something open.
FIRST_OVERDUE_SQL = """
    WITH days AS (
        SELECT customer_id, invoice_id, installment, due_on + 1 AS day FROM items WHERE due_on + 1 <= $as_of
        UNION
        SELECT m.customer_id, m.invoice_id, m.installment, m.effective_on
        FROM item_movements m JOIN items i USING (customer_id, invoice_id, installment)
        WHERE m.effective_on > i.due_on + 1 AND m.effective_on <= $as_of),
    overdue AS (
        SELECT d.customer_id, d.invoice_id, d.installment, d.day, sum(m.amount)::BIGINT AS open_amount
        FROM days d JOIN item_movements m USING (customer_id, invoice_id, installment)
        WHERE m.effective_on <= d.day
        GROUP BY ALL HAVING sum(m.amount) > 0)
    SELECT o.customer_id, o.invoice_id, o.installment, i.due_on, o.day AS overdue_on, o.open_amount
    FROM overdue o JOIN items i USING (customer_id, invoice_id, installment)
    QUALIFY row_number() OVER (PARTITION BY o.customer_id ORDER BY o.day, i.due_on, o.invoice_id, o.installment) = 1
    ORDER BY o.customer_id"""


def first_overdue_alerts(connection: duckdb.DuckDBPyConnection, as_of: dt.date) -> list[Alert]:
    return [Alert("first_overdue", row["customer_id"], "", "", as_of,
                  f"{row['customer_id']} is overdue for the first time: invoice {row['invoice_id']}#"
                  f"{row['installment']} due {row['due_on']}, {_money(row['open_amount'])} open on {row['overdue_on']}",
                  {"invoice_id": row["invoice_id"], "installment": row["installment"],
                   "due_on": row["due_on"].isoformat(), "open_amount": row["open_amount"],
                   "overdue_on": row["overdue_on"].isoformat()})
            for row in _rows(connection, FIRST_OVERDUE_SQL, {"as_of": as_of})]


def promise_alerts(connection: duckdb.DuckDBPyConnection, as_of: dt.date) -> list[Alert]:
    return [Alert("promise_broken", p.customer_id, p.promise_id, p.promised_on.isoformat(), as_of,
                  f"{p.customer_id} broke promise {p.promise_id}: {_money(p.amount)} promised for {p.promised_on} "
                  f"(made {p.made_on}), nothing received", p.row())
            for p in promises(connection, as_of) if p.status == PROMISE_BROKEN]


def grade_alerts(connection: duckdb.DuckDBPyConnection, config: CreditConfig, as_of: dt.date) -> list[Alert]:
    before = computed_grades(connection, config.grading, as_of - dt.timedelta(days=1))
    after = computed_grades(connection, config.grading, as_of)
    alerts = []
    for customer_id, row in after.items():
        previous = before.get(customer_id)
        if previous is None or not is_downgrade(previous["computed_grade"], row["computed_grade"]):
            continue
        alerts.append(Alert(
            "grade_downgrade", customer_id, "", as_of.isoformat(), as_of,
            f"{customer_id} computed grade fell from {previous['computed_grade']} to {row['computed_grade']} "
            f"(score {previous['score']} → {row['score']})",
            {"from_grade": previous["computed_grade"], "to_grade": row["computed_grade"],
             "from_score": previous["score"], "score": row["score"], "assigned_grade": row["grade"],
             **{name: row[name] for name in GRADING_INPUTS}}))
    return alerts


def evaluate(connection: duckdb.DuckDBPyConnection, config: CreditConfig, as_of: dt.date,
             kinds: Iterable[str] = KINDS) -> list[Alert]:
    """Every alert the rules raise as of `as_of` (already raised ones included: the caller dedupes)."""
    wanted = set(kinds)
    unknown = wanted - set(KINDS)
    assert not unknown, f"unknown alert kinds {unknown}"
    alerts: list[Alert] = []
    if "breach" in wanted:
        alerts += breach_alerts(connection, as_of)
    if "utilisation" in wanted:
        alerts += utilisation_alerts(connection, config, as_of)
    if "aging_bucket" in wanted:
        alerts += aging_alerts(connection, config, as_of)
    if "first_overdue" in wanted:
        alerts += first_overdue_alerts(connection, as_of)
    if "promise_broken" in wanted:
        alerts += promise_alerts(connection, as_of)
    if "grade_downgrade" in wanted:
        alerts += grade_alerts(connection, config, as_of)
    return alerts


# -- The table ---------------------------------------------------------------------------------------

def recorded_ids(connection: duckdb.DuckDBPyConnection, alert_ids: Sequence[str]) -> set[str]:
    """Which of these alert ids the table already holds."""
    if not alert_ids:
        return set()
    rows = connection.execute("SELECT alert_id FROM alerts WHERE list_contains($ids, alert_id)",
                              {"ids": list(alert_ids)}).fetchall()
    return {row[0] for row in rows}


def fold_alert_records(connection: duckdb.DuckDBPyConnection,
                       records: Sequence[tuple[int, int | None, bytes]],
                       offsets: Mapping[int, int], *, staging_dir: str | Path | None = None) -> int:
    """Insert ar.alerts records [(partition, offset or None, JSON bytes)] (a known alert_id is a no-op) and store
    `offsets` {partition: next_offset}, in one transaction; returns the rows inserted."""
    lines = (json.dumps({"partition": partition, "offset": offset, "alert": json.loads(value)},
                        separators=(",", ":")).encode() for partition, offset, value in records)
    with staged_transaction(connection, lines, prefix="arledger-alerts-", staging_dir=staging_dir) as stage_path:
        inserted = 0
        if records:
            before = connection.execute("SELECT count(*) FROM alerts").fetchone()[0]
            connection.execute(
                """INSERT INTO alerts
                   SELECT alert->>'$.alert_id', alert->>'$.kind', alert->>'$.customer_id', alert->>'$.subject',
                          alert->>'$.scope', (alert->>'$.business_date')::DATE,
                          (alert->>'$.raised_at')::TIMESTAMPTZ, alert->>'$.message', alert->'$.figures',
                          "partition", "offset"
                   FROM read_json(?, format = 'newline_delimited',
                                  columns = {'partition': 'INTEGER', 'offset': 'BIGINT', 'alert': 'JSON'})
                   QUALIFY row_number() OVER (PARTITION BY alert->>'$.alert_id' ORDER BY "offset" NULLS LAST) = 1
                   ON CONFLICT (alert_id) DO NOTHING""", [stage_path])
            inserted = connection.execute("SELECT count(*) FROM alerts").fetchone()[0] - before
        for partition, next_offset in offsets.items():
            connection.execute(
                "INSERT INTO alert_offsets VALUES (?, ?) ON CONFLICT (\"partition\") "
                "DO UPDATE SET next_offset = greatest(alert_offsets.next_offset, excluded.next_offset)",
                [partition, next_offset])
    return inserted


def alert_offsets(connection: duckdb.DuckDBPyConnection) -> dict[int, int]:
    return dict(connection.execute('SELECT "partition", next_offset FROM alert_offsets').fetchall())


ALERTS_LIST_SQL = """
    SELECT alert_id, kind, customer_id, subject, scope, business_date, raised_at, message, figures::VARCHAR AS figures
    FROM alerts
    WHERE ($kind IS NULL OR kind = $kind) AND ($customer_id IS NULL OR customer_id = $customer_id)
      AND ($since IS NULL OR business_date >= $since)
    ORDER BY business_date, raised_at, alert_id"""


def recorded_alerts(connection: duckdb.DuckDBPyConnection, *, kind: str | None = None,
                    customer_id: str | None = None, since: dt.date | None = None) -> list[dict[str, Any]]:
    """The alerts table, oldest first; `figures` decoded."""
    if not has_alert_tables(connection):
        return []
    rows = _rows(connection, ALERTS_LIST_SQL, {"kind": kind, "customer_id": customer_id, "since": since})
    for row in rows:
        row["business_date"] = row["business_date"].isoformat()
        row["raised_at"] = row["raised_at"].astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        row["figures"] = json.loads(row["figures"]) if row["figures"] else {}
    return rows
