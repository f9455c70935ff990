"""Auditors' commands: `arledger verify`, `replay`, `trace`, `export` (docs/auditors.md)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from arledger import output
from arledger.settings import Settings

VERIFY_HELP = """\
Checks, and names the first bad event (position, customer and version) with the reason:
  1. event store: every customer stream has versions 1..n without gaps, each
     prev_hash links to the previous event, each hash recomputes; every
     accepted envelope's receipt matches its events;
  2. global chain (stored by the relay): positions 1..N without gaps, each
     hash_global recomputed from the stored event;
  3. ar.ledger, all partitions: each position byte-identical to the store's record;
  4. the published snapshot: every table equal, row by row, to a fresh fold of
     the same events from the store (EXCEPT ALL both ways).
Exit status 0 when everything checks out, 1 when a problem was found, 2 when
verify could not run. After a clean run the chain head at every 10,000th
position is appended to $ARLEDGER_HOME/checkpoints.jsonl; keep a copy
elsewhere: --from-checkpoint trusts one and checks only what came after it.

examples:
  arledger verify
  arledger verify --format json > verify.json
  arledger verify --from-checkpoint                 # the latest recorded checkpoint
  arledger verify --from-checkpoint 20000:3f9a…     # a head you noted yourself
  ARLEDGER_STORE=sqlite:///copy.sqlite arledger verify --skip topic --snapshot copy.duckdb
"""

REPLAY_HELP = """\
Builds the read models exactly as they stood when the ledger had recorded
everything up to T (events recorded after T are left out) into a new DuckDB
file, from the event store; the live read models are not touched. With
--as-of it then prints the aging report as of that business date.

examples:
  arledger replay --known-at 2026-07-05 --as-of 2026-06-30 --out june-as-known-july5.duckdb
  arledger replay --known-at 2026-07-05T09:30:00Z --out audit.duckdb
  duckdb audit.duckdb "SELECT * FROM open_items WHERE customer_id = 'C0042'"
"""

TRACE_HELP = """\
Every ledger event behind one number, in ledger order, from the published
snapshot: envelope id, business date, recorded time, amount and both hashes
(re-checked: hashes_ok). An invoice's trail holds its sale and items, the
orders it closed, the cash and credit notes applied to it (with the payments
and credit notes themselves), reversals, disputes, dunning, promises and
write-offs. --customer alone lists the whole account.

examples:
  arledger trace --invoice INV-1001
  arledger trace --invoice INV-1001 --customer C0042 --format json
  arledger trace --payment PAY-77
  arledger trace --customer C0042 --format csv > c0042.csv
"""

EXPORT_HELP = """\
Writes the ledger records (exactly as published on ar.ledger, with both
hashes) of one contiguous range of positions: from the first event recorded
at or after --from to the last recorded at or before --to. Check it without
arledger installed:

  python3 tools/verify_export.py FILE

examples:
  arledger export --from 2026-07-01 --to 2026-07-31 --out july.jsonl
  arledger export --from 2026-01-01 --format parquet --out 2026.parquet
  arledger export --from-position 1 --to-position 10000 --out first-10k.jsonl
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_verify(subparsers)
    _register_replay(subparsers)
    _register_trace(subparsers)
    _register_export(subparsers)


