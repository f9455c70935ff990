"""Fold a batch of ar.ledger records into the DuckDB read models: set-based, one transaction per batch.

The batch (newline-delimited JSON, exactly as published on ar.ledger) is
staged with `read_json`, records already applied (same `position`, e.g. a
relay re-publish) are dropped, and a fixed list of INSERT/UPDATE statements
folds the rest. The Kafka offsets the batch reaches are written in the same
transaction (docs/contract.md §5): a crash at any point loses nothing and applies
nothing twice. No accounting rule is re-derived here: the events carry every
effective date and signed amount.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import duckdb

from ledger.upcasting import upcast_record

STAGE_COLUMNS = (
    "{'position': 'BIGINT', 'notification_id': 'BIGINT', 'customer_id': 'VARCHAR', 'version': 'BIGINT', "
    "'kind': 'VARCHAR', 'envelope_id': 'VARCHAR', 'recorded_at': 'TIMESTAMPTZ', 'schema_version': 'INTEGER', "
    "'data': 'JSON', 'prev_hash_customer': 'VARCHAR', 'hash_customer': 'VARCHAR', "
    "'prev_hash_global': 'VARCHAR', 'hash_global': 'VARCHAR'}"
)


def _s(field: str) -> str:
    return f"(data->>'$.{field}')"


def _i(field: str) -> str:
    return f"(data->>'$.{field}')::BIGINT"


def _d(field: str) -> str:
    return f"(data->>'$.{field}')::DATE"


def _b(field: str) -> str:
    return f"(data->>'$.{field}')::BOOLEAN"


ITEM_KEY = f"customer_id, {_s('invoice_id')}, {_i('installment')}::INTEGER"

FOLD_STATEMENTS: tuple[str, ...] = (
    f"""INSERT INTO customers
        SELECT customer_id, {_s('name')}, {_s('currency')}, {_s('salesperson')}, {_i('payment_terms_days')},
               {_d('registered_on')}, recorded_at, position
        FROM fresh WHERE kind = 'customer.registered' ON CONFLICT DO NOTHING""",
    f"""INSERT INTO credit_history
        SELECT position, customer_id, 'credit_limit', {_i('credit_limit')}, NULL, DATE '0001-01-01', recorded_at,
               'registered' FROM fresh WHERE kind = 'customer.registered'
        UNION ALL SELECT position, customer_id, 'payment_terms_days', {_i('payment_terms_days')}, NULL,
               DATE '0001-01-01', recorded_at, 'registered' FROM fresh WHERE kind = 'customer.registered'
        UNION ALL SELECT position, customer_id, 'grade', NULL, {_s('grade')}, DATE '0001-01-01', recorded_at,
               'registered' FROM fresh WHERE kind = 'customer.registered' AND {_s('grade')} IS NOT NULL
        UNION ALL SELECT position, customer_id, 'credit_limit', {_i('credit_limit')}, NULL, {_d('effective_on')},
               recorded_at, {_s('reason')} FROM fresh WHERE kind = 'credit_limit.changed'
        UNION ALL SELECT position, customer_id, 'payment_terms_days', {_i('payment_terms_days')}, NULL,
               {_d('effective_on')}, recorded_at, NULL FROM fresh WHERE kind = 'payment_terms.changed'
        UNION ALL SELECT position, customer_id, 'grade', NULL, {_s('grade')}, {_d('effective_on')}, recorded_at,
               {_s('reason')} FROM fresh WHERE kind = 'credit_grade.assigned'
        UNION ALL SELECT position, customer_id, 'on_hold', CASE kind WHEN 'credit_hold.placed' THEN 1 ELSE 0 END,
               NULL, {_d('effective_on')}, recorded_at, {_s('reason')}
               FROM fresh WHERE kind IN ('credit_hold.placed', 'credit_hold.released')
        ON CONFLICT DO NOTHING""",
    f"""INSERT INTO invoices
        SELECT customer_id, {_s('invoice_id')}, {_i('amount')}, {_s('currency')}, {_d('issued_on')}, {_d('due_on')},
               {_s('order_id')}, {_s('salesperson')}, {_i('installment_count')}, recorded_at, position
        FROM fresh WHERE kind = 'sale.recorded' ON CONFLICT DO NOTHING""",
    f"""INSERT INTO items
        SELECT f.customer_id, {_s('invoice_id')}, {_i('installment')}, {_i('amount')}, c.currency,
               {_d('issued_on')}, {_d('due_on')}, 0, false, f.recorded_at, f.position
        FROM fresh f LEFT JOIN customers c USING (customer_id)
        WHERE kind = 'item.opened' ON CONFLICT DO NOTHING""",
    f"""CREATE OR REPLACE TEMP TABLE fresh_item_movements AS
        SELECT position, customer_id, {_s('invoice_id')} AS invoice_id, {_i('installment')}::INTEGER AS installment,
               CASE kind WHEN 'item.opened' THEN 'opened' WHEN 'cash.allocated' THEN 'allocated'
                         WHEN 'credit_note.applied' THEN 'credit_note' WHEN 'allocation.reversed' THEN 'reopened'
                         ELSE 'written_off' END AS kind,
               CASE WHEN kind IN ('item.opened', 'allocation.reversed') THEN {_i('amount')}
                    ELSE -{_i('amount')} END AS amount,
               CASE kind WHEN 'item.opened' THEN {_d('issued_on')} ELSE {_d('effective_on')} END AS effective_on,
               recorded_at,
               CASE kind WHEN 'cash.allocated' THEN {_s('source_kind')} WHEN 'credit_note.applied' THEN 'credit_note'
                         WHEN 'allocation.reversed' THEN 'payment' END AS source_kind,
               CASE kind WHEN 'cash.allocated' THEN {_s('source_id')}
                         WHEN 'credit_note.applied' THEN {_s('credit_note_id')}
                         WHEN 'allocation.reversed' THEN {_s('payment_id')} END AS source_id,
               kind = 'item.written_off' AND coalesce({_b('closes_item')}, false) AS closes_item
        FROM fresh
        WHERE kind IN ('item.opened', 'cash.allocated', 'credit_note.applied', 'allocation.reversed',
                       'item.written_off')""",
    """INSERT INTO item_movements
        SELECT position, customer_id, invoice_id, installment, kind, amount, effective_on, recorded_at,
               source_kind, source_id
        FROM fresh_item_movements""",
    """UPDATE items SET open_amount = items.open_amount + m.delta,
                        written_off = items.written_off OR m.closes_item
        FROM (SELECT customer_id, invoice_id, installment, sum(amount) AS delta, bool_or(closes_item) AS closes_item
              FROM fresh_item_movements GROUP BY ALL) m
        WHERE items.customer_id = m.customer_id AND items.invoice_id = m.invoice_id
          AND items.installment = m.installment""",
    f"""INSERT INTO unapplied_movements
        SELECT position, customer_id,
               CASE kind WHEN 'payment.received' THEN 'payment' WHEN 'credit_note.excess_unapplied' THEN 'credit_note'
                         WHEN 'unapplied_cash.removed' THEN 'payment' WHEN 'unapplied_cash.returned' THEN 'payment'
                         ELSE {_s('source_kind')} END,
               CASE kind WHEN 'payment.received' THEN {_s('payment_id')}
                         WHEN 'credit_note.excess_unapplied' THEN {_s('credit_note_id')}
                         ELSE {_s('source_id')} END,
               CASE kind WHEN 'payment.received' THEN 'received' WHEN 'credit_note.excess_unapplied' THEN 'credit'
                         WHEN 'unapplied_cash.removed' THEN 'reversed' WHEN 'unapplied_cash.returned' THEN 'returned'
                         ELSE 'allocated' END,
               CASE WHEN kind IN ('payment.received', 'credit_note.excess_unapplied', 'unapplied_cash.returned')
                    THEN {_i('amount')} ELSE -{_i('amount')} END,
               CASE kind WHEN 'payment.received' THEN {_d('received_on')} ELSE {_d('effective_on')} END,
               recorded_at
        FROM fresh
        WHERE kind IN ('payment.received', 'credit_note.excess_unapplied', 'cash.allocated',
                       'unapplied_cash.removed', 'unapplied_cash.returned')""",
    f"""INSERT INTO payments
        SELECT customer_id, {_s('payment_id')}, {_i('amount')}, {_s('currency')}, {_d('received_on')},
               {_s('method')}, {_s('reference')}, recorded_at, position, NULL, NULL, NULL
        FROM fresh WHERE kind = 'payment.received' ON CONFLICT DO NOTHING""",
    f"""UPDATE payments SET reversed_on = r.reversed_on, reversal_reason = r.reason,
                           reversed_recorded_at = r.recorded_at
        FROM (SELECT customer_id, {_s('payment_id')} AS payment_id, {_d('reversed_on')} AS reversed_on,
                     {_s('reason')} AS reason, recorded_at
              FROM fresh WHERE kind = 'payment.reversed') r
        WHERE payments.customer_id = r.customer_id AND payments.payment_id = r.payment_id""",
    f"""INSERT INTO allocations
        SELECT position, customer_id, {_s('source_kind')}, {_s('source_id')}, {_s('invoice_id')},
               {_i('installment')}, {_i('amount')}, {_b('explicit')}, {_d('effective_on')}, recorded_at
        FROM fresh WHERE kind = 'cash.allocated'""",
    f"""INSERT INTO credit_notes
        SELECT position, customer_id, {_s('credit_note_id')}, {_s('invoice_id')}, {_i('amount')}, {_s('reason')},
               {_d('issued_on')}, recorded_at
        FROM fresh WHERE kind = 'credit_note.issued'""",
    f"""INSERT INTO write_offs
        SELECT position, customer_id, {_s('invoice_id')}, {_i('amount')}, {_s('reason')}, {_d('written_off_on')},
               recorded_at
        FROM fresh WHERE kind = 'invoice.written_off'""",
    f"""INSERT INTO order_events
        SELECT position, customer_id, {_s('order_id')}, replace(kind, 'order.', ''), {_i('amount')},
               {_s('currency')}, {_s('reason')}, {_i('credit_limit')}, {_i('exposure')}, {_i('available')},
               {_s('invoice_id')}, {_s('by')},
               CASE WHEN kind = 'order.approved' THEN {_i('amount')}
                    WHEN kind IN ('order.invoiced', 'order.cancelled') AND {_b('was_in_exposure')}
                         THEN -{_i('amount')}
                    ELSE 0 END,
               coalesce({_d('placed_on')}, {_d('decided_on')}, {_d('released_on')}, {_d('invoiced_on')},
                        {_d('cancelled_on')}),
               recorded_at
        FROM fresh WHERE kind LIKE 'order.%'""",
    f"""INSERT INTO dispute_events
        SELECT position, customer_id, {_s('invoice_id')}, replace(kind, 'dispute.', ''), {_i('amount')},
               coalesce({_s('reason')}, {_s('resolution')}), coalesce({_d('opened_on')}, {_d('resolved_on')}),
               recorded_at
        FROM fresh WHERE kind IN ('dispute.opened', 'dispute.resolved')""",
    f"""INSERT INTO collection_actions
        SELECT position, customer_id, {_s('action')}, {_s('invoice_id')}, {_s('outcome')}, {_s('note')}, {_s('by')},
               {_d('action_on')}, recorded_at
        FROM fresh WHERE kind = 'collection.action_recorded'""",
    f"""INSERT INTO promises
        SELECT position, customer_id, {_s('promise_id')}, {_i('amount')}, {_d('promised_on')}, {_s('invoice_id')},
               {_d('made_on')}, recorded_at
        FROM fresh WHERE kind = 'promise.made'""",
    f"""INSERT INTO breaches
        SELECT position, customer_id, {_s('invoice_id')}, {_i('exposure')}, {_i('credit_limit')}, {_b('crossing')},
               {_d('breached_on')}, recorded_at
        FROM fresh WHERE kind = 'credit_limit.breached'""",
    f"""INSERT INTO computed_grades
        SELECT position, customer_id, {_s('grade')}, {_i('score')}, {_s('previous_grade')}, {_s('trigger')},
               {_i('window_days')}, {_i('average_days_delinquent')}, {_i('utilisation_pct')},
               {_i('broken_promises')}, {_i('disputes')}, {_i('write_off_bp')}, {_d('computed_on')}, recorded_at
        FROM fresh WHERE kind = 'credit_grade.computed'""",
    """INSERT INTO projection_meta
        SELECT 'max_position', max(position)::VARCHAR FROM ledger_events
        ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
)


