"""Publishing the read model for other processes without copying the whole file (docs/contract.md §5, issue 14).

DuckDB lets no other process open a file while one process writes it, so readers
(`report`, `sql`, the DuckDB CLI, Python, the SQL endpoint) read a published copy.
Copying the whole file every few seconds costs what the ledger weighs. Instead:

- The published name (`snapshot.duckdb`) is a symbolic link to one of two
  *generation* files in a hidden folder next to it (`.snapshots/`). A reader
  opens the link, hence one generation file, and DuckDB takes a shared lock on it.
- A publication CHECKPOINTs the live file (then the file alone is the whole,
  committed state, as the old whole-file copy relied on), takes the generation the
  link does *not* point to, and copies into it only the blocks of the live file
  that differ: DuckDB stores the file as 256 KiB blocks each starting with its
  checksum, so comparing 8 bytes per block finds the changed ones (plus the three
  4 KiB headers, always copied). Then an atomic rename of a new link over
  `snapshot.duckdb`: readers see the old or the new generation, never a half
  batch. Measured (bench stage `publish`): a publication writes the blocks the
  checkpoints since the previous one touched, a few hundred for 20,000 events,
  whatever the ledger's size; reading the checksums is one 8-byte read per block.
- A generation that a reader still holds open (its DuckDB lock), or that has a
  second hard link (a stable copy for `verify`), is never written: a new
  generation file is made instead (a whole copy, once) and the old one is
  dropped from the folder (an open reader keeps reading it; POSIX).
- The DuckDB 1.x CLI that package registries serve reads files up to storage
  version v1.4.0, so projection files are created in that version
  (`schema.connect`); generation files are byte images of them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import duckdb

GENERATIONS_KEPT = 2
HEADER_BYTES = 3 * 4096  # DuckDB's main header and its two database headers
BLOCK_BYTES = 262_144  # DuckDB's default block allocation size; each block begins with an 8-byte checksum
CHECKSUM_BYTES = 8


@dataclass
class Published:
    """What one publication did: `blocks` copy or `full` copy, blocks written of the file's, seconds."""

    mode: str
    blocks_copied: int
    blocks_total: int
    seconds: float
    checkpoint_seconds: float
    path: Path


def generations_dir(snapshot_path: Path) -> Path:
    return snapshot_path.parent / ".snapshots"


def _generation_path(snapshot_path: Path, number: int) -> Path:
    return generations_dir(snapshot_path) / f"{snapshot_path.name}.{number:012d}"


def _generations(snapshot_path: Path) -> list[tuple[int, Path]]:
    folder = generations_dir(snapshot_path)
    if not folder.is_dir():
        return []
    prefix = snapshot_path.name + "."
    found = []
    for path in folder.iterdir():
        suffix = path.name.removeprefix(prefix)
        if path.name.startswith(prefix) and suffix.isdigit():
            found.append((int(suffix), path))
    return sorted(found)


def _writing_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.writing")


def current_generation(snapshot_path: Path) -> Path | None:
    """The generation file `snapshot_path` points to (None if it is not a link)."""
    if not snapshot_path.is_symlink():
        return None
    return (snapshot_path.parent / os.readlink(snapshot_path)).resolve()


def stable_link(snapshot_path: Path, target: Path) -> None:
    """A second name for the published generation, which the publisher then never rewrites (it skips a
    generation with more than one link): for copies that read the file without DuckDB (`verify`)."""
    os.link(os.path.realpath(snapshot_path), target)


def copy_published(snapshot_path: Path, target: Path) -> None:
    """Copy the published generation to `target` as one consistent image: a second hard link (next to it)
    keeps the publisher from rewriting it while the bytes are read; a plain file is copied as is."""
    if not snapshot_path.is_symlink():
        shutil.copyfile(snapshot_path, target)
        return
    pin = generations_dir(snapshot_path) / f".pin-{uuid.uuid4().hex}"
    stable_link(snapshot_path, pin)
    try:
        shutil.copyfile(pin, target)
    finally:
        pin.unlink(missing_ok=True)


def _lock_for_writing(fd: int) -> bool:
    """True if no other process holds a lock on the file (DuckDB readers hold a shared one)."""
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def copy_changed_blocks(source_fd: int, target_fd: int) -> tuple[int, int]:
    """Make the target's bytes equal the source's, writing only the blocks whose checksum differs.
    Returns (blocks written, blocks in the file)."""
    size = os.fstat(source_fd).st_size
    target_size = os.fstat(target_fd).st_size
    os.pwrite(target_fd, os.pread(source_fd, HEADER_BYTES, 0), 0)
    written = total = 0
    offset = HEADER_BYTES
    while offset < size:
        total += 1
        if offset + BLOCK_BYTES > target_size or \
                os.pread(source_fd, CHECKSUM_BYTES, offset) != os.pread(target_fd, CHECKSUM_BYTES, offset):
            block = os.pread(source_fd, BLOCK_BYTES, offset)
            os.pwrite(target_fd, block, offset)
            written += 1
        offset += BLOCK_BYTES
    if target_size != size:
        os.ftruncate(target_fd, size)
    return written, total


