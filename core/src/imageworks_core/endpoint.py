"""One endpoint's state (up, paused, out, down) and its request slots.

    UP ──(refused / reset / 502 / 504 / loading)──> OUT ──(probe ready)──> UP
     │                                               │
     └──(429 / 503: pause, Retry-After)──> PAUSED    └──(out > wait_for_backend)──> DOWN
                                            │                                        │
                                   (pause over) ──> UP                 (a later probe ready) ──> UP

While an endpoint is not UP no request goes to it.  Requests that were in
flight when it failed come back and wait, in their original order (the slot
queue is ordered by the item's sequence number), without using up their
attempts.  Whoever waits also probes: when a probe is due and nobody is
probing, one waiter checks health (capped exponential backoff, jittered).  Once
it answers, slots reopen one at a time and grow by one with each success (a
slow start), so a server that just came back is not hit by the whole batch at
once.  After ``wait_for_backend`` seconds without a success the endpoint is
DOWN: its waiters fail with ``BackendDown`` and new requests fail at once,
unless a probe (still made every ``PROBE_MAX`` seconds) finds it back.
"""

from __future__ import annotations

import enum
import heapq
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
import attrs

from .adaptive import AdaptiveLimit
from .errors import BackendDown, BackendOverloaded, ImageWorksError
from .events import Event, Listeners, structured
from .models import HealthReport
from .retry import scaled

__all__ = ["PROBE_FIRST", "PROBE_MAX", "Endpoint", "State"]

#: First and largest pause between two health probes of an endpoint that is out, seconds.
PROBE_FIRST = 0.5
PROBE_MAX = 15.0
#: Pause after a 429 / 503 without ``Retry-After``: first and largest, seconds.
PAUSE_FIRST = 0.5
PAUSE_MAX = 30.0
#: Recoveries without a successful request in between, after which outage errors count as the item's.
MAX_FLAPS = 3


class State(enum.Enum):
    UP = "up"
    PAUSED = "paused"
    OUT = "out"
    DOWN = "down"


@attrs.define(eq=False)
class _Waiter:
    key: tuple[int, int]
    event: anyio.Event = attrs.Factory(anyio.Event)
    granted: bool = False
    cancelled: bool = False

    def __lt__(self, other: _Waiter) -> bool:
        return self.key < other.key


def _jitter(seconds: float) -> float:
    return scaled(seconds * random.uniform(0.5, 1.0))


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else (f"{seconds // 60}:{seconds % 60:02d}")
    )


