"""`arledger recover-store`: rebuild a lost event store from ar.ledger, every hash checked."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from arledger.settings import Settings

HELP = """\
When the event store is lost (no usable backup, or a backup older than
ar.ledger), ar.ledger still holds every published event with its position,
its notification id and both hashes. This command reads all of it and writes
the store back into an EMPTY store (ARLEDGER_STORE: a SQLite file that does
not exist, or a PostgreSQL database without events; anything else is refused):

  - every record is checked first: positions 1..N without a gap (a record
    published twice must be byte-identical; a differing copy is an error),
    the global chain (prev_hash_global / hash_global recomputed), each
    customer's chain (versions 1..n, prev_hash_customer / hash_customer
    recomputed) and the data decodable;
  - the first record that fails stops it, naming its position, partition and
    offset and the hash it fails; nothing is written then (one transaction;
    a SQLite store is renamed into place only when complete);
  - the events go back at their own versions and notification ids, the
    relay's global chain with them (every position published), and a receipt
    per envelope marked "recovered" (its content digest is not on ar.ledger:
    any later envelope with that id is treated as a duplicate).

Then 'arledger verify' passes and 'arledger run' continues: new events chain
on from the head. Events the lost store held but the relay had not published
are not on ar.ledger and are not recovered. Read models: 'arledger rebuild'.
See docs/operations-backup.md, 'Recovering the store from ar.ledger'.

examples:
  ARLEDGER_STORE=sqlite:///srv/arledger/ledger.sqlite arledger recover-store --verify
  ARLEDGER_STORE=postgresql://arledger@db/arledger_new arledger recover-store --format json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("recover-store",
                                   help="rebuild a lost event store from ar.ledger, every hash checked",
                                   description="Rebuild the event store from ar.ledger into an empty store.",
                                   epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify", action="store_true",
                        help="run 'arledger verify --skip projection' on the recovered store afterwards")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    parser.set_defaults(handler=run_recover)


def run_recover(args: argparse.Namespace) -> int:
    from consumers.recover import RecoveryError, recover_store

    settings = Settings.from_env()
    try:
        with _Bar(enabled=not args.no_progress and sys.stderr.isatty()) as progress:
            result = recover_store(settings, progress=progress)
    except RecoveryError as error:
        print(f"arledger recover-store: {error}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(result.as_json()))
    else:
        print(f"recovered {result.positions} events of {result.customers} customers (positions 1..{result.positions}, "
              f"head {result.chain_head[:16]}…) and {result.receipts} receipts into {result.store}")
        print(f"  ar.ledger  {result.topic_records} records read, {result.duplicates} re-published duplicates skipped")
    if not args.verify:
        return 0
    import subprocess

    command = [sys.executable, "-m", "arledger.cli", "verify", "--skip", "projection", "--no-progress"]
    return subprocess.run(command).returncode


class _Bar:
    """A rich progress bar per stage on stderr, or nothing off a terminal."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self.progress: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> Any:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), console=Console(file=sys.stderr))
            self.progress.start()
        return self.update

    def update(self, stage: str, done: int, total: int | None) -> None:
        if self.progress is None:
            return
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total)
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()
