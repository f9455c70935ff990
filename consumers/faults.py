"""Fault injection for crash tests: `crash_point(name)` kills this process with SIGKILL when armed.

Arm by environment: ARLEDGER_CRASH_AT=<point name>, optionally
ARLEDGER_CRASH_AFTER=<n> to crash on the n-th time the point is reached
(default 1). Unarmed, a crash point costs one dict lookup.

Named points: ingest.after_store_commit, ingest.after_reject_publish,
relay.after_chain_saved, relay.after_publish, project.mid_transaction.
"""

from __future__ import annotations

import os
import signal

_hits: dict[str, int] = {}


def crash_point(name: str) -> None:
    armed = os.environ.get("ARLEDGER_CRASH_AT")
    if armed != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(os.environ.get("ARLEDGER_CRASH_AFTER", "1")):
        os.kill(os.getpid(), signal.SIGKILL)  # as `kill -9`: no cleanup, no flush