class BatchResult:
    __slots__ = ("records", "applied", "duration_s")

    def __init__(self, records: int, applied: int, duration_s: float) -> None:
        self.records, self.applied, self.duration_s = records, applied, duration_s


@contextlib.contextmanager
def staged_transaction(connection: duckdb.DuckDBPyConnection, lines: Iterable[bytes], *, prefix: str,
                       staging_dir: str | Path | None = None) -> Iterator[str]:
    """Stage `lines` as newline-delimited JSON in a temporary file and open a transaction; yields the
    file's path for `read_json`. Commits when the block ends, rolls back if it raises; the file goes."""
    fd, stage_path = tempfile.mkstemp(prefix=prefix, suffix=".ndjson", dir=staging_dir)
    try:
        with os.fdopen(fd, "wb") as stage:
            for line in lines:
                stage.write(line.rstrip(b"\n"))
                stage.write(b"\n")
        connection.execute("BEGIN TRANSACTION")
        try:
            yield stage_path
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
    finally:
        os.unlink(stage_path)


def apply_batch(connection: duckdb.DuckDBPyConnection, records: Sequence[bytes],
                offsets: Mapping[tuple[str, int], int], *, staging_dir: str | Path | None = None,
                before_commit: object = None) -> BatchResult:
    """Fold ar.ledger records (JSON bytes) and store `offsets` {(topic, partition): next_offset} atomically."""
    started = time.perf_counter()
    # old schema versions get their current field names on the way in
    lines = (upcast_record(record) for record in records)
    with staged_transaction(connection, lines, prefix="arledger-batch-", staging_dir=staging_dir) as stage_path:
        applied = _fold(connection, stage_path, bool(records))
        _store_offsets(connection, offsets)
        if callable(before_commit):
            before_commit()  # fault-injection point for crash tests
    return BatchResult(len(records), applied, time.perf_counter() - started)


