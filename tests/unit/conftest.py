"""Unit tests: pure rules and the Ledger application on memory:// or a tmp SQLite file; no Kafka, no DuckDB.

The fact builders are the suite's one set, `tests/builders.py` (`from tests import builders as b`).
"""
