"""Bench stage `publish` (issue 14): what publishing the read model costs the projector, at two ledger sizes.

For each size (default 1 M and 5 M events) a read model is built: real ledger
records (the generator's history run through the real Ledger, as the relay
publishes them) are folded once, then every position-keyed table is replicated
in SQL under other customer ids (`R1-C0001`, ...) up to the size. Then the
projector's loop runs for `seconds`: fold a batch of new records (more copies,
PROJECT_BATCH_EVENTS_MAX each), publish when SNAPSHOT_INTERVAL_S has passed,
exactly as `consumers.project.Projector` does. Measured:

- staleness of each batch = from its commit to the end of the first publication
  that includes it (what a reader can be behind), p50/p99/max;
- share of projector time = Σ publication seconds ÷ elapsed seconds;
- blocks written per publication vs the file's blocks (what a whole copy wrote).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

from arledger.settings import PROJECT_BATCH_EVENTS_MAX, SNAPSHOT_INTERVAL_S
from projections import publication, schema
from projections.fold import apply_batch

TOPIC = "ar.ledger"


def ledger_values(customers: int, months: int, seed: int) -> list[bytes]:
    """ar.ledger records of a generated history, as the relay publishes them."""
    from arledger.generate import generate
    from consumers.relay import ledger_record
    from ledger.application import InboundRecord, Ledger
    from ledger.hashing import GENESIS_HASH
    from ledger.records import record_encoder

    ledger = Ledger("memory://")
    lines = list(generate(customers, months, seed, bad_share=0.0))
    decoder = msgspec.json.Decoder()
    for start in range(0, len(lines), 2_000):
        ledger.process_batch([InboundRecord(value=line, key=decoder.decode(line)["customer_id"].encode())
                              for line in lines[start:start + 2_000]])
    values, prev_hash, last, position = [], GENESIS_HASH, 0, 0
    while stored := ledger.read_ledger(last, 10_000):
        for notification_id, event in stored:
            position += 1
            record = ledger_record(position, notification_id, event, prev_hash)
            prev_hash, last = record.hash_global, notification_id
            values.append(record_encoder.encode(record))
    return values


def _copy_values(values: list[bytes], copy: int) -> list[bytes]:
    """The records again under customer ids `R{copy}-…` with positions shifted past the earlier copies."""
    decoder, encoder = msgspec.json.Decoder(), msgspec.json.Encoder()
    shift = copy * len(values)
    out = []
    for value in values:
        record = decoder.decode(value)
        record["position"] += shift
        record["customer_id"] = f"R{copy}-{record['customer_id']}"
        out.append(encoder.encode(record))
    return out


def build_read_model(path: Path, values: list[bytes], events: int) -> int:
    """A projection file of about `events` events: `values` folded, then replicated in SQL. Returns copies."""
    for stale in (path, path.with_name(path.name + ".wal")):
        stale.unlink(missing_ok=True)
    connection = schema.connect(str(path))
    schema.create_schema(connection)
    try:
        apply_batch(connection, values, {(TOPIC, 0): len(values)}, staging_dir=path.parent)
        copies = max(1, events // len(values))
        base = len(values)
        connection.execute("SET checkpoint_threshold = '1TB'")
        for name, (_, columns) in schema.TABLES.items():
            names = [row[0] for row in connection.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database()"
                " ORDER BY column_index", [name]).fetchall()]
            if "position" not in names or "customer_id" not in names:
                continue
            select = ", ".join(
                f"position + k * {base}" if column == "position"
                else "'R' || k || '-' || customer_id" if column == "customer_id" else f'"{column}"'
                for column in names)
            connection.execute(f"INSERT INTO {name} SELECT {select} FROM {name}, range(1, {copies}) r(k) "
                               f"WHERE position <= {base}")
        connection.execute("UPDATE projection_offsets SET next_offset = ?", [copies * base])
        connection.execute("CHECKPOINT")
    finally:
        connection.close()
    return copies


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(fraction * (len(ordered) - 1)))))]


def projector_loop(path: Path, values: list[bytes], first_copy: int, seconds: float) -> dict[str, Any]:
    """Fold new copies batch by batch for `seconds`, publishing as the projector does; staleness and share."""
    snapshot = path.with_name("snapshot.duckdb")
    publication.remove(snapshot)
    connection = schema.connect(str(path))  # DuckDB's default checkpoint threshold, as the projector
    live_fd = os.open(path, os.O_RDONLY)
    try:
        # Both generations are made by whole copies, once, before the loop (as a projector's first two
        # publications after its start); the loop then measures the steady state.
        first = publication.publish(connection, path, snapshot, live_fd)
        publication.publish(connection, path, snapshot, live_fd)
        pending: list[float] = []  # commit times of batches not yet published
        staleness: list[float] = []
        publications: list[publication.Published] = []
        events = 0
        copy = first_copy
        queue: list[bytes] = []
        offset = first_copy * len(values)
        started = last_published = time.monotonic()
        fold_seconds = 0.0
        while time.monotonic() - started < seconds:
            if len(queue) < PROJECT_BATCH_EVENTS_MAX:
                queue += _copy_values(values, copy)  # prepared outside the timed fold, like a read-ahead
                copy += 1
            batch, queue = queue[:PROJECT_BATCH_EVENTS_MAX], queue[PROJECT_BATCH_EVENTS_MAX:]
            fold_started = time.monotonic()
            offset += len(batch)
            apply_batch(connection, batch, {(TOPIC, 0): offset}, staging_dir=path.parent)
            fold_seconds += time.monotonic() - fold_started
            events += len(batch)
            pending.append(time.monotonic())
            if time.monotonic() - last_published >= SNAPSHOT_INTERVAL_S:
                published = publication.publish(connection, path, snapshot, live_fd)
                done = time.monotonic()
                publications.append(published)
                staleness += [done - committed for committed in pending]
                pending = []
                last_published = done
        elapsed = time.monotonic() - started
        if pending:  # the projector publishes at its next check; counted as such
            published = publication.publish(connection, path, snapshot, live_fd)
            publications.append(published)
            done = time.monotonic()
            staleness += [done - committed for committed in pending]
            elapsed = done - started
        size = os.fstat(live_fd).st_size
    finally:
        connection.close()
        os.close(live_fd)
    publish_seconds = sum(p.seconds for p in publications)
    return {
        "events_folded": events, "elapsed_s": round(elapsed, 2), "fold_s": round(fold_seconds, 2),
        "publications": len(publications), "publish_s": round(publish_seconds, 2),
        "publish_share": round(publish_seconds / elapsed, 4) if elapsed else None,
        # the CHECKPOINT each publication starts with: what the commits have not checkpointed yet
        "publish_share_without_checkpoint": round(
            (publish_seconds - sum(p.checkpoint_seconds for p in publications)) / elapsed, 4) if elapsed else None,
        "publish_ms_median": round(statistics.median([p.seconds for p in publications]) * 1000, 1)
        if publications else None,
        "checkpoint_ms_median": round(statistics.median([p.checkpoint_seconds for p in publications]) * 1000, 1)
        if publications else None,
        "staleness_s_p50": round(_percentile(staleness, 0.5), 3) if staleness else None,
        "staleness_s_p99": round(_percentile(staleness, 0.99), 3) if staleness else None,
        "staleness_s_max": round(max(staleness), 3) if staleness else None,
        "blocks_written_median": statistics.median([p.blocks_copied for p in publications]) if publications else None,
        "file_blocks": size // publication.BLOCK_BYTES, "file_mb": round(size / 1e6, 1),
        "first_publication": {"mode": first.mode, "seconds": round(first.seconds, 2)},
        "modes": sorted({p.mode for p in publications}),
    }


def measure(home: Path, sizes: tuple[int, ...], seconds: float, say, customers: int = 300,
            months: int = 12) -> dict[str, Any]:
    home.mkdir(parents=True, exist_ok=True)
    say(f"publish: generating ledger records ({customers} customers × {months} months) ...")
    values = ledger_values(customers=customers, months=months, seed=3)
    figures: dict[str, Any] = {"base_events": len(values), "interval_s": SNAPSHOT_INTERVAL_S,
                               "batch_events": PROJECT_BATCH_EVENTS_MAX, "seconds": seconds}
    for events in sizes:
        path = home / f"publish-{events}" / "projections.duckdb"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            say(f"publish: building a {events:,}-event read model ...")
            copies = build_read_model(path, values, events)
            say(f"publish: projector loop for {seconds:.0f} s on {copies * len(values):,} events ...")
            result = projector_loop(path, values, copies, seconds)
            figures[str(events)] = {"events_at_start": copies * len(values), **result}
            say(f"publish {events:,}: staleness p99 {result['staleness_s_p99']} s, "
                f"share {result['publish_share']:.1%}, {result['blocks_written_median']} of "
                f"{result['file_blocks']} blocks per publication")
        finally:
            shutil.rmtree(path.parent, ignore_errors=True)
    return figures


if __name__ == "__main__":  # python -m bench.publish [EVENTS,...] [SECONDS]
    chosen = tuple(int(x) for x in (sys.argv[1] if len(sys.argv) > 1 else "1000000,5000000").split(","))
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="arledger-publish-") as scratch:
        print(json.dumps(measure(Path(scratch), chosen, float(sys.argv[2]) if len(sys.argv) > 2 else 30.0,
                                 lambda text: print(text, file=sys.stderr, flush=True)), indent=2))
