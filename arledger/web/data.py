"""The read side of the workspace: the published read model, and every report with the CLI's parameters.

The connection comes from `arledger.readmodel` (the one place that knows how
the read model is published) and is reopened when the published file
changes; each request works on its own cursor. Reports are the functions of
`projections` that `arledger report` calls, with the same parameter names
(`as_of`, `known_at`, `from`, `to`, `by`, `buckets`, `basis`, `customer`,
`salesperson`, `rates`, `open_only`, `status`, `kind`).
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from arledger import output, readmodel
from arledger.settings import TOPIC_LEDGER, Settings
from projections import allowance as allowance_report
from projections import exposure as exposure_report
from projections import grading
from projections import kpis as kpi_report
from projections import reports, statements, worklist
from projections import alerts as alert_rules


class BadParameter(ValueError):
    """A query parameter that cannot be used: answered 400 with this message."""


class NoReadModel(RuntimeError):
    """Nothing published yet: answered 503."""


class NotFound(LookupError):
    """An unknown customer (or the like): answered 404."""


class ReadModel:
    """A read-only connection on the latest read model, reopened when a new one is published.

    DuckDB keeps one database instance per path and process: connecting again to a path whose instance is
    still open returns the old instance, so a newly published file (atomic rename) is seen only after every
    connection to the old one is closed. Each request therefore leases a cursor; when the published file
    changes, new leases wait until the ones in flight are returned, the old connection is closed, and the new
    file is opened.
    """

    SWITCH_WAIT_S = 10.0  # requests take milliseconds; past this a stuck one is not waited for

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._changed = threading.Condition()
        self._key: tuple | None = None
        self._connection: duckdb.DuckDBPyConnection | None = None
        self._in_flight = 0
        self._switching = False

    def _published(self) -> tuple:
        key = []
        for path in readmodel.read_model_paths(self.settings):
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            key.append((str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size))
        return tuple(key)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor of its own for one request (give it back with `release`)."""
        key = self._published()
        if not key:
            raise NoReadModel(f"no read model under {self.settings.home} yet: is 'arledger run' running?")
        with self._changed:
            while self._switching:
                self._changed.wait()
            if key != self._key or self._connection is None:
                self._switch(key)
            self._in_flight += 1
            return self._connection.cursor()

    def _switch(self, key: tuple) -> None:
        self._switching = True
        try:
            self._changed.wait_for(lambda: self._in_flight == 0, timeout=self.SWITCH_WAIT_S)
            if self._connection is not None:
                self._connection.close()
                self._connection = None
            connection = readmodel.open_read_model(self.settings)
            if len(key) > 1:
                alert_rules.union_alerts(connection, [f"shard{index}" for index in range(len(key))])
            self._connection, self._key = connection, key
        finally:
            self._switching = False
            self._changed.notify_all()

    def release(self, cursor: duckdb.DuckDBPyConnection) -> None:
        try:
            cursor.close()
        finally:
            with self._changed:
                self._in_flight -= 1
                self._changed.notify_all()

    def ledger_offsets(self) -> dict[int, int]:
        """{partition: next offset} of ar.ledger the published read model reflects."""
        cursor = self.cursor()
        try:
            rows = cursor.execute('SELECT "partition", max(next_offset) FROM projection_offsets WHERE topic = ? '
                                  'GROUP BY "partition"', [self.settings.topic(TOPIC_LEDGER)]).fetchall()
        finally:
            self.release(cursor)
        return dict(rows)

    def close(self) -> None:
        with self._changed:
            if self._connection is not None:
                self._connection.close()
            self._connection, self._key = None, None


# -- parameters ------------------------------------------------------------------------------------

def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def date_param(query: Mapping[str, str], name: str, default: dt.date | None = None) -> dt.date | None:
    text = (query.get(name) or "").strip()
    if not text:
        return default
    try:
        return dt.date.fromisoformat(text) if len(text) == 10 else _bad(name, text, "a date YYYY-MM-DD")
    except ValueError:
        return _bad(name, text, "a date YYYY-MM-DD")


def known_at_param(query: Mapping[str, str]) -> dt.datetime | None:
    text = (query.get("known_at") or "").strip()
    try:
        return output.parse_known_at(text or None)
    except ValueError:
        return _bad("known_at", text, "an ISO-8601 instant or a date")


def int_param(query: Mapping[str, str], name: str, *, minimum: int | None = None) -> int | None:
    text = (query.get(name) or "").strip()
    if not text:
        return None
    if not text.lstrip("-").isdigit():
        return _bad(name, text, "an integer")
    value = int(text)
    if minimum is not None and value < minimum:
        raise BadParameter(f"{name} must be at least {minimum}, got {value}")
    return value


