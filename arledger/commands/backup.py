"""`arledger backup DEST` / `arledger restore SRC`: an online backup of a home, and its restore."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from arledger.settings import Settings

BACKUP_HELP = """\
Copies, while 'arledger run' keeps running, into the new or empty folder DEST:
  - the published read-model snapshot(s) (readmodel/snapshot*.duckdb);
  - the event store: a SQLite store with SQLite's online backup API
    (ledger.sqlite, one committed state), a PostgreSQL store with
    'pg_dump --format=custom' (ledger.pgdump, one transaction snapshot);
  - manifest.json: the ledger position the store copy reflects (the global
    chain's length and head hash), each read model's ar.ledger offsets, the
    ingest group's committed ar.inbound offsets, and a SHA-256 of every file.
The snapshot is copied before the store, so the copy of the store holds
every event the copy of the read model holds. See docs/operations-backup.md.

examples:
  arledger backup /backups/arledger-$(date +%F)
  arledger backup /backups/today --format json
"""

RESTORE_HELP = """\
Restores a backup into an EMPTY home (ARLEDGER_HOME without a store or read
model) and an empty store (ARLEDGER_STORE: the SQLite file must not exist, a
PostgreSQL database must have no tables; the dump is loaded with pg_restore
in one transaction). Every file is checked against the manifest's SHA-256
first. Then run 'arledger verify' (the restored store's chains and the read
model against a fresh fold); --verify does it here, without the topic check
when ar.ledger went on after the backup.

Read models can be rebuilt from either copy: 'arledger rebuild --from-store'
(the restored store) or 'arledger rebuild' (ar.ledger).

examples:
  ARLEDGER_HOME=/srv/arledger-new arledger restore /backups/today --verify
  ARLEDGER_HOME=/srv/new ARLEDGER_STORE=postgresql://arledger@db/new_ledger arledger restore /backups/today
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("backup", help="online, consistent backup of the event store and read models",
                                   description="Back up the event store, the read model(s) and a manifest.",
                                   epilog=BACKUP_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dest", type=Path, metavar="DEST", help="new or empty folder to write the backup into")
    parser.add_argument("--no-kafka", action="store_true",
                        help="do not record the ingest group's offsets (Kafka unreachable or not wanted)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    parser.set_defaults(handler=run_backup)

    parser = subparsers.add_parser("restore", help="restore a backup into an empty home, then verify it",
                                   description="Restore a backup made by 'arledger backup' into an empty home.",
                                   epilog=RESTORE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", type=Path, metavar="SRC", help="the backup folder")
    parser.add_argument("--verify", action="store_true",
                        help="run 'arledger verify --skip topic' on the restored home afterwards")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format (default table)")
    parser.set_defaults(handler=run_restore)


def run_backup(args: argparse.Namespace) -> int:
    from arledger.backup import BackupError, backup

    try:
        manifest = backup(Settings.from_env(), args.dest, with_kafka=not args.no_kafka)
    except BackupError as error:
        print(f"arledger backup: {error}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(manifest))
        return 0
    head = manifest["ledger"]
    print(f"backup written to {args.dest}")
    print(f"  store       {manifest['store']['kind']}: {manifest['store']['file']}; ledger position "
          f"{'' if head['exact'] else 'at least '}{head['position']} (head {str(head['chain_head'])[:16]}…)")
    for model in manifest["read_models"]:
        print(f"  read model  {model['file']}: {model['events']} events, up to position {model['last_position']}")
    if manifest["ingest_committed_offsets"] is None:
        print("  ar.inbound  ingest offsets not recorded (Kafka not reached)")
    else:
        print(f"  ar.inbound  ingest group committed offsets {manifest['ingest_committed_offsets']}")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    from arledger.backup import BackupError, restore

    settings = Settings.from_env()
    try:
        restored = restore(settings, args.src)
    except BackupError as error:
        print(f"arledger restore: {error}", file=sys.stderr)
        return 2
    head = restored["ledger"]
    if args.format == "json":
        print(json.dumps({k: v for k, v in restored.items() if k != "manifest"}))
    else:
        print(f"restored {restored['store']} store into {settings.store_url.split('@')[-1]}; ledger position "
              f"{head['position']} (head {str(head['chain_head'])[:16]}…)")
        for name in restored["read_models"]:
            print(f"  read model {name}")
    topic_head = restored["ledger_topic_head"]
    if topic_head is not None and topic_head > (head["position"] or 0):
        print(f"WARNING: ar.ledger holds positions up to {topic_head}, the restored store up to {head['position']}: "
              "the events after the backup are on ar.ledger only. Do not start 'arledger run' on this home: "
              "recover the store from ar.ledger instead ('arledger recover-store' into an empty store; "
              "docs/operations-backup.md, 'When ar.ledger is ahead').", file=sys.stderr)
    if not args.verify:
        return 0
    import subprocess

    command = [sys.executable, "-m", "arledger.cli", "verify", "--skip", "topic", "--no-progress"]
    if len(restored["read_models"]) > 1:
        command += ["--skip", "projection"]  # verify compares one snapshot; shards are each a part
    return subprocess.run(command).returncode
