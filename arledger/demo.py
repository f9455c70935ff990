"""`arledger demo`: a company's year of receivables through the whole product, then its reports and charts.

Steps: start the local broker if it is not running (and stop it again at the
end), create the topics, generate a year of inbound facts ending today, start
the workers (`arledger run`) as a child process, publish the facts to
ar.inbound with progress bars, wait until every record has an outcome and the
projection shows it, stop the workers, then read the published snapshot:
aging, exposures and breaches, the collections worklist, last month's KPIs,
the allowance; write PNG charts and one self-contained HTML page under
`ARLEDGER_HOME/reports/`. Whatever happens, it leaves nothing running that it
started.
"""

from __future__ import annotations

import calendar
import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from arledger import charts, output
from arledger.settings import TOPIC_INBOUND, TOPIC_LEDGER, TOPIC_REJECTED, Settings

# A year for ~500 customers is ~47,000 inbound records: minutes on 2 cores, not hours.
DEFAULT_CUSTOMERS = 500
DEFAULT_MONTHS = 12
DEFAULT_SEED = 1
# Waiting for the workers: generous, the machine may be shared; the demo fails loudly past it.
WAIT_TIMEOUT_S = 1_800.0
WAIT_POLL_S = 0.5
# The workers finish their batch and publish a last snapshot on SIGTERM; a stuck one is killed after this.
WORKERS_STOP_TIMEOUT_S = 60.0
TOP_ROWS = 12
WORKLIST_COLUMNS = ("customer_id", "name", "currency", "invoice_id", "due_on", "days_past_due", "open_amount",
                    "step", "owner", "broken_promise", "last_action")
MARKER_NAME = "demo.json"  # written in ARLEDGER_HOME: the home's ledger is the demo's own, safe to reset


class DemoError(Exception):
    """An operating error of the demo, with a message for a person."""


@dataclass
class DemoOptions:
    customers: int = DEFAULT_CUSTOMERS
    months: int = DEFAULT_MONTHS
    seed: int = DEFAULT_SEED
    bad_share: float = 0.01
    reset: bool = False
    timeout_s: float = WAIT_TIMEOUT_S


@dataclass
class DemoResult:
    as_of: dt.date
    counts: dict[str, int] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def start_of_history(today: dt.date, months: int) -> dt.date:
    """The first day of a `months`-month history whose last generated day is `today` (or, when month-end
    clamping allows no exact start, up to three days before it: never after)."""
    from arledger.generate import add_months

    return add_months(today + dt.timedelta(days=1), -months)


# -- Running things, and stopping them whatever happens --------------------------------------


@contextlib.contextmanager
def local_broker(settings: Settings, say: Callable[[str], None]) -> Iterator[None]:
    """The local broker for the duration of the demo; stopped at the end only if the demo started it."""
    if not settings.local_broker:
        say(f"using the Kafka cluster at {settings.kafka_bootstrap} (ARLEDGER_KAFKA)")
        yield
        return
    from consumers import broker

    status = broker.start(settings)
    if status.already_running:
        say(f"using the local broker already running on {status.bootstrap} (left running)")
    else:
        say(f"started the local broker on {status.bootstrap} in {status.start_duration_s:.1f} s")
    try:
        yield
    finally:
        if not status.already_running:
            broker.stop(settings)
            say("stopped the local broker")


