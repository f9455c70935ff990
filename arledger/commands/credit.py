"""Credit control and collections: `arledger check`, `worklist`, `promises`, `grades`, `alerts`.

All read the latest snapshot the projector published (a few seconds old) and
the credit-control config ($ARLEDGER_CONFIG, default consumers/arledger.toml, shipped with the package).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from typing import Any

from arledger import output
from arledger.settings import Settings

CHECK_HELP = """\
Answers the credit question for an order of AMOUNT (minor units) from the read
model, with the ledger's rules in the ledger's order: on_hold, then
overdue_beyond_tolerance (an undisputed item more than
ARLEDGER_OVERDUE_TOLERANCE_DAYS (30) past due: 30 days pass, 31 block), then
over_limit (exposure + amount > credit limit). Figures as of --as-of; exposure
excludes the order. Advisory: the binding decision is the one on ar.decisions.
Exit status 0 when approved, 1 when blocked.

examples:
  arledger check --customer C0001 --amount 150000
  arledger check --customer C0001 --amount 150000 --as-of 2026-06-30 --format json
"""

WORKLIST_HELP = """\
What to do today, by the dunning ladder of the config (docs/contract.md §8 "Worklist"):
for each open overdue item the due step is the highest step whose offset <=
days past due; it is listed unless that step or a later one was recorded
(collection.action) for the item or its customer since the due date. Disputed
items and items covered by a promise whose date has not passed are skipped;
items covered by a broken promise come first, then by open amount descending,
customer and invoice ids.

--by salesperson prints collection figures per registered salesperson and
currency instead: collected (payments received in --from..--to, default the
month of --as-of up to it, not reversed), overdue, worklist items and amount,
promises due in the period by outcome, open promises.

examples:
  arledger worklist
  arledger worklist --as-of 2026-06-30 --salesperson ana --format json
  arledger worklist --by salesperson --from 2026-06-01 --to 2026-06-30
"""

ALERTS_HELP = """\
Without --as-of or --from: the alerts raised so far (the alerts table, a fold
of ar.alerts). With --as-of D: evaluate every rule as of business day D and
print the alerts not raised yet (--publish sends them to ar.alerts, as the
alerts worker does once per business day). With --from/--to: a back-test,
evaluating each day in turn from an empty history and printing each alert on
the day it would have been raised.

kinds: breach, utilisation, aging_bucket, first_overdue, promise_broken, grade_downgrade

examples:
  arledger alerts --kind breach
  arledger alerts --as-of 2026-06-30
  arledger alerts --from 2026-06-01 --to 2026-06-30 --format json
"""

GRADES_HELP = """\
The behaviour score (0-100) and computed grade A-D of each customer as of
--as-of, with the inputs and the penalty each factor took (weights and
thresholds in the config), the assigned grade, and the credit limit and terms
the computed grade suggests. Suggestions are reported, never applied.

examples:
  arledger grades --as-of 2026-06-30
  arledger grades --customer C0001 --format json
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    check = _parser(subparsers, "check", "answer the credit question for an order from the read model", CHECK_HELP)
    check.add_argument("--customer", required=True, help="the customer id")
    check.add_argument("--amount", required=True, type=_amount, help="order amount in minor units (cents), > 0")
    _common(check)
    check.set_defaults(handler=run_check)

    add_worklist(subparsers)

    promises = _parser(subparsers, "promises", "promises to pay and their outcome (open, kept, partly kept, broken)",
                       "examples:\n  arledger promises --as-of 2026-06-30 --status broken\n")
    _common(promises)
    promises.add_argument("--salesperson", help="only customers registered to this salesperson")
    promises.add_argument("--status", choices=("open", "kept", "partly_kept", "broken"), help="only this outcome")
    promises.set_defaults(handler=run_promises)

    grades = _parser(subparsers, "grades", "behaviour score, computed grade and suggested limit and terms",
                     GRADES_HELP)
    _common(grades)
    grades.add_argument("--customer", help="only this customer")
    grades.add_argument("--salesperson", help="only customers registered to this salesperson")
    grades.set_defaults(handler=run_grades)

    alerts = _parser(subparsers, "alerts", "alerts raised, or evaluate the alert rules as of a day", ALERTS_HELP)
    alerts.add_argument("--as-of", help="evaluate the rules as of this business day (YYYY-MM-DD)")
    alerts.add_argument("--from", dest="date_from", metavar="D", help="back-test: first day")
    alerts.add_argument("--to", dest="date_to", metavar="D", help="back-test: last day (default today)")
    alerts.add_argument("--publish", action="store_true", help="with --as-of: send the new alerts to ar.alerts")
    alerts.add_argument("--kind", help="only this kind")
    alerts.add_argument("--customer", help="only this customer")
    alerts.add_argument("--format", choices=output.FORMATS, default="table")
    alerts.set_defaults(handler=run_alerts)


