"""A fuzzed batch through the real broker and `arledger run`: every record gets exactly one outcome (accepted,
rejected with a reason, or duplicate), nothing crashes or stalls (`ingest --wait` returns), and the ledger
still verifies. Records with a wrong or missing Kafka key and a ~300 KB record are among them."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from arledger.settings import TOPIC_REJECTED, Settings
from consumers.ingest import origin_of
from ledger.errors import REASON_CODES
from tests.fuzzing import fuzzed_lines
from tests.integration.helpers import cli, ingest_wait, produce, read_topic, running_workers

pytestmark = [pytest.mark.kafka, pytest.mark.slow]
RECORDS = 400


def test_a_fuzzed_batch_gets_one_outcome_per_record_and_nothing_stalls(kafka_env: dict[str, str],
                                                                        kafka_settings: Settings,
                                                                        tmp_path: Path) -> None:
    lines = fuzzed_lines(RECORDS, seed=11)
    assert max(map(len, lines)) > 250_000  # an oversized record is among them
    path = tmp_path / "fuzzed.jsonl"
    path.write_bytes(b"".join(line + b"\n" for line in lines))
    # Records no upstream should send: keyed to another customer, keyless, empty.
    odd = [(b"C9", lines[0]), (None, lines[1]), (b"C1", b"")]
    with running_workers(kafka_env, log_path=tmp_path / "run.log") as workers:
        odd_offsets = [produce(kafka_settings, "ar.inbound", key, value) for key, value in odd]
        counts = ingest_wait(kafka_env, path)  # returns: every record has an outcome, the projection caught up
        assert workers.process.poll() is None  # nothing crashed
    sent = [line for line in lines if line.strip()]
    assert counts["accepted"] + counts["rejected"] + counts["duplicate"] == len(sent)
    assert counts["accepted"] > 0 and counts["duplicate"] > 0 and counts["rejected"] > 0
    assert counts.get("rejected internal_error", 0) == 0  # no record made the ledger's own code fail
    rejects = [record.json() for record in read_topic(kafka_settings, TOPIC_REJECTED)]
    reasons_by_origin: dict[str, set[str]] = {}
    for reject in rejects:
        assert reject["reason"] in REASON_CODES and reject["message"], reject
        reasons_by_origin.setdefault(origin_of(reject["topic"], reject["partition"], reject["offset"]),
                                     set()).add(reject["reason"])
    assert all(len(reasons) == 1 for reasons in reasons_by_origin.values())  # one outcome each
    assert len(reasons_by_origin) == counts["rejected"] + len(odd)
    inbound = kafka_settings.topic("ar.inbound")
    odd_reasons = [reasons_by_origin[origin_of(inbound, partition, offset)] for partition, offset in odd_offsets]
    assert odd_reasons == [{"invalid_envelope"}, {"invalid_envelope"}, {"invalid_json"}]
    by_reason = Counter(reason for reasons in reasons_by_origin.values() for reason in reasons)
    assert {"invalid_json", "invalid_envelope", "invalid_field"} <= set(by_reason)
    verified = json.loads(cli(kafka_env, "verify", "--format", "json", "--no-progress").stdout)
    assert verified["ok"]
