"""The adaptive concurrency limit: unit tests of the rule, the endpoint hooks, and a run against
the capacity-modelled server (``bench/capacity_server.py``) as its own process."""

from __future__ import annotations

import json
import logging
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from imageworks_core import BackendOverloaded, Client, Event, HealthReport, Request
from imageworks_core.adaptive import DROP, START, AdaptiveLimit
from imageworks_core.endpoint import Endpoint
from imageworks_core.events import Listeners

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed(lim: AdaptiveLimit, clock: Clock, latency: float, windows: int = 1, rate: float = 0) -> None:
    """*windows* full windows of requests that each took *latency*, with the limit in use.

    They complete at *rate* per second (default: ``limit / latency``, a server that scales).
    """
    for _ in range(windows):
        count = max(8, lim.limit)
        for _ in range(count):
            clock.now += 1 / rate if rate else latency / lim.limit
            lim.sample(latency, lim.limit)


def test_doubles_while_latency_stays_flat_and_stops_at_the_hard_maximum() -> None:
    clock = Clock()
    lim = AdaptiveLimit(50, clock=clock)
    assert lim.limit == START == 8
    seen = []
    for _ in range(12):
        feed(lim, clock, 0.1)
        seen.append(lim.limit)
    assert seen[:4] == [16, 32, 50, 50]
    assert max(seen) == 50 and seen[-1] == 50  # never past the hard maximum


def test_backs_off_in_proportion_to_latency_inflation_and_holds_inside_the_band() -> None:
    clock = Clock()
    lim = AdaptiveLimit(256, start=4, clock=clock)
    feed(lim, clock, 0.1, windows=3)  # slow start: 4 -> 8 -> 16 -> 32
    assert lim.limit == 32
    # 1.3x: inside the band, slow start is over; it settled no throughput at 16, so one probe step
    feed(lim, clock, 0.13, rate=190, windows=2)
    assert lim.limit == 32 + 5
    feed(lim, clock, 0.13, rate=190, windows=3)  # the same throughput as at 32: hold
    assert lim.limit == 37
    feed(lim, clock, 0.11, rate=200)  # 1.1x: below the band, grow by about sqrt(limit)
    assert lim.limit == 37 + 6
    feed(lim, clock, 0.14, rate=400)  # the first window after a change mixes old requests: not compared
    assert lim.limit == 43
    feed(lim, clock, 0.14, rate=400)  # latency 1.4x, throughput 2x that at 37: the server still gains
    assert lim.limit == 43 + 6
    feed(lim, clock, 0.25, rate=400)  # 2.5x and no gain: queueing; back to the middle of the band (1.6x)
    assert lim.limit == int(49 * 1.6 / 2.5)
    before = lim.limit
    feed(lim, clock, 0.1)  # the samples of requests sent before the decrease are skipped ...
    assert lim.limit == before
    feed(lim, clock, 0.1, windows=2)
    assert lim.limit == before + int(before**0.5)  # ... then it grows again, by about sqrt(limit)


def test_a_probe_that_runs_latency_out_of_the_band_goes_back() -> None:
    """Slow start leaves no throughput settled at the limit before; the probe that makes the
    comparison returns to where it started when it only adds queueing (a server past its batch)."""
    clock = Clock()
    lim = AdaptiveLimit(256, start=8, clock=clock)
    feed(lim, clock, 0.1, windows=2)  # 8 -> 16 -> 32 on flat latency
    assert lim.limit == 32
    feed(lim, clock, 0.19, rate=150, windows=2)  # 1.9x, inside the band: the probe
    assert lim.limit == 37
    feed(lim, clock, 0.22, rate=150)  # 2.2x: past the band, no gain: back to 32, not mid-band (29)
    assert lim.limit == 32
    for _ in range(6):  # then it holds there: a probe is made once
        feed(lim, clock, 0.19, rate=150)
        assert lim.limit == 32


def test_keeps_growing_inside_the_band_while_throughput_rises() -> None:
    """A batching server whose batches a small queue keeps full: latency 1.8x, throughput still up."""
    clock = Clock()
    lim = AdaptiveLimit(256, start=16, clock=clock)
    feed(lim, clock, 0.1, rate=100)  # baseline 100 ms; slow start doubles
    assert lim.limit == 32
    feed(lim, clock, 0.18, rate=120, windows=2)  # 1.8x: slow start ends; the first window settles
    assert lim.limit == 32 + 5  # +20 % throughput from the limit before (16): grow by sqrt
    feed(lim, clock, 0.19, rate=130, windows=2)  # +8 % from 32: still gaining
    assert lim.limit == 37 + 6
    feed(lim, clock, 0.195, rate=132, windows=3)  # +1.5 %: the plateau; hold (inside the band)
    assert lim.limit == 43


def test_a_rate_from_the_window_after_a_change_is_never_compared() -> None:
    """Right after a change the window mixes requests of the old limit: its throughput says nothing."""
    clock = Clock()
    lim = AdaptiveLimit(256, start=32, clock=clock)
    feed(lim, clock, 0.1, rate=100)  # sets the baseline; grows (1.0x)
    assert lim.limit == 64
    feed(lim, clock, 0.25, rate=100, windows=2)  # 2.5x: shrink to 1.6/2.5 of it
    assert lim.limit == int(64 * 1.6 / 2.5)
    held = lim.limit
    feed(lim, clock, 0.14, rate=20)  # skipped: sent before the decrease
    feed(lim, clock, 0.14, rate=1000)  # the first counted window: a huge rate, but not comparable
    assert lim.limit == held