def _parser(subparsers: argparse._SubParsersAction, name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
    return subparsers.add_parser(name, help=help_text, description=help_text[:1].upper() + help_text[1:] + ".",
                                 epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--as-of", help="business date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--known-at", help="only what the ledger had recorded by this ISO-8601 instant; "
                                           "a bare date means the end of that UTC day")
    parser.add_argument("--format", choices=output.FORMATS, default="table", help="table (default), json or csv")


def _amount(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"an integer number of minor units is needed, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"the amount must be > 0, got {value}")
    return value


def add_worklist(subparsers: argparse._SubParsersAction) -> None:
    """`worklist` under any command group: `arledger worklist` and `arledger report worklist` (docs/contract.md §6)."""
    worklist = _parser(subparsers, "worklist", "the collections worklist: who to chase today and how",
                       WORKLIST_HELP)
    _common(worklist)
    worklist.add_argument("--salesperson", help="only customers registered to this salesperson (\"\" = none)")
    worklist.add_argument("--by", choices=("salesperson",), help="collection figures per salesperson instead")
    worklist.add_argument("--from", dest="date_from", metavar="D", help="with --by: first day of the period")
    worklist.add_argument("--to", dest="date_to", metavar="D", help="with --by: last day (default --as-of)")
    worklist.set_defaults(handler=run_worklist)


def _date(text: str | None, what: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        sys.exit(f"arledger: {what} must be a date YYYY-MM-DD, got {text!r}")


def open_read_model(settings: Settings):
    """The published snapshot(s), read-only; over projector shards, one union (alerts included)."""
    from arledger import readmodel
    from projections import alerts as rules

    connection = readmodel.open_read_model(settings)
    shards = len(readmodel.read_model_paths(settings))
    if shards > 1:
        # readmodel attaches the shard files as shard0 .. shardN-1 and unions schema.TABLES only.
        rules.union_alerts(connection, [f"shard{index}" for index in range(shards)])
    return connection


def _config():
    from consumers.alerts import load_config
    from ledger.policy import ConfigError

    try:
        return load_config()
    except ConfigError as error:
        sys.exit(f"arledger: bad credit-control config: {error}")


# -- check -------------------------------------------------------------------------------------------

def run_check(args: argparse.Namespace) -> int:
    from projections.credit import UnknownCustomer, credit_check

    settings = Settings.from_env()
    as_of = _date(args.as_of, "--as-of") or output.parse_as_of(None)
    connection = open_read_model(settings)
    try:
        result = credit_check(connection, args.customer, args.amount, as_of, settings.overdue_tolerance_days,
                              output.parse_known_at(args.known_at))
    except UnknownCustomer as error:
        sys.exit(f"arledger check: {error}")
    finally:
        connection.close()
    if args.format == "table":
        verdict = result["decision"].upper() + (f" ({result['reason']})" if result["reason"] else "")
        print(f"{result['customer_id']}: order of {output.money(result['amount'])} {result['currency']} "
              f"as of {result['as_of']} → {verdict}")
        rows = [{"figure": name, "value": result[name]} for name in (
            "credit_limit", "balance", "open_orders", "exposure", "available", "available_after", "on_hold",
            "max_days_past_due", "overdue_tolerance_days", "overdue_beyond_tolerance", "oldest_overdue_invoice",
            "grade")]
        money = {"credit_limit", "balance", "open_orders", "exposure", "available", "available_after",
                 "overdue_beyond_tolerance"}
        for row in rows:
            value = row["value"]
            row["value"] = output.money(value) if row["figure"] in money else ("" if value is None else str(value))
        output.print_table("credit check", rows, set())
    elif args.format == "json":
        sys.stdout.write(output.to_json(result) + "\n")
    else:
        sys.stdout.write(output.to_csv([result]))
    return 0 if result["decision"] == "approved" else 1


# -- worklist, promises, grades -------------------------------------------------------------------------

WORKLIST_MONEY = {"open_amount"}
KPI_MONEY = {"collected", "overdue", "worklist_amount", "broken_promise_amount", "open_promise_amount"}


def run_worklist(args: argparse.Namespace) -> int:
    from projections import worklist

    settings = Settings.from_env()
    config = _config()
    as_of = _date(args.as_of, "--as-of") or output.parse_as_of(None)
    known_at = output.parse_known_at(args.known_at)
    connection = open_read_model(settings)
    try:
        if args.by == "salesperson":
            date_to = _date(args.date_to, "--to") or as_of
            date_from = _date(args.date_from, "--from") or date_to.replace(day=1)
            report = worklist.salesperson_kpis(connection, config.ladder, date_from, date_to, known_at)
            if args.salesperson is not None:
                report["rows"] = [row for row in report["rows"] if row["salesperson"] == args.salesperson]
            output.emit(report, args.format, f"collections by salesperson {date_from} .. {date_to}", KPI_MONEY)
        else:
            report = worklist.worklist(connection, config.ladder, as_of, known_at, args.salesperson)
            output.emit(report, args.format, f"worklist as of {as_of}", WORKLIST_MONEY)
    finally:
        connection.close()
    return 0


def run_promises(args: argparse.Namespace) -> int:
    from projections import worklist

    settings = Settings.from_env()
    as_of = _date(args.as_of, "--as-of") or output.parse_as_of(None)
    connection = open_read_model(settings)
    try:
        report = worklist.promise_report(connection, as_of, output.parse_known_at(args.known_at), args.salesperson)
    finally:
        connection.close()
    if args.status:
        report["rows"] = [row for row in report["rows"] if row["status"] == args.status]
    output.emit(report, args.format, f"promises as of {as_of}", {"amount", "paid"})
    return 0


def run_grades(args: argparse.Namespace) -> int:
    from projections import grading

    settings = Settings.from_env()
    config = _config()
    as_of = _date(args.as_of, "--as-of") or output.parse_as_of(None)
    connection = open_read_model(settings)
    try:
        report = grading.grades_report(connection, config.grading, as_of, output.parse_known_at(args.known_at),
                                       args.salesperson)
    finally:
        connection.close()
    if args.customer:
        report["rows"] = [row for row in report["rows"] if row["customer_id"] == args.customer]
    output.emit(report, args.format, f"computed grades as of {as_of}",
                {"credit_limit", "suggested_credit_limit"})
    return 0


# -- alerts --------------------------------------------------------------------------------------------

ALERT_COLUMNS = ("business_date", "kind", "customer_id", "subject", "scope", "message", "alert_id")


def run_alerts(args: argparse.Namespace) -> int:
    from projections import alerts as rules

    if args.kind is not None and args.kind not in rules.KINDS:
        sys.exit(f"arledger alerts: unknown kind {args.kind!r}; choose from {', '.join(rules.KINDS)}")
    if args.publish and not args.as_of:
        sys.exit("arledger alerts: --publish needs --as-of")
    if args.as_of and (args.date_from or args.date_to):
        sys.exit("arledger alerts: --as-of evaluates one day, --from/--to back-test a range: choose one")
    settings = Settings.from_env()
    kinds = (args.kind,) if args.kind else rules.KINDS
    connection = open_read_model(settings)
    try:
        if args.date_from or args.date_to:
            report = _backtest(connection, args, kinds)
        elif args.as_of:
            day = _date(args.as_of, "--as-of")
            candidates = [a for a in rules.evaluate(connection, _config(), day, kinds)
                          if args.customer is None or a.customer_id == args.customer]
            candidates = list({a.alert_id: a for a in candidates}.values())
            known = rules.recorded_ids(connection, [a.alert_id for a in candidates]) \
                if rules.has_alert_tables(connection) else set()
            fresh = [a for a in candidates if a.alert_id not in known]
            report = {"as_of": day.isoformat(), "published": False,
                      "rows": [a.record(None) for a in fresh]}
            if args.publish and fresh:
                _publish(settings, fresh)
                report["published"] = True
        else:
            rows = rules.recorded_alerts(connection, kind=args.kind, customer_id=args.customer)
            report = {"kind": args.kind, "customer_id": args.customer, "rows": rows}
    finally:
        connection.close()
    if args.format == "json":
        sys.stdout.write(output.to_json(report) + "\n")
    elif args.format == "csv":
        sys.stdout.write(output.to_csv([{**row, "figures": output.to_json(row["figures"])} for row in report["rows"]]))
    else:
        output.print_table("alerts", [{column: row.get(column) for column in ALERT_COLUMNS} for row in report["rows"]],
                           set())
    return 0


def _backtest(connection: Any, args: argparse.Namespace, kinds: tuple[str, ...]) -> dict[str, Any]:
    from projections import alerts as rules

    config = _config()
    date_to = _date(args.date_to, "--to") or output.parse_as_of(None)
    date_from = _date(args.date_from, "--from") or date_to
    if date_from > date_to:
        sys.exit(f"arledger alerts: --from {date_from} is after --to {date_to}")
    seen: set[str] = set()
    rows = []
    day = date_from
    while day <= date_to:
        for alert in rules.evaluate(connection, config, day, kinds):
            if alert.alert_id in seen or (args.customer is not None and alert.customer_id != args.customer):
                continue
            seen.add(alert.alert_id)
            rows.append(alert.record(None))
        day += dt.timedelta(days=1)
    return {"from": date_from.isoformat(), "to": date_to.isoformat(), "rows": rows}


def _publish(settings: Settings, alerts: list[Any]) -> None:
    from consumers import clients
    from consumers.alerts import publish_alerts
    from consumers.topics import ensure_topics

    ensure_topics(settings)
    producer = clients.producer(settings, "arledger-alerts-cli")
    try:
        publish_alerts(producer, settings, alerts)
    finally:
        producer.close(timeout=10)
