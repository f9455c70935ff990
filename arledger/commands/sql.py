"""`arledger sql ["SELECT ..."]`: SQL on the read models, from the published snapshot, read-only.

Works while `arledger run` is running: it reads the latest snapshot the
projector published (a consistent copy, never a half-applied batch), so it
never touches the file the projector writes.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import decimal
import io
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from arledger import output
from arledger.readmodel import open_read_model, read_model_paths
from arledger.settings import TOPIC_LEDGER, Settings

SQL_HELP = """\
Runs on the latest snapshot the projector published (at most a few seconds
behind, see docs/analysts.md), read-only: INSERT, UPDATE and DELETE fail.
Without a query it starts an interactive session: statements end with ';',
and these commands are understood:
  .tables            tables and views with their row counts
  .schema [NAME]     the columns of a table or view (all when no name)
  .mode table|json|csv   output format
  .status            which file is read, how old it is, the offsets it reflects
  .refresh on|off    on (default): each statement reads the latest snapshot;
                     off: keep reading the same one (temp tables survive)
  .help  .quit
Money columns are BIGINT minor units (cents).

examples:
  arledger sql "SELECT customer_id, balance FROM customer_balances ORDER BY balance DESC LIMIT 10"
  arledger sql --format csv "SELECT * FROM open_items WHERE status = 'open'" > open.csv
  arledger sql < queries.sql
  arledger sql
