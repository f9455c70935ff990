"""The ingest worker's checkpoint on the real broker: the offset commit is sent without waiting for the
broker's answer, so it must still land with nobody polling, be confirmed (logged) at the next poll, and
a clean close must leave every handled record committed."""

from __future__ import annotations

import pytest
from structlog.testing import CapturingLogger

from arledger.settings import TOPIC_DECISIONS, TOPIC_INBOUND, Settings
from consumers import ingest
from consumers.ingest import INGEST_GROUP_ID, IngestWorker
from consumers.publisher import end_offsets, publish_lines
from consumers.topics import admin_client, ensure_topics
from helpers import line, read_topic, wait_until
from tests.builders import fact
from ledger.application import Ledger

pytestmark = pytest.mark.kafka


def committed(settings: Settings) -> dict[int, int]:
    group = settings.topic(INGEST_GROUP_ID)
    with admin_client(settings) as admin:
        offsets = admin.list_group_offsets(group).get(group, {})
    return {tp.partition: om.offset for tp, om in offsets.items() if om.offset >= 0}


def inbound_end(settings: Settings) -> dict[int, int]:
    return {p: offset for p, offset in end_offsets(settings, settings.topic(TOPIC_INBOUND)).items() if offset}


def test_commits_land_without_a_poll_are_logged_at_the_next_and_close_commits_the_rest(
        kafka_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    ensure_topics(kafka_settings)
    ledger = Ledger(kafka_settings.store_url)
    worker = IngestWorker(kafka_settings, ledger)
    logger = CapturingLogger()
    monkeypatch.setattr(ingest, "log", logger)

    def logged(event: str) -> list[dict]:
        return [call.kwargs for call in logger.calls if call.args == (event,)]

    try:
        publish_lines(kafka_settings, [line(fact("customer.registered", {
            "name": "K", "currency": "EUR", "credit_limit": 100_000, "payment_terms_days": 30},
                                                 id="k1-reg", customer_id="K1", on="2026-01-01"))])
        wait_until(lambda: worker.run_once(500) > 0, "the worker to join its group and take the registration")
        # Nobody polls now: the commit was sent by the client's own I/O thread.
        wait_until(lambda: committed(kafka_settings) == inbound_end(kafka_settings), "the commit to land")
        assert not logged("batch_committed")  # the answer is not read yet
        assert worker.run_once(0) == 0
        (first,) = logged("batch_committed")
        assert (first["accepted"], first["records"]) == (1, 1)

        publish_lines(kafka_settings, [line(fact("order.placed", {
            "order_id": f"O-{n}", "amount": 1_000, "currency": "EUR"},
                                                 id=f"k1-o{n}", customer_id="K1", on="2026-01-05")) for n in range(3)])
        handled = 0
        while handled < 3:
            handled += worker.run_once(500)
        worker.close()  # commits what is unconfirmed, waiting for the answer
        assert committed(kafka_settings) == inbound_end(kafka_settings)
        batches = logged("batch_committed")
        assert sum(entry["accepted"] for entry in batches) == 4 and sum(e["decisions"] for e in batches) == 3
        assert len(read_topic(kafka_settings, TOPIC_DECISIONS, at_least=3)) == 3
    finally:
        worker.close()
        ledger.close()
