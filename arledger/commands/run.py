"""`arledger run [WORKER ...]`: the workers, all in one process by default."""

from __future__ import annotations

import argparse

import structlog

from arledger import logs
from arledger.settings import Settings

RUN_HELP = """\
Workers:
  ingest   ar.inbound → ledger (event store); rejects → ar.rejected; decisions → ar.decisions
  relay    event store → ar.ledger, in recorded order, hash-chained
  project  ar.ledger → DuckDB read models; publishes a read-only snapshot every few seconds

Stops gracefully on Ctrl-C or SIGTERM (finishes the batch in hand, publishes a
last snapshot). Nothing is lost when it is killed instead: every worker resumes
from its durable position.

examples:
  arledger run                 # all three workers in this process
  arledger run ingest          # one worker alone (run the others elsewhere)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the workers (ingest, relay, project)",
                                   description="Run arledger's workers until stopped.", epilog=RUN_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workers", nargs="*", metavar="WORKER",
                        help="which workers to run: ingest, relay, project (default: all)")
    parser.add_argument("--log-level", default="info", help="debug, info, warning (default: info)")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus /metrics and /health, /ready probes on this port (0: any free port)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from consumers.runner import WORKERS, Runner

    unknown = sorted(set(args.workers) - set(WORKERS))
    if unknown:
        raise SystemExit(f"arledger run: unknown worker(s) {', '.join(unknown)}; choose from {', '.join(WORKERS)}")
    logs.configure(args.log_level)
    settings = Settings.from_env()
    metrics = None
    if args.metrics_port is not None:
        from consumers.metrics import Metrics, serve

        metrics = Metrics()
        server = serve(metrics, args.metrics_port)
        structlog.get_logger("arledger.run").info("metrics_serving", port=server.server_port)
    Runner(settings, tuple(args.workers) or WORKERS, metrics=metrics).run()
    return 0