def _fold(connection: duckdb.DuckDBPyConnection, stage_path: str, has_records: bool) -> int:
    if not has_records:
        return 0
    connection.execute(
        f"CREATE OR REPLACE TEMP TABLE fresh AS "
        f"SELECT * FROM read_json(?, format = 'newline_delimited', columns = {STAGE_COLUMNS})",
        [stage_path])
    # A position twice in one batch (a relay re-publish caught in the same poll) is rare: a cheap check, and
    # the window that keeps the first copy only when needed (it cost ~35 % of the staging otherwise).
    if connection.execute("SELECT count(*) <> count(DISTINCT position) FROM fresh").fetchone()[0]:
        connection.execute("CREATE OR REPLACE TEMP TABLE fresh AS SELECT * FROM fresh "
                           "QUALIFY row_number() OVER (PARTITION BY position) = 1")
    # Drop what an earlier batch already applied (a relay re-publish after a crash).
    connection.execute("DELETE FROM fresh WHERE position IN (SELECT position FROM ledger_events "
                       "WHERE position BETWEEN (SELECT min(position) FROM fresh) AND (SELECT max(position) FROM fresh))")
    applied = connection.execute("SELECT count(*) FROM fresh").fetchone()[0]
    if applied == 0:
        return 0
    connection.execute("INSERT INTO ledger_events SELECT * FROM fresh ORDER BY position")
    for statement in FOLD_STATEMENTS:
        connection.execute(statement)
    return applied


