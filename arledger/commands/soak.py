"""`arledger soak`: sustained load with random worker kills and a broker restart, then every invariant checked."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from arledger.settings import REPO_ROOT

SOAK_HELP = """\
Offers a generated workload ('arledger generate', about 3 % bad records) at a
steady rate to ar.inbound through 'arledger run --workers N' while:
  - a random worker process (a child of the 'run' process) is killed with
    SIGKILL every few seconds (--kill-every; the supervisor restarts it);
  - the broker is stopped and started again halfway through (--cluster: three
    local brokers, replication 3, min ISR 2, and one of them is stopped and
    brought back).
It starts its own broker(s) on free ports (and, with --store postgresql, a
throwaway PostgreSQL server from the system's binaries) under a folder of its
own, and stops them at the end. Then it checks, and prints as figures:
  - every offered record has exactly one outcome (accepted, rejected with one
    reason, or duplicate), the same as in a clean run of the same input;
  - ar.ledger holds positions 1..N with no gap and no two different records at
    one position; the read model holds each position once;
  - 'arledger verify' passes; the roll-forward identity holds;
  - every report equals the clean run's;
and reports the records offered, kills, restarts, the longest ingest lag and
the recovery time per fault (p50/p99/max: from the fault until everything
offered before it has an outcome and is in the read model's snapshot).
Exit status 0 when every check passed, 1 otherwise (the folder is kept).

examples:
  arledger soak --minutes 2                       # what the test suite runs (SQLite)
  arledger soak --minutes 2 --store postgresql
  arledger soak --minutes 10 --cluster --rate 60
  arledger soak --minutes 60 --out soak-60.json   # the figures of the README
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("soak", help="sustained load with random worker kills and broker restarts; checks",
                                   description="Soak test: load, faults, then every invariant checked.",
                                   epilog=SOAK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=2.0, metavar="M", help="minutes of load (default 2)")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite",
                        help="event store (default sqlite)")
    parser.add_argument("--cluster", action="store_true", help="three local brokers instead of one")
    parser.add_argument("--rate", type=int, default=40, metavar="R", help="offered inbound records/s (default 40)")
    parser.add_argument("--kill-every", type=float, default=6.0, metavar="S",
                        help="seconds between worker kills, on average (default 6)")
    parser.add_argument("--workers", type=int, default=2, metavar="N", help="run --workers N (default 2)")
    parser.add_argument("--seed", type=int, default=17, help="workload and fault seed (default 17)")
    parser.add_argument("--dir", type=Path, metavar="FOLDER", help="work folder (default: a new temporary one, "
                                                                  "removed after a passing soak)")
    parser.add_argument("--out", type=Path, metavar="FILE.json",
                        default=REPO_ROOT / "bench" / "results" / "soak-latest.json",
                        help="results as JSON (default bench/results/soak-latest.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not (REPO_ROOT / "bench" / "soak.py").exists():
        sys.exit("arledger soak: the bench/ folder of the source tree is missing (run it from a clone)")
    if args.minutes <= 0 or args.rate < 1 or args.workers < 1 or args.kill_every <= 0:
        sys.exit("arledger soak: --minutes, --rate, --workers and --kill-every must be positive")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # bench/ is a tool of the source tree, not an installed package
    from bench.soak import SoakOptions, soak, summary

    def progress(text: str) -> None:
        print(f"{dt.datetime.now(dt.UTC):%H:%M:%S} {text}", file=sys.stderr, flush=True)

    results = soak(SoakOptions(minutes=args.minutes, store=args.store, cluster=args.cluster, rate=args.rate,
                               kill_every_s=args.kill_every, workers=args.workers, seed=args.seed, folder=args.dir,
                               out=args.out, keep=args.keep, progress=None if args.quiet else progress))
    print(summary(results))
    if args.out:
        print(f"results: {args.out}")
    if results.get("folder"):
        print(f"work folder kept: {results['folder']}")
    return 0 if results["ok"] else 1
