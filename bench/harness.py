"""`arledger bench`: run every stage and its baselines on one broker, write the JSON, print the table.

Order matters because stages feed each other: the in-process ingest fills an
event store, the relay publishes it to ar.ledger, the consume baselines and
the projector read that topic, the rebuild reads it (replicated up to its
size). Kafka-ingest, latency, workers, store, decisions and aging work on topics and
files of their own.
Every topic is prefixed `bench-<run id>.` and deleted at the end; every file
lives under ARLEDGER_HOME/bench/<run id>/ and is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import itertools
import json
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from arledger.settings import REPO_ROOT, TOPIC_INBOUND, TOPIC_LEDGER, Settings
from bench import machine, report, stages

SCHEMA_VERSION = 1
STAGE_GROUPS = ("ingest", "relay", "project", "rebuild", "latency", "workers", "store", "decisions", "aging",
                "sustained", "web", "publish")
STAGE_KEYS = ("ingest_ledger", "ingest_kafka", "relay", "fold", "projector", "rebuild_ledger", "rebuild_store",
              "e2e_latency", "workers", "store", "decision_latency", "aging", "sustained", "web", "publish")
NO_BROKER_GROUPS = {"store", "aging", "publish"}  # these work on files (and a local PostgreSQL) alone
BASELINE_KEYS = ("store_append", "produce_inbound", "raw_consume_inbound", "raw_consume_ledger",
                 "consumer_performance_inbound", "consumer_performance_ledger", "naive_projector", "produce_ledger")
PROFILE_RECORDS_MAX = 10_000  # a profile of the ingest runs over this many records: enough to rank the costs


@dataclass
class Sizes:
    customers: int = 1_000
    months: int = 12
    seed: int = 1
    rebuild_events: int = 1_000_000
    latency_rate: int = 2_000
    latency_seconds: float = 20.0
    aging_items: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    naive_events: int = 5_000
    publish_events: tuple[int, ...] = (1_000_000, 5_000_000)
    publish_seconds: float = 60.0
    worker_counts: tuple[int, ...] = (1, 2, 4)  # issue 9: `run --workers N` on 12 partitions
    decision_orders_per_s: float = 200.0  # issue 6: orders/s while ...
    decision_background_per_s: float = 2_000.0  # ... other events/s flow through the same ingest
    decision_seconds: float = 20.0
    decision_warmup_s: float = 3.0
    decision_customers: int = 200
    sustained_rates: tuple[int, ...] = (2_000, 4_000, 6_000, 8_000, 10_000, 12_000)  # issue 13
    sustained_seconds: float = 10.0

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(customers=30, months=2, rebuild_events=0, latency_rate=100, latency_seconds=3.0,
                   aging_items=(1_000, 10_000), naive_events=300, publish_events=(50_000,), publish_seconds=6.0,
                   decision_orders_per_s=20.0, decision_background_per_s=100.0, decision_seconds=3.0,
                   decision_warmup_s=1.0, decision_customers=20, sustained_rates=(100, 200), sustained_seconds=3.0)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Sizes":
        sizes = cls.quick() if args.quick else cls()
        for name in ("customers", "months", "rebuild_events", "latency_rate", "latency_seconds", "decision_seconds"):
            value = getattr(args, name, None)
            if value is not None:
                setattr(sizes, name, value)
        if getattr(args, "aging_items", None):
            sizes.aging_items = tuple(int(part) for part in args.aging_items.split(",") if part.strip())
        if getattr(args, "sustained_rates", None):
            sizes.sustained_rates = tuple(int(part) for part in args.sustained_rates.split(",") if part.strip())
        if getattr(args, "sustained_seconds", None):
            sizes.sustained_seconds = args.sustained_seconds
        if getattr(args, "worker_counts", None):
            sizes.worker_counts = tuple(int(part) for part in args.worker_counts.split(",") if part.strip())
        return sizes


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[None]:
    """The local broker while the benchmark runs; stopped at the end only if the benchmark started it."""
    if not settings.local_broker:
        yield
        return
    from consumers import broker

    status = broker.start(settings)
    try:
        yield
    finally:
        if not status.already_running:
            broker.stop(settings)


def delete_topics(settings: Settings, prefix: str) -> None:
    from consumers.topics import admin_client

    with contextlib.suppress(Exception), admin_client(settings) as admin:  # best effort: a leftover is harmless
        topics = [name for name in admin.list_topics() if name.startswith(prefix)]
        if topics:
            admin.delete_topics(topics)


class Run:
    """One benchmark run: its results dict, its errors, and a helper that runs one stage safely."""

    def __init__(self, sizes: Sizes, quick: bool, only: set[str], command: str = "arledger bench") -> None:
        self.sizes = sizes
        self.only = only
        self.results: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "generated_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": command,
            "quick": quick,
            "sizes": {**asdict(sizes), "aging_items": list(sizes.aging_items),
                      "worker_counts": list(sizes.worker_counts)},
            "machine": machine.facts(),
            "workload": {},
            "stages": {key: None for key in STAGE_KEYS},
            "baselines": {key: None for key in BASELINE_KEYS},
            "profiles": {},
            "notes": [],
            "errors": {},
        }

    def wanted(self, group: str) -> bool:
        return not self.only or group in self.only

    def stage(self, section: str, key: str, function: Callable[[], Any], say: Callable[[str], None]) -> Any:
        """Run one measurement; a failure is recorded (and the run goes on), never hidden."""
        say(f"{key} ...")
        started = time.monotonic()
        try:
            value = function()
        except Exception as error:  # a broken stage must not lose the others' figures
            self.results["errors"][key] = f"{type(error).__name__}: {error}"
            self.results[section][key] = {"error": self.results["errors"][key]}
            say(f"{key} FAILED: {error}")
            traceback.print_exc(file=sys.stderr)
            return None
        figures = value[0] if isinstance(value, tuple) else value
        self.results[section][key] = figures
        say(f"{key} done in {time.monotonic() - started:.1f} s: {_headline(figures)}")
        return value

    def skip(self, section: str, key: str, reason: str) -> None:
        self.results[section][key] = {"skipped": reason}


def _headline(figures: Any) -> str:
    if not isinstance(figures, dict):
        return ""
    for name in ("records_per_s", "events_per_s", "rows_per_s"):
        if name in figures:
            return f"{figures[name]:,.0f} {name.replace('_per_s', '')}/s"
    if "committed" in figures:
        return f"p50 {figures['committed']['p50_ms']} ms, p99 {figures['committed']['p99_ms']} ms"
    if "p99_ms" in figures:
        return f"p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms"
    if "by_workers" in figures:
        return "; ".join(f"{n}: ingest {one.get('ingest_records_per_s') or 0:,.0f} records/s, projector "
                         f"{one.get('projector_events_per_s') or 0:,.0f} events/s"
                         for n, one in figures["by_workers"].items())
    if "sqlite" in figures:
        postgresql = figures.get("postgresql") or {}
        return (f"SQLite {figures['sqlite']['records_per_s']:,.0f} records/s, PostgreSQL "
                + (f"{postgresql['records_per_s']:,.0f} records/s" if "records_per_s" in postgresql
                   else f"skipped ({postgresql.get('skipped')})"))
    return ""


def main(args: argparse.Namespace) -> int:
    if args.markdown:
        print(report.markdown(json.loads(args.markdown.read_text())))
        return 0
    only = {part.strip() for part in (args.only or "").split(",") if part.strip()}
    unknown = only - set(STAGE_GROUPS)
    if unknown:
        sys.exit(f"arledger bench: unknown stage(s) {', '.join(sorted(unknown))}; choose from {', '.join(STAGE_GROUPS)}")
    from arledger import logs

    logs.configure("warning")  # the workers' per-batch lines would drown the table
    sizes = Sizes.from_args(args)
    run = Run(sizes, args.quick, only, reproduce_command(args))
    say = lambda text: print(f"bench: {text}", file=sys.stderr, flush=True)  # noqa: E731
    settings = Settings.from_env()
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{os.getpid()}"
    prefix = f"bench-{run_id}."
    home = settings.home / "bench" / run_id
    started = time.monotonic()
    try:
        if only and only <= NO_BROKER_GROUPS:  # no broker needed
            measure(run, settings, home, prefix, say, profile=not args.no_profile)
        else:
            with broker_for(settings):
                try:
                    measure(run, settings, home, prefix, say, profile=not args.no_profile)
                finally:
                    delete_topics(settings, prefix)
    finally:
        shutil.rmtree(home, ignore_errors=True)
        with contextlib.suppress(OSError):
            home.parent.rmdir()  # only if no other run's folder is there
    results = run.results
    results["machine"]["load_average_end"] = list(os.getloadavg())
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["summary"] = report.summary_rows(results)
    results["targets"] = report.measured_targets(results)
    results["notes"] = notes(results) + results["notes"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    report.print_table(results)
    print(f"results written to {args.out} ({results['duration_s']:.0f} s)")
    if args.update_readme:
        report.update_readme(REPO_ROOT / "docs" / "performance.md", report.markdown(results))
        print(f"docs/performance.md updated from {args.out}")
    return 1 if results["errors"] else 0


def reproduce_command(args: argparse.Namespace) -> str:
    """The command line that gives the same sizes (no file paths: results files travel between machines)."""
    parts = ["arledger bench"]
    if args.quick:
        parts.append("--quick")
    for flag, name in (("--customers", "customers"), ("--months", "months"), ("--rebuild-events", "rebuild_events"),
                       ("--latency-rate", "latency_rate"), ("--latency-seconds", "latency_seconds"),
                       ("--aging-items", "aging_items"), ("--worker-counts", "worker_counts"),
                       ("--decision-seconds", "decision_seconds"), ("--only", "only")):
        value = getattr(args, name, None)
        if value is not None:
            parts.append(f"{flag} {value}")
    return " ".join(parts)


def measure(run: Run, settings: Settings, home: Path, prefix: str, say: Callable[[str], None],
            profile: bool) -> None:
    """All stages in dependency order (see the module docstring)."""
    from arledger.generate import generate
    from ledger.application import Ledger

    sizes = run.sizes
    main = stages.settings_for(settings, home / "main", prefix)
    start = dt.date.today().replace(day=1) - dt.timedelta(days=31 * sizes.months)
    say(f"generating {sizes.customers} customers × {sizes.months} months")
    lines = list(generate(sizes.customers, sizes.months, sizes.seed, start=start))
    records = stages.inbound_records(lines)
    workload = run.results["workload"]
    workload.update({"customers": sizes.customers, "months": sizes.months, "seed": sizes.seed,
                     "inbound_records": len(lines), "inbound_bytes": sum(map(len, lines)),
                     "partitions": settings.partitions})
    from consumers.topics import ensure_topics

    needs_ledger = any(run.wanted(group) for group in ("ingest", "relay", "project", "rebuild", "web"))
    if needs_ledger or run.wanted("latency"):
        ensure_topics(main)
    ledger = Ledger(main.store_url) if needs_ledger else None
    ledger_values: list[bytes] = []
    try:
        if ledger is not None:
            ingest = run.stage("stages", "ingest_ledger", lambda: stages.ingest_ledger(ledger, records), say)
            workload["ledger_events"] = (ingest or {}).get("events", 0)
            if ingest and run.wanted("ingest"):
                rows_per_batch = max(1, round(ingest["stored_rows_per_record"] * ingest["batch_records"]))
                state_bytes = stages.store_state_bytes_mean(ledger)
                run.stage("baselines", "store_append", lambda: stages.store_append(
                    f"sqlite:///{home / 'append.sqlite'}", ingest["stored_rows"], rows_per_batch, state_bytes,
                    sizes.customers), say)
            relay = run.stage("stages", "relay", lambda: stages.relay(main, ledger), say)
            if relay:
                consumed = run.stage("baselines", "raw_consume_ledger",
                                     lambda: stages.raw_consume(main, main.topic(TOPIC_LEDGER), keep=True), say)
                ledger_values = consumed[1] if consumed else []
                if ledger_values:
                    run.stage("baselines", "produce_ledger", lambda: stages.raw_produce(
                        stages.settings_for(settings, home / "produce", prefix + "produce."), ledger_values), say)
        if run.wanted("ingest"):
            kafka_ingest = run.stage("stages", "ingest_kafka", lambda: stages.ingest_kafka(
                main, f"sqlite:///{home / 'ingest-kafka.sqlite'}", lines), say)
            if kafka_ingest:
                run.results["baselines"]["produce_inbound"] = kafka_ingest[1]
            run.stage("baselines", "raw_consume_inbound",
                      lambda: stages.raw_consume(main, main.topic(TOPIC_INBOUND)), say)
            run.stage("baselines", "consumer_performance_inbound", lambda: stages.consumer_performance(
                main, main.topic(TOPIC_INBOUND), len(lines)), say)
        else:
            for key in ("ingest_kafka",):
                run.skip("stages", key, "not selected (--only)")
        if ledger_values and run.wanted("project"):
            run.stage("baselines", "consumer_performance_ledger", lambda: stages.consumer_performance(
                main, main.topic(TOPIC_LEDGER), len(ledger_values)), say)
            run.stage("stages", "fold", lambda: stages.fold(ledger_values, home / "fold.duckdb",
                                                            main.topic(TOPIC_LEDGER)), say)
            run.stage("stages", "projector", lambda: stages.projector(main, home / "projector.duckdb"), say)
            run.stage("baselines", "naive_projector", lambda: stages.naive_projector(
                ledger_values[:sizes.naive_events], home / "naive.duckdb"), say)
        if ledger_values and run.wanted("rebuild"):
            measure_rebuild(run, settings, main, home, prefix, ledger_values, say)
    finally:
        if ledger is not None:
            ledger.close()
    if run.wanted("latency"):
        e2e = stages.settings_for(settings, home / "e2e", prefix + "e2e.")
        needed = sizes.customers + int(sizes.latency_rate * sizes.latency_seconds)
        e2e_lines = list(itertools.islice(generate(max(sizes.customers, 50), max(sizes.months, 12), sizes.seed + 1,
                                                   start=start), needed))
        from bench.latency import end_to_end

        run.stage("stages", "e2e_latency", lambda: end_to_end(
            e2e, e2e_lines, sizes.latency_rate, sizes.latency_seconds, home / "e2e" / "workers.log"), say)
    if run.wanted("workers"):
        from bench.scaling import scaling

        run.stage("stages", "workers", lambda: scaling(settings, home / "workers", prefix + "workers.", lines,
                                                       sizes.worker_counts, say), say)
    if run.wanted("store"):
        run.stage("stages", "store", lambda: stages.store_ingest(records, f"sqlite:///{home / 'store.sqlite'}"), say)
    if run.wanted("decisions"):
        decisions = stages.settings_for(settings, home / "decisions", prefix + "decisions.")
        run.stage("stages", "decision_latency", lambda: stages.decision_latency(
            decisions, sizes.decision_orders_per_s, sizes.decision_background_per_s, sizes.decision_seconds,
            sizes.decision_warmup_s, sizes.decision_customers), say)
    if run.wanted("aging"):
        measure_aging(run, home, say)
    if run.wanted("sustained"):
        sustained_lines = list(itertools.islice(
            generate(max(sizes.customers, 50), max(sizes.months, 12), sizes.seed + 2, start=start),
            sizes.customers + int(max(sizes.sustained_rates) * sizes.sustained_seconds)))
        run.stage("stages", "sustained", lambda: stages.sustained(
            settings, home / "sustained", prefix + "sustained.", sustained_lines, sizes.sustained_rates,
            sizes.sustained_seconds, say), say)
    if run.wanted("web"):
        from bench.web import measure_web

        run.stage("stages", "web", lambda: measure_web(main, ledger_values, main.topic(TOPIC_LEDGER), home,
                                                        bool(run.results["quick"]), say), say)
    if run.wanted("publish"):
        from bench import publish

        run.stage("stages", "publish", lambda: publish.measure(
            home / "publish", run.sizes.publish_events, run.sizes.publish_seconds, say,
            customers=min(run.sizes.customers, 300), months=run.sizes.months), say)
    if profile:
        measure_profiles(run, home, records, ledger_values, main, say)
    for section, keys in (("stages", STAGE_KEYS), ("baselines", BASELINE_KEYS)):
        for key in keys:
            if run.results[section][key] is None:
                run.skip(section, key, "not run (not selected, or a stage it needs failed)")


def measure_rebuild(run: Run, settings: Settings, main: Settings, home: Path, prefix: str,
                    ledger_values: list[bytes], say: Callable[[str], None]) -> None:
    try:
        import consumers.rebuild  # noqa: F401  (built by another issue; measured when present)
    except ImportError:
        run.skip("stages", "rebuild_ledger", "consumers/rebuild.py is not available")
        run.skip("stages", "rebuild_store", "consumers/rebuild.py is not available")
        return
    big = stages.settings_for(settings, home / "rebuild", prefix + "big.")
    from consumers.topics import ensure_topics

    ensure_topics(big)
    filled = run.stage("stages", "rebuild_fill", lambda: stages.fill_rebuild_topic(
        big, ledger_values, max(run.sizes.rebuild_events, len(ledger_values))), say)
    run.results["stages"].pop("rebuild_fill", None)
    if filled:
        run.results["workload"]["rebuild_topic_events"] = filled["events"]
        run.results["workload"]["rebuild_topic_note"] = (
            f"the {len(ledger_values):,} real ar.ledger records, then copies under other customer ids "
            f"({filled['copies']} passes in all)")
        run.stage("stages", "rebuild_ledger", lambda: stages.rebuild(big, home / "rebuild.duckdb", False), say)
    run.stage("stages", "rebuild_store", lambda: stages.rebuild(main, home / "rebuild-store.duckdb", True), say)


def measure_aging(run: Run, home: Path, say: Callable[[str], None]) -> None:
    as_of = dt.date.today()
    figures: dict[str, Any] = {}

    def one(items: int) -> dict[str, Any]:
        path = home / f"aging-{items}.duckdb"
        built = stages.build_aging_file(path, items, as_of)
        try:
            return {**built, **stages.aging_latency(path, as_of)}
        finally:
            path.unlink(missing_ok=True)

    for items in run.sizes.aging_items:
        say(f"aging over {items:,} open items ...")
        try:
            figures[str(items)] = one(items)
            say(f"aging over {items:,} open items: {figures[str(items)]['ms_median']} ms (median)")
        except Exception as error:
            figures[str(items)] = {"error": f"{type(error).__name__}: {error}"}
            run.results["errors"][f"aging_{items}"] = figures[str(items)]["error"]
    run.results["stages"]["aging"] = figures


def measure_profiles(run: Run, home: Path, records, ledger_values: list[bytes], main: Settings,
                     say: Callable[[str], None]) -> None:
    """Profile the stages whose targets are missed, so the note can say what limits them."""
    results = run.results
    results["summary"] = report.summary_rows(results)
    missed = {target["name"] for target in report.measured_targets(results) if target["met"] is False}
    if missed & {"ingest_rate", "ingest_vs_store_append"} and records:
        say("profiling the ingest ...")
        sample = records[:PROFILE_RECORDS_MAX]
        results["profiles"]["ingest_ledger"] = stages.profile_ingest(f"sqlite:///{home / 'profile.sqlite'}", sample)
        say("the ingest again with the garbage collector tuned ...")
        results["profiles"]["ingest_ledger_gc_tuned"] = stages.ingest_gc_tuned(
            f"sqlite:///{home / 'gc-tuned.sqlite'}", records)
    if missed & {"projector_vs_raw_consume", "rebuild_rate"} and ledger_values:
        say("profiling the fold ...")
        path = home / "profile.duckdb"
        results["profiles"]["fold"] = stages.profile(
            lambda: stages.fold(ledger_values, path, main.topic(TOPIC_LEDGER)))


def notes(results: dict[str, Any]) -> list[str]:
    """What limits each missed target, in a sentence, from the figures and profiles of this run."""
    stages_, baselines = results["stages"], results["baselines"]
    found = []
    for target in results["targets"]:
        if target["met"] is not False:
            continue
        name = target["name"]
        if name in ("ingest_rate", "ingest_vs_store_append"):
            if name == "ingest_vs_store_append" and any(
                    t["name"] == "ingest_rate" and t["met"] is False for t in results["targets"]):
                found[-1] = found[-1].replace(". The event store", f"; {target['what']}: {target['shortfall']}. "
                                                                   "The event store", 1)
                continue
            top = (results["profiles"].get("ingest_ledger") or [])[:5]
            tuned = (results["profiles"].get("ingest_ledger_gc_tuned") or {}).get("records_per_s")
            measured = (stages_.get("ingest_ledger") or {}).get("records_per_s")
            gc_text = ""
            if tuned and measured:
                gc_text = (f" With Python's cyclic GC tuned (gc.freeze(), higher thresholds) the same ingest ran at "
                           f"{tuned:,.0f} records/s ({tuned / measured - 1:+.0%}): "
                           + ("part of the time is the collector walking the ledger's large in-memory caches."
                              if tuned > measured * 1.1 else "the collector is not what limits it."))
            found.append(f"{target['what']}: {target['shortfall']}. The event store's raw append at the same rows "
                         f"per batch runs at {(baselines.get('store_append') or {}).get('rows_per_s', 0):,.0f} rows/s, "
                         "so the time goes to the ledger's Python work per record (decode, rules, eventsourcing's "
                         "event objects and JSON transcoding), not to SQLite; most own time in the profile: "
                         + (", ".join(f"{row['function']} {row['own_share']:.0%}" for row in top) or "(no profile)")
                         + "." + gc_text)
        elif name == "projector_vs_raw_consume":
            fold_rate = (stages_.get("fold") or {}).get("events_per_s")
            raw = (baselines.get("raw_consume_ledger") or {}).get("records_per_s")
            if fold_rate and raw:
                reached = (stages_.get("projector") or {}).get("events_per_s") or 0
                found.append(f"{target['what']}: {target['shortfall']}. The projector reads ar.ledger ahead on its "
                             f"own thread (raw consume here: {raw:,.0f}/s) while DuckDB folds the previous batch "
                             f"(fold alone here: {fold_rate:,.0f} events/s), so it can reach at most the slower of "
                             f"the two, {min(raw, fold_rate):,.0f}/s ({min(raw, fold_rate) / raw:.0%} of raw consume); "
                             f"it reached {reached:,.0f}/s. Every 2 s it also copies the whole DuckDB file as the "
                             "published snapshot, and its two threads share one Python interpreter; how the gap "
                             "divides between those is not measured here.")
        elif name == "rebuild_rate":
            raw = (baselines.get("raw_consume_ledger") or {}).get("records_per_s") or 0
            fold_rate = (stages_.get("fold") or {}).get("events_per_s") or 0
            rebuild_rate = target["measured"] or 0
            found.append(f"{target['what']}: {target['shortfall']}. It reads ar.ledger with kafka-python (raw "
                         f"consume here: {raw:,.0f} records/s) in a thread while DuckDB folds the previous batch "
                         f"(fold alone here: {fold_rate:,.0f} events/s), so it can reach at most the slower of the "
                         f"two, {min(raw, fold_rate) or 0:,.0f}/s; it reached {rebuild_rate:,.0f}/s.")
        elif name == "e2e_p99":
            e2e = stages_.get("e2e_latency") or {}
            ingest_p99 = (e2e.get("ingest_committed") or {}).get("p99_ms")
            ingest_rate = (stages_.get("ingest_kafka") or {}).get("records_per_s")
            offered = e2e.get("offered_rate_per_s") or 0
            keeps_up = (ingest_rate or 0) > offered
            found.append(f"{target['what']}: {target['shortfall']}. Of that, the ingest checkpoint alone took "
                         f"p99 {ingest_p99} ms. The default run gives ingest, relay and projector a thread each "
                         "(one process, one GIL): they overlap only where a stage waits on I/O, and each stage still "
                         "takes a whole batch at a time; "
                         + (f"the ingest worker alone sustains {ingest_rate:,.0f} records/s, above the offered "
                            f"{offered:,}/s, but sharing the process with the relay and the projector the pipeline "
                            f"only just keeps up (the backlog cleared {e2e.get('settle_after_last_send_s')} s after "
                            "the last send), so records queue between the turns."
                            if keeps_up else
                            f"the ingest worker sustains {ingest_rate or 0:,.0f} records/s here, below the offered "
                            f"{offered:,}/s, so the backlog grows (it took {e2e.get('settle_after_last_send_s')} s to "
                            "clear after the last send)."))
        elif name == "aging_1m":
            figures = (stages_.get("aging") or {}).get("1000000") or {}
            current, known_at = figures.get("current_state_ms_median"), figures.get("known_at_ms_median")
            found.append(f"{target['what']}: {target['shortfall']}. As of today without --known-at the report "
                         "reads the items' current open amounts (no movement scan); "
                         + (f"the bucket sums alone over those items take {current:,.1f} ms here, the rest is the "
                            "report around them: the check that no movement is effective later, the join of the "
                            f"{figures.get('customers', 0):,} customers and their unapplied cash, and one row per "
                            "customer built in Python. " if current is not None else "")
                         + (f"With --known-at it sums every item movement (≈ 1.3 per item) instead: "
                            f"{known_at:,.1f} ms." if known_at is not None else ""))
        elif name == "decision_p99":
            found.append(_decision_note(target, stages_))
        elif name == "rows_per_record":
            found.append(f"{target['what']}: {target['shortfall']}. Each domain event is still one eventsourcing "
                         "row and each accepted envelope's receipt one more (docs/decisions.md, 'Issue 13: one "
                         "stored row per envelope — not done').")
        elif name == "relay_vs_produce":
            relay_s = (stages_.get("relay") or {}).get("seconds")
            produce_s = (baselines.get("produce_ledger") or {}).get("seconds")
            found.append(f"{target['what']}: {target['shortfall']}. The relay took {relay_s} s where producing the "
                         f"same records took {produce_s} s: besides the sends it reads and decodes the store's rows, "
                         "hashes each record, saves the chain twice per batch and waits for every batch's "
                         "acknowledgements before chaining the next (its read and hashing overlap the sends).")
        elif name == "postgresql_vs_sqlite":
            found.append(f"{target['what']}: {target['shortfall']}. The domain work per record is the same on both; "
                         "the difference lies in eventsourcing's PostgreSQL recorder (an exclusive table lock, "
                         "pipelined INSERTs over TCP, a durable commit) against SQLite's in-process executemany, "
                         "and in reading receipts and accounts back over TCP; not profiled stage by stage yet.")
        elif name in ("sustained_rate", "sustained_p99_at_2000"):
            steps = (stages_.get("sustained") or {}).get("steps") or {}
            found.append(f"{target['what']}: {target['shortfall']}. Per step (offered/s: p99 ms, ingest-checkpoint "
                         "p99 ms): " + "; ".join(f"{rate}: {step.get('p99_ms')}, {step.get('ingest_committed_p99_ms')}"
                                                 for rate, step in steps.items()) + ".")
    return found


def _decision_note(target: dict[str, Any], stages_: dict[str, Any]) -> str:
    """Why credit decisions take long: they leave with their ingest batch, behind the background events."""
    figures = stages_.get("decision_latency") or {}
    offered = (figures.get("orders_per_s") or 0) + (figures.get("background_events_per_s") or 0)
    capacity, source = (stages_.get("ingest_kafka") or {}).get("records_per_s"), "the ingest worker on Kafka"
    if not capacity:
        capacity, source = (stages_.get("store") or {}).get("sqlite", {}).get("records_per_s"), "in process, SQLite"
    text = (f"{target['what']}: {target['shortfall']} (p50 {figures.get('p50_ms')} ms, max {figures.get('max_ms')} "
            "ms). The ingest worker decides an order inside its checkpoint: it polls up to 2,000 records, saves "
            "the whole batch in one transaction and only then publishes that batch's decisions, so an order waits "
            "for the rest of its batch and for the batch before it; the orders are a tenth of the records, the "
            "sales and payments around them set the batch size.")
    if capacity:
        text += (f" Offered {offered:,.0f} records/s in all; one ingest process took {capacity:,.0f} records/s in "
                 f"this run ({source}), so that load alone needs ≈ {offered / capacity:.0%} of its time, before "
                 "the relay and projector process beside it, the benchmark's own producer and consumer and any "
                 "other load on the machine take their share"
                 + ("; beyond 100 % a backlog builds and the latency grows over the run." if offered >= capacity
                    else "; whenever it falls behind, the batches grow to their 2,000-record limit."))
    return text
