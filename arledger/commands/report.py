"""`arledger report NAME`: the read-model reports, from the latest published snapshot."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from arledger import output
from arledger.readmodel import open_read_model  # noqa: F401 - also imported from here by sql, audit
from arledger.settings import Settings
from projections import allowance as allowance_report
from projections import exposure as exposure_report
from projections import kpis as kpi_report
from projections import reports, schema, statements

FORMATS = (*output.FORMATS, "parquet")

REPORTS_HELP = """\
Reports read the latest snapshot the projector published (at most a few
seconds old), so they work while 'arledger run' is running in another process.
JSON amounts are integers in minor units; --known-at T shows what the ledger
had recorded by T (a bare date = the end of that UTC day).

examples:
  arledger report aging --as-of 2026-06-30
  arledger report aging --as-of 2026-06-30 --known-at 2026-07-05 --format json
  arledger report aging --as-of 2026-06-30 --by salesperson
  arledger report balances --format csv > balances.csv
  arledger report exposure --as-of 2026-06-30
  arledger report open-items --customer C0001 --as-of 2026-06-30
  arledger report statement --customer C0001 --from 2026-06-01 --to 2026-06-30
  arledger report kpis --from 2026-06-01 --to 2026-06-30 --format json
  arledger report allowance --as-of 2026-06-30 --rates current=0.01,1-30=0.03,31-60=0.1,61-90=0.25,90+=0.5
  arledger report history --customer C0001 --from 2026-01-01 --to 2026-06-30
  arledger report rollforward --from 2026-06-01 --to 2026-06-30 --by customer
  arledger report open-items --format parquet --out exports/
