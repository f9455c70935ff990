"""`arledger report NAME`: the read-model reports, from the latest published snapshot."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arledger import output
from arledger.settings import Settings
from projections import reports, schema

REPORTS_HELP = """\
Reports read the latest snapshot the projector published (at most a few
seconds old), so they work while 'arledger run' is running in another process.

examples:
  arledger report aging --as-of 2026-06-30
  arledger report aging --as-of 2026-06-30 --known-at 2026-07-05 --format json
  arledger report balances --format csv > balances.csv
"""


def open_read_model(settings: Settings):
    """The published snapshot, read-only (or the projection file itself when no projector ever ran)."""
    for path in (settings.snapshot_path, settings.projection_path):
        if Path(path).exists():
            return schema.connect(str(path), read_only=True)
    sys.exit(f"arledger: no read model under {settings.home}: run 'arledger run' (or 'arledger demo') first")


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as-of", help="business date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--known-at", help="only what the ledger had recorded by this ISO-8601 instant; "
                                           "a bare date means the end of that UTC day")
    parser.add_argument("--format", choices=output.FORMATS, default="table", help="output format (default: table)")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="print a report (aging, balances, ...)",
                                   description="Print a report as of a business date, optionally as known at "
                                               "a recorded instant (bitemporal).",
                                   epilog=REPORTS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = parser.add_subparsers(dest="report", metavar="NAME", required=True)
    aging = names.add_parser("aging", help="open items by days past due, per customer, with totals per currency",
                             epilog="example: arledger report aging --as-of 2026-06-30 --buckets 0,15,30,60,90,180",
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(aging)
    aging.add_argument("--buckets", default="0,30,60,90",
                       help="upper bounds in days past due (default 0,30,60,90 → current,1-30,31-60,61-90,90+)")
    aging.add_argument("--basis", choices=("due_date", "invoice_date"), default="due_date",
                       help="age by due date (default) or by invoice date")
    aging.set_defaults(handler=run_aging)
    balances = names.add_parser("balances", help="per customer balance, overdue, limit, exposure, available",
                                epilog="example: arledger report balances --as-of 2026-06-30 --format json",
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(balances)
    balances.set_defaults(handler=run_balances)


def run_aging(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    report = reports.aging(connection, output.parse_as_of(args.as_of), output.parse_known_at(args.known_at),
                           reports.Buckets.parse(args.buckets), args.basis)
    money = set(report["buckets"]) | {"open", "unapplied", "total"}
    output.emit(report, args.format, f"Aging as of {report['as_of']}", money)
    return 0


def run_balances(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    connection = open_read_model(settings)
    report = reports.balances(connection, output.parse_as_of(args.as_of), output.parse_known_at(args.known_at))
    money = {"balance", "unapplied", "overdue", "credit_limit", "open_orders", "exposure", "available"}
    output.emit(report, args.format, f"Balances as of {report['as_of']}", money)
    return 0
