"""`arledger broker start|stop|status` and `arledger topics ensure`."""

from __future__ import annotations

import argparse
import json
import sys

from arledger.settings import BROKER_START_TIMEOUT_S, BROKER_STOP_TIMEOUT_S, Settings

# Exit codes of `broker status`, as LSB init scripts use them, so scripts can test them.
STATUS_EXIT_RUNNING = 0
STATUS_EXIT_NOT_ANSWERING = 1
STATUS_EXIT_STOPPED = 3

BROKER_EPILOG = """\
The broker is a single-node Apache Kafka 4.1 (KRaft, broker and controller in
one JVM) listening on 127.0.0.1:$ARLEDGER_BROKER_PORT (default 9092; the
controller uses the next port). Its data, logs and PID file live under
$ARLEDGER_HOME/kafka (default ~/.arledger/kafka). The jars come from
`make jars` (deploy/kafka/lib, or $ARLEDGER_KAFKA_LIB).

examples:
  arledger broker start                       # start (no-op if already running)
  arledger broker status                      # running? answering? pid, port
  ARLEDGER_BROKER_PORT=19092 arledger broker start
  arledger broker stop
"""

START_EPILOG = """\
Formats the storage on the first start, then starts the JVM detached and waits
until the broker answers a metadata request. If the broker recorded in the PID
file is already running, says so and does nothing.

example:
  ARLEDGER_HOME=/tmp/ar arledger broker start && arledger topics ensure
"""

STOP_EPILOG = """\
Sends SIGTERM to the recorded broker and waits for a clean shutdown; sends
SIGKILL after --timeout seconds. Doing nothing when no broker runs is success.

example:
  arledger broker stop --timeout 10
"""

STATUS_EPILOG = """\
exit status: 0 running and answering, 1 running but not answering (starting or
hung), 3 not running.

example:
  arledger broker status --json
"""

