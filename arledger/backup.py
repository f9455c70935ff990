"""Online backup and restore of a home: the event store, the published read model(s) and a manifest.

A backup is a folder:

    manifest.json        what was copied, from where, the ledger position it reflects, checksums
    ledger.sqlite        the SQLite event store, copied with SQLite's online backup API
      or ledger.pgdump   the PostgreSQL event store, `pg_dump --format=custom` (one consistent snapshot)
    readmodel/snapshot*.duckdb   the published read-model snapshot(s), as readers see them

Order of the copies, so that the backup is consistent while `arledger run` writes: the ingest group's
committed offsets first, then the read-model snapshot(s), then the store. Every event the snapshot holds was
in the store before (the relay publishes only what is stored), and every inbound record at or after the
recorded offsets is either in the store copy or not yet applied: after a restore, re-reading ar.inbound from
those offsets applies what is missing and finds the rest duplicates (receipts make ingest idempotent).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import hashlib
import json
import shutil
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from arledger.settings import Settings

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
SQLITE_FILE = "ledger.sqlite"
PGDUMP_FILE = "ledger.pgdump"
READMODEL_DIR = "readmodel"
SQLITE_BACKUP_PAGES = 1_024  # pages per step: the writer gets the lock between steps (online backup)
SQLITE_BUSY_TIMEOUT_MS = 30_000
PG_TOOL_TIMEOUT_S = 3_600.0
TOPIC_READ_TIMEOUT_S = 10.0


class BackupError(Exception):
    """An operating error of backup or restore, with a message for a person."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sqlite_path(store_url: str) -> Path | None:
    if store_url.startswith("sqlite:///"):
        return Path(unquote(store_url[len("sqlite:///"):]))
    return None


def _is_postgres(store_url: str) -> bool:
    return urlparse(store_url).scheme in ("postgresql", "postgres")


def pg_tool(name: str) -> str:
    """pg_dump / pg_restore: on PATH, else from Debian's server packages (/usr/lib/postgresql/<version>/bin)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise BackupError(f"{name} not found: install PostgreSQL's client tools (apt-get install postgresql-client)")
    return candidates[-1]


def _pg_env_and_args(store_url: str) -> tuple[dict[str, str], list[str]]:
    """libpq connection arguments of a postgresql:// URL; the password goes in PGPASSWORD, not on the command line."""
    import os

    parsed = urlparse(store_url)
    env = {**os.environ}
    if parsed.password:
        env["PGPASSWORD"] = unquote(parsed.password)
    args = ["--host", parsed.hostname or "127.0.0.1", "--port", str(parsed.port or 5432),
            "--dbname", parsed.path.lstrip("/")]
    if parsed.username:
        args += ["--username", unquote(parsed.username)]
    return env, args