class Endpoint:
    """Availability and request slots of one backend endpoint.

    Args:
        backend: The backend's name.
        url: The endpoint, credentials removed (for messages).
        limit: Requests in flight at most.
        wait: ``wait_for_backend`` seconds (``0``: never wait, outages are not tracked).
        probe: Checks health (never raises; ``ready`` decides).
        listeners: Where backend events go.
        hint: What to do when it is down (launch lines).
        context: The backend context bound to this endpoint's URL.
        adaptive: Finds the limit from the requests' latencies (``concurrency =
            "auto"``); *limit* is then its hard maximum.
    """

    def __init__(
        self,
        backend: str,
        url: str,
        *,
        limit: int,
        wait: float,
        probe: Callable[[], Awaitable[HealthReport]],
        listeners: Listeners,
        hint: str | None = None,
        probe_timeout: float = 10.0,
        context: Any = None,
        adaptive: AdaptiveLimit | None = None,
    ) -> None:
        self.backend = backend
        self.context = context
        self.url = url
        self.adaptive = adaptive
        self.max_limit = limit if adaptive is None else adaptive.limit
        self.limit = self.max_limit
        self._shown_limit = self.limit
        self.wait = wait
        self.hint = hint
        self._probe_fn = probe
        self._probe_timeout = probe_timeout
        self._listeners = listeners
        self.state = State.UP
        self.in_flight = 0
        #: When the first outage error since the last success came (``None``: healthy).
        self.unhealthy_since: float | None = None
        self.paused_until = 0.0
        self.next_probe = 0.0
        self.loading = False
        self.last_error: BaseException | None = None
        #: ``[start, end]`` (monotonic seconds) of each outage; ``end`` is ``None`` while it lasts.
        self.outages: list[list[float | None]] = []
        self.pauses = 0
        self._pause_streak = 0
        self._probe_failures = 0
        self._flaps = 0
        #: It answered at least once (a request, a ready health check): refusals are outages from now on.
        self.seen_up = False
        #: Successful requests so far (an item whose request fails again after others succeeded
        #: is not waiting out an outage: see ``attempts``).
        self.successes = 0
        self._probing = False
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()

    # ------------------------------------------------------------ what callers ask

    @property
    def tracking(self) -> bool:
        """Outages are tracked (``wait_for_backend`` > 0)."""
        return self.wait > 0

    def accepting(self) -> bool:
        """Requests may go to it now (it may still be busy)."""
        if self.state is State.PAUSED and time.monotonic() >= self.paused_until:
            self._resume()
        return self.state is State.UP

    def is_down(self) -> bool:
        return self.state is State.DOWN

    def probe_due(self) -> bool:
        return (
            self.state in (State.OUT, State.DOWN)
            and not self._probing
            and time.monotonic() >= self.next_probe
        )

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.cancelled)

    def down_for(self) -> float:
        return 0.0 if self.unhealthy_since is None else time.monotonic() - self.unhealthy_since

    # ------------------------------------------------------------ slots

    async def acquire(
        self, priority: int, *, patience: float | None = None, leave_if_out: bool = False
    ) -> bool:
        """Wait for a slot; ``False`` when *patience* ran out first, or (with *leave_if_out*: the
        caller has somewhere else to go) when the endpoint stopped accepting while the caller waited
        in its queue (out, down or paused), so that its queue moves to the others at once.

        Raises:
            BackendDown: The endpoint is down (out for longer than ``wait_for_backend``).
        """
        if self.state is State.UP and self.in_flight < self.limit and not self._live_waiters():
            await anyio.lowlevel.checkpoint_if_cancelled()
            self.in_flight += 1
            return True
        waiter = _Waiter((priority, next(self._order)))
        heapq.heappush(self._waiters, waiter)
        give_up = None if patience is None else time.monotonic() + patience
        was_up = self.state is State.UP
        try:
            while True:
                self._pump()
                if waiter.granted:
                    return True
                if leave_if_out and was_up and not self.accepting():
                    return False
                if self.state is State.PAUSED and self._overdue():
                    self._give_up("it kept asking us to wait")
                if self.state is State.DOWN and not self.probe_due():
                    raise self.down_error()
                if self.probe_due():
                    await self.probe()
                    continue
                now = time.monotonic()
                if give_up is not None and now >= give_up:
                    return False
                wake = self._next_wakeup(now)
                if give_up is not None:
                    wake = give_up if wake is None else min(wake, give_up)
                with anyio.move_on_after(None if wake is None else max(0.0, wake - now)):
                    await waiter.event.wait()
                if not waiter.granted:
                    waiter.event = anyio.Event()
        except BaseException:
            if waiter.granted:
                waiter.granted = False
                self.release()
            raise
        finally:
            if not waiter.granted:
                waiter.cancelled = True
                self._drop_cancelled()

    def release(self) -> None:
        self.in_flight -= 1
        self._pump()

    def _live_waiters(self) -> bool:
        self._drop_cancelled()
        return bool(self._waiters)

    def _drop_cancelled(self) -> None:
        while self._waiters and self._waiters[0].cancelled:
            heapq.heappop(self._waiters)

    def _pump(self) -> None:
        """Hand free slots to the first waiters in order."""
        if not self.accepting():
            return
        while self.in_flight < self.limit and self._waiters:
            waiter = heapq.heappop(self._waiters)
            if waiter.cancelled:
                continue
            waiter.granted = True
            self.in_flight += 1
            waiter.event.set()

    def _next_wakeup(self, now: float) -> float | None:
        if self.state is State.PAUSED:
            return self.paused_until
        if self.state in (State.OUT, State.DOWN):
            return max(now, self.next_probe) if not self._probing else None
        return None

    def _notify(self) -> None:
        """Wake every waiter to look at the new state."""
        for waiter in self._waiters:
            waiter.event.set()

    # ------------------------------------------------------------ outcomes

    def success(self, latency: float | None = None) -> None:
        """A request succeeded (in *latency* seconds): healthy again; grow the slots back (slow start)."""
        if self.adaptive is not None and latency is not None:
            self._adapted(self.adaptive.sample(latency, self.in_flight + 1))
        self.unhealthy_since = None
        self._pause_streak = 0
        self._flaps = 0
        self.seen_up = True
        self.successes += 1
        if self.limit < self.max_limit:
            self.limit += 1
            self._pump()

    def failure(self, exc: ImageWorksError) -> bool:
        """A request failed with an ``outage`` error: pause, or go out; ``False`` when it flaps.

        An endpoint that never answered (no successful request, no ready health
        check) and refuses connections was not started: that is not an outage
        either (``preflight`` reports it with the launch lines at once).

        An endpoint whose health probe said "ready" ``MAX_FLAPS`` times since its
        last successful request, only to fail the next request again, is not
        coming back by waiting (a crash loop, a proxy in front of a dead
        server): the error is then the request's, and uses up its attempts.
        """
        if self._flaps >= MAX_FLAPS:
            return False
        if not self.seen_up and not isinstance(exc, BackendOverloaded):
            return False  # never answered yet: not started (or started with a wrong URL), not an outage
        now = time.monotonic()
        if self.unhealthy_since is None:
            self.unhealthy_since = now
        self.last_error = exc
        if isinstance(exc, BackendOverloaded):
            if self._overdue(now):  # busy for longer than wait_for_backend without one success
                self._give_up(_one_line(exc))
                return True
            if self.adaptive is not None:
                self._adapted(self.adaptive.overloaded())
            self._pause(exc, now)
        else:
            self.mark_out(exc, now=now)
        return True

    def _pause(self, exc: BackendOverloaded, now: float) -> None:
        if exc.retry_after is not None:
            seconds = scaled(exc.retry_after)
        else:
            seconds = _jitter(min(PAUSE_MAX, PAUSE_FIRST * 2 ** min(self._pause_streak, 16)))
        until = now + seconds
        if self.state is State.UP or (self.state is State.PAUSED and until > self.paused_until):
            fresh = self.state is State.UP
            self.state = State.PAUSED
            self.paused_until = until
            if fresh:
                self.pauses += 1
                self._pause_streak += 1
                self.limit = 1
                self._emit("paused", seconds=seconds, error=exc)
                structured(
                    logging.INFO,
                    f"{self.backend} at {self.url} asked us to wait {seconds:.1f}s (HTTP {exc.status})",
                    {"event": "paused", "backend": self.backend, "url": self.url, "seconds": seconds},
                )

    def _resume(self) -> None:
        self.state = State.UP
        self._notify()

    def mark_out(self, exc: BaseException | None, *, now: float | None = None, loading: bool = False) -> None:
        """Take the endpoint out of service (it is probed until it answers)."""
        now = time.monotonic() if now is None else now
        if self.unhealthy_since is None:
            self.unhealthy_since = now
        if exc is not None:
            self.last_error = exc
        self.loading = loading
        if self.state in (State.OUT, State.DOWN):
            return
        self.state = State.OUT
        self.limit = 1
        self._probe_failures = 0
        self.next_probe = now + max(0.001, _jitter(PROBE_FIRST))
        self.outages.append([now, None])
        self._emit("loading" if loading else "outage", error=exc)
        reason = _one_line(exc) if exc is not None else "not ready"
        structured(
            logging.WARNING,
            f"{self.backend} at {self.url} is {'loading' if loading else 'down'} ({reason}); "
            f"waiting up to {self.wait:g}s for it",
            {"event": "loading" if loading else "outage", "backend": self.backend, "url": self.url},
        )
        self._notify()

    def timed_out(self) -> None:
        """A request ran past its timeout: with an adaptive limit, fewer go at once."""
        if self.adaptive is not None:
            self._adapted(self.adaptive.overloaded())

    def server_queue(self, waiting: float) -> None:
        """The server's own count of waiting requests (from its metrics), for the adaptive limit."""
        if self.adaptive is not None:
            self._adapted(self.adaptive.server_queue(waiting))

    def _adapted(self, changed: bool) -> None:
        if not changed or self.adaptive is None:
            return
        self.max_limit = self.adaptive.limit
        self.limit = min(self.limit, self.max_limit)
        shown = self._shown_limit
        if abs(self.max_limit - shown) >= max(2, shown // 4):  # log meaningful moves only
            self._shown_limit = self.max_limit
            self._emit("limit", detail=str(self.max_limit))
            structured(
                logging.INFO,
                f"{self.backend} at {self.url}: concurrency limit {shown} -> {self.max_limit}",
                {"event": "limit", "backend": self.backend, "url": self.url, "limit": self.max_limit},
            )

    # ------------------------------------------------------------ probing

    async def probe(self) -> bool:
        """One health probe (only one at a time); ``True`` when the endpoint is back."""
        if self._probing:
            return False
        self._probing = True
        try:
            report: HealthReport | None = None
            with anyio.move_on_after(self._probe_timeout):
                report = await self._probe_fn()
        finally:
            self._probing = False
            self._notify()  # a cancelled prober hands the probing over to another waiter
        now = time.monotonic()
        if report is not None and report.ready:
            self._recovered(now)
            return True
        self._probe_failures += 1
        self.loading = report is not None and report.reachable
        detail = (report.detail if report is not None else None) or (
            f"no answer within {self._probe_timeout:g}s"
        )
        if self._overdue(now):
            self._give_up(detail)
            return False
        pause = max(0.001, _jitter(min(PROBE_MAX, PROBE_FIRST * 2 ** min(self._probe_failures, 16))))
        if self.unhealthy_since is not None:  # never probe past the give-up moment
            pause = min(pause, max(0.0, self.unhealthy_since + self.wait - now))
        self.next_probe = now + pause
        self._emit("probe", seconds=pause, detail=detail)
        self._notify()
        return False

    def _overdue(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return self.unhealthy_since is not None and now - self.unhealthy_since >= self.wait

    def _give_up(self, detail: str) -> None:
        self.next_probe = time.monotonic() + max(0.001, scaled(PROBE_MAX))
        if self.state is not State.DOWN:
            self.state = State.DOWN
            self._emit("down", seconds=self.down_for(), detail=detail)
            structured(
                logging.WARNING,
                f"{self.backend} at {self.url} has been unavailable for {_clock(self.down_for())} "
                f"({detail}); gave up waiting (wait_for_backend={self.wait:g}s)",
                {"event": "down", "backend": self.backend, "url": self.url, "down_s": self.down_for()},
            )
        self._notify()

    def mark_up(self) -> None:
        """A health check found it ready (preflight)."""
        self.seen_up = True

    def _recovered(self, now: float) -> None:
        was_out = self.state in (State.OUT, State.DOWN)
        self.seen_up = True
        self.state = State.UP
        self.loading = False
        self.limit = 1
        self._probe_failures = 0
        if self.adaptive is not None:
            self.adaptive.restart()
        took = 0.0
        if self.outages and self.outages[-1][1] is None:
            start = self.outages[-1][0]
            self.outages[-1][1] = now
            took = now - (start if start is not None else now)
        if was_out:
            self._flaps += 1
            self._emit("recovered", seconds=took)
            structured(
                logging.WARNING,
                f"{self.backend} at {self.url} is back after {took:.1f}s",
                {"event": "recovered", "backend": self.backend, "url": self.url, "down_s": took},
            )
        self._notify()
        self._pump()

    # ------------------------------------------------------------ reporting

    def down_error(self) -> BackendDown:
        took = self.down_for()
        cause = f": {_one_line(self.last_error)}" if self.last_error is not None else ""
        return BackendDown(
            f"{self.backend} at {self.url} has been unavailable for {_clock(took)} "
            f"(gave up waiting after wait_for_backend={self.wait:g}s){cause}",
            down_for=took,
            backend=self.backend,
            url=self.url,
            hint=(self.hint + "\n" if self.hint else "")
            + "start the server, then run the same command with --resume to do only the rest "
            "(--wait-for-backend SECONDS waits longer)",
        )

    def outage_seconds(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return sum(((end if end is not None else now) - (start or now)) for start, end in self.outages)

    def _emit(self, kind: str, **fields: object) -> None:
        if self._listeners:
            self._listeners.emit(Event(kind, "", backend=self.backend, url=self.url, **fields))  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return (
            f"<Endpoint {self.backend} {self.url} {self.state.value} "
            f"{self.in_flight}/{self.limit} in flight, {self.waiting} waiting>"
        )


def _one_line(exc: BaseException) -> str:
    msg = exc.message if isinstance(exc, ImageWorksError) else f"{type(exc).__name__}: {exc}"
    return " ".join(msg.split()) or type(exc).__name__
