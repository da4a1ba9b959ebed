"""The server's own waiting queue reaches the adaptive limit while a batch runs (asyncio and trio):
read through the backend's health hook every few seconds (shortened here), only for adaptive
endpoints, and no more once a server shows it has no such figure."""

from __future__ import annotations

from typing import Any

import pytest

from imageworks_core import Client, HealthReport, Request, hookimpl, queuewatch
from imageworks_core.adaptive import START
from imageworks_core.testing import FakeBackend

pytestmark = pytest.mark.anyio


class Queued(FakeBackend):
    """Reports a waiting queue (or none) from its health hook, as vLLM's /metrics does."""

    def __init__(self, queue: list[float] | None, **kw: Any) -> None:
        super().__init__(delay=0.03, **kw)
        self.queue = queue
        self.health_calls = 0

    @hookimpl
    async def health(self, ctx: Any) -> HealthReport:
        self.health_calls += 1
        if self.queue is None:
            return HealthReport.up(ctx, (self.model,))
        waiting = self.queue.pop(0) if len(self.queue) > 1 else self.queue[0]
        return HealthReport.up(ctx, (self.model,), metrics={"waiting": waiting})


def client(plugin: FakeBackend, **overrides: Any) -> Client:
    return Client(
        plugins=[plugin],
        entry_points=False,
        user_file=False,
        project_file=False,
        backend=plugin.name,
        overrides=overrides,
    )


async def _batch(c: Client, n: int) -> None:
    async with c.map([Request(prompt="x", id=str(i)) for i in range(n)]) as results:
        assert all([r.ok async for r in results])


@pytest.fixture(autouse=True)
def _fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queuewatch, "EVERY", 0.05)  # a test may shorten waits


async def test_a_growing_server_queue_lowers_the_limit_during_the_batch() -> None:
    fake = Queued([1, 40, 80, 160, 320, 640], name="a")
    async with client(fake) as c:
        [ep] = c.dispatcher.runner.pool("a")
        limiter = ep.adaptive
        assert limiter is not None and limiter.limit == START  # the default is adaptive
        moves: list[tuple[float, int, int]] = []
        reading = limiter.server_queue

        def spy(waiting: float) -> bool:  # records, changes nothing
            before = limiter.limit
            changed = reading(waiting)
            moves.append((waiting, before, limiter.limit))
            return changed

        limiter.server_queue = spy  # type: ignore[method-assign]
        await _batch(c, 300)
    assert fake.health_calls >= 3 and len(moves) == fake.health_calls
    assert moves[0][1] == moves[0][2]  # the first reading only sets the reference
    assert any(after < before for _, before, after in moves[1:]), moves


async def test_a_steady_server_queue_changes_nothing() -> None:
    fake = Queued([30.0], name="a")
    async with client(fake) as c:
        [ep] = c.dispatcher.runner.pool("a")
        limiter = ep.adaptive
        assert limiter is not None
        seen: list[bool] = []
        reading = limiter.server_queue
        limiter.server_queue = lambda w: seen.append(reading(w)) or seen[-1]  # type: ignore[method-assign]
        await _batch(c, 60)
    assert len(seen) >= 2 and not any(seen)


async def test_a_server_without_queue_figures_is_asked_once() -> None:
    fake = Queued(None, name="a")
    async with client(fake) as c:
        await _batch(c, 60)  # ~0.25 s: five readings' worth
        [ep] = c.dispatcher.runner.pool("a")
        assert fake.health_calls == 1
        assert ep.adaptive is not None and ep.adaptive.limit >= START


async def test_a_fixed_concurrency_is_not_watched() -> None:
    fake = Queued([1, 50, 100], name="a")
    async with client(fake, concurrency=4) as c:
        await _batch(c, 40)
        assert fake.health_calls == 0