def stored_offsets(connection: duckdb.DuckDBPyConnection, topic: str) -> dict[int, int]:
    """{partition: next_offset} applied so far for `topic`."""
    rows = connection.execute("SELECT partition, next_offset FROM projection_offsets WHERE topic = ?", [topic])
    return dict(rows.fetchall())


# -- Poison records (issue 17) -----------------------------------------------------------------------

# Errors of the machine, not of a record: never a reason to set a record aside.
INFRASTRUCTURE_ERRORS = (duckdb.IOException, duckdb.OutOfMemoryException, duckdb.FatalException,
                         duckdb.InterruptException, duckdb.TransactionException)


class DeadLetter:
    __slots__ = ("index", "error")

    def __init__(self, index: int, error: BaseException) -> None:
        self.index, self.error = index, error


def fold_or_set_aside(connection: duckdb.DuckDBPyConnection, records: Sequence[bytes],
                      offsets: Mapping[tuple[str, int], int], origins: Sequence[tuple[str, int, int]], *,
                      staging_dir: str | Path | None = None,
                      before_commit: object = None) -> tuple[BatchResult, list[DeadLetter]]:
    """`apply_batch`, except that records the fold cannot apply are set aside in `dead_letters`.

    When the batch fails, it is bisected: each half is folded in its own transaction (without offsets;
    replaying an applied record is a no-op, the fold drops positions it holds), down to the single records
    that fail. Those go to `dead_letters` with the error, and the batch's offsets are stored, in one last
    transaction. `origins[i]` = (topic, partition, offset) of `records[i]`. Errors of the machine (I/O,
    memory) are raised, never blamed on a record.
    """
    try:
        return apply_batch(connection, records, offsets, staging_dir=staging_dir, before_commit=before_commit), []
    except INFRASTRUCTURE_ERRORS:
        raise
    except Exception:  # noqa: BLE001 - a record the fold cannot apply, or several: find them
        pass
    started = time.perf_counter()
    dead: list[DeadLetter] = []
    applied = 0

    def attempt(low: int, high: int) -> None:
        nonlocal applied
        try:
            applied += apply_batch(connection, records[low:high], {}, staging_dir=staging_dir).applied
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as error:  # noqa: BLE001
            if high - low == 1:
                dead.append(DeadLetter(low, error))
                return
            middle = (low + high) // 2
            attempt(low, middle)
            attempt(middle, high)

    attempt(0, len(records))
    connection.execute("BEGIN TRANSACTION")
    try:
        for letter in dead:
            _store_dead_letter(connection, records[letter.index], origins[letter.index], letter.error)
        _store_offsets(connection, offsets)
        if callable(before_commit):
            before_commit()
        connection.execute("COMMIT")
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    return BatchResult(len(records), applied, time.perf_counter() - started), dead


