"""`arledger serve`: the web workspace and the HTTP API (issue 15).

It reads the published read models through `arledger.readmodel` and the report
functions of `projections`, and writes only by publishing envelopes to
ar.inbound, like any upstream system: it never opens the event store (an
import-linter contract in pyproject.toml holds it to that).
"""
