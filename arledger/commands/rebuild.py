"""`arledger rebuild [--from-store] [--check]`: rebuild the read models without downtime, or check them."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from arledger import logs, output
from arledger.settings import Settings

REBUILD_HELP = """\
A rebuild folds every event again into a new DuckDB file next to the live one
(projections.rebuilding.duckdb), catches up with ar.ledger's end, then swaps
the new file in atomically. The old file keeps serving meanwhile: a running
projector ('arledger run') adopts the new file between two batches and
continues from the offsets stored in it; with no projector running, the
rebuild installs the file itself and publishes a fresh snapshot.

--from-store reads the event store (the system of record) instead of
ar.ledger: records are re-made exactly as the relay published them, with the
global hashes the relay stored. Its Kafka offsets are ar.ledger's end offsets
read before the store, so the projector resumes without loss or double count.

--check rebuilds aside to the live file's own cut (its stored offsets) and
compares every table row by row (EXCEPT ALL both ways); exit status 1 when
anything differs. The live file is left alone.

exit status: 0 done (or identical), 1 differences found, 2 error,
3 the rebuilt file is ready but nobody adopted it in time (a projector that
starts later will).

examples:
  arledger rebuild
  arledger rebuild --from-store --format json
  arledger rebuild --check
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rebuild", help="rebuild the read models from ar.ledger (or the store), or --check",
                                   description="Rebuild every projection into a new file and swap it in "
                                               "without stopping readers or the projector.",
                                   epilog=REBUILD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-store", action="store_true", help="read the event store instead of ar.ledger")
    parser.add_argument("--check", action="store_true",
                        help="rebuild aside and report row-level differences from the live tables; swap nothing")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default: table)")
    parser.add_argument("--timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait for a running projector to adopt the new file (default 120)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--log-level", default="warning", help="debug, info, warning (default: warning)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from consumers import rebuild as rb

    logs.configure(args.log_level)
    settings = Settings.from_env()
    source = "the event store" if args.from_store else "ar.ledger"
    try:
        with _progress_bar(f"{'checking' if args.check else 'rebuilding'} from {source}",
                           enabled=not args.no_progress and sys.stderr.isatty()) as progress:
            if args.check:
                result = rb.check(settings, from_store=args.from_store, progress=progress)
            else:
                result = rb.rebuild(settings, from_store=args.from_store, progress=progress, timeout_s=args.timeout)
    except rb.RebuildError as error:
        print(f"arledger rebuild: {error}", file=sys.stderr)
        return 2
    if args.check:
        return _report_check(result, args.format)
    return _report_rebuild(result, args.format, settings)


class _progress_bar:
    """A rich progress bar on stderr (events, events/s, ETA), or nothing off a terminal."""

    def __init__(self, description: str, *, enabled: bool) -> None:
        self.description, self.enabled = description, enabled
        self.progress: Any = None
        self.task: Any = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("events"), TextColumn("{task.fields[rate]}"), TextColumn("ETA"),
                                 TimeRemainingColumn(), TimeElapsedColumn(), console=Console(file=sys.stderr))
        self.progress.start()
        self.task = self.progress.add_task(self.description, total=None, rate="")
        return self.update

    def update(self, done: int, total: int) -> None:
        elapsed = self.progress.tasks[0].elapsed or 0.0
        rate = f"{done / elapsed:,.0f} ev/s" if elapsed > 0 else ""
        self.progress.update(self.task, completed=done, total=max(total, done), rate=rate)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _report_rebuild(result, fmt: str, settings: Settings) -> int:
    from consumers.rebuild import rebuilt_path

    outcome = {
        "installed": "installed (no projector was running) and a fresh snapshot published",
        "adopted": "adopted by the running projector, which continues from the new file's offsets",
        "pending": f"ready as {rebuilt_path(settings.projection_path).name} but not adopted in time: "
                   "a projector adopts it when it next runs (or retry)",
    }[result.handed_over]
    if fmt == "json":
        sys.stdout.write(output.to_json(result.as_json()) + "\n")
    else:
        stats = result.stats
        source = "the event store" if result.source == "store" else "ar.ledger"
        print(f"Rebuilt {stats.records:,} events from {source} in {result.seconds:.2f} s "
              f"({result.events_per_s:,.0f} events/s); caught up {result.catch_up.records:,} more from ar.ledger.")
        print(f"The new file holds {result.events:,} events (last position {result.max_position}); "
              f"offsets {dict(sorted(result.offsets.items()))}.")
        print(f"Swap: {outcome}.")
    return 3 if result.handed_over == "pending" else 0


def _report_check(result, fmt: str) -> int:
    differences = result.differences
    if fmt == "json":
        report = {"live": result.live, "identical": not differences, "notes": result.notes,
                  "events": result.rebuild.events, "source": result.rebuild.source,
                  "tables": {t.table: {"only_live": t.only_live, "only_rebuilt": t.only_rebuilt,
                                       "live_samples": t.live_samples, "rebuilt_samples": t.rebuilt_samples}
                             for t in result.tables}}
        sys.stdout.write(output.to_json(report) + "\n")
        return 1 if differences else 0
    source = "the event store" if result.rebuild.source == "store" else "ar.ledger"
    print(f"Compared the live {result.live} file with a rebuild of {result.rebuild.events:,} events from {source}.")
    for note in result.notes:
        print(f"note: {note}")
    for table in result.tables:
        if not (table.only_live or table.only_rebuilt):
            print(f"  {table.table}: identical")
            continue
        print(f"  {table.table}: {table.only_live} row(s) only in the live file, "
              f"{table.only_rebuilt} only in the rebuild")
        for row in table.live_samples:
            print(f"    live:    {output.to_json(row)}")
        for row in table.rebuilt_samples:
            print(f"    rebuilt: {output.to_json(row)}")
    print("DIFFERENCES FOUND" if differences else "Identical: every table matches row for row.")
    return 1 if differences else 0
