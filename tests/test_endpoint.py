"""One endpoint's outage state (``imageworks_core.endpoint``), driven directly: one prober with a
capped exponential backoff, waiters served in their original order when it is back, and slots that
ramp up from one instead of all at once. Waits are scaled down (``retry.testing``), not removed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from imageworks_core.endpoint import PROBE_FIRST, PROBE_MAX, Endpoint, State
from imageworks_core.errors import BackendUnavailable
from imageworks_core.events import Event, Listeners
from imageworks_core.models import HealthReport
from imageworks_core.retry import testing as scaled_waits

pytestmark = pytest.mark.anyio
SCALE = 0.02  # PROBE_FIRST 0.5 s -> 10 ms, PROBE_MAX 15 s -> 0.3 s


@pytest.fixture(autouse=True)
def _scaled_waits() -> Iterator[None]:
    with scaled_waits(time_scale=SCALE):
        yield


class Prober:
    """A health check that fails *failures* times, then finds the server ready."""

    def __init__(self, failures: int, delay: float = 0.005) -> None:
        self.failures = failures
        self.delay = delay
        self.times: list[float] = []
        self.active = 0
        self.peak = 0

    async def __call__(self) -> HealthReport:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.times.append(time.monotonic())
        try:
            await anyio.sleep(self.delay)
        finally:
            self.active -= 1
        ready = len(self.times) > self.failures
        return HealthReport(backend="b", url="http://gpu:8000", reachable=ready, ready=ready)


def _endpoint(prober: Prober, events: list[Event], *, limit: int = 8, wait: float = 600) -> Endpoint:
    listeners = Listeners()
    listeners.add(events.append)
    ep = Endpoint("b", "http://gpu:8000", limit=limit, wait=wait, probe=prober, listeners=listeners)
    ep.mark_up()  # it answered before: a refusal now is an outage
    return ep


async def _items(
    ep: Endpoint, priorities: list[int], *, hold: float = 0.002, paced: bool = False
) -> list[tuple[int, int]]:
    """One item per priority waits for a slot, holds it *hold* seconds, succeeds; ``(priority,
    requests in flight when it got its slot)`` in the order the slots were given."""
    granted: list[tuple[int, int]] = []

    async def item(priority: int) -> None:
        assert await ep.acquire(priority)
        granted.append((priority, ep.in_flight))
        await anyio.sleep(hold)
        ep.success()
        ep.release()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for priority in priorities:
                tg.start_soon(item, priority)
                if paced:  # each one queued before the next arrives
                    await anyio.sleep(0)
    return granted


async def test_one_prober_backs_off_exponentially_up_to_the_cap_while_items_wait() -> None:
    prober = Prober(failures=7)
    events: list[Event] = []
    ep = _endpoint(prober, events)
    assert ep.failure(BackendUnavailable("connection refused"))
    assert ep.state is State.OUT and ep.limit == 1

    await _items(ep, list(range(40)))  # 40 items wait on one outage
    assert prober.peak == 1, "two probes ran at once"
    assert len(prober.times) == 8  # 7 failed probes, the 8th found it back
    gaps = [b - a for a, b in zip(prober.times, prober.times[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):  # after the n-th failure: jittered in [0.5, 1] x the step
        step = min(PROBE_MAX, PROBE_FIRST * 2**n) * SCALE
        assert gap >= 0.5 * step - 0.002, (n, gaps)
        assert gap <= step + 0.5, (n, gaps)  # a loaded machine's scheduling margin
    assert max(gaps) <= PROBE_MAX * SCALE + 0.5  # capped
    kinds = [e.kind for e in events]
    assert kinds[0] == "outage" and kinds.count("probe") == 7 and kinds.count("recovered") == 1
    recovered = next(e for e in events if e.kind == "recovered")
    assert recovered.url == "http://gpu:8000" and recovered.seconds is not None and recovered.seconds > 0
    assert ep.state is State.UP and ep.outages[0][1] is not None


PRIORITIES = [17, 3, 11, 0, 19, 8, 5, 14, 1, 9, 12, 6, 18, 2, 15, 10, 4, 16, 7, 13]


async def test_waiters_go_back_in_their_original_order() -> None:
    """Items that waited out the outage (arriving in any order) go in their queue order (one slot)."""
    ep = _endpoint(Prober(failures=2), [], limit=1)
    ep.failure(BackendUnavailable("connection refused"))
    granted = await _items(ep, PRIORITIES, hold=0.001, paced=True)
    assert [p for p, _ in granted] == sorted(PRIORITIES)


async def test_slots_ramp_up_from_one_after_an_outage() -> None:
    prober = Prober(failures=2)
    events: list[Event] = []
    ep = _endpoint(prober, events, limit=8)
    ep.failure(BackendUnavailable("connection refused"))
    granted = await _items(ep, PRIORITIES, hold=0.01, paced=True)
    in_flight = [n for _, n in granted]
    assert in_flight[0] == 1  # one request first, to see it really is back
    assert all(n <= i + 1 for i, n in enumerate(in_flight)), in_flight  # never more than earned
    assert max(in_flight) > 1 and max(in_flight) <= 8, in_flight  # it grows back, up to the limit
    assert ep.limit > 1


async def test_a_cancelled_prober_hands_probing_to_another_waiter() -> None:
    """The waiter that was probing is cancelled mid-probe: another one probes; nobody is stuck."""
    prober = Prober(failures=1, delay=0.3)
    events: list[Event] = []
    ep = _endpoint(prober, events)
    ep.failure(BackendUnavailable("connection refused"))
    got: list[int] = []

    async def item(priority: int) -> None:
        assert await ep.acquire(priority)
        got.append(priority)
        ep.success()
        ep.release()

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            first = anyio.CancelScope()
            tg.start_soon(_run_in, first, item, 0)
            while not prober.times:  # the only waiter is probing now
                await anyio.sleep(0.001)
            for priority in (1, 2, 3):
                tg.start_soon(item, priority)
            await anyio.sleep(0.05)
            first.cancel()
    assert sorted(got) == [1, 2, 3]  # one of the others probed after the cancelled probe
    assert len(prober.times) == 2 and prober.peak == 1


async def _run_in(scope: anyio.CancelScope, fn: Any, *args: Any) -> None:
    with scope:
        await fn(*args)


async def test_an_outage_longer_than_wait_for_backend_ends_the_waiting() -> None:
    prober = Prober(failures=10_000)
    events: list[Event] = []
    ep = _endpoint(prober, events, wait=0.3)
    ep.failure(BackendUnavailable("connection refused"))
    t0 = time.monotonic()
    with anyio.fail_after(30), pytest.raises(Exception) as info:
        await ep.acquire(0)
    assert type(info.value).__name__ == "BackendDown"
    assert 0.3 <= time.monotonic() - t0 < 5
    assert "http://gpu:8000" in str(info.value)
    assert [e.kind for e in events][-1] == "down"
