"""`arledger redrive`: fold again the ar.ledger records the projector set aside (dead letters)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from arledger import output
from arledger.settings import Settings

HELP = """\
A record the projector cannot fold (a bug, or a record it does not understand)
does not stop it: the record is set aside in the `dead_letters` table with the
error, an error line `projector_dead_letter` is logged, the metric
arledger_dead_letters rises and `arledger status` shows the count; every other
record keeps flowing. After the fix (a new version, a repaired configuration),
this command folds the set-aside records again, oldest first. With `arledger
run` running, the projector does it between two batches; otherwise it is done
here on the projection file, then a snapshot is published.

examples:
  arledger redrive --list
  arledger redrive                 # all of them
  arledger redrive --position 1234 --position 1240
"""

WAIT_S = 120.0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("redrive", help="fold again the records the projector set aside (dead letters)",
                                   description="Fold again the ar.ledger records the projector set aside.",
                                   epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--position", type=int, action="append", help="only this ledger position (repeatable)")
    parser.add_argument("--list", action="store_true", help="only list the records set aside (from the snapshot)")
    parser.add_argument("--format", choices=output.FORMATS, default="table", help="format of --list")
    parser.set_defaults(handler=run)


def _snapshot_letters(settings: Settings) -> list[dict]:
    from arledger.readmodel import open_read_model
    from projections.fold import dead_letters

    connection = open_read_model(settings)
    try:
        return dead_letters(connection)
    finally:
        connection.close()


def run(args: argparse.Namespace) -> int:
    from consumers.project import publish_snapshot, redrive_path
    from consumers.rebuild import file_in_use, swap_lock
    from projections import schema
    from projections.fold import dead_letters, redrive

    settings = Settings.from_env()
    if args.list:
        rows = [{key: letter[key] for key in ("position", "topic", "partition", "record_offset", "customer_id",
                                               "kind", "attempts", "failed_at", "error")}
                for letter in _snapshot_letters(settings)]
        output.emit({"rows": rows}, args.format, "Records set aside by the projector (dead letters)", set())
        return 0
    live = settings.projection_path
    if not live.exists():
        sys.exit(f"arledger redrive: no projection file {live}")
    marker = redrive_path(live)
    with swap_lock(live):
        in_use = file_in_use(live)
        if not in_use:
            connection = schema.connect(str(live))
            try:
                schema.create_schema(connection)
                folded, failing = redrive(connection, args.position, staging_dir=live.parent)
                remaining = len(dead_letters(connection))
                publish_snapshot(connection, live, settings.snapshot_path)
            finally:
                connection.close()
            print(f"redriven: {folded} folded, {failing} still failing; {remaining} set aside")
            return 0 if failing == 0 else 1
        marker.write_text(json.dumps(args.position))
    deadline = time.monotonic() + WAIT_S
    while marker.exists():
        if time.monotonic() > deadline:
            sys.exit("arledger redrive: the projector has not acted on the request yet (is it stuck?); "
                     f"it stays asked ({marker})")
        time.sleep(0.2)
    print("redrive done by the running projector; its log line dead_letters_redriven has the counts, "
          "`arledger redrive --list` what is still set aside (once the next snapshot is published)")
    return 0
