"""`arledger schema`: the inbound contract's JSON Schema, or the read-model tables."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "schema", help="print the JSON Schema of the inbound contract (or --tables)",
        description="Print the JSON Schema of ar.inbound envelopes, generated from the ledger's Structs.",
        epilog="examples:\n  arledger schema > docs/inbound.schema.json\n  arledger schema --tables > docs/tables.md",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", action="store_true", help="print the DuckDB read-model tables as Markdown")
    parser.set_defaults(handler=run)


def inbound_schema_text() -> str:
    from ledger.contract import json_schema

    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def run(args: argparse.Namespace) -> int:
    if args.tables:
        from projections.schema import tables_markdown

        sys.stdout.write(tables_markdown())
    else:
        sys.stdout.write(inbound_schema_text())
    return 0
