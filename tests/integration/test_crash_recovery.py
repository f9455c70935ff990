"""Crash recovery: the workers are killed (SIGKILL) at each named fault point and restarted; the result
equals a clean run of the same input — nothing lost, nothing applied twice (docs/contract.md §4, §5, §6).

Each run: a warm-up record goes all the way through clean workers (so there is committed state
everywhere: group offsets, chain, projection offsets), which then stop. The workload (with bad records
and exact re-sends) is published while no worker runs; `arledger run` starts with
ARLEDGER_CRASH_AT=<point>, so the first batch of real work reaches the point and the process kills
itself. The restarted workers (no fault) must finish the job. The projection file is read after a
SIGTERM stop. The clean run does the same without a fault.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import MemberToRemove

from arledger.generate import generate_labelled
from arledger.settings import TOPIC_DECISIONS, TOPIC_INBOUND, TOPIC_LEDGER, TOPIC_REJECTED, Settings
from consumers.ingest import INGEST_GROUP_ID, IngestWorker
from consumers.publisher import end_offsets, publish_lines, wait_for_outcomes
from consumers.topics import admin_client, ensure_topics
from helpers import (Workers, env_of, ledger_counts, line, projection_rows, query, read_topic, running_workers,
                     settings_on, wait_until)
from tests.builders import fact, registered
from ledger.application import Ledger

pytestmark = pytest.mark.slow

FAULT_POINTS = ("ingest.after_store_commit", "ingest.after_reject_publish", "relay.after_chain_saved",
                "relay.after_publish", "project.mid_transaction")
WAIT_TIMEOUT_S = 120.0  # a restarted ingest worker rejoins its group only after the dead member's session expires
WARM_UP = line(registered(limit=0, terms=30, on="2026-01-01", customer_id="WARM", id="warm-up-reg", name="Warm-up"))


def workload() -> list[bytes]:
    """265 generated envelopes of 20 customers over 3 months, 18 of them bad (every reason code, exact re-sends)."""
    return [raw for _, raw in generate_labelled(20, 3, seed=13, start=dt.date(2026, 1, 1), bad_share=0.06)]


@dataclass
class RunResult:
    counts: Counter[str]
    tables: dict[str, list[tuple[Any, ...]]]
    positions: tuple[int, int, int, int]  # min, max, count, distinct count in ledger_events
    envelopes: int  # distinct (customer_id, envelope_id) in ledger_events
    stored_events: int  # account events in the event store
    ledger_records: list[dict[str, Any]]
    rejects: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    log: list[dict[str, Any]]  # the JSON log lines of the last worker process (after the restart)

    def batches(self, worker: str) -> list[dict[str, Any]]:
        return [entry for entry in self.log if entry.get("event") == "batch_committed" and entry.get("worker") == worker]


def run_workload(settings: Settings, home: Path, fault: str | None) -> RunResult:
    """Warm-up, then the workload; with a fault: the process must die by SIGKILL and a restart finish."""
    ensure_topics(settings)
    env = env_of(settings)
    with running_workers(env, log_path=home / "warm-up.log"):
        warm_up = publish_lines(settings, [WARM_UP])
        wait_for_outcomes(settings, warm_up, {}, WAIT_TIMEOUT_S)
    # Published while no worker runs, so the first batch of each worker holds (nearly) all of it.
    published = warm_up + publish_lines(settings, workload())
    workers = Workers(env, log_path=home / "crash.log", extra_env={"ARLEDGER_CRASH_AT": fault} if fault else {})
    try:
        workers.wait_started()
        if fault:
            status = workers.wait_killed()
            assert status == -signal.SIGKILL, f"exit status {status}, not SIGKILL\n{workers.log_tail()}"
            workers = Workers(env, log_path=home / "recovery.log").wait_started()
        counts = wait_for_outcomes(settings, published, {}, WAIT_TIMEOUT_S)
    except BaseException:
        workers.kill()
        raise
    workers.stop()
    return collect(settings, counts, workers.log_path)


def collect(settings: Settings, counts: Counter[str], log_path: Path) -> RunResult:
    path = settings.projection_path
    positions, envelopes, stored_events = ledger_counts(settings)
    return RunResult(
        counts=counts, tables=projection_rows(path), positions=positions, envelopes=envelopes,
        stored_events=stored_events,
        ledger_records=[r.json() for r in read_topic(settings, TOPIC_LEDGER)],
        rejects=[r.json() for r in read_topic(settings, TOPIC_REJECTED)],
        decisions=[r.json() for r in read_topic(settings, TOPIC_DECISIONS)],
        log=[json.loads(text) for text in log_path.read_text().splitlines() if text.startswith("{")])


@pytest.fixture(scope="module")
def clean_run(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    home = tmp_path_factory.mktemp("clean-run")
    settings = settings_on(kafka_bootstrap, home, f"t{uuid.uuid4().hex[:8]}.")
    return run_workload(settings, home, fault=None)


def test_the_clean_run_applies_every_accepted_envelope_once(clean_run: RunResult) -> None:
    n = clean_run.stored_events
    assert clean_run.positions == (1, n, n, n)
    assert clean_run.envelopes == clean_run.counts["accepted"]
    assert clean_run.counts["rejected"] > 0 and clean_run.counts["duplicate"] > 0  # the workload has bad input
    assert len(clean_run.ledger_records) == n  # no fault: nothing re-published


@pytest.mark.parametrize("fault", FAULT_POINTS)
def test_a_crash_at_the_fault_point_loses_and_doubles_nothing(
        fault: str, clean_run: RunResult, kafka_settings: Settings, tmp_path: Path) -> None:
    crashed = run_workload(kafka_settings, tmp_path, fault)

    # Every record has the same outcome as in the clean run: redelivered ones are no-ops.
    assert crashed.counts == clean_run.counts
    # No position missing or doubled; every event in the store is projected, each envelope applied once.
    n = crashed.stored_events
    assert n == clean_run.stored_events
    assert crashed.positions == (1, n, n, n)
    assert crashed.envelopes == crashed.counts["accepted"]
    # The read models equal those of the clean run, row for row.
    assert crashed.tables.keys() == clean_run.tables.keys()
    for table in clean_run.tables:
        assert crashed.tables[table] == clean_run.tables[table], f"table {table} differs from the clean run"
    # ar.ledger: at least once, never a different record under the same position.
    by_position = {}
    for record in crashed.ledger_records:
        assert by_position.setdefault(record["position"], record) == record
    assert sorted(by_position) == list(range(1, n + 1))
    assert_the_fault_struck_and_recovery_redid_it(fault, crashed, clean_run)
    # ar.rejected and ar.decisions: at least once, the same content as the clean run.
    assert distinct(crashed.rejects, drop=("rejected_at", "topic", "partition", "offset")) == \
        distinct(clean_run.rejects, drop=("rejected_at", "topic", "partition", "offset"))
    assert distinct(crashed.decisions, drop=("decided_at",)) == distinct(clean_run.decisions, drop=("decided_at",))
    assert len(distinct(crashed.decisions, drop=())) == len(distinct(crashed.decisions, drop=("decided_at",)))


def distinct(records: list[dict[str, Any]], drop: tuple[str, ...]) -> set[str]:
    """The records without the fields that differ between runs, as a set of canonical JSON texts."""
    return {json.dumps({k: v for k, v in record.items() if k not in drop}, sort_keys=True) for record in records}


def assert_the_fault_struck_and_recovery_redid_it(fault: str, crashed: RunResult, clean_run: RunResult) -> None:
    """What the restarted workers' log and the topics show for each fault point."""
    worker = fault.split(".")[0]
    if worker == "ingest":
        # The crashed batch was in the event store: redelivered, its records were duplicates, not new facts,
        # and the decisions its orders got were published again (the same records, see decided_at below).
        redelivered = sum(b["duplicate"] for b in crashed.batches("ingest")) - clean_run.counts["duplicate"]
        assert redelivered > 0
        assert sum(b["accepted"] for b in crashed.batches("ingest")) == clean_run.counts["accepted"] - 1 - redelivered
    if worker == "relay":
        # The chained but unconfirmed batch was re-published with its stored positions and hashes.
        assert any(entry.get("event") == "pending_republished" for entry in crashed.log)
    if fault == "relay.after_publish":
        assert len(crashed.ledger_records) > crashed.stored_events  # published twice: the projector deduped
    if worker == "project":
        # The batch rolled back with the process was applied by the restarted projector.
        assert sum(b["applied"] for b in crashed.batches("project")) == crashed.stored_events - 1


