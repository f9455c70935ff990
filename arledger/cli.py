"""The `arledger` command line: one entry point, one sub-command per job.

The Kafka settings are global options, given before the command
(`arledger --bootstrap-servers k1:9093 --security-protocol SASL_SSL ... run`).
They are written into the environment, under the variables they override,
before any command reads its settings: every `Settings.from_env()` of this
process and of its children (`run --workers N`) sees them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Any

from arledger.settings import KAFKA_OPTIONS, SettingsError, apply_flags, kafka_problems
from ledger.policy import ConfigError

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
    "arledger.commands.sqlserver",
    "arledger.commands.redrive",
    "arledger.commands.demo",
    "arledger.commands.bench",
    "arledger.commands.soak",
    "arledger.commands.backup",
    "arledger.commands.recover",
    "arledger.commands.serve",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="arledger",
        description="Event-sourced accounts-receivable ledger on Apache Kafka with DuckDB read models.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Configuration: ARLEDGER_HOME, ARLEDGER_KAFKA, ARLEDGER_BROKER_PORT, ARLEDGER_STORE, and the\n"
        "variables of the Kafka options above (see docs/operations.md, 'Running in production').\n"
        "Run 'arledger COMMAND --help' for each command.\n\n"
        "example (an existing cluster, TLS and SCRAM; the password stays out of `ps`):\n"
        "  arledger --bootstrap-servers k1:9093,k2:9093,k3:9093 --security-protocol SASL_SSL \\\n"
        "      --sasl-mechanism SCRAM-SHA-512 --sasl-username arledger --sasl-password-file pw.txt \\\n"
        "      --ssl-cafile ca.pem --replication-factor 3 --min-insync-replicas 2 topics ensure",
    )
    add_kafka_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def add_kafka_options(parser: argparse.ArgumentParser) -> None:
    """One option per Kafka setting; its value is kept under the name of the variable it overrides."""
    group = parser.add_argument_group(
        "Kafka options (before COMMAND; each overrides the environment variable in brackets)")
    for option in KAFKA_OPTIONS:
        extra: dict[str, Any] = {"type": str.upper, "choices": option.choices} if option.choices else {}
        group.add_argument(option.flag, dest=option.variable, metavar=option.metavar, default=None,
                           help=f"{option.help} [{option.variable}; default: {option.default}]"
                           .replace("%", "%%"), **extra)


def _error(message: str) -> int:
    print(f"arledger: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        misplaced = sorted({option.flag for option in KAFKA_OPTIONS} & {arg.partition("=")[0] for arg in unknown})
        if misplaced:
            parser.error(f"{', '.join(misplaced)}: Kafka options go before the command "
                         f"(arledger {misplaced[0]} ... COMMAND ...)")
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")  # as parse_args says it
    apply_flags({option.variable: getattr(args, option.variable) for option in KAFKA_OPTIONS}, os.environ)
    # A setting that cannot work stops every command here, before it starts anything.
    problems = kafka_problems(os.environ)
    if problems:
        return _error("\n  ".join(problems))
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except SettingsError as error:  # e.g. the password file went away since the check above
        return _error(str(error))
    except ConfigError as error:  # the credit-control config ($ARLEDGER_CONFIG) is unreadable or malformed
        return _error(f"credit-control config: {error}")


if __name__ == "__main__":
    sys.exit(main())
