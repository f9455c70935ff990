"""`arledger bench`: throughput and latency of every stage, with baselines measured in the same run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from arledger.settings import REPO_ROOT

BENCH_HELP = """\
Stages, each as an absolute figure and as a ratio to its baseline measured in
the same run on the same broker:
  ingest     inbound records/s through the ledger (Ledger.process_batch, batches
             of 2,000, SQLite) vs the event store's raw append rate at the same
             batch size; and through Kafka with the ingest worker
  relay      ledger events/s from the event store to ar.ledger vs kafka-python
             producing the very same records (same producer settings)
  project    events/s of the set-based fold (50,000-event batches) and of the
             projector on Kafka vs the raw kafka-python consume rate of the same
             topic and Kafka's own ConsumerPerformance tool; a naive row-by-row
             projector (one SQL round trip per event) for contrast
  rebuild    events/s of 'arledger rebuild' over at least --rebuild-events
  latency    end-to-end p50/p99 (inbound produced -> in customer_balances) at a
             fixed offered rate
  workers    ingest and projector throughput of 'arledger run --workers N' for
             N = 1, 2, 4 on 12 partitions (--worker-counts), each vs N = 1
  store      Ledger.process_batch records/s on PostgreSQL (a throwaway local
             server; skipped without its binaries) vs SQLite, same records
  decisions  credit-decision latency p50/p99 (order.placed produced -> decision
             consumed) at 200 orders/s with 2,000 other events/s
  aging      aging report latency at 10k / 100k / 1M open items
  sustained  the default 'arledger run' at stepped offered rates (2,000/s up to
             --sustained-rates): the highest with end-to-end p99 < 1 s, and
             the p99 at 2,000 records/s
  web        server time p50/p99 of each page and API call of 'arledger serve' on the
             workload's read model and on 50,000 customers (targets: pages < 200 ms,
             credit check < 50 ms)
Machine facts (cores, versions, load) are recorded beside the figures. A
missed target names its shortfall and the top of a profile of that stage.

It starts the local broker if needed (and stops it again), works on topics of
its own (prefix bench-<time>., deleted at the end) under ARLEDGER_HOME/bench,
and never touches the home's ledger or read models.

examples:
  arledger bench                          # the default sizes: several minutes on 2 cores
  arledger bench --quick                  # seconds: a smoke run for CI (figures meaningless)
  arledger bench --customers 2000 --rebuild-events 2000000 --out /tmp/b.json
  arledger bench --only workers,store,decisions   # some stages only
  arledger bench --markdown bench/results/latest.json   # print the Performance section of a results file
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("bench", help="measure every stage against same-run baselines; JSON + table",
                                   description="Benchmark arledger's stages with baselines.",
                                   epilog=BENCH_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run (CI)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "latest.json",
                        metavar="FILE.json", help="where to write the results (default bench/results/latest.json)")
    parser.add_argument("--customers", type=int, metavar="N", help="customers of the generated workload")
    parser.add_argument("--months", type=int, metavar="M", help="months of the generated workload")
    parser.add_argument("--rebuild-events", type=int, metavar="N",
                        help="events on the rebuild topic (the real ones, replicated under other customer ids)")
    parser.add_argument("--latency-seconds", type=float, metavar="S", help="how long to offer load for the latency")
    parser.add_argument("--latency-rate", type=int, metavar="R", help="offered inbound records/s for the latency")
    parser.add_argument("--aging-items", metavar="N,N,...", help="open-item counts for the aging latency")
    parser.add_argument("--worker-counts", metavar="N,N,...",
                        help="worker process counts of the workers stage, the first being the baseline (default 1,2,4)")
    parser.add_argument("--decision-seconds", type=float, metavar="S",
                        help="how long to offer orders and other events for the decision latency (default 20)")
    parser.add_argument("--only", metavar="STAGE,...",
                        help="run only these stages: ingest, relay, project, rebuild, latency, workers, store, "
                             "decisions, aging, sustained, web (baselines included)")
    parser.add_argument("--sustained-rates", metavar="R,R,...", default=None,
                        help="offered records/s the sustained stage steps through, lowest first, stopping at "
                             "the first whose end-to-end p99 is 1 s or more (default 2000,4000,6000,8000,10000,12000)")
    parser.add_argument("--sustained-seconds", type=float, default=None, metavar="S",
                        help="how long each step of the sustained stage offers its rate (default 10)")
    parser.add_argument("--no-profile", action="store_true", help="do not profile stages that miss their target")
    parser.add_argument("--markdown", type=Path, metavar="FILE.json",
                        help="print the 'Performance' section (docs/performance.md) of a results file and exit")
    parser.add_argument("--update-readme", action="store_true",
                        help="also rewrite the Performance section of docs/performance.md from the results")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if not (REPO_ROOT / "bench" / "harness.py").exists():
        sys.exit("arledger bench: the bench/ folder of the source tree is missing (run it from a clone)")
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # bench/ is a tool of the source tree, not an installed package
    from bench import harness

    return harness.main(args)