def choice_param(query: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    text = query.get(name)
    if text in (None, ""):
        return None
    if text not in choices:
        raise BadParameter(f"{name} must be one of {', '.join(choices)}, got {text!r}")
    return text


def bool_param(query: Mapping[str, str], name: str) -> bool:
    return (query.get(name) or "").lower() in ("1", "true", "yes", "on")


def _bad(name: str, text: str, what: str):
    raise BadParameter(f"{name} must be {what}, got {text!r}")


def _optional(query: Mapping[str, str], name: str) -> str | None:
    """A text filter; present but empty means "" (e.g. customers with no salesperson), absent means none."""
    return query.get(name)


def _period(query: Mapping[str, str], as_of: dt.date, *, required: bool,
            default: Callable[[dt.date], tuple[dt.date, dt.date]] | None = None) -> tuple[dt.date, dt.date]:
    date_from, date_to = date_param(query, "from"), date_param(query, "to")
    if date_from is None:
        if required:
            raise BadParameter("from is required (a date YYYY-MM-DD)")
        assert default is not None
        start, end = default(date_to or as_of)
        return start, date_to or end
    date_to = date_to or as_of
    if date_from > date_to:
        raise BadParameter(f"from {date_from} is after to {date_to}")
    return date_from, date_to


# -- reports ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Report:
    """One report: its JSON (as `arledger report NAME --format json`), and its flat rows for CSV/Parquet."""

    name: str
    document: dict[str, Any]
    rows: list[dict[str, Any]]


def credit_config():
    from consumers.alerts import load_config

    return load_config()


def _by(connection, report: dict[str, Any], query: Mapping[str, str], as_of: dt.date, known_at,
        columns: list[str]) -> dict[str, Any]:
    by = choice_param(query, "by", reports.GROUP_DIMENSIONS)
    if not by:
        return report
    keys = reports.dimension_keys(connection, by, as_of, known_at)
    return {**report, "by": by, "rows": reports.group_rows(report["rows"], keys, by, columns)}


def _aging(connection, query, as_of, known_at) -> Report:
    try:
        buckets = reports.Buckets.parse(query.get("buckets") or "0,30,60,90")
    except ValueError as error:
        raise BadParameter(f"buckets: {error}") from None
    basis = choice_param(query, "basis", ("due_date", "invoice_date")) or "due_date"
    report = reports.aging(connection, as_of, known_at, buckets, basis)
    report = _by(connection, report, query, as_of, known_at, [*report["buckets"], "open", "unapplied", "total"])
    return Report("aging", report, report["rows"])


def _balances(connection, query, as_of, known_at) -> Report:
    report = reports.balances(connection, as_of, known_at)
    return Report("balances", report, report["rows"])


EXPOSURE_SUMS = ["balance", "open_orders", "exposure", "credit_limit", "available", "overdue", "breaches"]


def _exposure(connection, query, as_of, known_at) -> Report:
    report = exposure_report.exposure(connection, as_of, known_at)
    report = _by(connection, report, query, as_of, known_at, EXPOSURE_SUMS)
    if "by" in report:
        for row in report["rows"]:
            row["utilisation"] = None if row["credit_limit"] == 0 else row["exposure"] / row["credit_limit"]
    return Report("exposure", report, report["rows"])


def _open_items(connection, query, as_of, known_at) -> Report:
    report = exposure_report.open_items(connection, as_of, known_at, _optional(query, "customer"),
                                        include_settled=not bool_param(query, "open_only"))
    return Report("open-items", report, report["rows"])


def _customer_required(query: Mapping[str, str]) -> str:
    customer = (query.get("customer") or "").strip()
    if not customer:
        raise BadParameter("customer is required")
    return customer


def _statement(connection, query, as_of, known_at) -> Report:
    customer = _customer_required(query)
    date_from, date_to = _period(query, as_of, required=True)
    try:
        report = statements.statement(connection, customer, date_from, date_to, known_at)
    except LookupError as error:
        raise NotFound(str(error)) from None
    opening = {"effective_on": (date_from - dt.timedelta(days=1)).isoformat(), "kind": "opening_balance",
               "document_id": None, "invoice_id": None, "debit": None, "credit": None, "amount": None,
               "balance": report["opening_balance"]}
    closing = {**opening, "effective_on": report["to"], "kind": "closing_balance", "balance": report["closing_balance"]}
    return Report("statement", report, [opening, *report["rows"], closing])


def _kpis(connection, query, as_of, known_at) -> Report:
    date_from, date_to = _period(query, as_of, required=False, default=kpi_report.month_bounds)
    try:
        report = kpi_report.kpis(connection, date_from, date_to, known_at)
    except ValueError as error:
        raise BadParameter(str(error)) from None
    return Report("kpis", report, kpi_report.kpi_rows(connection, report))


def _allowance(connection, query, as_of, known_at) -> Report:
    try:
        rates = allowance_report.parse_rates(query["rates"]) if query.get("rates") else None
    except ValueError as error:
        raise BadParameter(f"rates: {error}") from None
    report = allowance_report.allowance(connection, as_of, known_at, rates)
    report = _by(connection, report, query, as_of, known_at, [*report["rates"], "open", "allowance"])
    return Report("allowance", report, report["rows"])


def year_before(day: dt.date) -> dt.date:
    """The first day of the month 11 months before `day`'s: twelve month ends up to `day`."""
    month_index = day.year * 12 + day.month - 1 - 11
    return dt.date(month_index // 12, month_index % 12 + 1, 1)


def _history(connection, query, as_of, known_at) -> Report:
    customer = _customer_required(query)
    date_from, date_to = _period(query, as_of, required=False, default=lambda d: (year_before(d), d))
    try:
        report = statements.history(connection, customer, date_from, date_to, known_at)
    except LookupError as error:
        raise NotFound(str(error)) from None
    except ValueError as error:
        raise BadParameter(str(error)) from None
    return Report("history", report, report["rows"])


def _rollforward(connection, query, as_of, known_at) -> Report:
    date_from, date_to = _period(query, as_of, required=True)
    by = choice_param(query, "by", ("currency", "customer", "salesperson")) or "currency"
    try:
        report = statements.rollforward(connection, date_from, date_to, known_at, by)
    except ValueError as error:
        raise BadParameter(str(error)) from None
    return Report("rollforward", report, report["rows"])


def _worklist(connection, query, as_of, known_at) -> Report:
    config = credit_config()
    if query.get("by") == "salesperson":
        date_from, date_to = _period(query, as_of, required=False, default=lambda d: (d.replace(day=1), d))
        report = worklist.salesperson_kpis(connection, config.ladder, date_from, date_to, known_at)
    else:
        report = worklist.worklist(connection, config.ladder, as_of, known_at, _optional(query, "salesperson"))
    return Report("worklist", report, report["rows"])


def _promises(connection, query, as_of, known_at) -> Report:
    report = worklist.promise_report(connection, as_of, known_at, _optional(query, "salesperson"))
    status = choice_param(query, "status", ("open", "kept", "partly_kept", "broken"))
    if status:
        report["rows"] = [row for row in report["rows"] if row["status"] == status]
    return Report("promises", report, report["rows"])


def _grades(connection, query, as_of, known_at) -> Report:
    report = grading.grades_report(connection, credit_config().grading, as_of, known_at,
                                   _optional(query, "salesperson"))
    if query.get("customer"):
        report["rows"] = [row for row in report["rows"] if row["customer_id"] == query["customer"]]
    return Report("grades", report, report["rows"])


def _alerts(connection, query, as_of, known_at) -> Report:
    kind = choice_param(query, "kind", alert_rules.KINDS)
    rows = alert_rules.recorded_alerts(connection, kind=kind, customer_id=query.get("customer") or None,
                                       since=date_param(query, "since"))
    report = {"kind": kind, "customer_id": query.get("customer") or None, "rows": rows}
    flat = [{**row, "figures": output.to_json(row["figures"])} for row in rows]
    return Report("alerts", report, flat)


REPORTS: dict[str, Callable[..., Report]] = {
    "aging": _aging, "balances": _balances, "exposure": _exposure, "open-items": _open_items,
    "statement": _statement, "kpis": _kpis, "allowance": _allowance, "history": _history,
    "rollforward": _rollforward, "worklist": _worklist, "promises": _promises, "grades": _grades,
    "alerts": _alerts,
}
REPORT_PARAMETERS = {
    "aging": ("buckets", "basis", "by"), "balances": (), "exposure": ("by",),
    "open-items": ("customer", "open_only"), "statement": ("customer", "from", "to"), "kpis": ("from", "to"),
    "allowance": ("rates", "by"), "history": ("customer", "from", "to"), "rollforward": ("from", "to", "by"),
    "worklist": ("salesperson", "by", "from", "to"), "promises": ("salesperson", "status"),
    "grades": ("customer", "salesperson"), "alerts": ("kind", "customer", "since"),
}


def run_report(connection, name: str, query: Mapping[str, str]) -> Report:
    if name not in REPORTS:
        raise NotFound(f"unknown report {name!r}; reports: {', '.join(REPORTS)}")
    as_of = date_param(query, "as_of", today())
    return REPORTS[name](connection, query, as_of, known_at_param(query))


def to_csv(report: Report) -> str:
    return output.to_csv(report.rows)


def to_parquet(report: Report) -> bytes:
    """The rows as a Parquet file (typed from the values, as `arledger report --format parquet` writes it)."""
    from arledger.commands.report import write_parquet

    fd, name = tempfile.mkstemp(prefix="arledger-web-", suffix=".parquet")
    os.close(fd)
    path = Path(name)
    try:
        write_parquet(report.rows, path)
        return path.read_bytes()
    finally:
        path.unlink(missing_ok=True)
