"""Backoff with full jitter, ``Retry-After``, the testing switch, and cooldown.

This is the project's one retry layer: no SDK or transport below it retries.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator

import attrs

from .errors import BackendError, BackendOverloaded, BackendUnavailable, ImageWorksError, InputError
from .settings import RetrySettings

__all__ = [
    "Breaker",
    "backoff_delay",
    "is_testing",
    "scaled",
    "set_testing",
    "sleep",
    "testing",
]

_time_scale = {"value": 1.0}


def set_testing(on: bool = True, *, time_scale: float = 0.0) -> None:
    """Shorten the dispatcher's waits, for tests: each is multiplied by *time_scale* while *on*.

    Exactly what changes: the backoff between tries, ``Retry-After`` pauses, and
    the pauses between health probes of a backend that is out (probes stay at
    least a millisecond apart).  Nothing else: attempt counts, timeouts,
    ``wait_for_backend`` and every other limit or policy keep their values, so
    a test still proves what users get.  Only code turns this on (the
    ``imageworks_testing`` pytest fixture, a test's own call); no environment
    variable does.
    """
    if on and not (time_scale >= 0):
        raise ValueError(f"time_scale must be >= 0, not {time_scale!r}")
    _time_scale["value"] = time_scale if on else 1.0


@contextlib.contextmanager
def testing(time_scale: float = 0.0) -> Iterator[None]:
    """``set_testing(True, time_scale=...)`` for the duration of a ``with`` block, then restored."""
    before = _time_scale["value"]
    set_testing(True, time_scale=time_scale)
    try:
        yield
    finally:
        _time_scale["value"] = before


def is_testing() -> bool:
    return _time_scale["value"] != 1.0


def scaled(seconds: float) -> float:
    """*seconds* under the testing time scale (``set_testing``)."""
    return seconds * _time_scale["value"]


async def sleep(seconds: float) -> None:
    import anyio

    seconds = scaled(seconds)
    if seconds > 0:
        await anyio.sleep(seconds)
    else:
        await anyio.lowlevel.checkpoint()


def backoff_delay(attempt: int, policy: RetrySettings, exc: BaseException | None = None) -> float:
    """Seconds before try *attempt* + 1: ``Retry-After`` if the server sent one, else full jitter."""
    if isinstance(exc, BackendOverloaded) and exc.retry_after is not None:
        return exc.retry_after + random.uniform(0, min(1.0, policy.backoff_base))
    ceiling = min(policy.backoff_max, policy.backoff_base * (2 ** max(0, attempt - 1)))
    return random.uniform(0, ceiling)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, ImageWorksError) and bool(getattr(exc, "retryable", False))


def ends_item(exc: BaseException) -> bool:
    """Errors caused by the input itself: no retry, no fallback."""
    return isinstance(exc, InputError) or (
        isinstance(exc, BackendError) and not exc.retryable and exc.status in range(400, 500)
    )


def counts_against_backend(exc: BaseException) -> bool:
    """Failures that say the backend is unwell (feed the cooldown breaker)."""
    return isinstance(exc, BackendError) and (exc.retryable or isinstance(exc, BackendUnavailable))


@attrs.define
class Breaker:
    """Consecutive-failure circuit breaker for one backend.

    After ``cooldown_after`` failures in a row the backend is skipped for
    ``cooldown`` seconds, then probed again: one more failure re-opens it,
    a success closes it.
    """

    threshold: int
    cooldown: float
    failures: int = 0
    open_until: float = 0.0

    def available(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.open_until

    def success(self) -> None:
        self.failures = 0
        self.open_until = 0.0

    def failure(self) -> bool:
        """Record a failure; ``True`` when this one opened the breaker."""
        self.failures += 1
        if self.failures >= self.threshold and self.available():
            self.open_until = time.monotonic() + self.cooldown
            return True
        return False

    def trip(self) -> None:
        """Open now (a failed preflight)."""
        self.failures = max(self.failures, self.threshold)
        self.open_until = time.monotonic() + self.cooldown
