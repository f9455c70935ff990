"""Retries with exponential backoff for transient failures (broker away, database locked, timeouts)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog

from arledger.settings import RETRY_BACKOFF_S_INITIAL, RETRY_BACKOFF_S_MAX

T = TypeVar("T")
RETRY_ATTEMPTS_MAX = 12  # ~40 s of backoff in all; then the worker stops and a restart resumes from offsets

log = structlog.get_logger("arledger.retry")


def with_retries(operation: Callable[[], T], what: str, *, attempts_max: int = RETRY_ATTEMPTS_MAX,
                 on_failure: Callable[[], None] | None = None,
                 fatal: tuple[type[BaseException], ...] = ()) -> T:
    """Run `operation`; on an exception wait and try again, up to `attempts_max` times, then re-raise.
    Exceptions in `fatal` (and assertions) are not transient: they propagate at once."""
    backoff_s = RETRY_BACKOFF_S_INITIAL
    for attempt in range(1, attempts_max + 1):
        try:
            return operation()
        except (AssertionError, *fatal):
            raise  # a programmer error or a deterministic failure: retrying changes nothing
        except Exception as error:  # noqa: BLE001 - every other failure here is treated as transient
            if on_failure is not None:
                on_failure()
            if attempt == attempts_max:
                raise
            log.warning("transient_failure", what=what, attempt=attempt, error=repr(error), retry_in_s=backoff_s)
            time.sleep(backoff_s)
            backoff_s = min(backoff_s * 2, RETRY_BACKOFF_S_MAX)
    raise AssertionError("unreachable")
