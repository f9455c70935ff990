"""Opening the read model for reports, `sql` and credit checks, from any process."""

from __future__ import annotations

import sys
from pathlib import Path

import duckdb

from arledger.settings import Settings
from projections import schema


def read_model_paths(settings: Settings) -> list[Path]:
    """The published snapshot(s) — every shard's when projectors are sharded — or, when no projector
    ever published one, the projection file itself."""
    paths = settings.snapshot_paths()
    if paths:
        return paths
    return [settings.projection_path] if settings.projection_path.exists() else []


def open_read_model(settings: Settings) -> duckdb.DuckDBPyConnection:
    """A read-only connection on the latest read model; shards appear as one database."""
    paths = read_model_paths(settings)
    if not paths:
        sys.exit(f"arledger: no read model under {settings.home}: run 'arledger run' (or 'arledger demo') first")
    if len(paths) == 1:
        return schema.connect(str(paths[0]), read_only=True)
    return schema.open_union([str(path) for path in paths])