def _run_tool(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=PG_TOOL_TIMEOUT_S,
                            stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed (exit {result.returncode}): {result.stderr.strip()[-2000:]}")


def sqlite_online_backup(source: Path, target: Path) -> None:
    """SQLite's online backup API: a consistent copy while another process writes (it restarts when a writer
    changes the source between steps, so the copy is always one committed state)."""
    if not source.exists():
        raise BackupError(f"no event store at {source}")
    source_db = sqlite3.connect(source, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
    try:
        target_db = sqlite3.connect(target)
        try:
            source_db.backup(target_db, pages=SQLITE_BACKUP_PAGES)
            # One file, no -wal beside it: the copy stands alone.
            target_db.execute("PRAGMA journal_mode=DELETE")
        finally:
            target_db.close()
    finally:
        source_db.close()


def _ledger_head(store_url: str) -> dict[str, Any]:
    """The position the store reflects: the relay's global chain (length and head hash), what it has published,
    and the number of account events (some may not be chained yet: the relay chains them after a restore)."""
    from consumers.audit import load_chain, open_ledger

    ledger = open_ledger(store_url)
    try:
        chain = load_chain(ledger)
        return {"position": chain.length, "chain_head": chain.hashes[-1] if chain.hashes else None,
                "published_position": chain.published_position,
                "max_notification_id": ledger.max_notification_id()}
    finally:
        ledger.close()


def _snapshot_facts(path: Path, ledger_topic: str) -> dict[str, Any]:
    from projections import schema
    from projections.fold import stored_offsets

    connection = schema.connect(str(path), read_only=True)
    try:
        offsets = stored_offsets(connection, ledger_topic)
        [(events, last)] = connection.execute("SELECT count(*), max(position) FROM ledger_events").fetchall()
    finally:
        connection.close()
    return {"file": f"{READMODEL_DIR}/{path.name}", "ledger_offsets": {str(k): v for k, v in sorted(offsets.items())},
            "events": events, "last_position": last, "sha256": _sha256(path)}


def _ingest_offsets(settings: Settings) -> dict[str, int] | None:
    """The ingest group's committed offsets on ar.inbound (None when Kafka cannot be reached: noted, not fatal)."""
    from kafka.errors import KafkaError

    from arledger.settings import TOPIC_INBOUND
    from consumers.ingest import INGEST_GROUP_ID
    from consumers.topics import admin_client

    group = settings.topic(INGEST_GROUP_ID)
    try:
        with admin_client(settings) as admin:
            committed = admin.list_group_offsets(group).get(group, {})
    except (KafkaError, OSError, RuntimeError):
        return None
    return {str(tp.partition): meta.offset for tp, meta in sorted(committed.items())
            if tp.topic == settings.topic(TOPIC_INBOUND) and meta.offset >= 0}


def backup(settings: Settings, dest: Path, *, with_kafka: bool = True) -> dict[str, Any]:
    """Write a backup of `settings`' home into the new or empty folder `dest`; returns the manifest."""
    from arledger.readmodel import read_model_paths
    from arledger.settings import TOPIC_LEDGER

    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty: a backup goes into a new or empty folder")
    dest.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now(dt.UTC)
    ingest_offsets = _ingest_offsets(settings) if with_kafka else None  # 1. before anything else (see above)
    (dest / READMODEL_DIR).mkdir()
    read_models = []
    for path in settings.snapshot_paths():  # 2. the published snapshots, each replaced only by rename
        target = dest / READMODEL_DIR / path.name
        with path.open("rb") as source, target.open("wb") as copy:  # one open file: one consistent image
            shutil.copyfileobj(source, copy, 1 << 20)
        read_models.append(_snapshot_facts(target, settings.topic(TOPIC_LEDGER)))
    if not read_models and read_model_paths(settings):
        raise BackupError("no published snapshot to copy: start 'arledger run' (the projector publishes one), "
                          "or stop it so that the projection file is final")
    sqlite_path = _sqlite_path(settings.store_url)  # 3. the store
    if sqlite_path is not None:
        store = {"kind": "sqlite", "file": SQLITE_FILE}
        sqlite_online_backup(sqlite_path, dest / SQLITE_FILE)
        head = {**_ledger_head(f"sqlite:///{dest / SQLITE_FILE}"), "exact": True}  # read from the copy itself
    elif _is_postgres(settings.store_url):
        store = {"kind": "postgresql", "file": PGDUMP_FILE}
        # pg_dump copies one transaction snapshot taken when it starts: the head read just before is a lower
        # bound of what the dump holds; `restore` prints the exact head of the restored database.
        head = {**_ledger_head(settings.store_url), "exact": False}
        env, args = _pg_env_and_args(settings.store_url)
        _run_tool([pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                   "--file", str(dest / PGDUMP_FILE), *args], env)
    else:
        raise BackupError(f"cannot back up the event store {_redacted(settings.store_url)}: only sqlite:/// and "
                          "postgresql:// stores are files or databases")
    store["sha256"] = _sha256(dest / store["file"])
    manifest = {
        "format": MANIFEST_FORMAT,
        "created_at": started.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "finished_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "source": {"home": str(settings.home), "store": _redacted(settings.store_url),
                   "topic_prefix": settings.topic_prefix},
        "store": store,
        "ledger": head,
        "read_models": read_models,
        "ingest_committed_offsets": ingest_offsets,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _redacted(store_url: str) -> str:
    parsed = urlparse(store_url)
    if parsed.password:
        return store_url.replace(f":{parsed.password}@", ":***@", 1)
    return store_url


def read_manifest(src: Path) -> dict[str, Any]:
    path = src / MANIFEST
    if not path.exists():
        raise BackupError(f"{src} is not an arledger backup: no {MANIFEST}")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != MANIFEST_FORMAT:
        raise BackupError(f"{path}: unknown backup format {manifest.get('format')!r}")
    for entry in [manifest["store"], *manifest["read_models"]]:
        file = src / entry["file"]
        if not file.exists():
            raise BackupError(f"{file} is missing from the backup")
        if _sha256(file) != entry["sha256"]:
            raise BackupError(f"{file} does not match its checksum in {MANIFEST}: the backup was altered or damaged")
    return manifest


def _home_in_use(settings: Settings) -> list[str]:
    found = []
    sqlite_path = _sqlite_path(settings.store_url)
    if sqlite_path is not None and sqlite_path.exists() and sqlite_path.stat().st_size > 0:
        found.append(str(sqlite_path))
    for pattern in ("projections*.duckdb", "snapshot*.duckdb"):
        found += [str(path) for path in settings.home.glob(pattern)]
    return found


def ledger_topic_head(settings: Settings) -> int | None:
    """The highest position on ar.ledger (the last record of each partition), or None when Kafka cannot be
    reached or the topic is empty."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    from arledger.settings import TOPIC_LEDGER
    from consumers import clients
    from consumers.publisher import end_offsets

    topic = settings.topic(TOPIC_LEDGER)
    try:
        end = end_offsets(settings, topic)
        consumer = clients.assigned_consumer(settings, "arledger-restore", 1)
    except (KafkaError, OSError, RuntimeError):
        return None
    head = None
    try:
        for partition, offset in end.items():
            if offset <= 0:
                continue
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, offset - 1)
            deadline = time.monotonic() + TOPIC_READ_TIMEOUT_S
            while time.monotonic() < deadline:
                records = consumer.poll(timeout_ms=500).get(tp, [])
                if records:
                    position = json.loads(records[-1].value)["position"]
                    head = position if head is None else max(head, position)
                    break
    except (KafkaError, OSError, ValueError, KeyError):
        return None
    finally:
        consumer.close()
    return head


def restore(settings: Settings, src: Path) -> dict[str, Any]:
    """Restore a backup into the empty home (and empty store) of `settings`; returns what was restored."""
    manifest = read_manifest(src)
    in_use = _home_in_use(settings)
    if in_use:
        raise BackupError(f"the home is not empty ({', '.join(in_use)}): restore into an empty ARLEDGER_HOME")
    settings.home.mkdir(parents=True, exist_ok=True)
    kind = manifest["store"]["kind"]
    sqlite_path = _sqlite_path(settings.store_url)
    if kind == "sqlite":
        if sqlite_path is None:
            raise BackupError(f"the backup holds a SQLite store; ARLEDGER_STORE is {_redacted(settings.store_url)}")
        sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=sqlite_path.parent, prefix=".restoring-", delete=False) as scratch:
            scratch_path = Path(scratch.name)
        try:
            shutil.copyfile(src / SQLITE_FILE, scratch_path)
            scratch_path.replace(sqlite_path)  # all or nothing
        finally:
            scratch_path.unlink(missing_ok=True)
    elif kind == "postgresql":
        if not _is_postgres(settings.store_url):
            raise BackupError(f"the backup holds a PostgreSQL dump; ARLEDGER_STORE is "
                              f"{_redacted(settings.store_url)} (point it at an empty PostgreSQL database)")
        _require_empty_database(settings.store_url)
        env, args = _pg_env_and_args(settings.store_url)
        _run_tool([pg_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
                   *args, str(src / PGDUMP_FILE)], env)
    else:
        raise BackupError(f"unknown store kind {kind!r} in the manifest")
    restored_models = []
    for entry in manifest["read_models"]:
        name = Path(entry["file"]).name
        # The snapshot readers use, and the projector's own file (it resumes from the offsets stored in it).
        shutil.copyfile(src / entry["file"], settings.home / name)
        shutil.copyfile(src / entry["file"], settings.home / name.replace("snapshot", "projections", 1))
        restored_models.append(name)
    return {"manifest": manifest, "store": kind, "read_models": restored_models,
            "ledger": _ledger_head(settings.store_url), "ledger_topic_head": ledger_topic_head(settings)}


def _require_empty_database(store_url: str) -> None:
    import psycopg

    with contextlib.closing(psycopg.connect(store_url.replace("postgres://", "postgresql://", 1))) as connection:
        [(tables,)] = connection.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN "
            "('pg_catalog', 'information_schema')").fetchall()
    if tables:
        raise BackupError(f"the database {_redacted(store_url)} is not empty ({tables} tables): "
                          "restore into a new, empty database")
