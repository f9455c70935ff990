"""DuckDB helpers for auditors: fresh folds, table-by-table comparison, traces, Parquet export (no Kafka).

- `fresh_read_model` + `fold_records`: a new read-model file folded with the
  projector's own `apply_batch`, for `verify` (compared with the snapshot) and
  `replay` (the read models as known at an instant).
- `compare_with_snapshot`: every folded table, `EXCEPT ALL` both ways.
- `trace`: every ledger event behind an invoice, a payment or a customer, from
  the `ledger_events` table, with its business date and hashes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from projections import schema
from projections.fold import apply_batch

# Tables that are not a fold of ar.ledger (Kafka offsets, file metadata): never compared.
UNFOLDED_TABLE_PREFIX = "projection_"

# The business date of each ledger event kind: the date the event is about (docs/contract.md §2), as traced.
BUSINESS_DATE_FIELD: dict[str, str] = {
    "customer.registered": "registered_on",
    "credit_limit.changed": "effective_on",
    "payment_terms.changed": "effective_on",
    "credit_grade.assigned": "effective_on",
    "credit_grade.computed": "computed_on",
    "credit_hold.placed": "effective_on",
    "credit_hold.released": "effective_on",
    "order.placed": "placed_on",
    "order.approved": "decided_on",
    "order.blocked": "decided_on",
    "order.released": "released_on",
    "order.cancelled": "cancelled_on",
    "order.invoiced": "invoiced_on",
    "sale.recorded": "issued_on",
    "item.opened": "issued_on",
    "credit_note.issued": "issued_on",
    "credit_note.applied": "effective_on",
    "credit_note.excess_unapplied": "effective_on",
    "payment.received": "received_on",
    "cash.allocated": "effective_on",
    "payment.reversed": "reversed_on",
    "allocation.reversed": "effective_on",
    "unapplied_cash.removed": "effective_on",
    "unapplied_cash.returned": "effective_on",
    "invoice.written_off": "written_off_on",
    "item.written_off": "effective_on",
    "dispute.opened": "opened_on",
    "dispute.resolved": "resolved_on",
    "collection.action_recorded": "action_on",
    "promise.made": "made_on",
    "credit_limit.breached": "breached_on",
}


def _business_date_sql() -> str:
    cases = " ".join(f"WHEN '{kind}' THEN data->>'$.{name}'" for kind, name in BUSINESS_DATE_FIELD.items())
    return f"CAST(CASE kind {cases} END AS DATE)"


def _quote(path: Path | str) -> str:
    return "'" + str(path).replace("'", "''") + "'"


# -- Fresh folds -------------------------------------------------------------------------------

def fresh_read_model(path: Path) -> duckdb.DuckDBPyConnection:
    """A new, empty read-model file at `path` (it must not exist: replay never overwrites)."""
    if Path(path).exists():
        raise FileExistsError(f"{path} exists: choose a new file")
    connection = schema.connect(str(path))
    schema.create_schema(connection)
    return connection


def fold_records(connection: duckdb.DuckDBPyConnection, records: Sequence[bytes], *,
                 staging_dir: Path | str | None = None) -> None:
    """Fold ar.ledger records with the projector's own batch fold (no Kafka offsets)."""
    if records:
        apply_batch(connection, records, {}, staging_dir=staging_dir)


def write_meta(connection: duckdb.DuckDBPyConnection, values: Mapping[str, str]) -> None:
    for key, value in values.items():
        connection.execute("INSERT INTO projection_meta VALUES (?, ?) ON CONFLICT (key) DO UPDATE "
                           "SET value = excluded.value", [key, value])


# -- Reading a snapshot ------------------------------------------------------------------------

def snapshot_offsets(path: Path, topic: str) -> dict[int, int]:
    """{partition: next_offset} of `topic` the snapshot reflects."""
    connection = schema.connect(str(path), read_only=True)
    try:
        rows = connection.execute("SELECT partition, next_offset FROM projection_offsets WHERE topic = ?", [topic])
        return dict(rows.fetchall())
    finally:
        connection.close()


def max_position(path: Path) -> int:
    connection = schema.connect(str(path), read_only=True)
    try:
        return connection.execute("SELECT coalesce(max(position), 0) FROM ledger_events").fetchone()[0]
    finally:
        connection.close()


# -- Comparing a fresh fold with a snapshot ----------------------------------------------------

