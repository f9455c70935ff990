"""The soak's own helpers: the worker processes found as children of the `run` process, percentiles."""

from __future__ import annotations

import os
import subprocess
import sys

from bench.soak import child_pids, percentile, worker_name


def test_the_children_of_a_process_are_found_with_what_they_run() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "run", "project", "alerts",
                              "--log-level", "info"], stdin=subprocess.PIPE)
    try:
        assert child.pid in child_pids(os.getpid())
        assert worker_name(child.pid) == "project+alerts"
    finally:
        child.stdin.close()
        child.wait(timeout=30)
    assert child.pid not in child_pids(os.getpid())


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 0.99) is None
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([5.0, 1.0, 2.0, 4.0, 3.0], 0.5) == 3.0
    assert percentile([float(n) for n in range(1, 101)], 0.99) == 99.0
    assert percentile([1.0, 2.0, 3.0], 0.99) == 3.0  # p99 of few values is their maximum
