"""Printing reports: table (rich), JSON (integers in minor units), CSV (RFC 4180)."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import sys
from typing import Any

FORMATS = ("table", "json", "csv")


def parse_as_of(text: str | None) -> dt.date:
    """--as-of: a date YYYY-MM-DD; default today (UTC)."""
    if not text:
        return dt.datetime.now(dt.UTC).date()
    return dt.date.fromisoformat(text)


def parse_known_at(text: str | None) -> dt.datetime | None:
    """--known-at: an ISO-8601 instant (no offset = UTC), or a bare date = the end of that UTC day."""
    if not text:
        return None
    if len(text) == 10:
        day = dt.date.fromisoformat(text)
        return dt.datetime.combine(day, dt.time.max, tzinfo=dt.UTC)
    instant = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return instant if instant.tzinfo else instant.replace(tzinfo=dt.UTC)


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__}")


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, default=_json_default, ensure_ascii=False)


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\r\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def money(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        return "" if value is None else str(value)
    sign = "-" if value < 0 else ""
    return f"{sign}{abs(value) // 100:,}.{abs(value) % 100:02d}"


def print_table(title: str, rows: list[dict[str, Any]], money_columns: set[str],
                totals: dict[str, dict[str, Any]] | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    if not rows:  # an empty rich table prints nothing at all: say so instead
        print(f"{title}: no rows")
        return
    table = Table(title=title, show_lines=False)
    columns = list(rows[0])
    for column in columns:
        table.add_column(column, justify="right" if column in money_columns else "left")
    for row in rows:
        table.add_row(*(money(row[c]) if c in money_columns else _cell(row[c]) for c in columns))
    for currency, total in (totals or {}).items():
        table.add_row(*([f"TOTAL {currency}"] + [money(total.get(c)) if c in total else "" for c in columns[1:]]),
                      style="bold")
    # Off a terminal rich would wrap at 80 columns: give reports room instead.
    Console(file=sys.stdout, width=None if sys.stdout.isatty() else 240).print(table)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def emit(report: dict[str, Any], fmt: str, title: str, money_columns: set[str]) -> None:
    """Print `report` (a dict with `rows`, maybe `totals`) in the chosen format."""
    if fmt == "json":
        sys.stdout.write(to_json(report) + "\n")
    elif fmt == "csv":
        sys.stdout.write(to_csv(report["rows"]))
    else:
        print_table(title, report["rows"], money_columns, report.get("totals"))
