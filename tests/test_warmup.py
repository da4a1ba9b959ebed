"""Warm-up before a batch: one tiny request per backend, after its health check, before any item;
a failed warm-up is a failed preflight with the warm-up error's own message."""

from __future__ import annotations

from typing import Any

import pytest

from imageworks_core import BackendServerError, BackendUnavailable, Client, Request, hookimpl
from imageworks_core.testing import FakeBackend

pytestmark = pytest.mark.anyio


class Recording(FakeBackend):
    def __init__(self, order: list[str], **kw: Any) -> None:
        super().__init__(**kw)
        self.order = order

    @hookimpl
    async def health(self, ctx: Any) -> Any:
        self.order.append(f"health {self.name}")
        return await super().health(ctx)

    @hookimpl
    async def infer(self, ctx: Any, request: Request) -> Any:
        self.order.append(f"infer {self.name} {request.id or 'warm-up'} max_tokens={request.max_tokens}")
        return await super().infer(ctx, request)


class WithHook(Recording):
    @hookimpl
    async def warmup(self, ctx: Any) -> None:
        self.order.append(f"warmup hook {self.name}")


def client(*plugins: Any, **overrides: Any) -> Client:
    return Client(
        plugins=plugins,
        entry_points=False,
        user_file=False,
        project_file=False,
        backend=plugins[0].name,
        fallback=[p.name for p in plugins[1:]],
        overrides=overrides,
    )


async def test_warm_up_follows_health_and_precedes_the_items() -> None:
    order: list[str] = []
    a, b = Recording(order, name="a"), WithHook(order, name="b")
    async with client(a, b) as c:
        await c.dispatcher.preflight(warmup=True)
        async with c.map([Request(prompt="x", id="1")]) as results:
            assert [r.ok async for r in results] == [True]
    item = next(i for i, o in enumerate(order) if o.startswith("infer a 1 "))
    assert order.index("health a") < order.index("infer a warm-up max_tokens=1") < item
    assert sum(o.startswith("infer a warm-up") for o in order) == 1
    # a plugin with its own hook gets the hook, not a request
    assert order.index("health b") < order.index("warmup hook b")
    assert not any(o.startswith("infer b") for o in order)


async def test_no_warmup_sends_nothing_extra() -> None:
    order: list[str] = []
    async with client(Recording(order, name="a"), warmup=False) as c:
        await c.dispatcher.preflight(warmup=c.settings.warmup)
        await c.dispatcher.preflight()  # a bare health check never warms up
    assert order == ["health a", "health a"]


async def test_a_failed_warm_up_is_a_failed_preflight_with_its_message() -> None:
    order: list[str] = []
    a = Recording(order, name="a").always(BackendServerError("a backend answered HTTP 500: model is broken"))
    async with client(a) as c:
        with pytest.raises(BackendUnavailable) as info:
            await c.dispatcher.preflight(warmup=True)
    assert info.value.message.startswith("no backend is ready:")
    assert (
        "a at " in info.value.message and "a backend answered HTTP 500: model is broken" in info.value.message
    )


async def test_a_failed_warm_up_beside_a_live_backend_takes_it_out() -> None:
    order: list[str] = []
    bad = Recording(order, name="bad").always(BackendServerError("bad backend answered HTTP 500: boom"))
    good = Recording(order, name="good")
    async with client(bad, good) as c:
        reports = await c.dispatcher.preflight(warmup=True)
        assert [r.ready for r in reports] == [False, True]
        assert reports[0].detail == "bad backend answered HTTP 500: boom"
        assert c.dispatcher.state("bad") == "out"


async def test_a_warm_up_hook_that_raises_a_bug_is_reported_as_the_plugin_s_bug() -> None:
    """A warm-up hook raising outside the error tree fails the preflight like a health hook would."""

    class Buggy(Recording):
        @hookimpl
        async def warmup(self, ctx: Any) -> None:
            raise KeyError("no such cache slot")

    order: list[str] = []
    bad, good = Buggy(order, name="bad"), Recording(order, name="good")
    async with client(bad, good) as c:
        reports = await c.dispatcher.preflight(warmup=True)
    assert [r.ready for r in reports] == [False, True]
    assert reports[0].detail == "the bad plugin raised KeyError: 'no such cache slot'"
    assert reports[0].hint == "this is a bug in the plugin; report it to its authors"
