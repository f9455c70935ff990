"""`arledger demo`: a year of a company's receivables through the whole product, with reports and charts."""

from __future__ import annotations

import argparse
import sys

DEMO_HELP = """\
What it does, in order: starts the local Kafka broker if it is not running,
creates the topics, generates a year of inbound facts for a simulated company
(about 500 customers, ending today), starts the workers, publishes the facts
to ar.inbound with progress bars, waits until each record has an outcome and
the read models show it, stops the workers, then prints the aging summary,
the top exposures and breaches, today's collections worklist, last month's
KPIs and the allowance. It writes PNG charts and one self-contained HTML
report under $ARLEDGER_HOME/reports/ and leaves nothing running that it
started (a broker that was already running stays up).

The demo owns the ledger of its ARLEDGER_HOME: run again, it wipes its earlier
run (ledger, read models, topics) and starts over. It refuses a home with a
ledger it did not make unless --reset is given.

examples:
  arledger demo
  ARLEDGER_HOME=/tmp/ar-demo ARLEDGER_BROKER_PORT=19092 arledger demo
  arledger demo --customers 50 --months 3      # a smaller company: done in seconds
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    from arledger.demo import DEFAULT_CUSTOMERS, DEFAULT_MONTHS, DEFAULT_SEED, WAIT_TIMEOUT_S

    parser = subparsers.add_parser("demo", help="run a simulated company's year through arledger; reports and charts",
                                   description="The whole product on a realistic workload, end to end.",
                                   epilog=DEMO_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=_positive_int, default=DEFAULT_CUSTOMERS, metavar="N",
                        help=f"customers of the simulated company (default {DEFAULT_CUSTOMERS})")
    parser.add_argument("--months", type=_positive_int, default=DEFAULT_MONTHS, metavar="M",
                        help=f"months of history, ending today (default {DEFAULT_MONTHS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, metavar="S",
                        help=f"random seed of the workload (default {DEFAULT_SEED})")
    parser.add_argument("--reset", action="store_true",
                        help="wipe a ledger in ARLEDGER_HOME that the demo did not make (and its topics)")
    parser.add_argument("--timeout", type=float, default=WAIT_TIMEOUT_S, metavar="SECONDS",
                        help=f"give up waiting for the workers after this long (default {WAIT_TIMEOUT_S:.0f})")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from kafka.errors import KafkaError

    from arledger import demo
    from arledger.settings import Settings
    from consumers.broker import BrokerError
    from consumers.publisher import WaitTimeout

    console = Console(width=None if sys.stdout.isatty() else 200)
    progress_console = Console(stderr=True)
    options = demo.DemoOptions(customers=args.customers, months=args.months, seed=args.seed, reset=args.reset,
                               timeout_s=args.timeout)
    try:
        result = demo.run(Settings.from_env(), options, console, progress_console)
    except (demo.DemoError, BrokerError, WaitTimeout) as error:
        print(f"arledger demo: {error}", file=sys.stderr)
        return 1
    except KafkaError as error:
        print(f"arledger demo: Kafka error: {error!r} (is the cluster at ARLEDGER_KAFKA reachable?)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("arledger demo: interrupted (everything it started is stopped)", file=sys.stderr)
        return 130
    seconds = result.seconds
    console.print(f"\ndemo finished in {seconds['total']:.0f} s (broker and topics {seconds.get('start', 0):.0f} s, "
                  f"generate {seconds.get('generate', 0):.0f} s, "
                  f"publish {seconds.get('publish', 0):.0f} s, ledger and read models "
                  f"{seconds.get('process', 0):.0f} s, reports and charts {seconds.get('reports', 0):.0f} s)")
    _print_workspace(console, Settings.from_env())
    return 0


def _print_workspace(console, settings) -> None:
    """The web workspace's address and the demo users (fresh passwords each run)."""
    from arledger.web.auth import seed_demo_users

    users = seed_demo_users(settings.home)
    console.print("\n[bold]Web workspace[/bold]: run [bold]arledger serve[/bold] (and [bold]arledger run[/bold] "
                  "beside it, so that actions are processed), then open http://127.0.0.1:8080/")
    for name, (role, password) in users.items():
        console.print(f"  {name:<16} {role:<11} password {password}")
    console.print(f"  (saved in {settings.home / 'demo' / 'web-users.txt'}; "
                  "API tokens: arledger token create NAME --role ROLE)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value