"""


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as-of", help="business date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--known-at", help="only what the ledger had recorded by this ISO-8601 instant; "
                                           "a bare date means the end of that UTC day")
    parser.add_argument("--format", choices=FORMATS, default="table",
                        help="output format (default: table); parquet needs --out")
    parser.add_argument("--out", metavar="PATH",
                        help="write to PATH instead of standard output; with --format parquet, a .parquet file "
                             "or a directory (the file is then DIR/<report>.parquet)")


def add_period(parser: argparse.ArgumentParser, *, required: bool, what: str, to_what: str | None = None) -> None:
    parser.add_argument("--from", dest="date_from", required=required, metavar="D",
                        help=f"first business day of the period (YYYY-MM-DD){what}")
    parser.add_argument("--to", dest="date_to", metavar="D",
                        help=f"last business day of the period (YYYY-MM-DD){what if to_what is None else to_what}")


def _subparser(names: argparse._SubParsersAction, name: str, help_text: str, examples: str):
    return names.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                            epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="print a report (aging, balances, exposure, kpis, ...)",
                                   description="Print a report as of a business date, optionally as known at "
                                               "a recorded instant (bitemporal).",
                                   epilog=REPORTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = parser.add_subparsers(dest="report", metavar="NAME", required=True)
    from arledger.commands.credit import add_worklist

    add_worklist(names)  # `report worklist` (docs/contract.md §6) is `arledger worklist`

    aging = _subparser(names, "aging", "open items by days past due, per customer, with totals per currency",
                       "  arledger report aging --as-of 2026-06-30 --buckets 0,15,30,60,90,180\n"
                       "  arledger report aging --as-of 2026-06-30 --by salesperson --format json\n"
                       "  arledger report aging --as-of 2026-06-30 --known-at 2026-07-05T08:00:00Z\n")
    add_common(aging)
    aging.add_argument("--buckets", default="0,30,60,90",
                       help="upper bounds in days past due (default 0,30,60,90 → current,1-30,31-60,61-90,90+)")
    aging.add_argument("--basis", choices=("due_date", "invoice_date"), default="due_date",
                       help="age by due date (default) or by invoice date")
    aging.add_argument("--by", choices=reports.GROUP_DIMENSIONS,
                       help="sum the rows per customer (default), salesperson, grade (as of --as-of) or currency; "
                            "currencies are never added")
    aging.set_defaults(handler=run_aging)

    balances = _subparser(names, "balances", "per customer balance, overdue, limit, exposure, available",
                          "  arledger report balances --as-of 2026-06-30 --format json\n")
    add_common(balances)
    balances.set_defaults(handler=run_balances)

    exposure = _subparser(names, "exposure",
                          "open AR plus approved open orders against the credit limit; over the limit first",
                          "  arledger report exposure --as-of 2026-06-30\n"
                          "  arledger report exposure --by salesperson --format csv\n")
    add_common(exposure)
    exposure.add_argument("--by", choices=reports.GROUP_DIMENSIONS, help="sum per salesperson, grade or currency")
    exposure.set_defaults(handler=run_exposure)

    items = _subparser(names, "open-items",
                       "every installment issued by --as-of: open amount, days past due, status, dispute flag",
                       "  arledger report open-items --customer C0001 --as-of 2026-06-30\n"
                       "  arledger report open-items --open-only --format parquet --out exports/\n")
    add_common(items)
    items.add_argument("--customer", help="only this customer's items")
    items.add_argument("--open-only", action="store_true", help="leave out items with nothing open")
    items.set_defaults(handler=run_open_items)

    statement = _subparser(names, "statement",
                           "a customer's statement: opening balance, every movement in the period, closing balance",
                           "  arledger report statement --customer C0001 --from 2026-06-01 --to 2026-06-30\n")
    add_common(statement)
    statement.add_argument("--customer", required=True, help="the customer")
    add_period(statement, required=True, what="", to_what="; default: --as-of")
    statement.set_defaults(handler=run_statement)

    kpis = _subparser(names, "kpis", "DSO, countback DSO, best-possible DSO, ADD, CEI, turnover, collection rate",
                      "  arledger report kpis --from 2026-06-01 --to 2026-06-30 --format json\n"
                      "  arledger report kpis --as-of 2026-06-15       # the calendar month of --as-of\n")
    add_common(kpis)
    add_period(kpis, required=False, what="; default: the calendar month of --as-of")
    kpis.set_defaults(handler=run_kpis)

    allowance = _subparser(names, "allowance",
                           "bad-debt allowance: provision matrix per customer and historical loss rates",
                           "  arledger report allowance --as-of 2026-06-30 --format json\n"
                           "  arledger report allowance --rates current=0.005,1-30=0.02,31-60=0.1,61-180=0.4,"
                           "180+=1\n")
    add_common(allowance)
    allowance.add_argument("--rates", help="bucket=rate list, rates as decimal fractions; the names define the "
                                           "buckets (default current=0.01,1-30=0.03,31-60=0.10,61-90=0.25,90+=0.50)")
    allowance.add_argument("--by", choices=reports.GROUP_DIMENSIONS, help="sum per salesperson, grade or currency")
    allowance.set_defaults(handler=run_allowance)

    history = _subparser(names, "history", "a customer's balance and exposure as of each month end",
                         "  arledger report history --customer C0001 --from 2026-01-01 --to 2026-06-30\n")
    add_common(history)
    history.add_argument("--customer", required=True, help="the customer")
    add_period(history, required=False, what="; default: the 12 months up to --as-of")
    history.set_defaults(handler=run_history)

    rollforward = _subparser(names, "rollforward",
                             "opening AR + sales − credit notes − cash + reversed cash − write-offs = closing AR",
                             "  arledger report rollforward --from 2026-06-01 --to 2026-06-30\n"
                             "  arledger report rollforward --from 2026-01-01 --to 2026-06-30 --by customer\n")
    add_common(rollforward)
    add_period(rollforward, required=True, what="", to_what="; default: --as-of")
    rollforward.add_argument("--by", choices=("currency", "customer", "salesperson"), default="currency",
                             help="one row per currency (default), customer or salesperson × currency")
    rollforward.set_defaults(handler=run_rollforward)


# -- Output ------------------------------------------------------------------------------------

@contextlib.contextmanager
def _destination(out: str | None) -> Iterator[None]:
    if not out:
        yield
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as stream, contextlib.redirect_stdout(stream):
        yield


def emit(args: argparse.Namespace, report: dict[str, Any], title: str, money: set[str],
         rows: list[dict[str, Any]] | None = None, totals: dict[str, Any] | None = None) -> None:
    """JSON: the whole report; table, CSV, Parquet: its rows (`rows` when the report's own are nested)."""
    rows = report["rows"] if rows is None else rows
    if args.format == "parquet":
        if not args.out:
            sys.exit("arledger: --format parquet needs --out FILE.parquet or --out DIR")
        path = parquet_path(args.out, args.report)
        write_parquet(rows, path)
        print(f"wrote {len(rows)} rows to {path}", file=sys.stderr)
        return
    with _destination(args.out):
        if args.format == "json":
            sys.stdout.write(output.to_json(report) + "\n")
        elif args.format == "csv":
            sys.stdout.write(output.to_csv(rows))
        else:
            output.print_table(title, rows, money, report.get("totals") if totals is None else totals)


def parquet_path(out: str, report_name: str) -> Path:
    path = Path(out)
    if path.suffix == ".parquet":
        path.parent.mkdir(parents=True, exist_ok=True)
        return path
    path.mkdir(parents=True, exist_ok=True)
    return path / f"{report_name.replace('-', '_')}.parquet"


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _column_type(values: list[Any]) -> str:
    present = [value for value in values if value is not None]
    if not present:
        return "VARCHAR"
    if all(isinstance(value, bool) for value in present):
        return "BOOLEAN"
    if all(isinstance(value, int) and not isinstance(value, bool) for value in present):
        return "BIGINT"
    if all(isinstance(value, (int, float)) and not isinstance(value, bool) for value in present):
        return "DOUBLE"
    if all(isinstance(value, dt.date) or (isinstance(value, str) and _DATE.match(value)) for value in present):
        return "DATE"
    return "VARCHAR"


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    """Rows → Parquet with DuckDB (COPY ... TO ... (FORMAT PARQUET)), typed from the values."""
    import duckdb

    columns = list(rows[0]) if rows else ["empty"]
    types = {column: _column_type([row.get(column) for row in rows]) for column in columns}
    fd, staging = tempfile.mkstemp(prefix="arledger-report-", suffix=".ndjson")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            for row in rows:
                stream.write(output.to_json({column: row.get(column) for column in columns}) + "\n")
        spec = "{" + ", ".join(f"{_quote(column, chr(39))}: '{types[column]}'" for column in columns) + "}"
        select = ", ".join(_quote(column, '"') for column in columns)
        connection = duckdb.connect()
        if rows:
            source = f"read_json({_quote(staging, chr(39))}, format = 'newline_delimited', columns = {spec})"
        else:
            source = "(SELECT NULL::VARCHAR AS empty WHERE false)"
        connection.execute(f"COPY (SELECT {select} FROM {source}) TO {_quote(str(path), chr(39))} (FORMAT PARQUET)")
        connection.close()
    finally:
        os.unlink(staging)


def _quote(text: str, quote: str) -> str:
    return quote + text.replace(quote, quote * 2) + quote


def _period(args: argparse.Namespace) -> tuple[dt.date, dt.date]:
    """--from and --to; a missing --to is --as-of (today by default)."""
    date_to = dt.date.fromisoformat(args.date_to) if args.date_to else output.parse_as_of(args.as_of)
    return dt.date.fromisoformat(args.date_from), date_to


def _known_at(args: argparse.Namespace) -> dt.datetime | None:
    return output.parse_known_at(args.known_at)


# -- Handlers ----------------------------------------------------------------------------------

def run_aging(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    as_of = output.parse_as_of(args.as_of)
    report = reports.aging(connection, as_of, _known_at(args), reports.Buckets.parse(args.buckets), args.basis)
    money = set(report["buckets"]) | {"open", "unapplied", "total"}
    if args.by:
        keys = reports.dimension_keys(connection, args.by, as_of, _known_at(args))
        report = {**report, "by": args.by,
                  "rows": reports.group_rows(report["rows"], keys, args.by, [*report["buckets"], "open",
                                                                              "unapplied", "total"])}
    emit(args, report, f"Aging as of {report['as_of']}" + (f" by {args.by}" if args.by else ""), money)
    return 0


def run_balances(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    report = reports.balances(connection, output.parse_as_of(args.as_of), _known_at(args))
    money = {"balance", "unapplied", "overdue", "credit_limit", "open_orders", "exposure", "available"}
    emit(args, report, f"Balances as of {report['as_of']}", money)
    return 0


EXPOSURE_SUMS = ["balance", "open_orders", "exposure", "credit_limit", "available", "overdue", "breaches"]


def run_exposure(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    as_of = output.parse_as_of(args.as_of)
    report = exposure_report.exposure(connection, as_of, _known_at(args))
    if args.by:
        keys = reports.dimension_keys(connection, args.by, as_of, _known_at(args))
        grouped = reports.group_rows(report["rows"], keys, args.by, EXPOSURE_SUMS)
        over = reports.group_rows([{**row, "over_limit": int(row["over_limit"])} for row in report["rows"]],
                                  keys, args.by, ["over_limit"])
        for row, counted in zip(grouped, over):
            row["utilisation"] = None if row["credit_limit"] == 0 else row["exposure"] / row["credit_limit"]
            row["customers_over_limit"] = counted["over_limit"]
        report = {**report, "by": args.by, "rows": grouped}
    money = {"balance", "open_orders", "exposure", "credit_limit", "available", "overdue"}
    emit(args, report, f"Exposure as of {report['as_of']}", money)
    return 0


def run_open_items(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    report = exposure_report.open_items(connection, output.parse_as_of(args.as_of), _known_at(args),
                                        args.customer, include_settled=not args.open_only)
    emit(args, report, f"Open items as of {report['as_of']}", {"amount", "open_amount", "settled_amount"})
    return 0


def run_statement(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    date_from, date_to = _period(args)
    try:
        report = statements.statement(connection, args.customer, date_from, date_to, _known_at(args))
    except (LookupError, ValueError) as error:
        sys.exit(f"arledger: {error}")
    opening = {"effective_on": (date_from - dt.timedelta(days=1)).isoformat(), "kind": "opening_balance",
               "document_id": None, "invoice_id": None, "debit": None, "credit": None, "amount": None,
               "balance": report["opening_balance"]}
    closing = {**opening, "effective_on": report["to"], "kind": "closing_balance",
               "balance": report["closing_balance"]}
    title = (f"Statement of {report['customer_id']} {report['name']} ({report['currency']}) "
             f"{report['from']} – {report['to']}")
    emit(args, report, title, {"debit", "credit", "amount", "balance"}, rows=[opening, *report["rows"], closing])
    return 0


def run_kpis(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    if bool(args.date_from) != bool(args.date_to):
        sys.exit("arledger: give both --from and --to, or neither (the calendar month of --as-of)")
    if args.date_from:
        date_from, date_to = _period(args)
    else:
        date_from, date_to = kpi_report.month_bounds(output.parse_as_of(args.as_of))
    try:
        report = kpi_report.kpis(connection, date_from, date_to, _known_at(args))
    except ValueError as error:
        sys.exit(f"arledger: {error}")
    emit(args, report, f"KPIs {report['from']} – {report['to']}", {"ar_start", "ar_end", "current_end", "sales"},
         rows=kpi_report.kpi_rows(connection, report), totals={})
    return 0


def run_allowance(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    as_of = output.parse_as_of(args.as_of)
    try:
        rates = allowance_report.parse_rates(args.rates) if args.rates else None
    except ValueError as error:
        sys.exit(f"arledger: --rates: {error}")
    report = allowance_report.allowance(connection, as_of, _known_at(args), rates)
    buckets = list(report["rates"])
    if args.by:
        keys = reports.dimension_keys(connection, args.by, as_of, _known_at(args))
        report = {**report, "by": args.by,
                  "rows": reports.group_rows(report["rows"], keys, args.by, [*buckets, "open", "allowance"])}
    totals = {currency: {"allowance": amount} for currency, amount in report["totals"].items()}
    emit(args, report, f"Allowance as of {report['as_of']} (rates {json.dumps(report['rates'])})",
         {*buckets, "open", "allowance"}, totals=totals)
    if args.format == "table" and not args.out:
        loss = [{"currency": currency, **rates_of} for currency, rates_of in report["historical_loss_rates"].items()]
        output.print_table("Historical loss rates", loss, set())
    return 0


def run_history(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    if args.date_from or args.date_to:
        date_to = dt.date.fromisoformat(args.date_to) if args.date_to else output.parse_as_of(args.as_of)
        date_from = dt.date.fromisoformat(args.date_from) if args.date_from else _year_before(date_to)
    else:
        date_to = output.parse_as_of(args.as_of)
        date_from = _year_before(date_to)
    try:
        report = statements.history(connection, args.customer, date_from, date_to, _known_at(args))
    except (LookupError, ValueError) as error:
        sys.exit(f"arledger: {error}")
    money = {"open", "unapplied", "balance", "overdue", "open_orders", "exposure", "credit_limit", "available"}
    emit(args, report, f"History of {report['customer_id']} {report['name']} ({report['currency']})", money)
    return 0


def _year_before(day: dt.date) -> dt.date:
    """The first day of the month 11 months before `day`'s: twelve month ends up to `day`."""
    month_index = day.year * 12 + day.month - 1 - 11
    return dt.date(month_index // 12, month_index % 12 + 1, 1)


def run_rollforward(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    date_from, date_to = _period(args)
    try:
        report = statements.rollforward(connection, date_from, date_to, _known_at(args), args.by)
    except ValueError as error:
        sys.exit(f"arledger: {error}")
    emit(args, report, f"AR roll-forward {report['from']} – {report['to']}", set(statements.ROLLFORWARD_COLUMNS))
    return 0
