"""The `arledger` command line: one entry point, one sub-command per job."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module under arledger.commands registers its own sub-commands.
COMMAND_MODULES = (
    "arledger.commands.broker",
    "arledger.commands.run",
    "arledger.commands.ingest",
    "arledger.commands.report",
    "arledger.commands.schema",
    "arledger.commands.status",
    "arledger.commands.generate",
    "arledger.commands.credit",
    "arledger.commands.audit",
    "arledger.commands.rebuild",
    "arledger.commands.sql",
    "arledger.commands.demo",
    "arledger.commands.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arledger",
        description="Event-sourced accounts-receivable ledger on Apache Kafka with DuckDB read models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Configuration: ARLEDGER_HOME, ARLEDGER_KAFKA, ARLEDGER_BROKER_PORT, ARLEDGER_STORE "
        "(see README). Run 'arledger COMMAND --help' for each command.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