@dataclass(frozen=True)
class TableDifference:
    table: str
    reason: str
    position: int | None = None
    customer_id: str | None = None

    def describe(self) -> str:
        return f"table {self.table}: {self.reason}"


def _columns(connection: duckdb.DuckDBPyConnection, database: str, table: str) -> list[str]:
    rows = connection.execute("SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND "
                              "schema_name = 'main' AND table_name = ? ORDER BY column_index", [database, table])
    return [row[0] for row in rows.fetchall()]


def _format_row(columns: list[str], row: tuple) -> str:
    return "(" + ", ".join(f"{name}={_cell(value)}" for name, value in zip(columns, row)) + ")"


def compare_with_snapshot(fresh: duckdb.DuckDBPyConnection, snapshot: Path,
                          rows_shown_max: int = 3) -> tuple[list[TableDifference], list[str]]:
    """Compare every folded table of `fresh` with the snapshot, row by row; returns (differences, tables)."""
    main_database = fresh.execute("SELECT current_database()").fetchone()[0]
    fresh.execute(f"ATTACH {_quote(snapshot)} AS live (READ_ONLY)")
    differences: list[TableDifference] = []
    compared: list[str] = []
    try:
        for table in schema.TABLES:
            if table.startswith(UNFOLDED_TABLE_PREFIX):
                continue
            compared.append(table)
            differences += _compare_table(fresh, main_database, table, rows_shown_max)
    finally:
        fresh.execute("DETACH live")
    return differences, compared


def _compare_table(fresh: duckdb.DuckDBPyConnection, main_database: str, table: str,
                   rows_shown_max: int) -> list[TableDifference]:
    columns = _columns(fresh, main_database, table)
    live_columns = _columns(fresh, "live", table)
    if not live_columns:
        return [TableDifference(table, "missing from the snapshot")]
    if live_columns != columns:
        return [TableDifference(table, f"columns differ: snapshot {live_columns}, fresh fold {columns}")]
    column_list = ", ".join(f'"{name}"' for name in columns)
    order = "ORDER BY position" if "position" in columns else ""
    main = f'"{main_database}"'
    found: dict[str, tuple[int, list[tuple]]] = {}
    for side, left, right in (("snapshot", "live", main), ("fold", main, "live")):
        query = (f"SELECT {column_list} FROM {left}.main.{table} EXCEPT ALL "
                 f"SELECT {column_list} FROM {right}.main.{table}")
        count = fresh.execute(f"SELECT count(*) FROM ({query})").fetchone()[0]
        if count:
            found[side] = (count, fresh.execute(f"SELECT * FROM ({query}) {order} LIMIT {rows_shown_max}").fetchall())
    if not found:
        return []
    located = [(row[columns.index("position")], row[columns.index("customer_id")] if "customer_id" in columns else None)
               for _, rows in found.values() for row in rows
               if "position" in columns and row[columns.index("position")] is not None]
    position, customer_id = min(located, key=lambda pair: pair[0]) if located else (None, None)
    return [TableDifference(table, _describe_rows(columns, found), position=position, customer_id=customer_id)]


def _describe_rows(columns: list[str], found: dict[str, tuple[int, list[tuple]]]) -> str:
    """Rows of the same position on both sides as column changes; the others in full."""
    snapshot_count, snapshot_rows = found.get("snapshot", (0, []))
    fold_count, fold_rows = found.get("fold", (0, []))
    parts = []
    if "position" in columns and snapshot_rows and fold_rows:
        index = columns.index("position")
        fold_by_position = {row[index]: row for row in fold_rows}
        for row in list(snapshot_rows):
            other = fold_by_position.pop(row[index], None)
            if other is None:
                continue
            snapshot_rows.remove(row)
            fold_rows.remove(other)
            changes = [f"{name} is {_cell(value)} in the snapshot, {_cell(expected)} from the events"
                       for name, value, expected in zip(columns, row, other) if value != expected]
            parts.append(f"row of position {row[index]} differs: " + "; ".join(changes))
    if snapshot_rows:
        parts.append(f"{snapshot_count} row(s) only in the snapshot, e.g. "
                     + "; ".join(_format_row(columns, row) for row in snapshot_rows))
    if fold_rows:
        parts.append(f"{fold_count} row(s) only in a fresh fold of the events, e.g. "
                     + "; ".join(_format_row(columns, row) for row in fold_rows))
    return " | ".join(parts)


def _cell(value: Any) -> str:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return repr(value) if not isinstance(value, str) else value


# -- Traces -------------------------------------------------------------------------------------

