"""`arledger generate`: write a realistic workload of inbound envelopes to a JSONL file."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

GENERATE_EPILOG = """\
The file holds the inbound facts (docs/contract.md §3) of a simulated company, one JSON
envelope per line, in non-decreasing business time, ready for 'arledger
ingest': customers registered with limits, terms, grades and salespeople;
orders (approved, blocked, released, cancelled) and sales with and without
installments; payments on time, late, partial, over, allocated and not;
bounced payments; credit notes; disputes; dunning actions, promises kept and
broken; holds, limit and grade changes; insolvencies and write-offs of old
debt. Payment behaviour depends on the grade (A pays early or on time, D
late or not at all) and sales follow the seasons.

About --bad-share of the lines are bad on purpose, spread over time: each of
the reason codes invalid_json, invalid_envelope, invalid_field, unknown_type,
invalid_amount, unknown_customer, unknown_invoice, currency_mismatch and
duplicate_conflict, plus exact re-sends (duplicates: no-ops, not rejects).
Bad lines never change the outcome of a later good one.

The same arguments always give the same bytes. Memory stays flat: the lines
are streamed (500 customers x 12 months is about 45,000 lines, 12 MB, in
about a second; 10 million lines take a few minutes).

examples:
  arledger generate --customers 500 --months 12 --seed 1 --out facts.jsonl
  arledger generate --customers 20 --months 2 --seed 7 --bad-share 0 --out small.jsonl
  arledger generate --customers 50000 --months 24 --seed 3 --start 2024-01-01 --out big.jsonl --json
  arledger generate --customers 500 --months 12 --seed 1 --out facts.jsonl && arledger ingest facts.jsonl --wait
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `generate` command."""
    parser = subparsers.add_parser(
        "generate",
        help="write a realistic workload of inbound envelopes (JSONL) for a simulated company",
        description="Generate a deterministic, realistic accounts-receivable history as inbound envelopes.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=GENERATE_EPILOG,
    )
    parser.add_argument("--customers", type=_positive_int, default=500, metavar="N",
                        help="number of customers (default 500; about 8%% register later in the period)")
    parser.add_argument("--months", type=_positive_int, default=12, metavar="M",
                        help="length of the history in months (default 12)")
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed (default 1)")
    parser.add_argument("--start", type=_date, default=dt.date(2025, 1, 1), metavar="YYYY-MM-DD",
                        help="first business day of the history (default 2025-01-01)")
    parser.add_argument("--bad-share", type=_share, default=0.01, metavar="F",
                        help="share of bad lines, 0 to 0.5 (default 0.01)")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.jsonl", help="file to write (replaced)")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn

    from arledger.generate import write_jsonl

    if args.out.parent and not args.out.parent.exists():
        sys.exit(f"arledger: no such directory: {args.out.parent}")
    started = time.monotonic()
    with Progress(TextColumn("generating {task.description}"), BarColumn(), TaskProgressColumn(),
                  TimeRemainingColumn(), console=_stderr_console(), disable=args.quiet) as progress:
        task = progress.add_task(args.start.isoformat(), total=None)

        def on_day(days_done: int, days_total: int) -> None:
            day = args.start + dt.timedelta(days=days_done - 1)
            progress.update(task, completed=days_done, total=days_total, description=day.isoformat())

        counts = write_jsonl(args.out, args.customers, args.months, args.seed, args.start, args.bad_share, on_day)
    seconds = time.monotonic() - started
    if args.json:
        print(json.dumps({"file": str(args.out), "seconds": round(seconds, 3), **counts}))
    else:
        _print_counts(args.out, counts, seconds)
    return 0


def _print_counts(path: Path, counts: dict, seconds: float) -> None:
    width = max(len(name) for name in [*counts["by_type"], *counts["bad"], "total"])
    print(f"wrote {counts['lines']:,} lines ({counts['bytes'] / 1e6:,.1f} MB) to {path} in {seconds:.1f} s")
    print("good lines by type:")
    for name, count in counts["by_type"].items():
        print(f"  {name:<{width}} {count:>10,}")
    print(f"  {'total':<{width}} {counts['good']:>10,}")
    bad_total = counts["lines"] - counts["good"]
    share = bad_total / counts["lines"] if counts["lines"] else 0.0
    print(f"bad lines by reason ({share:.2%}; 'duplicate' is an exact re-send, a no-op):")
    for name, count in counts["bad"].items():
        print(f"  {name:<{width}} {count:>10,}")
    print(f"  {'total':<{width}} {bad_total:>10,}")


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 0.5:
        raise argparse.ArgumentTypeError(f"must be between 0 and 0.5, got {value}")
    return value


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None
