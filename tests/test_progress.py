"""The progress counters behind the CLI's bar (the bar itself draws only on a terminal)."""

from __future__ import annotations

import pytest

from imageworks_core import Client, Event, Request
from imageworks_core.progress import Progress
from imageworks_core.testing import FakeBackend


def test_an_item_that_falls_back_is_in_flight_once() -> None:
    p = Progress(enabled=False)
    for e in (Event("queued", "a"), Event("started", "a"), Event("fallback", "a"), Event("started", "a")):
        p.on_event(e)
    assert p.in_flight == 1
    p.on_event(Event("done", "a"))
    p.on_event(Event("failed", "b"))  # an input error: never started
    assert (p.done, p.failed, p.in_flight) == (1, 1, 0)


@pytest.mark.anyio
async def test_in_flight_never_exceeds_the_backend_concurrency(anyio_backend: str) -> None:
    fake = FakeBackend(delay=0.02)
    p = Progress(enabled=False)
    peak = 0

    def on_event(e: Event) -> None:
        nonlocal peak
        p.on_event(e)
        peak = max(peak, p.in_flight)

    client = Client(
        plugins=[fake],
        entry_points=False,
        user_file=False,
        project_file=False,
        backend="fake",
        overrides={"concurrency": 3},
    )
    async with (
        client,
        client.map([Request(prompt=str(i), id=str(i)) for i in range(20)], on_event=on_event) as rs,
    ):
        async for _ in rs:
            pass
    assert p.done == 20 and p.in_flight == 0
    assert peak <= 3


def test_the_bar_shows_an_outage_and_the_waiting_items() -> None:
    p = Progress(enabled=False)
    for i in range(3):
        p.on_event(Event("started", str(i)))
        p.on_event(Event("requeued", str(i), backend="vllm"))
    p.on_event(Event("outage", "", backend="vllm", url="http://127.0.0.1:8000/v1"))
    p.on_event(Event("probe", "", backend="vllm", seconds=5.0))
    since = p.outages["vllm"].since
    line = p.backend_status(now=since + 42.2)
    assert line.startswith("vllm down for 0:42, retrying in ")
    assert line.endswith(", 3 waiting") and p.in_flight == 0
    p.on_event(Event("recovered", "", backend="vllm", seconds=42.0))
    p.on_event(Event("started", "0"))
    assert p.backend_status() == "" and p.waiting == 2 and p.in_flight == 1


def test_the_bar_shows_a_pause_only_while_it_lasts() -> None:
    p = Progress(enabled=False)
    p.on_event(Event("paused", "", backend="lmdeploy", seconds=2.0))
    start = p.outages["lmdeploy"].since
    assert p.backend_status(now=start + 0.5) == "lmdeploy asked us to wait, retrying in 2s"
    assert p.backend_status(now=start + 2.5) == ""
    p.on_event(Event("loading", "", backend="vllm"))
    p.on_event(Event("down", "", backend="vllm", seconds=600.0))
    assert "gave up on vllm" in p.backend_status()