def test_an_ingest_worker_dropped_from_its_group_mid_batch_carries_on(kafka_settings: Settings) -> None:
    """A member that loses its group membership between the ledger save and the offset commit (a long
    pause, an admin removal) cannot commit; it must not retry blindly and die, but rejoin and take the
    batch again, as no-ops."""
    ensure_topics(kafka_settings)
    group = kafka_settings.topic(INGEST_GROUP_ID)
    ledger = Ledger(kafka_settings.store_url)
    worker = IngestWorker(kafka_settings, ledger)
    try:
        publish_lines(kafka_settings, [line(fact("customer.registered", {
            "name": "Dropped", "currency": "EUR", "credit_limit": 100_000, "payment_terms_days": 30},
                                                 id="d1-reg", customer_id="D1", on="2026-01-01"))])
        wait_until(lambda: worker.run_once(500) > 0, "the worker to join its group and take the registration")
        publish_lines(kafka_settings, [line(fact("order.placed", {
            "order_id": "O-1", "amount": 20_000, "currency": "EUR"},
                                                 id="d1-o1", customer_id="D1", on="2026-01-05"))])
        save = ledger.process_batch

        def save_then_lose_membership(records):
            outcomes = save(records)
            with admin_client(kafka_settings) as admin:
                members = admin.describe_groups([group])[group]["members"]
                admin.remove_group_members(group, [MemberToRemove(member_id=m["member_id"]) for m in members])
            return outcomes

        ledger.process_batch = save_then_lose_membership
        started = time.monotonic()
        assert worker.run_once(5_000) == 1
        assert time.monotonic() - started < 10  # no blind commit retries (they took ~30 s, then the worker died)
        ledger.process_batch = save
        wait_until(lambda: worker.run_once(500) > 0, "the order again, after the worker rejoined")
        end = end_offsets(kafka_settings, kafka_settings.topic(TOPIC_INBOUND))

        def committed_to_the_end() -> bool:  # the worker sends its commit without waiting for the answer
            with admin_client(kafka_settings) as admin:
                committed = admin.list_group_offsets(group)[group]
            return {tp.partition: om.offset for tp, om in committed.items() if om.offset >= 0} == \
                {p: offset for p, offset in end.items() if offset}

        wait_until(committed_to_the_end, "the redelivered batch's offsets committed")
        # Stored once; its decision published again on redelivery, the very same record.
        assert [event.envelope_id for event in ledger.stored_events("D1")] == ["d1-reg", "d1-o1", "d1-o1"]
        decisions = [record.value for record in read_topic(kafka_settings, TOPIC_DECISIONS, at_least=2)]
        assert len(decisions) == 2 and decisions[0] == decisions[1]
    finally:
        worker.close()
        ledger.close()