@contextlib.contextmanager
def workers(settings: Settings, log_path: Path, say: Callable[[str], None]) -> Iterator[subprocess.Popen]:
    """`arledger run` as a child process with the same environment; SIGTERM (then SIGKILL) at the end.

    A child process, not a thread: the Runner installs signal handlers, and the
    workers should not share the GIL with the publisher.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "arledger.cli", "run"], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    say(f"started the workers (pid {process.pid}; log {log_path})")
    try:
        yield process
    finally:
        stop_process(process, WORKERS_STOP_TIMEOUT_S)
        say("stopped the workers")


def stop_process(process: subprocess.Popen, timeout_s: float) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# -- Before the run: a home of our own --------------------------------------------------------


def home_needs_reset(settings: Settings, reset: bool) -> bool:
    """True when the home holds an earlier demo (or, with --reset, any ledger) to wipe; raises DemoError when
    it holds a ledger the demo did not make, or one it must not touch. Needs no broker: checked first."""
    from consumers.rebuild import projector_running

    marker = settings.home / MARKER_NAME
    store_file = _sqlite_store_file(settings)
    has_state = (settings.projection_path.exists() or settings.snapshot_path.exists()
                 or (store_file is not None and store_file.exists()))
    if not has_state and not marker.exists():
        return False
    if not marker.exists() and not reset:
        raise DemoError(f"{settings.home} already holds a ledger that the demo did not make. Use another "
                        "ARLEDGER_HOME (e.g. ARLEDGER_HOME=/tmp/arledger-demo), or 'arledger demo --reset' to "
                        "delete it and its topics.")
    if projector_running(settings.projection_path):
        raise DemoError(f"'arledger run' is running on {settings.home}: stop it before the demo resets the home")
    if store_file is None:
        raise DemoError(f"the event store is {settings.store_url}, not a file in {settings.home}: the demo will "
                        "not wipe it; unset ARLEDGER_STORE or use another ARLEDGER_HOME")
    return True


def reset_home(settings: Settings, say: Callable[[str], None]) -> None:
    """Delete the earlier run: its topics and ingest group (the broker must answer), event store, read models."""
    store_file = _sqlite_store_file(settings)
    assert store_file is not None, "home_needs_reset refuses other stores"
    say(f"resetting {settings.home}: deleting the earlier demo's ledger, read models and topics")
    _delete_topics(settings)
    for path in (store_file, *store_file.parent.glob(store_file.name + "-*"),
                 *settings.home.glob("projections*.duckdb*"), *settings.home.glob("snapshot.duckdb*")):
        path.unlink(missing_ok=True)
    (settings.home / MARKER_NAME).unlink(missing_ok=True)


def _sqlite_store_file(settings: Settings) -> Path | None:
    """The event store's file when it is SQLite, else None."""
    prefix = "sqlite:///"
    if not settings.store_url.startswith(prefix):
        return None
    return Path(settings.store_url[len(prefix):])


def _delete_topics(settings: Settings) -> None:
    """Delete the five topics and the ingest group; wait until the broker no longer lists them."""
    from kafka.errors import KafkaError

    from consumers.ingest import INGEST_GROUP_ID
    from consumers.topics import admin_client, topic_names

    wanted = set(topic_names(settings))
    with admin_client(settings) as admin:
        existing = wanted & set(admin.list_topics())
        if existing:
            admin.delete_topics(sorted(existing))
        with contextlib.suppress(KafkaError):
            admin.delete_groups([settings.topic(INGEST_GROUP_ID)])
        deadline = time.monotonic() + 60
        while wanted & set(admin.list_topics()):
            if time.monotonic() > deadline:
                raise DemoError(f"the broker did not delete the topics {sorted(existing)} within 60 s")
            time.sleep(0.5)
    time.sleep(1.0)  # KRaft forgets a deleted topic's partitions a moment after listing stops showing it


# -- The run -----------------------------------------------------------------------------------


def run(settings: Settings, options: DemoOptions, console: Console, progress_console: Console) -> DemoResult:
    """The whole demo; returns what it did. Raises DemoError for operating errors."""
    say = lambda text: progress_console.print(f"[dim]demo:[/dim] {text}")  # noqa: E731
    as_of = dt.datetime.now(dt.UTC).date()
    result = DemoResult(as_of=as_of)
    started = time.monotonic()
    settings.home.mkdir(parents=True, exist_ok=True)
    needs_reset = home_needs_reset(settings, options.reset)
    with local_broker(settings, say):
        from consumers import publisher
        from consumers.topics import ensure_topics

        if needs_reset:
            reset_home(settings, say)
        ensure_topics(settings)
        result.seconds["start"] = time.monotonic() - started
        phase = time.monotonic()
        demo_dir = settings.home / "demo"
        demo_dir.mkdir(parents=True, exist_ok=True)
        facts = demo_dir / "facts.jsonl"
        start = start_of_history(as_of, options.months)
        generated = _generate(facts, options, start, progress_console)
        (settings.home / MARKER_NAME).write_text(json.dumps({
            "customers": options.customers, "months": options.months, "seed": options.seed,
            "start": start.isoformat(), "as_of": as_of.isoformat(), "lines": generated["lines"]}) + "\n")
        say(f"generated {generated['lines']:,} inbound records for {options.customers} customers, "
            f"{start} to {as_of} ({facts})")
        result.seconds["generate"] = time.monotonic() - phase

        with workers(settings, settings.home / "logs" / "demo-workers.log", say) as process:
            phase = time.monotonic()
            rejected_start = publisher.end_offsets(settings, settings.topic(TOPIC_REJECTED))
            published = _publish(settings, facts, generated["lines"], progress_console)
            result.seconds["publish"] = time.monotonic() - phase
            phase = time.monotonic()
            _follow(settings, published, process, options.timeout_s, progress_console)
            counts = publisher.wait_for_outcomes(settings, published, rejected_start, options.timeout_s)
            result.counts = dict(counts)
            result.seconds["process"] = time.monotonic() - phase
        _print_outcomes(console, result.counts)
        phase = time.monotonic()
        result.files = report(settings, as_of, start, console, result.counts)
        result.seconds["reports"] = time.monotonic() - phase
    result.seconds["total"] = time.monotonic() - started
    return result


