"""The projection file: its paths, its locks and the adoption of a rebuilt file (docs/contract.md §5, issue 14).

Files next to the live projection file `projections.duckdb`:
- `projections.rebuilding.duckdb`: being written by `arledger rebuild`; never read by anyone else.
- `projections.rebuilt.duckdb`: complete and closed. Its existence is the hand-over marker: a running
  projector notices it between two batches, closes its file, renames the rebuilt one into place
  (`adopt_rebuilt`), reopens it and seeks to the offsets stored in it.
- `projections.duckdb.swap.lock`: serialises installing a rebuilt file with a projector opening the live one.
- `projections.duckdb.rebuild.lock`: one rebuild at a time per home.
- `projections.duckdb.projector.lock`: held by the projector for as long as it has the file open.

Used by the projector (consumers/project.py) and the rebuild (consumers/rebuild.py) alike, which no longer
import each other. Publication: projections/publication.py; the fold and stored offsets: projections/fold.py.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


# -- Paths and locks -------------------------------------------------------------------------------


def building_path(projection_path: Path) -> Path:
    return projection_path.with_name(f"{projection_path.stem}.rebuilding{projection_path.suffix}")


def rebuilt_path(projection_path: Path) -> Path:
    return projection_path.with_name(f"{projection_path.stem}.rebuilt{projection_path.suffix}")


def wal_path(path: Path) -> Path:
    return path.with_name(path.name + ".wal")


@contextlib.contextmanager
def swap_lock(projection_path: Path) -> Iterator[None]:
    """Exclusive while a rebuilt file is installed or the live file is opened by a projector."""
    projection_path.parent.mkdir(parents=True, exist_ok=True)
    with open(projection_path.with_name(projection_path.name + ".swap.lock"), "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextlib.contextmanager
def rebuild_lock(projection_path: Path) -> Iterator[None]:
    """One rebuild per projection file at a time; a second one fails at once."""
    projection_path.parent.mkdir(parents=True, exist_ok=True)
    with open(projection_path.with_name(projection_path.name + ".rebuild.lock"), "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ProjectionFileError(f"another rebuild of {projection_path} is running") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class ProjectionFileError(Exception):
    """An operating error around the projection file (reported to the user, not a bug)."""


def _presence_path(projection_path: Path) -> Path:
    return projection_path.with_name(projection_path.name + ".projector.lock")


def announce_projector(projection_path: Path) -> BinaryIO:
    """An exclusive lock held by the projector while it has `projection_path` open; close the file to release it.

    DuckDB's own fcntl lock cannot tell: POSIX drops a process's fcntl locks on a
    file as soon as it closes *any* descriptor of it, which copying the file for
    a snapshot does. flock locks belong to their own open file and stay. So this
    lock also stops a second projector (a second `arledger run` on the same home)
    from writing the same file.
    """
    projection_path.parent.mkdir(parents=True, exist_ok=True)
    presence = open(_presence_path(projection_path), "a+b")  # noqa: SIM115 (held for the projector's life)
    try:
        fcntl.flock(presence, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        presence.close()
        raise ProjectionFileError(f"another projector is writing {projection_path} "
                           f"(it holds {_presence_path(projection_path).name})") from None
    return presence


def projector_running(projection_path: Path) -> bool:
    """True while some process holds announce_projector's lock on `projection_path`."""
    presence_path = _presence_path(projection_path)
    if not presence_path.exists():
        return False
    with open(presence_path, "a+b") as presence:
        try:
            fcntl.flock(presence, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(presence, fcntl.LOCK_UN)
        return False


def file_in_use(path: Path) -> bool:
    """True when a projector runs on `path` or a process holds DuckDB's lock on it (e.g. a reader)."""
    if projector_running(path):
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        # DuckDB takes a whole-file fcntl lock (write for a writer, read for read-only).
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def adopt_rebuilt(projection_path: Path) -> bool:
    """Rename a complete rebuilt file over the live one; caller holds swap_lock and has the live file closed."""
    rebuilt = rebuilt_path(projection_path)
    if not rebuilt.exists():
        return False
    # A stale write-ahead log of the old file would be replayed onto the new one.
    wal_path(projection_path).unlink(missing_ok=True)
    assert not wal_path(rebuilt).exists(), "a rebuilt file is closed after a checkpoint: it has no WAL"
    os.replace(rebuilt, projection_path)
    _fsync_dir(projection_path.parent)
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