def _parser(subparsers: argparse._SubParsersAction, name: str, help: str, description: str,
            epilog: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help, description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def _register_verify(subparsers: argparse._SubParsersAction) -> None:
    parser = _parser(subparsers, "verify", "prove nothing was altered: store, chains, ar.ledger, read models",
                     "Verify the event store, the hash chains, ar.ledger and the read models against each other.",
                     VERIFY_HELP)
    parser.add_argument("--from-checkpoint", nargs="?", const="latest", metavar="POSITION[:HASH]",
                        help="trust a checkpoint and check only what follows it (default: the latest recorded)")
    parser.add_argument("--checkpoints", type=Path, metavar="FILE",
                        help="checkpoint file (default: $ARLEDGER_HOME/checkpoints.jsonl)")
    parser.add_argument("--skip", action="append", choices=("topic", "projection"), default=[],
                        help="leave out a check (repeatable); the store and the chain are always checked")
    parser.add_argument("--store", metavar="URL", help="event store URL (default: $ARLEDGER_STORE)")
    parser.add_argument("--snapshot", type=Path, metavar="FILE",
                        help="read-model file to compare (default: the published snapshot)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default text)")
    parser.add_argument("--problems", type=int, default=20, metavar="N", help="problems listed in text (default 20)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars on stderr")
    parser.set_defaults(handler=run_verify)


def _register_replay(subparsers: argparse._SubParsersAction) -> None:
    parser = _parser(subparsers, "replay", "build the read models as known at a recorded instant, into a new file",
                     "Replay the ledger up to a recorded instant into a separate DuckDB file.", REPLAY_HELP)
    parser.add_argument("--known-at", required=True, help="ISO-8601 instant; a bare date means the end of that UTC day")
    parser.add_argument("--as-of", help="then print the aging report as of this business date")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE.duckdb", help="new file to write")
    parser.add_argument("--store", metavar="URL", help="event store URL (default: $ARLEDGER_STORE)")
    parser.add_argument("--format", choices=output.FORMATS, default="table", help="format of the --as-of report")
    parser.set_defaults(handler=run_replay)


def _register_trace(subparsers: argparse._SubParsersAction) -> None:
    parser = _parser(subparsers, "trace", "every event behind an invoice, a payment or a customer",
                     "The audit trail of one number, from the published snapshot.", TRACE_HELP)
    parser.add_argument("--invoice", metavar="INVOICE_ID")
    parser.add_argument("--payment", metavar="PAYMENT_ID")
    parser.add_argument("--customer", metavar="CUSTOMER_ID", help="alone: the whole account; with --invoice or "
                                                                  "--payment: narrows to that customer")
    parser.add_argument("--snapshot", type=Path, metavar="FILE", help="read-model file (default: the snapshot)")
    parser.add_argument("--format", choices=output.FORMATS, default="table", help="output format (default table)")
    parser.set_defaults(handler=run_trace)


def _register_export(subparsers: argparse._SubParsersAction) -> None:
    parser = _parser(subparsers, "export", "write ledger records with their hashes (JSONL or Parquet)",
                     "Export a contiguous range of the ledger, hashes included, for an auditor's own tools.",
                     EXPORT_HELP)
    parser.add_argument("--from", dest="recorded_from", metavar="T",
                        help="first recorded instant (ISO-8601; a bare date means the start of that UTC day)")
    parser.add_argument("--to", dest="recorded_to", metavar="T",
                        help="last recorded instant (ISO-8601; a bare date means the end of that UTC day)")
    parser.add_argument("--from-position", type=int, metavar="N", help="first position (default 1)")
    parser.add_argument("--to-position", type=int, metavar="N", help="last position (default: the chain's head)")
    parser.add_argument("--format", choices=("jsonl", "parquet"),
                        help="default: parquet for a .parquet file, else jsonl")
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="file to write (must not exist)")
    parser.add_argument("--store", metavar="URL", help="event store URL (default: $ARLEDGER_STORE)")
    parser.set_defaults(handler=run_export)


# -- Progress ------------------------------------------------------------------------------------

def _stderr_console():
    from rich.console import Console

    return Console(stderr=True)