def test_overload_shrinks_at_once_and_never_below_one() -> None:
    lim = AdaptiveLimit(128, start=20)
    assert lim.overloaded() and lim.limit == 14
    for _ in range(20):
        lim.overloaded()
    assert lim.limit == 1
    assert not lim.overloaded()  # already at the floor: nothing changed


def test_an_unused_limit_does_not_grow() -> None:
    clock = Clock()
    lim = AdaptiveLimit(128, clock=clock)
    for _ in range(40):
        clock.now += 0.01
        lim.sample(0.1, 1)  # only one in flight: no evidence that more would help
    assert lim.limit == START


def test_a_growing_server_queue_shrinks_it() -> None:
    lim = AdaptiveLimit(128, start=42)
    assert not lim.server_queue(5)  # first reading: nothing to compare with
    assert not lim.server_queue(20) and lim.limit == 42  # a little queue keeps the batch full
    assert lim.server_queue(27) and lim.limit == 36  # 6 past half of the limit (21)
    at = lim.limit
    assert not lim.server_queue(3) and lim.limit == at  # a shrinking queue is fine
    assert lim.server_queue(60) and lim.limit == int(at * DROP)  # at most by 1 - DROP at once
    assert not lim.server_queue(60)  # a steady queue is not a growing one


async def _probe() -> HealthReport:
    return HealthReport(backend="x", ready=True, reachable=True)


def _endpoint(events: list[Event], maximum: int = 64) -> Endpoint:
    listeners = Listeners()
    listeners.add(events.append)
    return Endpoint(
        "x", "http://127.0.0.1:1", limit=maximum, wait=600, probe=_probe, listeners=listeners,
        adaptive=AdaptiveLimit(maximum),
    )  # fmt: skip


@pytest.mark.anyio
async def test_endpoint_follows_its_adaptive_limit(caplog: pytest.LogCaptureFixture) -> None:
    events: list[Event] = []
    ep = _endpoint(events)
    assert ep.limit == ep.max_limit == START
    caplog.set_level(logging.INFO, logger="imageworks.dispatch")
    for _ in range(12):  # rounds: fill every slot, then each request finishes in 100 ms
        n = ep.limit
        for _ in range(n):
            assert await ep.acquire(0)
        for _ in range(n):
            ep.release()
            ep.success(0.1)
    assert ep.max_limit >= 16 and ep.limit <= ep.max_limit
    limits = [int(e.detail or 0) for e in events if e.kind == "limit"]
    assert limits and limits[-1] <= ep.max_limit
    logged = [r for r in caplog.records if getattr(r, "imageworks", {}).get("event") == "limit"]
    assert logged and logged[-1].imageworks["limit"] == limits[-1]  # type: ignore[attr-defined]

    before = ep.max_limit
    ep.failure(BackendOverloaded("busy", status=503, backend="x"))
    assert ep.max_limit == int(before * 0.7) and ep.limit == 1  # paused, then slow start up to it
    ep.timed_out()
    assert ep.max_limit == int(int(before * 0.7) * 0.7)


@pytest.mark.anyio
async def test_a_fixed_concurrency_has_no_adaptive_limit() -> None:
    async with Client(
        backend="openai",
        overrides={"concurrency": 8, "backends": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}},
    ) as client:
        assert client.adaptive("openai") is None and client.concurrency("openai") == 8
    async with Client(
        backend="openai", overrides={"backends": {"openai": {"max_concurrency": 40}}}
    ) as client:
        lim = client.adaptive("openai")
        assert lim is not None and lim.maximum == 40 and client.concurrency("openai") == 40


# ------------------------------------------------------------------ against the capacity server

K, P = 8, 24


@pytest.fixture(scope="module")
def capacity_server() -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = python_argv(
        ROOT / "bench" / "capacity_server.py",
        *("--port", str(port), "--batch", str(K), "--kv", str(P), "--service-ms", "100"),
    )
    with ServerProcess(argv, ready_url=base + "/health", name="capacity_server"):
        yield base


def _stats(base: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/_stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))


@pytest.mark.anyio
async def test_default_settings_find_the_batch_capacity(capacity_server: str) -> None:
    """Defaults only (``concurrency = "auto"``): the limit settles near K, never past P."""
    events: list[Event] = []
    overrides = {"backends": {"openai": {"base_url": capacity_server + "/v1", "model": "capacity-model"}}}
    async with Client(backend="openai", overrides=overrides) as client:
        ok = 0
        peak_before = _stats(capacity_server)["peak"]
        with anyio.fail_after(120):
            async with client.map(
                (Request(prompt=f"item {i}", id=str(i)) for i in range(300)), on_event=events.append
            ) as results:
                async for r in results:
                    assert r.error is None, r.error
                    ok += 1
        limit = client.dispatcher.limits()["openai"]
    assert ok == 300
    assert K // 2 <= limit <= 2 * K, limit
    assert any(e.kind == "limit" for e in events)
    assert (
        max(peak_before, _stats(capacity_server)["peak"]) <= P
    )  # it never pushed the server into preemption