"""

HISTORY_LINES_MAX = 1_000  # readline history kept between sessions


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sql", help="run SQL on the read models (or an interactive session)",
                                   description="Run SQL on the DuckDB read models, read-only, while the "
                                               "workers run.",
                                   epilog=SQL_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("query", nargs="?", help="SQL to run (several statements: the last one's rows are "
                                                 "printed); '-' reads it from stdin; none: interactive")
    parser.add_argument("--format", choices=output.FORMATS, default="table", help="output format (default: table)")
    parser.set_defaults(handler=run)


# -- Results -------------------------------------------------------------------------------------


class Result:
    __slots__ = ("columns", "rows")

    def __init__(self, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
        self.columns, self.rows = columns, rows


def execute(connection, sql: str) -> Result | None:
    """Run `sql`; the rows of its last statement, or None when it returns none."""
    cursor = connection.execute(sql)
    if cursor.description is None:
        return None
    return Result([d[0] for d in cursor.description], cursor.fetchall())


def _plain(value: Any) -> Any:
    """A JSON-ready value: integers stay integers (money), dates ISO-8601."""
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, dt.timedelta)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def render(result: Result, fmt: str, query: str | None = None) -> str:
    if fmt == "json":
        rows = [{column: _plain(value) for column, value in zip(result.columns, row)} for row in result.rows]
        return json.dumps({"query": query, "columns": result.columns, "rows": rows}, ensure_ascii=False) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180
        writer.writerow(result.columns)
        writer.writerows([["" if v is None else _csv_cell(v) for v in row] for row in result.rows])
        return buffer.getvalue()
    return _table(result)


def _csv_cell(value: Any) -> Any:
    plain = _plain(value)
    return json.dumps(plain, ensure_ascii=False) if isinstance(plain, (dict, list)) else plain


def _table(result: Result) -> str:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_lines=False)
    numeric = [all(isinstance(row[i], (int, float, decimal.Decimal)) and not isinstance(row[i], bool)
                   for row in result.rows if row[i] is not None) for i in range(len(result.columns))]
    for column, right in zip(result.columns, numeric):
        table.add_column(column, justify="right" if right else "left")
    for row in result.rows:
        table.add_row(*("" if v is None else str(_plain(v)) for v in row))
    console = Console(file=io.StringIO(), width=None if sys.stdout.isatty() else 240,
                      force_terminal=sys.stdout.isatty())
    console.print(table)
    return console.file.getvalue()


# -- The read model ------------------------------------------------------------------------------


def read_model_path(settings: Settings) -> Path | None:
    """The (first) file open_read_model opens: the snapshot, else the projection file (no projector ever ran)."""
    paths = read_model_paths(settings)
    return paths[0] if paths else None


class ReadModel:
    """A read-only connection to the latest snapshot, reopened when a newer one is published."""

    def __init__(self, settings: Settings, *, refresh: bool = True) -> None:
        self.settings = settings
        self.refresh = refresh
        self.connection = None
        self.path: Path | None = None
        self.identity: tuple[tuple[int, int], ...] | None = None
        self.reopen()

    def _identity(self) -> tuple[tuple[int, int], ...] | None:
        """Which published files (every shard's) the connection reads; changes when any is replaced."""
        paths = read_model_paths(self.settings)
        if not paths:
            return None
        try:
            return tuple((stat.st_ino, stat.st_mtime_ns) for stat in (path.stat() for path in paths))
        except FileNotFoundError:
            return None

    def reopen(self) -> None:
        if self.connection is not None:
            self.connection.close()
        self.identity = self._identity()
        self.path = read_model_path(self.settings)
        self.connection = open_read_model(self.settings)

    def current(self):
        """The connection, first moved to the latest snapshot if refresh is on and a newer one exists."""
        if self.refresh and self._identity() != self.identity:
            self.reopen()
        return self.connection

    def status(self) -> str:
        age_s = time.time() - self.path.stat().st_mtime if self.path and self.path.exists() else float("nan")
        offsets = self.connection.execute(
            "SELECT partition, next_offset FROM projection_offsets WHERE topic = ? ORDER BY partition",
            [self.settings.topic(TOPIC_LEDGER)]).fetchall()
        events, last = self.connection.execute("SELECT count(*), max(position) FROM ledger_events").fetchone()
        return (f"reading {self.path} (published {age_s:.1f} s ago; refresh {'on' if self.refresh else 'off'})\n"
                f"{events:,} ledger events, last position {last}; offsets {dict(offsets)}\n")


# -- Entry points --------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    import duckdb

    settings = Settings.from_env()
    try:
        model = ReadModel(settings)
    except duckdb.Error as error:  # e.g. a projector that has not published its first snapshot yet holds the file
        print(f"arledger sql: cannot open the read model under {settings.home}: {error}", file=sys.stderr)
        return 2
    if args.query is not None:
        query = sys.stdin.read() if args.query == "-" else args.query
        return _run_one(model, query, args.format)
    return Session(model, args.format, interactive=sys.stdin.isatty()).loop()


def _run_one(model: ReadModel, query: str, fmt: str) -> int:
    import duckdb

    try:
        result = execute(model.current(), query)
    except duckdb.Error as error:
        print(f"arledger sql: {error}", file=sys.stderr)
        return 1
    if result is not None:
        sys.stdout.write(render(result, fmt, query))
    return 0


class Session:
    """The interactive loop: statements end with ';', dot-commands on a line of their own."""

    def __init__(self, model: ReadModel, fmt: str, *, interactive: bool) -> None:
        self.model, self.fmt, self.interactive = model, fmt, interactive
        self.failures = 0

    def loop(self) -> int:
        history = self._setup_readline() if self.interactive else None
        if self.interactive:
            print(f"arledger sql — {self.model.path} (read-only). End statements with ';'. .help for help.")
        buffer: list[str] = []
        try:
            while True:
                try:
                    line = self._read("   ...> " if buffer else "arledger> ")
                except EOFError:
                    break
                except KeyboardInterrupt:
                    print()
                    buffer = []
                    continue
                if not buffer and line.strip().startswith("."):
                    if not self.command(line.strip()):
                        break
                    continue
                buffer.append(line)
                text = "\n".join(buffer)
                if _complete(text):
                    self.statement(text)
                    buffer = []
            if "".join(buffer).strip():
                self.statement("\n".join(buffer))
        finally:
            if history:
                self._save_history(history)
        return 1 if self.failures and not self.interactive else 0

    def _read(self, prompt: str) -> str:
        if self.interactive:
            return input(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    def statement(self, text: str) -> None:
        import duckdb

        started = time.perf_counter()
        try:
            result = execute(self.model.current(), text)
        except duckdb.Error as error:
            self.failures += 1
            print(f"Error: {error}", file=sys.stderr)
            return
        if result is not None:
            sys.stdout.write(render(result, self.fmt, text.strip()))
        if self.interactive:
            rows = f"{len(result.rows)} row(s), " if result is not None else ""
            print(f"({rows}{(time.perf_counter() - started) * 1000:.1f} ms)")

    def command(self, line: str) -> bool:
        """Run a dot-command; False ends the session."""
        import duckdb

        try:
            return self._command(line)
        except duckdb.Error as error:
            self.failures += 1
            print(f"Error: {error}", file=sys.stderr)
            return True

    def _command(self, line: str) -> bool:
        name, _, rest = line.partition(" ")
        rest = rest.strip().rstrip(";")
        connection = self.model.current()
        if name in (".quit", ".exit", ".q"):
            return False
        if name == ".help":
            print(SQL_HELP.split("examples:")[0])
        elif name == ".tables":
            self._print(connection, "SELECT t.table_name AS name, lower(t.table_type) AS kind, "
                                    "d.estimated_size AS rows_approx, coalesce(d.comment, v.comment) AS comment "
                                    "FROM information_schema.tables t "
                                    "LEFT JOIN duckdb_tables() d ON d.table_name = t.table_name "
                                    "AND d.schema_name = t.table_schema AND d.database_name = t.table_catalog "
                                    "LEFT JOIN duckdb_views() v ON v.view_name = t.table_name "
                                    "AND v.schema_name = t.table_schema AND v.database_name = t.table_catalog "
                                    "WHERE t.table_schema = 'main' AND t.table_catalog = current_database() "
                                    "ORDER BY kind, name")
        elif name == ".schema":
            where = "AND table_name = ?" if rest else ""
            self._print(connection, f"SELECT table_name, column_name, data_type FROM information_schema.columns "
                                    f"WHERE table_schema = 'main' {where} ORDER BY table_name, ordinal_position",
                        [rest] if rest else None)
        elif name == ".mode" and rest in output.FORMATS:
            self.fmt = rest
        elif name == ".status":
            sys.stdout.write(self.model.status())
        elif name == ".refresh" and rest in ("on", "off"):
            self.model.refresh = rest == "on"
        else:
            print(f"unknown command {line!r}: .help lists them", file=sys.stderr)
        return True

    def _print(self, connection, sql: str, parameters: list[Any] | None = None) -> None:
        cursor = connection.execute(sql, parameters or [])
        result = Result([d[0] for d in cursor.description], cursor.fetchall())
        sys.stdout.write(render(result, self.fmt))

    def _setup_readline(self) -> Path | None:
        try:
            import readline
        except ImportError:
            return None
        history = self.model.settings.home / "sql_history"
        try:
            readline.read_history_file(history)
        except OSError:
            pass
        readline.set_history_length(HISTORY_LINES_MAX)
        return history

    @staticmethod
    def _save_history(history: Path) -> None:
        import readline

        try:
            readline.write_history_file(history)
        except OSError:
            pass


def _complete(text: str) -> bool:
    """True when `text` ends with a ';' outside quotes and comments (a complete statement)."""
    quote: str | None = None
    last_significant = ""
    i = 0
    while i < len(text):
        char = text[i]
        if quote:
            if char == quote:
                quote = None
        elif char in ("'", '"'):
            quote = char
        elif text.startswith("--", i):
            newline = text.find("\n", i)
            if newline < 0:
                break
            i = newline
            continue
        elif not char.isspace():
            last_significant = char
        i += 1
    return quote is None and last_significant == ";"