class _RichProgress:
    """rich progress bars on stderr, one per verify stage."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def start(self, stage: str, total: int | None) -> None:
        self.tasks[stage] = self.progress.add_task(stage, total=total)

    def advance(self, stage: str, amount: int) -> None:
        if stage in self.tasks:
            self.progress.advance(self.tasks[stage], amount)


def _progress(enabled: bool):
    from contextlib import nullcontext

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if not enabled:
        return nullcontext(None)
    return Progress(TextColumn("{task.description:<14}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=_stderr_console(), transient=True)


# -- verify --------------------------------------------------------------------------------------

def _checkpoint(args: argparse.Namespace, path: Path):
    from consumers.audit import Checkpoint, read_checkpoints

    if args.from_checkpoint is None:
        return None
    if ":" in args.from_checkpoint:
        return Checkpoint.parse(args.from_checkpoint)
    recorded = read_checkpoints(path)
    if args.from_checkpoint == "latest":
        if not recorded:
            sys.exit(f"arledger verify: no checkpoint recorded in {path} yet: run a full 'arledger verify' first")
        return recorded[-1]
    wanted = int(args.from_checkpoint)
    for checkpoint in recorded:
        if checkpoint.position == wanted:
            return checkpoint
    sys.exit(f"arledger verify: no checkpoint at position {wanted} in {path}")


def run_verify(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from consumers.audit import append_checkpoints, verify

    settings = Settings.from_env()
    checkpoints_path = args.checkpoints or settings.home / "checkpoints.jsonl"
    checkpoint = _checkpoint(args, checkpoints_path)
    try:
        with _progress(not args.no_progress) as progress:
            report = verify(settings, store_url=args.store, snapshot_path=args.snapshot, checkpoint=checkpoint,
                            skip=frozenset(args.skip), progress=_RichProgress(progress) if progress else None)
    except FileNotFoundError as error:
        print(f"arledger verify: {error}", file=sys.stderr)
        return 2
    except (KafkaError, RuntimeError, TimeoutError) as error:
        print(f"arledger verify: cannot read ar.ledger from {settings.kafka_bootstrap}: {error} "
              f"(--skip topic verifies the store and the read models without Kafka)", file=sys.stderr)
        return 2
    new_checkpoints = append_checkpoints(checkpoints_path, report.checkpoints) if report.ok else 0
    if args.format == "json":
        body = report.to_json()
        body["checkpoints_recorded"] = new_checkpoints
        sys.stdout.write(json.dumps(body, default=str) + "\n")
    else:
        _print_verify(report, args.problems, new_checkpoints, checkpoints_path)
    return 0 if report.ok else 1


def _print_verify(report, problems_shown_max: int, new_checkpoints: int, checkpoints_path: Path) -> None:
    def line(text: str) -> None:
        sys.stdout.write(text + "\n")

    by_check: dict[str, int] = {}
    for problem in report.problems:
        by_check[problem.check] = by_check.get(problem.check, 0) + 1

    def status(*checks: str) -> str:
        found = sum(by_check.get(check, 0) for check in checks)
        return "ok" if found == 0 else f"{found} problem(s)"

    if report.from_checkpoint:
        line(f"from checkpoint: position {report.from_checkpoint.position}, hash {report.from_checkpoint.hash_global}"
             f" ({status('checkpoint')})")
    line(f"event store:   {report.events} events in {report.streams} customer streams, {report.receipts} receipts "
         f"({status('store', 'receipts')})")
    line(f"global chain:  positions 1..{report.chain_length}, {report.not_relayed} event(s) not relayed yet "
         f"({status('chain')})")
    if "topic" in report.checked:
        line(f"ar.ledger:     {report.topic_records} records, {report.topic_duplicates} re-published duplicate(s), "
             f"published up to position {report.published_position} ({status('topic')})")
    else:
        line("ar.ledger:     not checked")
    if "projection" in report.checked:
        line(f"read models:   {len(report.tables_compared)} tables against a fresh fold of {report.projected_events} "
             f"events ({status('projection')})")
    else:
        line("read models:   not checked")
    for note in report.notes[:5]:
        line(f"note: {note}")
    if report.ok:
        line(f"VERIFIED: head position {report.chain_length} hash_global {report.chain_head}")
        if new_checkpoints:
            line(f"recorded {new_checkpoints} new checkpoint(s) in {checkpoints_path}")
        return
    problems = report.sorted_problems()
    line(f"FAILED: {report.problems_total} problem(s); first bad: {problems[0].describe()}")
    for problem in problems[1:problems_shown_max]:
        line(f"  {problem.describe()}")
    if report.problems_total > min(problems_shown_max, len(problems)):
        line(f"  … and {report.problems_total - min(problems_shown_max, len(problems))} more (--problems N, "
             f"or --format json)")


# -- replay --------------------------------------------------------------------------------------

def run_replay(args: argparse.Namespace) -> int:
    from consumers.audit import HistoryBroken, replay
    from projections import reports, schema

    settings = Settings.from_env()
    known_at = output.parse_known_at(args.known_at)
    out = args.out.resolve()
    if out in (settings.projection_path.resolve(), settings.snapshot_path.resolve()):
        sys.exit("arledger replay: --out must be a new file, not the live read models")
    if out.exists():
        sys.exit(f"arledger replay: {out} exists: choose a new file")
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _progress(True) as progress:
            task = progress.add_task("replaying", total=None)
            result = replay(args.store or settings.store_url, known_at, out,
                            on_progress=lambda n: progress.advance(task, n),
                            on_total=lambda total: progress.update(task, total=total))
    except (HistoryBroken, FileNotFoundError) as error:
        out.unlink(missing_ok=True)
        sys.exit(f"arledger replay: {error}")
    print(f"replayed {result.events} events recorded by {result.known_at} into {out} "
          f"(last position {result.last_position}, hash_global {result.last_hash_global})", file=sys.stderr)
    if result.not_relayed:
        print(f"warning: {result.not_relayed} event(s) recorded by then are not relayed yet and are missing: "
              f"run the relay and replay again", file=sys.stderr)
    if args.as_of:
        connection = schema.connect(str(out), read_only=True)
        try:
            report = reports.aging(connection, output.parse_as_of(args.as_of), known_at)
        finally:
            connection.close()
        money = set(report["buckets"]) | {"open", "unapplied", "total"}
        output.emit(report, args.format, f"Aging as of {report['as_of']} as known at {report['known_at']}", money)
    return 0


# -- trace ---------------------------------------------------------------------------------------

def _hashes_ok(row: dict[str, Any]) -> bool:
    """Recompute both hashes of a ledger_events row (what an auditor's own tool would do)."""
    from ledger.application import format_instant
    from ledger.hashing import chain_hash, customer_hash_body
    from ledger.records import LedgerRecord, global_hash_body

    recorded_at = format_instant(row["recorded_at"])
    data = json.loads(row["data"])
    body = customer_hash_body(kind=row["kind"], customer_id=row["customer_id"], envelope_id=row["envelope_id"],
                              version=row["version"], recorded_at=recorded_at,
                              schema_version=row["schema_version"], data=data)
    if chain_hash(row["prev_hash_customer"], body) != row["hash_customer"]:
        return False
    record = LedgerRecord(position=row["position"], notification_id=row["notification_id"],
                          customer_id=row["customer_id"], version=row["version"], kind=row["kind"],
                          envelope_id=row["envelope_id"], recorded_at=recorded_at,
                          schema_version=row["schema_version"], data=data,
                          prev_hash_customer=row["prev_hash_customer"], hash_customer=row["hash_customer"],
                          prev_hash_global=row["prev_hash_global"], hash_global=row["hash_global"])
    return chain_hash(record.prev_hash_global, global_hash_body(record)) == record.hash_global


def run_trace(args: argparse.Namespace) -> int:
    from arledger.commands.report import open_read_model
    from projections import audit, schema

    if not (args.invoice or args.payment or args.customer):
        sys.exit("arledger trace: give --invoice, --payment or --customer")
    if args.invoice and args.payment:
        sys.exit("arledger trace: give --invoice or --payment, not both")
    settings = Settings.from_env()
    connection = (schema.connect(str(args.snapshot), read_only=True) if args.snapshot
                  else open_read_model(settings))
    try:
        rows = audit.trace(connection, invoice_id=args.invoice, payment_id=args.payment, customer_id=args.customer)
    finally:
        connection.close()
    subject = (f"invoice {args.invoice}" if args.invoice else f"payment {args.payment}" if args.payment
               else f"customer {args.customer}")
    if not rows:
        print(f"arledger trace: no ledger event for {subject}", file=sys.stderr)
        return 1
    for row in rows:
        row["hashes_ok"] = _hashes_ok(row)
        row["recorded_at"] = row["recorded_at"].astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
    if args.format == "table":
        shown = [{"position": r["position"], "customer": r["customer_id"], "v": r["version"], "kind": r["kind"],
                  "envelope_id": r["envelope_id"], "business_date": r["business_date"],
                  "recorded_at": r["recorded_at"], "amount": r["amount"], "invoice": r["invoice_id"],
                  "ref": r["reference"], "hash_global": r["hash_global"][:16] + "…",
                  "ok": "✓" if r["hashes_ok"] else "✗"} for r in rows]
        output.print_table(f"Trace of {subject}: {len(rows)} events", shown, {"amount"})
        if not all(row["hashes_ok"] for row in rows):
            print("some hashes do not recompute: run 'arledger verify'", file=sys.stderr)
    elif args.format == "json":
        for row in rows:
            row["data"] = json.loads(row["data"])
        sys.stdout.write(output.to_json({"subject": subject, "rows": rows}) + "\n")
    else:
        sys.stdout.write(output.to_csv(rows))
    return 0 if all(row["hashes_ok"] for row in rows) else 1


# -- export --------------------------------------------------------------------------------------

def _parse_from(text: str | None) -> dt.datetime | None:
    """--from: an ISO-8601 instant, or a bare date meaning the start of that UTC day."""
    if not text:
        return None
    if len(text) == 10:
        return dt.datetime.combine(dt.date.fromisoformat(text), dt.time.min, tzinfo=dt.UTC)
    return output.parse_known_at(text)


def run_export(args: argparse.Namespace) -> int:
    from consumers.audit import HistoryBroken, export

    settings = Settings.from_env()
    fmt = args.format or ("parquet" if args.out.suffix == ".parquet" else "jsonl")
    if args.out.exists():
        sys.exit(f"arledger export: {args.out} exists: choose a new file")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _progress(True) as progress:
            task = progress.add_task("exporting", total=None)
            result = export(args.store or settings.store_url, args.out, fmt,
                            recorded_from=_parse_from(args.recorded_from),
                            recorded_to=output.parse_known_at(args.recorded_to),
                            first_position=args.from_position, last_position=args.to_position,
                            on_progress=lambda n: progress.advance(task, n),
                            on_total=lambda total: progress.update(task, total=total))
    except (HistoryBroken, FileNotFoundError) as error:
        args.out.unlink(missing_ok=True)
        sys.exit(f"arledger export: {error}")
    if result.records == 0:
        print(f"exported 0 records to {args.out}: nothing recorded in that range", file=sys.stderr)
        return 0
    print(f"exported {result.records} records, positions {result.first_position}..{result.last_position}, "
          f"to {args.out} ({fmt})", file=sys.stderr)
    print(f"anchor (prev_hash_global of the first): {result.anchor}", file=sys.stderr)
    print(f"head (hash_global of the last):         {result.head}", file=sys.stderr)
    print(f"check it: python3 tools/verify_export.py {args.out} --anchor {result.anchor} --head {result.head}",
          file=sys.stderr)
    return 0
