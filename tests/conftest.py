"""The root of the test suite: what every layer shares.

Layers (docs/testing.md): `tests/unit` (pure rules and the Ledger on memory:// or SQLite, no Kafka, no DuckDB),
`tests/integration` (a real Kafka broker started once per session by `tests/integration/conftest.py`, real
DuckDB, SQLite and PostgreSQL), `tests/e2e` (the CLI as a user runs it).

`tests` is a package: pytest puts the repository root on sys.path for this file, so every test module
imports the shared helpers as `from tests import builders` (the one set of fact builders) and
`from tests.support import free_port_pair` (the one port helper), and `bench` (a tool of the source
tree) as `from bench import ...`, without touching sys.path itself.
"""

from __future__ import annotations