TOPICS_EPILOG = """\
Creates whichever of the five topics are missing (ar.inbound, ar.ledger,
ar.rejected, ar.decisions, ar.alerts, each behind $ARLEDGER_TOPIC_PREFIX) on
$ARLEDGER_KAFKA (default the local broker), with $ARLEDGER_PARTITIONS
partitions (default 6) and $ARLEDGER_REPLICATION_FACTOR replicas (default 1).
ar.ledger keeps its history forever (retention.ms=-1, retention.bytes=-1).
Topics that already exist are left as they are.

examples:
  arledger topics ensure
  ARLEDGER_KAFKA=kafka1:9092,kafka2:9092 ARLEDGER_REPLICATION_FACTOR=3 arledger topics ensure
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `broker` and `topics` commands."""
    broker = subparsers.add_parser(
        "broker",
        help="start, stop or inspect the local Apache Kafka broker",
        description="Manage the local single-node Apache Kafka broker that arledger runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=BROKER_EPILOG,
    )
    broker.set_defaults(handler=lambda args: _print_help(broker))
    actions = broker.add_subparsers(dest="broker_command", metavar="ACTION")

    start = actions.add_parser(
        "start",
        help="start the broker (no-op if running) and wait until it answers",
        description="Start the local Kafka broker and wait until it answers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=START_EPILOG,
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=BROKER_START_TIMEOUT_S,
        metavar="SECONDS",
        help=f"give up if the broker does not answer within this time (default {BROKER_START_TIMEOUT_S:.0f})",
    )
    start.set_defaults(handler=_start)

    stop = actions.add_parser(
        "stop",
        help="stop the broker (SIGTERM, then SIGKILL after a timeout)",
        description="Stop the local Kafka broker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=STOP_EPILOG,
    )
    stop.add_argument(
        "--timeout",
        type=float,
        default=BROKER_STOP_TIMEOUT_S,
        metavar="SECONDS",
        help=f"seconds to wait for a clean shutdown before SIGKILL (default {BROKER_STOP_TIMEOUT_S:.0f})",
    )
    stop.set_defaults(handler=_stop)

    status = actions.add_parser(
        "status",
        help="show whether the broker runs and answers (pid, port, log)",
        description="Show the state of the local Kafka broker.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=STATUS_EPILOG,
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    status.set_defaults(handler=_status)

    topics = subparsers.add_parser(
        "topics",
        help="create the arledger Kafka topics",
        description="Administer the arledger Kafka topics.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TOPICS_EPILOG,
    )
    topics.set_defaults(handler=lambda args: _print_help(topics))
    topic_actions = topics.add_subparsers(dest="topics_command", metavar="ACTION")
    ensure = topic_actions.add_parser(
        "ensure",
        help="create the missing topics; leave existing ones alone",
        description="Create the missing arledger topics; leave existing ones alone.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=TOPICS_EPILOG,
    )
    ensure.set_defaults(handler=_topics_ensure)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _error(message: str) -> int:
    print(f"arledger: error: {message}", file=sys.stderr)
    return 1


def _start(args: argparse.Namespace) -> int:
    from consumers import broker

    settings = Settings.from_env()
    if not settings.local_broker:
        print(
            f"note: ARLEDGER_KAFKA={settings.kafka_bootstrap} points at another cluster; "
            f"starting the local broker on 127.0.0.1:{settings.broker_port} anyway."
        )
    try:
        state = broker.start(settings, timeout_s=args.timeout)
    except broker.BrokerError as error:
        return _error(str(error))
    if state.already_running:
        print(f"Kafka broker already running: pid {state.pid}, {state.bootstrap}")
    else:
        print(
            f"Kafka broker started in {state.start_duration_s:.1f} s: pid {state.pid}, "
            f"{state.bootstrap} (controller 127.0.0.1:{state.controller_port})"
        )
    print(f"  data and logs: {state.kafka_dir}   log: {state.log_path}")
    return 0


def _stop(args: argparse.Namespace) -> int:
    from consumers import broker

    settings = Settings.from_env()
    pid = broker.status(settings).pid
    if broker.stop(settings, timeout_s=args.timeout):
        print(f"Kafka broker stopped (pid {pid}).")
    else:
        print(f"No Kafka broker running for {broker.kafka_dir(settings)}; nothing to stop.")
    return 0


def _status(args: argparse.Namespace) -> int:
    from consumers import broker

    settings = Settings.from_env()
    state = broker.status(settings)
    if args.json:
        print(
            json.dumps(
                {
                    "running": state.running,
                    "answering": state.answering,
                    "pid": state.pid,
                    "port": state.port,
                    "controller_port": state.controller_port,
                    "bootstrap": state.bootstrap,
                    "kafka_dir": str(state.kafka_dir),
                    "log": str(state.log_path),
                }
            )
        )
    elif state.running:
        answer = "answering" if state.answering else "NOT answering (starting, or hung: see the log)"
        print(f"Kafka broker running: pid {state.pid}, {state.bootstrap}, {answer}")
        print(f"  data and logs: {state.kafka_dir}   log: {state.log_path}")
    else:
        print(f"Kafka broker stopped (port {state.port}, data in {state.kafka_dir}).")
        print("  start it with: arledger broker start")
    if not state.running:
        return STATUS_EXIT_STOPPED
    return STATUS_EXIT_RUNNING if state.answering else STATUS_EXIT_NOT_ANSWERING


def _topics_ensure(args: argparse.Namespace) -> int:
    from kafka.errors import KafkaError

    from consumers import topics

    from consumers import broker

    settings = Settings.from_env()
    if settings.local_broker and not broker.port_in_use(settings.broker_port):
        return _error(
            f"no Kafka broker listens on {settings.kafka_bootstrap}: start it with "
            "`arledger broker start` (or set ARLEDGER_KAFKA to your cluster)"
        )
    try:
        created = topics.ensure_topics(settings)
    except KafkaError as error:
        hint = " (is it running? `arledger broker start`)" if settings.local_broker else ""
        return _error(f"could not reach Kafka at {settings.kafka_bootstrap}{hint}: {error!r}")
    for name in topics.topic_names(settings):
        state = "created" if name in created else "exists "
        print(f"  {state}  {name}")
    print(
        f"{len(created)} topic(s) created, {len(topics.topic_names(settings)) - len(created)} already "
        f"present, on {settings.kafka_bootstrap}."
    )
    return 0
