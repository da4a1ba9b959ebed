"""The progress counters behind the CLI's bar (the bar itself draws only on a terminal)."""

from __future__ import annotations

import pytest

from imageworks_core import Client, Request
from imageworks_core.dispatch import Event
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
