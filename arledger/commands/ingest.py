"""`arledger ingest FILE.jsonl`: publish inbound envelopes to ar.inbound as an upstream system would."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arledger.settings import TOPIC_REJECTED, Settings

INGEST_HELP = """\
Each line of FILE is one inbound envelope (docs/contract.md §3); it is sent to
ar.inbound keyed by its customer_id. With --wait the command returns only
when every record has an outcome (accepted, rejected or duplicate) and every
accepted one is visible to 'arledger report'; it prints the counts.

examples:
  arledger ingest facts.jsonl
  arledger ingest facts.jsonl --wait
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("ingest", help="publish a JSONL file of inbound envelopes to ar.inbound",
                                   description="Publish inbound envelopes to Kafka.", epilog=INGEST_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, help="newline-delimited JSON envelopes")
    parser.add_argument("--wait", action="store_true", help="wait for every outcome and for the projection")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait at most (default 900)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from consumers import publisher
    from consumers.topics import ensure_topics

    settings = Settings.from_env()
    if not args.file.exists():
        sys.exit(f"arledger: no such file: {args.file}")
    ensure_topics(settings)
    total = sum(1 for _ in publisher.read_lines(args.file))
    rejected_start = publisher.end_offsets(settings, settings.topic(TOPIC_REJECTED))
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=False, console=_stderr_console()) as progress:
        task = progress.add_task("publishing", total=total)
        published = publisher.publish_lines(settings, publisher.read_lines(args.file),
                                            lambda n: progress.advance(task, n))
    print(f"published {len(published)} records to {settings.topic('ar.inbound')}", file=sys.stderr)
    if not args.wait:
        return 0
    try:
        counts = publisher.wait_for_outcomes(
            settings, published, rejected_start, args.timeout,
            on_stage=lambda stage: print(f"waiting: {stage}", file=sys.stderr))
    except publisher.WaitTimeout as timeout:
        sys.exit(f"arledger: {timeout}")
    print(f"accepted {counts['accepted']}  rejected {counts['rejected']}  duplicate {counts['duplicate']}")
    reasons = sorted((key.split(":", 1)[1], value) for key, value in counts.items() if key.startswith("rejected:"))
    for reason, count in reasons:
        print(f"  rejected {reason}: {count}")
    return 0


def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)
