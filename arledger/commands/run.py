"""`arledger run [WORKER ...]`: the workers, all in one process by default."""

from __future__ import annotations

import argparse
import os

import structlog

from arledger import logs
from arledger.settings import Settings

RUN_HELP = """\
Workers:
  ingest   ar.inbound → ledger (event store); rejects → ar.rejected; decisions → ar.decisions
  relay    event store → ar.ledger, in recorded order, hash-chained
  project  ar.ledger → DuckDB read models; publishes a read-only snapshot every few seconds
  alerts   alerts on ar.alerts, from the projector's file (runs with project)

Stops gracefully on Ctrl-C or SIGTERM (finishes the batch in hand, publishes a
last snapshot). Nothing is lost when it is killed instead: every worker resumes
from its durable position.

examples:
  arledger run                         # every worker in this process
  arledger run ingest                  # one worker alone (run the others elsewhere)
  arledger run --workers 2             # 2 ingest processes, 1 relay, 2 projector shards
  arledger run project --shard 0/2     # one projector shard by hand
  arledger run --metrics-port 9400     # Prometheus /metrics, /health, /ready
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="run the workers (ingest, relay, project)",
                                   description="Run arledger's workers until stopped.", epilog=RUN_HELP,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workers", nargs="*", metavar="WORKER",
                        help="which workers to run: ingest, relay, project (default: all)")
    parser.add_argument("--log-level", default="info", help="debug, info, warning (default: info)")
    parser.add_argument("--workers", dest="processes", type=int, default=None, metavar="N",
                        help="run N ingest processes, one relay and N projector shards as child processes")
    parser.add_argument("--shard", metavar="I/N", default=None,
                        help="this projector folds the ar.ledger partitions p with p %% N == I into its own file")
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus /metrics and /health, /ready probes on this port (0: any free port)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from consumers.runner import WORKERS, Runner

    unknown = sorted(set(args.workers) - set(WORKERS))
    if unknown:
        raise SystemExit(f"arledger run: unknown worker(s) {', '.join(unknown)}; choose from {', '.join(WORKERS)}")
    if args.shard is not None:
        from arledger.settings import parse_shard

        try:
            parse_shard(args.shard)
        except ValueError as error:
            raise SystemExit(f"arledger run: {error}") from None
        os.environ["ARLEDGER_SHARD"] = args.shard
    logs.configure(args.log_level)
    if args.processes is not None:
        if args.processes < 1 or args.workers or args.shard:
            raise SystemExit("arledger run: --workers N (N >= 1) runs every worker kind; name no worker or shard")
        from consumers.supervisor import supervise

        return supervise(Settings.from_env(), args.processes, ["--log-level", args.log_level])
    settings = Settings.from_env()
    metrics = None
    if args.metrics_port is not None:
        from consumers.metrics import Metrics, serve

        metrics = Metrics()
        server = serve(metrics, args.metrics_port)
        structlog.get_logger("arledger.run").info("metrics_serving", port=server.server_port)
    Runner(settings, tuple(args.workers) or WORKERS, metrics=metrics).run()
    return 0
