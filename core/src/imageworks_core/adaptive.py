"""Adaptive concurrency: find how many requests one endpoint should have in flight.

A batching server (vLLM, LMDeploy, TensorRT-LLM) answers more requests per
second as more run at once, up to its batch capacity; past it, extra requests
only queue (same throughput, longer latency); past its KV-cache capacity it
preempts and recomputes, and gets slower.  The right concurrency is the edge of
the first region, and it differs per model, GPU and prompt, so it is measured,
not configured.

How (the ideas of TCP Vegas and of Netflix's Gradient limiters; own code):

* Completed requests are grouped in windows of at least ``max(MIN_WINDOW,
  limit)`` samples.  Each window gives a mean latency and a throughput.
* The *baseline* is the lowest window mean latency seen: what a request costs
  when nothing queues.  It is forgotten when the endpoint recovers from an
  outage (a reloaded model may be faster or slower).
* A window whose mean latency stays below ``GROW_BELOW`` times the baseline,
  with the limit actually used, grows the limit: it doubles at first (slow
  start, until latency starts to rise), then grows by about its square root;
  so does a window, still inside the band below ``SHRINK_ABOVE``, whose
  throughput rose by ``GAIN`` or more from the limit before: requests that
  wait a little in the server keep its batches full between steps, and for a
  batch of thousands of images throughput is what counts.  The first window
  after a change mixes requests sent under the old limit, so its throughput is
  never compared; when slow start left no throughput settled at the limit
  before, one step up (a probe) makes the comparison, and a probe that runs
  latency out of the band goes back to where it started.  A
  window whose latency ran over ``SHRINK_ABOVE`` times the baseline shrinks the
  limit in proportion to the inflation, back to the middle of the band (at
  most by half): a little queue in the server keeps its batch full between
  steps.  In between the limit holds, so it does not oscillate on noise.
  Doubling overshoots the batch size by at most one window (one latency); the
  requests sent in it wait, and the next window shrinks the limit back.
* An overload (429/503, a timeout) shrinks it at once by ``DROP``.  A waiting
  queue reported by the server's own metrics (read every few seconds while a
  batch runs: ``queuewatch``) shrinks it when it grows past half of the
  limit.
* The limit never leaves ``[1, hard maximum]``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["AdaptiveLimit"]

#: First limit of a fresh endpoint (the old fixed default: safe for any server that batches).
START = 8
#: Fewest samples in one window.
MIN_WINDOW = 8
#: Mean latency below this times the baseline counts as "not queueing": the limit may grow.
GROW_BELOW = 1.2
#: Mean latency above this times the baseline is queueing: the limit shrinks back towards
#: ``GROW_BELOW`` (between the two it holds, so it does not oscillate on noise, or grows
#: while throughput still rises).
SHRINK_ABOVE = 2.0
#: Slow start (doubling at each window) ends at this much latency inflation.
SLOW_START_UNTIL = 1.1
#: Decrease on an overload signal (429/503, timeout).
DROP = 0.7
#: Throughput gain (from the limit before) that counts as "the extra load helped".
GAIN = 1.05
#: Largest decrease for latency inflation, in one decision.
DEEPEST = 0.5


class AdaptiveLimit:
    """The concurrency limit of one endpoint, adjusted from what its requests show.

    Args:
        maximum: Hard upper bound (the ``max_concurrency`` setting).
        start: First limit.
        clock: Monotonic clock (tests pass their own).
    """

    def __init__(
        self, maximum: int, *, start: int = START, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.maximum = max(1, maximum)
        self.limit = max(1, min(start, self.maximum))
        self.baseline: float | None = None
        self._clock = clock
        self._slow_start = True
        self._reset_window()
        #: (limit, throughput, mean latency) of the last settled window, and of the one at the
        #: limit before it.
        self._settled: tuple[int, float, float] | None = None
        self._before: tuple[int, float, float] | None = None
        #: The first window after a change mixes requests sent under the old limit: its
        #: throughput is not compared.
        self._settling = False
        #: The limit before the last change.
        self._from: int | None = None
        #: The limit a probe started from, until a settled window says whether it holds.
        self._probed_from: int | None = None
        self._last_waiting: float | None = None
        self._skip = 0
        #: Decisions so far (for tests and logs).
        self.changes = 0

    def _reset_window(self) -> None:
        self._count = 0
        self._total = 0.0
        self._busiest = 0
        self._opened: float | None = None

    # ------------------------------------------------------------ samples

    def sample(self, latency: float, in_flight: int) -> bool:
        """One request took *latency* seconds, *in_flight* running; ``True`` when the limit changed."""
        now = self._clock()
        if self._skip > 0:  # sent before the last decrease: it shows the old load, not the new one
            self._skip -= 1
            self._opened = now
            return False
        if self._opened is None:
            self._opened = now  # throughput is measured between completions, window after window
        self._count += 1
        self._total += latency
        self._busiest = max(self._busiest, in_flight)
        if self._count < max(MIN_WINDOW, self.limit):
            return False
        mean = self._total / self._count
        rate = self._count / max(1e-3, now - self._opened)
        busiest = self._busiest
        self._reset_window()
        self._opened = now
        return self._decide(mean, rate, busiest)

    def _decide(self, mean: float, rate: float, busiest: int) -> bool:
        if self.baseline is None or mean < self.baseline:
            self.baseline = mean
        ratio = mean / self.baseline
        gained = probe = False
        settled = not self._settling
        if self._settling:
            self._settling = False
        else:
            if self._settled is not None and self._settled[0] != self.limit:
                self._before = self._settled
            self._settled = (self.limit, rate, mean)
            before = self._before
            if before is not None and before[0] == self._from:
                # from the limit just before this (smaller) one, throughput still rose: the server
                # gains from the extra load (its batches kept full by a small queue)
                gained = before[0] < self.limit and ratio <= SHRINK_ABOVE and rate >= before[1] * GAIN
            else:
                # slow start grew on latency alone, a window a step, so no throughput was settled
                # at the limit before this one: one step up (a probe) makes the comparison
                probe = self._from is not None and self._from < self.limit and ratio <= SHRINK_ABOVE
        if ratio >= SLOW_START_UNTIL:
            self._slow_start = False
        if ratio < GROW_BELOW or gained or probe:
            if busiest < self.limit * 0.75:
                return False  # not using what it has: no evidence that more would help
            self._probed_from = self.limit if probe else None
            step = self.limit if self._slow_start else int(math.sqrt(self.limit))
            return self._set(self.limit + max(1, step))
        if ratio <= SHRINK_ABOVE:
            if settled:
                self._probed_from = None  # a settled window inside the band: the probe holds
            return False
        if self._probed_from is not None:  # the probe ran latency out of the band: back where it was
            back, self._probed_from = self._probed_from, None
            return self._set(back)
        # back to the middle of the hold band, not its floor: a little queue keeps a batch full
        return self._set(int(self.limit * max(DEEPEST, (GROW_BELOW + SHRINK_ABOVE) / 2 / ratio)))

    def overloaded(self) -> bool:
        """A 429/503 or a timeout: shrink now; ``True`` when the limit changed."""
        self._slow_start = False
        self._reset_window()
        return self._set(int(self.limit * DROP))

    def server_queue(self, waiting: float) -> bool:
        """The server's count of queued requests (``vllm:num_requests_waiting``); ``True``: limit changed.

        A little queue keeps the server's batch full between steps; a queue that
        grows past the one ``SHRINK_ABOVE`` latency inflation stands for (half
        of the limit: ``limit`` requests over a batch of ``limit / 2``) means
        the server already has more than it batches, from us or from other
        clients: the extra requests only add latency.  The limit drops by the
        excess, at most by ``1 - DROP`` of it.  The first reading only sets the
        reference.
        """
        previous, self._last_waiting = self._last_waiting, waiting
        allowed = self.limit * (1 - 1 / SHRINK_ABOVE)
        if previous is None or waiting <= previous or waiting <= allowed:
            return False
        self._slow_start = False
        self._reset_window()
        return self._set(int(self.limit - max(1.0, min(waiting - allowed, self.limit * (1 - DROP)))))

    def restart(self) -> None:
        """The endpoint came back from an outage: forget the baseline (the model may have changed)."""
        self.baseline = None
        self._settled = self._before = None
        self._probed_from = None
        self._last_waiting = None
        self._reset_window()

    def _set(self, limit: int) -> bool:
        limit = max(1, min(self.maximum, limit))
        if limit == self.limit:
            return False
        if limit < self.limit:
            self._probed_from = None  # any decrease ends a probe
            self._skip = self.limit  # the requests already in flight
            self._reset_window()
        self._settling = True
        self._from, self.limit = self.limit, limit
        self.changes += 1
        return True

    def __repr__(self) -> str:
        base = "?" if self.baseline is None else f"{self.baseline * 1000:.0f}ms"
        return f"<AdaptiveLimit {self.limit}/{self.maximum} baseline {base}>"