class Publication:
    """Publishes a live projection file (open in `connection`) at `snapshot_path`."""

    def __init__(self, snapshot_path: Path) -> None:
        self.snapshot_path = snapshot_path

    def publish(self, connection: duckdb.DuckDBPyConnection, live_path: Path, live_fd: int | None = None) -> Published:
        """CHECKPOINT the live file, bring a generation up to it and point the link there.

        `live_fd`: a descriptor the writer keeps open for as long as its connection. Closing any descriptor
        of a file drops the process's POSIX locks on it, DuckDB's own included: never open and close the
        live file here while its connection lives (without `live_fd`, the caller has no connection open).
        """
        started = time.perf_counter()
        connection.execute("CHECKPOINT")
        checkpointed = time.perf_counter()
        generations_dir(self.snapshot_path).mkdir(parents=True, exist_ok=True)
        for stale in generations_dir(self.snapshot_path).glob(f".{self.snapshot_path.name}.*.writing"):
            stale.unlink(missing_ok=True)  # a publication that did not finish (one publisher per file)
        generations = _generations(self.snapshot_path)
        current = current_generation(self.snapshot_path)
        target = _generation_path(self.snapshot_path, (generations[-1][0] if generations else 0) + 1)
        own_fd = live_fd is None
        source_fd = os.open(live_path, os.O_RDONLY) if own_fd else live_fd
        try:
            mode, written, total = self._update_a_generation(generations, current, target, source_fd)
        finally:
            if own_fd:
                os.close(source_fd)
        self._point_to(target)
        self._forget_old(target)
        return Published(mode, written, total, time.perf_counter() - started, checkpointed - started, target)

    def _update_a_generation(self, generations: list[tuple[int, Path]], current: Path | None, target: Path,
                             source_fd: int) -> tuple[str, int, int]:
        for _, path in generations:
            if path.resolve() == current:
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                if os.fstat(fd).st_nlink != 1 or not _lock_for_writing(fd):
                    continue  # a reader has it open, or `verify` holds a second name: leave it to them
                # Under a name no one trusts while it is written: a crash mid-block could leave a block whose
                # checksum is new but whose bytes are not, which the next comparison would not see.
                writing = _writing_path(target)
                os.replace(path, writing)
                written, total = copy_changed_blocks(source_fd, fd)
                os.fsync(fd)
                os.replace(writing, target)
                return "blocks", written, total
            finally:
                os.close(fd)  # also releases our lock
        partial = _writing_path(target)
        with open(partial, "wb") as out:
            offset = 0
            while chunk := os.pread(source_fd, 8 * BLOCK_BYTES, offset):
                out.write(chunk)
                offset += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, target)
        blocks = max(offset - HEADER_BYTES, 0) // BLOCK_BYTES
        return "full", blocks, blocks

    def _point_to(self, target: Path) -> None:
        if self.snapshot_path.exists() and not self.snapshot_path.is_symlink():
            # A snapshot from before generations: keep its inode for readers that have it open.
            self.snapshot_path.unlink()
        link = self.snapshot_path.with_name(f".{self.snapshot_path.name}.{uuid.uuid4().hex}.link")
        os.symlink(os.path.relpath(target, self.snapshot_path.parent), link)
        os.replace(link, self.snapshot_path)  # atomic: readers open the old or the new generation

    def _forget_old(self, target: Path) -> None:
        keep = {target, current_generation(self.snapshot_path)}
        generations = _generations(self.snapshot_path)
        for _, path in generations[:-GENERATIONS_KEPT]:
            if path not in keep and path.resolve() not in keep:
                path.unlink(missing_ok=True)  # a reader that has it open keeps reading it (POSIX)


def publish(connection: duckdb.DuckDBPyConnection, live_path: Path, snapshot_path: Path,
            live_fd: int | None = None) -> Published:
    """One publication of the live file (open in `connection`) at `snapshot_path`."""
    return Publication(snapshot_path).publish(connection, live_path, live_fd)


def remove(snapshot_path: Path) -> None:
    """Remove a published snapshot and its generations."""
    snapshot_path.unlink(missing_ok=True)
    shutil.rmtree(generations_dir(snapshot_path), ignore_errors=True)