def _record_facts(record: bytes) -> tuple[int | None, str | None, str | None]:
    import msgspec

    try:
        decoded = msgspec.json.decode(record)
        return decoded.get("position"), decoded.get("customer_id"), decoded.get("kind")
    except (msgspec.DecodeError, AttributeError):
        return None, None, None


def _store_dead_letter(connection: duckdb.DuckDBPyConnection, record: bytes, origin: tuple[str, int, int],
                       error: BaseException) -> None:
    position, customer_id, kind = _record_facts(record)
    topic, partition, offset = origin
    connection.execute(
        f"""INSERT INTO {DEAD_LETTERS_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, now(), 1)
            ON CONFLICT DO UPDATE SET error = excluded.error, failed_at = excluded.failed_at,
                                      attempts = {DEAD_LETTERS_TABLE}.attempts + 1""",
        [position, topic, partition, offset, customer_id, kind, f"{type(error).__name__}: {error}"[:2000],
         record.decode("utf-8", errors="replace")])


def _store_offsets(connection: duckdb.DuckDBPyConnection, offsets: Mapping[tuple[str, int], int]) -> None:
    for (topic, partition), next_offset in offsets.items():
        connection.execute(
            "INSERT INTO projection_offsets VALUES (?, ?, ?) "
            "ON CONFLICT (topic, partition) DO UPDATE SET next_offset = excluded.next_offset",
            [topic, partition, next_offset])


DEAD_LETTERS_TABLE = "dead_letters"


def dead_letters(connection: duckdb.DuckDBPyConnection) -> list[dict]:
    """The records set aside, oldest first."""
    cursor = connection.execute(f"SELECT * FROM {DEAD_LETTERS_TABLE} ORDER BY position NULLS FIRST, record_offset")
    names = [column[0] for column in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def redrive(connection: duckdb.DuckDBPyConnection, positions: Sequence[int] | None = None, *,
            staging_dir: str | Path | None = None) -> tuple[int, int]:
    """Fold the dead letters again (all, or those at `positions`), oldest first, each in its own transaction
    that also removes it from `dead_letters`. The items of its customer get their open amounts summed again
    from their movements (a movement folded while the item it moves was set aside moved nothing).
    Returns (folded, still failing)."""
    folded = failing = 0
    for letter in dead_letters(connection):
        if positions is not None and letter["position"] not in positions:
            continue
        key = [letter["topic"], letter["partition"], letter["record_offset"]]

        def settle(customer_id: str | None = letter["customer_id"], key: list = key) -> None:
            connection.execute(f'DELETE FROM {DEAD_LETTERS_TABLE} WHERE topic = ? AND "partition" = ? '
                               f"AND record_offset = ?", key)
            connection.execute("""
                UPDATE items SET open_amount = m.open_amount
                FROM (SELECT customer_id, invoice_id, installment, sum(amount) AS open_amount FROM item_movements
                      WHERE customer_id = ? GROUP BY ALL) m
                WHERE items.customer_id = m.customer_id AND items.invoice_id = m.invoice_id
                  AND items.installment = m.installment AND items.open_amount <> m.open_amount""", [customer_id])

        try:
            apply_batch(connection, [letter["record"].encode()], {}, staging_dir=staging_dir, before_commit=settle)
            folded += 1
        except INFRASTRUCTURE_ERRORS:
            raise
        except Exception as error:  # noqa: BLE001 - still poison: keep it, with the latest error
            _store_dead_letter(connection, letter["record"].encode(),
                               (letter["topic"], letter["partition"], letter["record_offset"]), error)
            failing += 1
    return folded, failing
