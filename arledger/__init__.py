"""arledger: an event-sourced accounts-receivable ledger on Kafka, with DuckDB read models."""

__version__ = "0.1.0"
