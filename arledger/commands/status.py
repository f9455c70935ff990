"""`arledger status`: lag and health of each worker."""

from __future__ import annotations

import argparse
import json

from arledger.settings import Settings


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status", help="lag and health of the ingest, relay and projector workers",
        description="How far each worker is behind: ingest (consumer group lag on ar.inbound), relay "
                    "(events recorded but not yet on ar.ledger), project (ar.ledger records not yet in the "
                    "published snapshot, and the snapshot's age).",
        epilog="examples:\n  arledger status\n  arledger status --json", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from consumers.status import status

    report = status(Settings.from_env())
    if args.json:
        print(json.dumps(report))
        return 0 if report["broker"]["ok"] else 1
    print(f"kafka   {report['kafka']}  {'up' if report['broker']['ok'] else 'DOWN: ' + report['broker']['error']}")
    print(f"store   {report['store']}")
    if not report["broker"]["ok"]:
        return 1
    print(f"ingest  lag {report['ingest']['lag']} records")
    relay = report["relay"]
    print(f"relay   published position {relay['published_position']}, {relay['unpublished_events']} events to publish")
    project = report["project"]
    age = "no snapshot yet" if project["snapshot_age_s"] is None else f"snapshot {project['snapshot_age_s']} s old"
    print(f"project lag {project['lag']} records, {age}")
    if project.get("dead_letters"):
        print(f"project ALERT: {project['dead_letters']} ledger record(s) set aside (the fold failed): "
              "see `arledger redrive --list`, fix, then `arledger redrive`")
    return 0