TRACE_COLUMNS = ("position", "customer_id", "version", "kind", "envelope_id", "business_date", "recorded_at",
                 "amount", "invoice_id", "reference", "prev_hash_customer", "hash_customer", "prev_hash_global",
                 "hash_global", "notification_id", "schema_version", "data")


def _trace_select(where: str) -> str:
    return f"""
        SELECT position, customer_id, version, kind, envelope_id, {_business_date_sql()} AS business_date,
               recorded_at, (data->>'$.amount')::BIGINT AS amount, data->>'$.invoice_id' AS invoice_id,
               coalesce(data->>'$.payment_id', data->>'$.credit_note_id', data->>'$.order_id',
                        data->>'$.source_id', data->>'$.promise_id') AS reference,
               prev_hash_customer, hash_customer, prev_hash_global, hash_global, notification_id,
               schema_version, data::VARCHAR AS data
        FROM ledger_events e WHERE {where} ORDER BY position"""


def trace(connection: duckdb.DuckDBPyConnection, *, invoice_id: str | None = None, payment_id: str | None = None,
          customer_id: str | None = None) -> list[dict[str, Any]]:
    """Every ledger event behind an invoice (its sale, items, cash, credit notes, orders, disputes, dunning,
    write-offs), a payment (receipt, allocations, reversal) or a customer (all), in position order."""
    assert invoice_id or payment_id or customer_id
    customer_filter = "($customer IS NULL OR customer_id = $customer)"
    if invoice_id is not None:
        where = f"""{customer_filter} AND (
            data->>'$.invoice_id' = $invoice
            OR (kind LIKE 'order.%' AND (customer_id, data->>'$.order_id') IN (
                SELECT customer_id, data->>'$.order_id' FROM ledger_events
                WHERE kind = 'sale.recorded' AND data->>'$.invoice_id' = $invoice AND {customer_filter}))
            OR (kind IN ('payment.received', 'payment.reversed') AND (customer_id, data->>'$.payment_id') IN (
                SELECT customer_id, data->>'$.source_id' FROM ledger_events
                WHERE kind = 'cash.allocated' AND data->>'$.source_kind' = 'payment'
                  AND data->>'$.invoice_id' = $invoice AND {customer_filter}))
            OR (kind = 'credit_note.issued' AND (customer_id, data->>'$.credit_note_id') IN (
                SELECT customer_id, data->>'$.source_id' FROM ledger_events
                WHERE kind = 'cash.allocated' AND data->>'$.source_kind' = 'credit_note'
                  AND data->>'$.invoice_id' = $invoice AND {customer_filter})))"""
        params = {"invoice": invoice_id, "customer": customer_id}
    elif payment_id is not None:
        where = f"""{customer_filter} AND (
            (kind IN ('payment.received', 'payment.reversed', 'allocation.reversed')
             AND data->>'$.payment_id' = $payment)
            OR (kind = 'cash.allocated' AND data->>'$.source_kind' = 'payment' AND data->>'$.source_id' = $payment)
            OR (kind IN ('unapplied_cash.removed', 'unapplied_cash.returned') AND data->>'$.source_id' = $payment))"""
        params = {"payment": payment_id, "customer": customer_id}
    else:
        where = "customer_id = $customer"
        params = {"customer": customer_id}
    cursor = connection.execute(_trace_select(where), params)
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


# -- Export -------------------------------------------------------------------------------------

EXPORT_COLUMNS = (
    "{'position': 'BIGINT', 'notification_id': 'BIGINT', 'customer_id': 'VARCHAR', 'version': 'BIGINT', "
    "'kind': 'VARCHAR', 'envelope_id': 'VARCHAR', 'recorded_at': 'VARCHAR', 'schema_version': 'INTEGER', "
    "'data': 'JSON', 'prev_hash_customer': 'VARCHAR', 'hash_customer': 'VARCHAR', "
    "'prev_hash_global': 'VARCHAR', 'hash_global': 'VARCHAR'}"
)


def jsonl_to_parquet(source: Path, target: Path) -> None:
    """ar.ledger records (JSONL) → Parquet; `recorded_at` stays the exact text that was hashed, `data` is JSON."""
    connection = duckdb.connect()
    try:
        connection.execute(
            f"COPY (SELECT * FROM read_json({_quote(source)}, format = 'newline_delimited', "
            f"columns = {EXPORT_COLUMNS}) ORDER BY position) TO {_quote(target)} (FORMAT parquet)")
    finally:
        connection.close()
