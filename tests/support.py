"""Helpers shared by every layer of the test suite (the fact builders are in `tests/builders.py`).

- `REPO_ROOT`, `CONFIG_FILE`: where the source tree and the shipped credit-control configuration are;
- `free_port_pair()`: a port for a test's own Kafka broker (its KRaft controller takes the next one).
"""

from __future__ import annotations

import random
from pathlib import Path

from consumers.broker import port_in_use

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_FILE = REPO_ROOT / "consumers" / "arledger.toml"  # the credit-control configuration shipped as package data

# Ports below Linux's ephemeral range (32768+), so no client socket takes one
# between the check and the broker's bind.
TEST_PORT_MIN = 20_000
TEST_PORT_MAX = 32_000
PORT_PICK_ATTEMPTS_MAX = 200


def free_port_pair() -> int:
    """A port P such that P and P+1 are both free on 127.0.0.1 (broker and controller)."""
    rng = random.Random()
    for _ in range(PORT_PICK_ATTEMPTS_MAX):
        port = rng.randrange(TEST_PORT_MIN, TEST_PORT_MAX - 1)
        if not port_in_use(port) and not port_in_use(port + 1):
            return port
    raise RuntimeError(f"no two consecutive free ports in {TEST_PORT_MIN}-{TEST_PORT_MAX}")