def _generate(path: Path, options: DemoOptions, start: dt.date, progress_console: Console) -> dict[str, Any]:
    from arledger.generate import write_jsonl

    with Progress(TextColumn("generating {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=progress_console) as progress:
        task = progress.add_task(start.isoformat(), total=None)

        def on_day(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total,
                            description=(start + dt.timedelta(days=done - 1)).isoformat())

        return write_jsonl(path, options.customers, options.months, options.seed, start, options.bad_share, on_day)


def _publish(settings: Settings, facts: Path, total: int, progress_console: Console) -> list:
    from consumers import publisher

    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=progress_console) as progress:
        task = progress.add_task(f"publishing to {settings.topic(TOPIC_INBOUND)}", total=total)
        return publisher.publish_lines(settings, publisher.read_lines(facts), lambda n: progress.advance(task, n))


def _follow(settings: Settings, published: list, process: subprocess.Popen, timeout_s: float,
            progress_console: Console) -> None:
    """Progress bars while the workers take the records through the ledger into the read models."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    from consumers import publisher
    from consumers.ingest import INGEST_GROUP_ID
    from consumers.topics import admin_client

    inbound = settings.topic(TOPIC_INBOUND)
    first_offset: dict[int, int] = {}
    needed: dict[int, int] = {}
    for item in published:
        first_offset[item.partition] = min(first_offset.get(item.partition, item.offset), item.offset)
        needed[item.partition] = max(needed.get(item.partition, -1), item.offset + 1)
    group = settings.topic(INGEST_GROUP_ID)
    deadline = time.monotonic() + timeout_s
    with Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=progress_console) as progress:
        ingest_task = progress.add_task("ledger (ingest worker)", total=len(published))
        project_task = progress.add_task("read models (projector)", total=None)
        while True:
            if process.poll() is not None:
                raise DemoError(f"the workers exited with code {process.returncode}; see "
                                f"{settings.home / 'logs' / 'demo-workers.log'}")
            if time.monotonic() > deadline:
                raise DemoError(f"the workers did not finish within {timeout_s:.0f} s")
            try:
                with admin_client(settings) as admin:
                    committed = admin.list_group_offsets(group).get(group, {})
            except KafkaError:  # e.g. the group's coordinator still loading: ask again on the next round
                committed = {}
            done = 0
            for partition, end in needed.items():
                offset = committed.get(TopicPartition(inbound, partition))
                if offset is not None:
                    done += max(0, min(offset.offset, end) - first_offset[partition])
            progress.update(ingest_task, completed=done)
            ledger_end = publisher.end_offsets(settings, settings.topic(TOPIC_LEDGER))
            projected = publisher.snapshot_offsets(settings)
            progress.update(project_task, total=sum(ledger_end.values()),
                            completed=sum(min(projected.get(p, 0), o) for p, o in ledger_end.items()))
            if done >= len(published) and all(projected.get(p, 0) >= o for p, o in ledger_end.items() if o):
                return
            time.sleep(WAIT_POLL_S)


def _print_outcomes(console: Console, counts: dict[str, int]) -> None:
    reasons = sorted((key.split(":", 1)[1], value) for key, value in counts.items() if key.startswith("rejected:"))
    console.print(f"\n[bold]Inbound outcomes[/bold]: accepted {counts.get('accepted', 0):,}, "
                  f"rejected {counts.get('rejected', 0):,}, duplicate {counts.get('duplicate', 0):,} "
                  "(the generator sends about 1 % bad records on purpose)")
    if reasons:
        console.print("  rejected by reason: " + ", ".join(f"{reason} {count}" for reason, count in reasons))


# -- The reports ------------------------------------------------------------------------------


def month_ends(start: dt.date, as_of: dt.date) -> list[dt.date]:
    """The last day of each month from `start`'s to `as_of`'s, the last one being `as_of` itself."""
    ends = []
    day = start
    while True:
        last = day.replace(day=calendar.monthrange(day.year, day.month)[1])
        if last >= as_of:
            ends.append(as_of)
            return ends
        ends.append(last)
        day = last + dt.timedelta(days=1)


def report(settings: Settings, as_of: dt.date, start: dt.date, console: Console,
           counts: dict[str, int] | None = None) -> list[Path]:
    """Print the reports from the published snapshot and write the charts and the HTML page; returns the files."""
    from projections import schema

    connection = schema.connect(str(settings.snapshot_path), read_only=True)
    try:
        return DemoReport(connection, as_of, start, console, counts or {}).write(settings.home / "reports", settings)
    finally:
        connection.close()


class DemoReport:
    """Collects each report once, prints it, and keeps it for the HTML page."""

    def __init__(self, connection, as_of: dt.date, start: dt.date, console: Console,
                 counts: dict[str, int]) -> None:
        self.connection = connection
        self.counts = counts
        self.as_of = as_of
        self.start = start
        self.console = console
        self.sections: list[tuple[str, str]] = []
        self.notes: list[str] = []

    def print_table(self, title: str, rows: list[dict[str, Any]], money: set[str],
                    totals: Sequence[dict[str, Any]] = ()) -> None:
        from rich.table import Table

        table = Table(title=title, title_style="bold", title_justify="left")
        columns = list((rows or totals or [{}])[0])
        for column in columns:
            table.add_column(column, justify="right" if column in money or _numeric(rows, column) else "left")
        for row in rows:
            table.add_row(*(_cell(row.get(column), column in money) for column in columns))
        for row in totals:
            table.add_row(*(_cell(row.get(column), column in money) for column in columns), style="bold")
        self.console.print()
        if rows or totals:
            self.console.print(table)
        else:
            self.console.print(f"[bold]{title}[/bold]\n(none)")
        self.sections.append((title, charts.html_table(rows, money, totals)))

    def note(self, text: str) -> None:
        self.console.print(f"[dim]{text}[/dim]")
        self.notes.append(text)
        heading, inner = self.sections[-1] if self.sections else ("Notes", "")
        if self.sections:
            self.sections[-1] = (heading, inner + f'<p class="note">{_escape(text)}</p>')

    def write(self, directory: Path, settings: Settings) -> list[Path]:
        from projections import reports

        directory.mkdir(parents=True, exist_ok=True)
        aging = reports.aging(self.connection, self.as_of)
        main_currency = max(aging["totals"], key=lambda c: aging["totals"][c]["total"], default="EUR")
        self.aging_summary(aging)
        exposure_rows = self.exposures()
        self.worklist()
        kpi_months = self.kpis()
        self.allowance()
        images = self.charts(directory, aging["buckets"], exposure_rows, main_currency, kpi_months)
        html_path = directory / "arledger-demo.html"
        intro = (f"A simulated company's receivables from {self.start} to {self.as_of}, taken through "
                 "Kafka, the event-sourced ledger and the DuckDB read models by <code>arledger demo</code>. "
                 "Amounts in major units of each currency; currencies are never added together.")
        chart_sections = [(title, charts.html_image(png, title)) for title, png, _ in images]
        outcomes = [{"outcome": key.replace("rejected:", "rejected: "), "records": value}
                    for key, value in sorted(self.counts.items(), key=lambda item: (":" in item[0], item[0]))]
        chart_sections.append(("Inbound records and their outcomes", charts.html_table(outcomes)))
        html_path.write_text(charts.html_report(f"arledger demo — receivables as of {self.as_of}", intro,
                                                [*chart_sections, *self.sections]), encoding="utf-8")
        files = [path for _, _, path in images] + [html_path]
        self.console.print()
        self.console.print("[bold]Charts and report[/bold]")
        for path in files:
            self.console.print(f"  {path}")
        self.console.print()
        self.console.print("[bold]Query the tables yourself[/bold] (read-only, while or after the workers run):")
        self.console.print("  arledger sql \"SELECT customer_id, balance, overdue, utilisation FROM customer_balances "
                           "ORDER BY overdue DESC LIMIT 10\"")
        self.console.print(f"  duckdb -readonly {settings.snapshot_path}    # the DuckDB CLI, or any DuckDB client")
        self.console.print(f"  arledger report aging --as-of {self.as_of}   |   arledger report kpis --from "
                           f"{self.as_of.replace(day=1)} --to {self.as_of}")
        self.console.print("  tables: customers, items, item_movements, payments, allocations, order_events, "
                           "breaches, ledger_events ... ; views: open_items, customer_balances (docs/tables.md)")
        return files

    # -- sections ------------------------------------------------------------------------------

    def aging_summary(self, aging: dict[str, Any]) -> None:
        counts: dict[str, int] = {}
        for row in aging["rows"]:
            counts[row["currency"]] = counts.get(row["currency"], 0) + 1
        rows = [{"currency": currency, "customers": counts[currency], **total}
                for currency, total in aging["totals"].items()]
        self.print_table(f"Aging summary as of {self.as_of} (by due date)", rows,
                         set(aging["buckets"]) | {"open", "unapplied", "total"})

    def exposures(self) -> list[dict[str, Any]]:
        from projections.exposure import exposure

        rows: list[dict[str, Any]] = exposure(self.connection, self.as_of)["rows"]
        top = sorted(rows, key=lambda row: -row["exposure"])[:TOP_ROWS]
        self.print_table(f"Top exposures as of {self.as_of}", [_exposure_row(row) for row in top],
                         {"exposure", "credit_limit", "available", "overdue"})
        over = sorted((row for row in rows if row["over_limit"]),
                      key=lambda row: -(row["exposure"] - row["credit_limit"]))
        self.print_table(f"Customers over their credit limit as of {self.as_of}: {len(over)}",
                         [{**_exposure_row(row), "excess": row["exposure"] - row["credit_limit"]}
                          for row in over[:TOP_ROWS]], {"exposure", "credit_limit", "available", "overdue", "excess"})
        breaches, crossings, customers = self.connection.execute(
            "SELECT count(*), count(*) FILTER (WHERE crossing), count(DISTINCT customer_id) FROM breaches "
            "WHERE breached_on <= ?", [self.as_of]).fetchone()
        self.note(f"{breaches:,} sales left a customer over the limit during the year ({crossings:,} crossings "
                  f"from within the limit, {customers:,} customers); each crossing is one alert on ar.alerts.")
        return rows

    def worklist(self) -> None:
        """The dunning ladder of the config decides each item's next step."""
        from consumers.alerts import load_config
        from projections.worklist import worklist

        rows = worklist(self.connection, load_config().ladder, self.as_of)["rows"]
        shown = [{column: _installment(row) if column == "invoice_id" else row[column]
                  for column in WORKLIST_COLUMNS if column in row} for row in rows[:TOP_ROWS * 2]]
        self.print_table(f"Collections worklist for {self.as_of}: {len(rows):,} items due for an action", shown,
                         {"open_amount"})
        self.note("Next step from the dunning ladder (consumers/arledger.toml); broken promises first, then by "
                  "open amount. 'arledger worklist' lists them all.")

    def kpis(self) -> dict[dt.date, dict[str, Any]]:
        """Last complete month's KPIs (printed) and every month's, for the trend chart."""
        from projections.kpis import kpis

        months: dict[dt.date, dict[str, Any]] = {}
        for end in month_ends(self.start, self.as_of):
            if end.replace(day=1) < self.start:
                continue  # the history starts mid-month: a few days' DSO would mislead
            months[end] = kpis(self.connection, end.replace(day=1), end)["overall"]
        last_full = [end for end in months if end.day == calendar.monthrange(end.year, end.month)[1]
                     and end < self.as_of]
        if last_full:
            end = last_full[-1]
            rows = [{"currency": currency, **_kpi_row(figures)} for currency, figures in months[end].items()]
            self.print_table(f"KPIs for {end.strftime('%B %Y')} (overall)", rows,
                             {"ar_start", "ar_end", "current_end", "sales"})
            self.note("DSO and best-possible DSO in days; CEI and collection rate in %; turnover per period.")
        return months

    def allowance(self) -> None:
        from projections.allowance import allowance

        report = allowance(self.connection, self.as_of)
        rates = report["rates"]
        sums: dict[str, dict[str, int]] = {}
        for row in report["rows"]:
            total = sums.setdefault(row["currency"], {name: 0 for name in rates} | {"open": 0})
            for name in [*rates, "open"]:
                total[name] += row[name]
        rows = [{"currency": currency, **sums.get(currency, {}), "allowance": amount}
                for currency, amount in report["totals"].items()]
        self.print_table(f"Bad-debt allowance as of {self.as_of} (provision matrix)", rows,
                         {*rates, "open", "allowance"})
        self.note("Rates: " + ", ".join(f"{name} {rate:.0%}" for name, rate in rates.items()) + ". Historical loss "
                  "rates from this year's write-offs: " + "; ".join(
                      f"{currency} " + ", ".join(f"{name} {'n/a' if rate is None else f'{rate:.1%}'}"
                                                 for name, rate in by_bucket.items())
                      for currency, by_bucket in report["historical_loss_rates"].items()) + ".")

    def charts(self, directory: Path, buckets: list[str], exposure_rows: list[dict[str, Any]], main_currency: str,
               kpi_months: dict[dt.date, dict[str, Any]]) -> list[tuple[str, bytes, Path]]:
        from projections import reports

        ends = month_ends(self.start, self.as_of)
        totals = {end: reports.aging(self.connection, end)["totals"] for end in ends}
        currencies = sorted({currency for by_currency in totals.values() for currency in by_currency},
                            key=lambda c: -totals[ends[-1]].get(c, {}).get("total", 0))
        by_currency = {currency: [totals[end].get(currency, {}) for end in ends] for currency in currencies}
        images = [("Aging by bucket over the months", charts.aging_over_time(ends, by_currency, buckets),
                   directory / "aging-by-month.png")]
        if kpi_months:
            series = {name: [kpi_months.get(end, {}).get(main_currency, {}).get(name) for end in ends]
                      for name in ("dso", "countback_dso", "best_possible_dso", "cei", "collection_rate")}
            images.append(("DSO and CEI per month", charts.kpi_trend(ends, series, main_currency),
                           directory / "dso-cei-trend.png"))
        else:
            shares = {currency: [_overdue_share(row, buckets) for row in rows]
                      for currency, rows in by_currency.items()}
            images.append(("Overdue share per month", charts.overdue_share_trend(ends, shares),
                           directory / "overdue-share-trend.png"))
        in_currency = [row for row in exposure_rows if row["currency"] == main_currency]
        over = sorted((row for row in in_currency if row["exposure"] > row["credit_limit"]),
                      key=lambda row: row["credit_limit"] - row["exposure"])[:5]
        largest = [row for row in sorted(in_currency, key=lambda row: -row["exposure"]) if row not in over]
        top = sorted(over + largest[:15 - len(over)], key=lambda row: -row["exposure"])
        images.append(("Exposure vs credit limit", charts.exposure_vs_limit(top, main_currency),
                       directory / "exposure-vs-limit.png"))
        for _, png, path in images:
            path.write_bytes(png)
        return images


def _exposure_row(row: dict[str, Any]) -> dict[str, Any]:
    utilisation = row.get("utilisation")
    return {"customer_id": row["customer_id"], "name": row["name"], "currency": row["currency"],
            "grade": row.get("grade") or "", "exposure": row["exposure"], "credit_limit": row["credit_limit"],
            "available": row["available"], "utilisation": None if utilisation is None else f"{utilisation:.0%}",
            "overdue": row.get("overdue", 0), "on_hold": "hold" if row.get("on_hold") else ""}


def _installment(row: dict[str, Any]) -> str:
    """'INV-1' for a sale in one piece, 'INV-1 (2)' for its second installment."""
    installment = row.get("installment") or 1
    return row["invoice_id"] if installment == 1 else f"{row['invoice_id']} ({installment})"


def _kpi_row(figures: dict[str, Any]) -> dict[str, Any]:
    keep = ("ar_start", "ar_end", "current_end", "sales", "dso", "countback_dso", "best_possible_dso", "add", "cei",
            "turnover", "collection_rate")
    return {name: figures.get(name) for name in keep}


def _overdue_share(total: dict[str, int], buckets: list[str]) -> float | None:
    open_amount = sum(total.get(bucket, 0) for bucket in buckets)
    if not open_amount:
        return None
    return 100.0 * sum(total.get(bucket, 0) for bucket in buckets[1:]) / open_amount


def _numeric(rows: list[dict[str, Any]], column: str) -> bool:
    return any(isinstance(row.get(column), (int, float)) and not isinstance(row.get(column), bool) for row in rows)


def _cell(value: Any, is_money: bool) -> str:
    if is_money:
        return output.money(value)
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _escape(text: str) -> str:
    import html

    return html.escape(text)
