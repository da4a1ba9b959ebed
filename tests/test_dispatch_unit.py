"""Unit tests of the dispatcher (retries, backoff, deadline, fan-out) on in-process fakes.

Everything here runs against ``FakeBackend`` (and small scripted plugins) with
retry sleeps off, so it is fast; the same behaviour against a real server is in
``test_dispatch_faults.py``.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image

from imageworks_core import (
    BackendDown,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Capabilities,
    Client,
    InputError,
    PluginError,
    PreparedImage,
    Request,
    Result,
    RetrySettings,
    hookimpl,
    prepare_image,
)
from imageworks_core.http import parse_retry_after
from imageworks_core.retry import Breaker, backoff_delay, counts_against_backend, ends_item, is_retryable
from imageworks_core.testing import Delay, FakeBackend

pytestmark = pytest.mark.anyio


def _jpeg(width: int = 16, height: int = 12, colour: tuple[int, int, int] = (180, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "JPEG", quality=80)
    return buf.getvalue()


JPEG = _jpeg()
IMG = PreparedImage.from_bytes(JPEG)


def make_client(
    *plugins: Any,
    retry: dict[str, Any] | None = None,
    backend: str | None = None,
    fallback: list[str] | None = None,
    **overrides: Any,
) -> Client:
    flags: dict[str, Any] = dict(overrides)
    if retry is not None:
        flags["retry"] = retry
    return Client(
        plugins=plugins,
        entry_points=False,
        user_file=False,
        project_file=False,
        backend=backend or plugins[0].name,
        fallback=fallback,
        overrides=flags,
    )


def req(i: int | str, **kw: Any) -> Request:
    return Request(prompt=f"item={i}", id=str(i), images=(IMG,), **kw)


async def collect(client: Client, items: Any, **kw: Any) -> list[Result]:
    out: list[Result] = []
    async with client.map(items, **kw) as results:
        async for r in results:
            out.append(r)
    return out


def by_id(results: list[Result]) -> dict[str, Result]:
    ids = [r.id for r in results]
    assert len(ids) == len(set(ids)), f"duplicate results: {sorted(ids)}"  # type: ignore[type-var]
    return {str(r.id): r for r in results}


class PerItem:
    """A ``FakeBackend`` reply that runs a per-item behaviour and counts calls per item."""

    def __init__(self, behaviour: Callable[[str, int], str]) -> None:
        self.behaviour = behaviour
        self.calls: dict[str, int] = {}

    def __call__(self, request: Request) -> str:
        rid = str(request.id)
        n = self.calls[rid] = self.calls.get(rid, 0) + 1
        return self.behaviour(rid, n)


# ------------------------------------------------------------------ which errors are retried


RETRYABLE = [
    BackendUnavailable("refused"),
    BackendTimeout("slow"),
    BackendOverloaded("busy", status=503),
    BackendOverloaded("busy", status=429, retry_after=0.0),
    BackendProtocolError("HTTP 500", status=500, retryable=True),
]
FINAL = [
    BackendRejected("bad request", status=400),
    BackendRejected("unknown model", status=404),
    BackendProtocolError("malformed, for good", retryable=False),
]


@pytest.mark.parametrize("exc", RETRYABLE, ids=lambda e: f"{type(e).__name__}-{e.status}")
async def test_retryable_errors_are_retried(exc: Exception) -> None:
    fake = FakeBackend().script(exc, exc, "third time lucky")
    async with make_client(fake) as client:
        result = await client.infer(req(1))
    assert result.text == "third time lucky"
    assert len(fake.calls) == 3
    assert [a.error_type for a in result.attempts] == [type(exc).__name__] * 2 + [None]
    assert all(a.backend == "fake" for a in result.attempts)


@pytest.mark.parametrize("exc", FINAL, ids=lambda e: f"{type(e).__name__}-{e.status}")
@pytest.mark.about("max_attempts")
async def test_final_errors_are_not_retried(exc: Exception) -> None:
    fake = FakeBackend().script(exc, "would have answered")
    async with make_client(fake, retry={"max_attempts": 5}) as client:
        with pytest.raises(type(exc)) as info:
            await client.infer(req(1))
    assert info.value is exc
    assert len(fake.calls) == 1


@pytest.mark.about("max_attempts")
async def test_retries_stop_at_max_attempts_with_the_last_error() -> None:
    errors = [BackendServerError(f"HTTP 500 #{i}", status=500) for i in range(10)]
    fake = FakeBackend().script(*errors)
    async with make_client(fake, retry={"max_attempts": 3}) as client:
        with pytest.raises(BackendServerError) as info:
            await client.infer(req(1))
    assert len(fake.calls) == 3
    assert info.value is errors[2]


async def test_default_attempts_are_four_for_the_items_own_errors() -> None:
    fake = FakeBackend().always(BackendTimeout("slow"))
    async with make_client(fake) as client:
        [r] = await collect(client, [req(1)])
    assert isinstance(r.error, BackendTimeout)
    assert len(fake.calls) == 4


async def test_an_outage_does_not_use_up_attempts() -> None:
    """Two outages and three HTTP 500s: six sends, yet the item still has attempts left (default 4)."""

    class Restarting(FakeBackend):
        @hookimpl
        async def health(self, ctx: Any) -> Any:  # back on every third probe, like a restarting server
            self.probes = getattr(self, "probes", 0) + 1
            self.healthy = self.probes % 3 == 0
            return await super().health(ctx)

    refused, failed = BackendUnavailable("refused"), BackendServerError("HTTP 500", status=500)
    fake = Restarting().script(refused, failed, refused, failed, failed)
    events: list[Any] = []
    fake.probes = 2  # type: ignore[attr-defined]  # the preflight's health check is the third: ready
    async with make_client(fake) as client:
        await client.dispatcher.preflight()  # it was up: refusals from now on are outages
        [r] = await collect(client, [req(1)], on_event=events.append)
    assert r.ok, r.error
    assert len(fake.calls) == 6
    assert [a.error_type for a in r.attempts] == [
        "BackendUnavailable",
        "BackendServerError",
        "BackendUnavailable",
        "BackendServerError",
        "BackendServerError",
        None,
    ]
    kinds = [e.kind for e in events if e.id == ""]
    assert kinds.count("outage") == 2 and kinds.count("recovered") == 2
    assert [e.kind for e in events if e.id == "1"].count("requeued") == 2


async def test_a_flapping_backend_uses_up_attempts_after_three_recoveries() -> None:
    """Health says ready but every request is refused (a proxy before a dead server): no endless wait."""
    fake = FakeBackend().always(BackendUnavailable("refused"))
    async with make_client(fake) as client:
        await client.dispatcher.preflight()
        with anyio.fail_after(10):
            [r] = await collect(client, [req(1)])
    assert isinstance(r.error, BackendUnavailable)
    # three outages the item waited out (probe said ready each time), then its four attempts
    assert len(fake.calls) == 3 + 4


async def test_input_error_and_4xx_end_the_item_without_fallback() -> None:
    primary = FakeBackend("primary").script(BackendRejected("too many images", status=400))
    backup = FakeBackend("backup")
    async with make_client(primary, backup, fallback=["backup"]) as client:
        [r] = await collect(client, [req(1)])
    assert isinstance(r.error, BackendRejected)
    assert backup.calls == []
    primary.script(InputError("the image is broken", source="x.jpg"))
    async with make_client(primary, backup, fallback=["backup"]) as client:
        [r] = await collect(client, [req(2)])
    assert isinstance(r.error, InputError)
    assert backup.calls == []


def test_error_classification() -> None:
    for exc in RETRYABLE:
        assert is_retryable(exc), exc
        assert counts_against_backend(exc), exc
        assert not ends_item(exc), exc
    for exc in FINAL[:2]:
        assert not is_retryable(exc)
        assert ends_item(exc)
        assert not counts_against_backend(exc)
    assert ends_item(InputError("bad image"))
    assert not is_retryable(PluginError("broken plugin"))
    assert not is_retryable(ValueError("not ours"))


# ------------------------------------------------------------------ backoff and Retry-After


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 12])
def test_backoff_is_full_jitter_below_the_ceiling(attempt: int) -> None:
    policy = RetrySettings(backoff_base=0.5, backoff_max=4.0)
    ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
    samples = [backoff_delay(attempt, policy) for _ in range(4000)]
    assert all(0.0 <= s <= ceiling for s in samples)
    # full jitter: the whole range [0, ceiling] is used, not a band near the ceiling
    assert min(samples) < 0.05 * ceiling
    assert max(samples) > 0.95 * ceiling
    mean = sum(samples) / len(samples)
    assert 0.4 * ceiling < mean < 0.6 * ceiling


def test_backoff_honours_retry_after() -> None:
    policy = RetrySettings(backoff_base=0.5, backoff_max=1.0)
    exc = BackendOverloaded("busy", retry_after=7.0, status=429)
    samples = [backoff_delay(1, policy, exc) for _ in range(1000)]
    # the server's wish wins over backoff_max, plus at most min(1, base) of jitter
    assert all(7.0 <= s <= 7.5 for s in samples)
    no_header = BackendOverloaded("busy", status=503)
    assert all(0.0 <= backoff_delay(1, policy, no_header) <= 0.5 for _ in range(200))


def test_parse_retry_after_seconds() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 12 ") == 12.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after("1.5") == 1.5


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    in_ten = email.utils.formatdate(now + 10, usegmt=True)
    assert parse_retry_after(in_ten, now=now) == pytest.approx(10.0)
    past = email.utils.formatdate(now - 100, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0 - 5) == pytest.approx(5.0)


@pytest.mark.parametrize("value", [None, "", "   ", "soon", "Wed, 99 Foo 2015", "12 parsecs", "-", "1,5"])
def test_parse_retry_after_garbage_is_none(value: str | None) -> None:
    assert parse_retry_after(value) is None


@pytest.mark.parametrize("value", ["inf", "nan", "1e400", "Infinity"])
def test_parse_retry_after_non_finite_is_ignored(value: str) -> None:
    """A server must not be able to make the client sleep forever (``stream`` has no deadline)."""
    assert parse_retry_after(value) is None


async def test_retry_after_pauses_the_backend_not_just_the_item(real_sleeps: None) -> None:
    """A 429 with Retry-After pauses the whole backend: no request goes out until it is over."""
    sent: list[tuple[str, float]] = []

    def reply(request: Request) -> str:
        sent.append((str(request.id), time.monotonic()))
        if len(sent) == 1:
            raise BackendOverloaded("busy", retry_after=0.4, status=429)
        return "ok"

    fake = FakeBackend(reply=reply, delay=0.01)
    async with make_client(fake, backends={"fake": {"concurrency": 1}}) as client:
        results = await collect(client, [req(i) for i in range(4)])
    assert all(r.ok for r in results)
    t429 = sent[0][1]
    later = [t for _, t in sent[1:]]
    assert len(later) == 4  # the 429'd item again, and the three others
    assert min(later) - t429 >= 0.39, "a request went out during the server's Retry-After"
    got = by_id(results)
    assert [a.error_type for a in got[sent[0][0]].attempts] == ["BackendOverloaded", None]
    assert got[sent[0][0]].queue_time >= 0.39


# ------------------------------------------------------------------ deadline


@pytest.mark.about("max_attempts", "deadline")
async def test_deadline_stops_retries() -> None:
    fake = FakeBackend().script(*[Delay(0.2, BackendUnavailable("refused")) for _ in range(50)])
    retry = {"max_attempts": 50, "deadline": 0.5, "backoff_base": 0.01, "backoff_max": 0.01}
    async with make_client(fake, retry=retry) as client:
        t0 = time.monotonic()
        [r] = await collect(client, [req(1)])
        elapsed = time.monotonic() - t0
    # the last try is either refused or cut short by the deadline itself
    assert isinstance(r.error, BackendUnavailable | BackendTimeout)
    assert 2 <= len(fake.calls) <= 4
    assert elapsed < 3.0  # without the deadline: 50 tries of 0.2 s


@pytest.mark.about("max_attempts", "deadline")
async def test_deadline_stops_fallback() -> None:
    primary = FakeBackend("primary").script(*[Delay(0.6, BackendUnavailable("down")) for _ in range(5)])
    backup = FakeBackend("backup")
    async with make_client(
        primary, backup, fallback=["backup"], retry={"max_attempts": 5, "deadline": 0.5}
    ) as client:
        [r] = await collect(client, [req(1)])
    assert not r.ok
    assert backup.calls == []


@pytest.mark.about("max_attempts", "deadline")
async def test_deadline_bounds_a_single_slow_attempt() -> None:
    """``retry.deadline`` is the total time one item may take: a hung try must not outlive it."""
    fake = FakeBackend().script(Delay(10.0))
    async with make_client(fake, retry={"max_attempts": 1, "deadline": 0.5}) as client:
        t0 = time.monotonic()
        with anyio.fail_after(20):
            [r] = await collect(client, [req(1)])
        elapsed = time.monotonic() - t0
    assert elapsed < 4.0, f"the item took {elapsed:.1f}s with a 0.5s deadline (the try hangs 10 s)"
    assert isinstance(r.error, BackendTimeout)


# ------------------------------------------------------------------ fallback and the final error


@pytest.mark.about("max_attempts")
async def test_fallback_after_retries_records_every_attempt() -> None:
    primary = FakeBackend("primary").script(
        BackendServerError("HTTP 500", status=500), BackendServerError("HTTP 500", status=500)
    )
    backup = FakeBackend("backup", reply="from backup")
    async with make_client(primary, backup, fallback=["backup"], retry={"max_attempts": 2}) as client:
        result = await client.infer(req(1))
    assert result.text == "from backup"
    assert result.backend == "backup"
    assert [(a.backend, a.error_type) for a in result.attempts] == [
        ("primary", "BackendServerError"),
        ("primary", "BackendServerError"),
        ("backup", None),
    ]


async def test_an_outage_of_the_primary_sends_the_item_to_the_fallback_at_once() -> None:
    primary = FakeBackend("primary").script(BackendUnavailable("down"))
    backup = FakeBackend("backup", reply="from backup")
    async with make_client(primary, backup, fallback=["backup"]) as client:
        await client.dispatcher.preflight()
        primary.healthy = False
        result = await client.infer(req(1))
    assert result.backend == "backup" and result.text == "from backup"
    assert [(a.backend, a.error_type) for a in result.attempts] == [
        ("primary", "BackendUnavailable"),
        ("backup", None),
    ]


@pytest.mark.parametrize("wait", [0, 0.3], ids=["fail-fast", "gave-up"])
@pytest.mark.about("max_attempts", "wait_for_backend")
async def test_all_down_is_one_unavailable_naming_each_backend(wait: float) -> None:
    """``wait_for_backend`` (the setting under test): 0 fails as soon as the tries are spent."""
    primary = FakeBackend("primary").always(BackendUnavailable("primary refused"))
    backup = FakeBackend("backup").always(BackendTimeout("backup timed out"))
    async with make_client(
        primary, backup, fallback=["backup"], retry={"max_attempts": 2}, wait_for_backend=wait
    ) as client:
        await client.dispatcher.preflight()  # both were up ...
        primary.healthy = False  # ... then the primary went down
        with pytest.raises(BackendUnavailable) as info, anyio.fail_after(10):
            await client.infer(req(1))
    text = str(info.value)
    assert "primary" in text and "primary refused" in text
    assert "backup" in text and "backup timed out" in text
    assert len(backup.calls) == 2
    if wait:
        assert "gave up waiting" in text
        assert len(primary.calls) == 1  # refused once, then only probed until it gave up


@pytest.mark.about("max_attempts", "wait_for_backend")
async def test_mixed_failures_are_a_backend_error_not_unavailable() -> None:
    primary = FakeBackend("primary").script(BackendUnavailable("primary refused"))
    backup = FakeBackend("backup").script(BackendProtocolError("garbage", retryable=False))
    async with make_client(
        primary, backup, fallback=["backup"], retry={"max_attempts": 1}, wait_for_backend=0.2
    ) as client:
        await client.dispatcher.preflight()
        primary.healthy = False
        [r] = await collect(client, [req(1)])
    assert r.error is not None
    assert not isinstance(r.error, BackendUnavailable)
    assert "primary refused" in str(r.error) and "garbage" in str(r.error)


def test_breaker_opens_cools_down_and_closes() -> None:
    b = Breaker(threshold=3, cooldown=10.0)
    assert b.available()
    assert not b.failure()
    assert not b.failure()
    assert b.failure()  # the third opens it
    now = time.monotonic()
    assert not b.available(now)
    assert b.available(now + 10.5)  # probed again after the cooldown
    b.open_until = 0.0  # (as if the cooldown passed) one more failure re-opens at once
    assert b.failure()
    assert not b.available()
    b.success()
    assert b.available() and b.failures == 0
    b.trip()
    assert not b.available()


# ------------------------------------------------------------------ concurrency and laziness


async def test_concurrency_bound_per_backend() -> None:
    fake = FakeBackend(delay=0.02)
    async with make_client(fake, backends={"fake": {"concurrency": 3}}) as client:
        results = await collect(client, [req(i) for i in range(40)], concurrency=20)
    assert len(results) == 40 and all(r.ok for r in results)
    assert fake.max_in_flight == 3


async def test_client_wide_concurrency_overrides_backend() -> None:
    fake = FakeBackend(delay=0.02)
    async with make_client(fake, concurrency=2, backends={"fake": {"concurrency": 10}}) as client:
        await collect(client, [req(i) for i in range(20)])
    assert fake.max_in_flight == 2


async def test_map_consumes_items_lazily() -> None:
    produced = 0

    def items() -> Iterator[PreparedImage]:
        nonlocal produced
        for _ in range(1_000_000):
            produced += 1
            yield IMG

    fake = FakeBackend(delay=0.01)
    async with make_client(fake, backends={"fake": {"concurrency": 4}}) as client:
        width = 2 * 4  # map's default: twice the backend's concurrency
        with anyio.fail_after(10):
            async with client.map(items(), prompt="describe") as results:
                first = await results.__anext__()
                at_first = produced
                taken = 1
                async for _ in results:
                    taken += 1
                    if taken == 50:
                        break
                at_fifty = produced
    assert first.ok
    assert at_first <= 2 * width + 1, f"{at_first} items pulled before the first result"
    assert at_fifty <= 50 + 2 * width + 1
    assert produced < 200


async def test_map_async_iterable_and_explicit_concurrency() -> None:
    async def items() -> Any:
        for i in range(30):
            yield req(i)
            await anyio.sleep(0)

    fake = FakeBackend(delay=0.005)
    async with make_client(fake) as client:
        results = await collect(client, items(), concurrency=3)
    assert set(by_id(results)) == {str(i) for i in range(30)}
    assert fake.max_in_flight <= 3


# ------------------------------------------------------------------ what map accepts


async def test_map_over_every_item_kind(tmp_path: Path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(_jpeg(1200, 800))
    small = tmp_path / "small.jpg"
    small.write_bytes(JPEG)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff" + b"not really a jpeg")
    items: list[Any] = [
        JPEG,  # bytes
        bytearray(JPEG),
        PreparedImage.from_bytes(JPEG, source="cam/one.jpg"),  # named PreparedImage
        str(small),  # path as str
        big,  # Path (downscaled to max_pixels)
        Request(prompt="item=req", id="req-1", images=(str(small), big)),  # Request with image paths
        req("ready"),  # Request with prepared images
        InputError("could not read it", source="missing.jpg"),  # passed through
        broken,  # unreadable image
        12345,  # unsupported type
    ]
    fake = FakeBackend(reply=lambda r: f"{len(r.images)} image(s): {r.prompt}")
    async with make_client(fake, max_pixels=100_000) as client:
        results = await collect(client, items, prompt="describe")
    got = by_id(results)
    assert set(got) == {
        "#0",
        "#1",
        "cam/one.jpg",
        str(small),
        str(big),
        "req-1",
        "ready",
        "missing.jpg",
        str(broken),
        "#9",
    }
    for rid in ("#0", "#1", "cam/one.jpg", str(small), str(big)):
        assert got[rid].ok, got[rid].error
        assert got[rid].text == "1 image(s): describe"
    assert got["req-1"].text == "2 image(s): item=req"
    assert got["ready"].text == "1 image(s): item=ready"
    assert got[str(big)].item == big  # the input item is kept on its result
    assert isinstance(got["missing.jpg"].error, InputError)
    assert "could not read it" in str(got["missing.jpg"].error)
    assert isinstance(got[str(broken)].error, InputError)
    assert isinstance(got["#9"].error, InputError)
    for rid in ("missing.jpg", str(broken), "#9"):
        assert got[rid].attempts == ()  # never sent
    # the plugin only ever sees prepared images, within the pixel budget
    assert len(fake.calls) == 7
    for call in fake.calls:
        for image in call.images:
            assert image.data[:3] == b"\xff\xd8\xff"
            assert image.mime == "image/jpeg"
    sent_big = [c for c in fake.calls if c.images and c.images[0].original_width == 1200]
    assert sent_big and sent_big[0].images[0].width * sent_big[0].images[0].height <= 100_000


async def test_map_accepts_what_prepare_image_returns(tmp_path: Path) -> None:
    """``imageworks_core.prepare_image``'s result must be usable as an item and inside a Request."""
    prepared = prepare_image(JPEG)
    fake = FakeBackend()
    async with make_client(fake) as client:
        results = await collect(
            client, [prepared, Request(prompt="item=r", id="r", images=(prepared,))], prompt="describe"
        )
    assert [r.error for r in results] == [None, None]


async def test_plugin_exception_becomes_plugin_error_result() -> None:
    def reply(request: Request) -> str:
        if request.id == "3":
            raise ZeroDivisionError("division by zero in the plugin")
        return f"answer {request.id}"

    fake = FakeBackend(reply=reply)
    async with make_client(fake) as client:
        results = await collect(client, [req(i) for i in range(6)])
    got = by_id(results)
    assert isinstance(got["3"].error, PluginError)
    assert "ZeroDivisionError" in str(got["3"].error)
    assert "fake" in str(got["3"].error)
    assert got["3"].error.plugin == "fake"
    assert got["3"].error.hint == "this is a bug in the plugin; report it to its authors"
    assert [c.id for c in fake.calls].count("3") == 1  # a plugin bug is not retried
    assert all(got[str(i)].text == f"answer {i}" for i in (0, 1, 2, 4, 5))


async def test_plugin_exception_in_health_is_a_report() -> None:
    class Broken(FakeBackend):
        @hookimpl
        async def health(self, ctx: Any) -> Any:
            raise KeyError("oops")

    async with make_client(Broken()) as client:
        report = await client.health()
    assert not report.ready and not report.reachable
    assert report.detail == "the fake plugin raised KeyError: 'oops'"
    assert report.hint == "this is a bug in the plugin; report it to its authors"


# ------------------------------------------------------------------ ordering, fail_fast, events, model policy


class SlowFor(FakeBackend):
    """A ``FakeBackend`` that sleeps first for the request ids given."""

    def __init__(self, slow: dict[str, float], **kw: Any) -> None:
        super().__init__(**kw)
        self.slow = slow

    async def _outcome(self, request: Request) -> str:
        await anyio.sleep(self.slow.get(str(request.id), 0.0))
        return await super()._outcome(request)


async def test_ordered_and_unordered() -> None:
    fake = SlowFor({"0": 0.3, "7": 0.1}, reply=lambda r: str(r.id))
    async with make_client(fake) as client:
        ordered = await collect(client, [req(i) for i in range(20)], ordered=True)
    assert [r.id for r in ordered] == [str(i) for i in range(20)]
    assert all(r.text == r.id for r in ordered)
    async with make_client(fake) as client:
        unordered = await collect(client, [req(i) for i in range(20)])
    assert unordered[0].id != "0"
    assert sorted(int(str(r.id)) for r in unordered) == list(range(20))


async def test_fail_fast_raises_the_first_error() -> None:
    def reply(request: Request) -> str:
        if request.id == "5":
            raise BackendRejected("bad request for item 5", status=400)
        return "ok"

    fake = FakeBackend(reply=reply, delay=0.01)
    got: list[Result] = []
    async with make_client(fake) as client:
        with pytest.raises(BackendRejected, match="item 5"), anyio.fail_after(10):
            async with client.map([req(i) for i in range(200)], fail_fast=True) as results:
                async for r in results:
                    got.append(r)
    assert all(r.ok for r in got)
    assert len(fake.calls) < 200


async def test_progress_events() -> None:
    def primary_reply(request: Request) -> str:
        rid = str(request.id)
        n = primary.calls_by_id[rid] = primary.calls_by_id.get(rid, 0) + 1
        if rid == "retry" and n == 1:
            raise BackendOverloaded("busy", status=503)
        if rid == "fallback":
            primary.healthy = False  # down until the fallback has answered the item
            raise BackendUnavailable("primary refused")
        if rid == "rejected":
            raise BackendRejected("unknown model", status=404)
        return "ok"

    def backup_reply(request: Request) -> str:
        primary.healthy = True
        return "ok"

    primary = FakeBackend("primary", reply=primary_reply)
    primary.calls_by_id = {}  # type: ignore[attr-defined]
    backup = FakeBackend("backup", reply=backup_reply, delay=0.01)  # the primary's probe is due by then
    events: list[Any] = []
    items = [req("plain"), req("retry"), req("fallback"), req("rejected")]
    items.append(InputError("nope", source="bad.jpg"))
    async with make_client(primary, backup, fallback=["backup"]) as client:
        results = await collect(client, items, concurrency=1, on_event=events.append, preflight=True)
    assert len(results) == 5
    seq: dict[str, list[tuple[str, str | None, int | None]]] = {}
    for e in events:
        seq.setdefault(e.id, []).append((e.kind, e.backend, e.attempt))
    assert seq["plain"] == [("queued", None, None), ("started", "primary", 1), ("done", "primary", 1)]
    assert seq["retry"] == [  # a 503 is the backend's: the item waits it out and goes again
        ("queued", None, None),
        ("started", "primary", 1),
        ("requeued", "primary", 1),
        ("retry", "primary", 2),
        ("done", "primary", 2),
    ]
    assert seq["fallback"] == [  # refused: the primary is out, the fallback takes the item at once
        ("queued", None, None),
        ("started", "primary", 1),
        ("requeued", "primary", 1),
        ("fallback", "backup", None),
        ("started", "backup", 1),
        ("done", "backup", 1),
    ]
    backend_events = [(e.kind, e.backend) for e in events if e.id == ""]
    assert ("paused", "primary") in backend_events and ("outage", "primary") in backend_events
    assert [k for k, _, _ in seq["rejected"]] == ["queued", "started", "failed"]
    assert [k for k, _, _ in seq["bad.jpg"]] == ["queued", "failed"]
    by_kind = {(e.id, e.kind): e for e in events}
    assert isinstance(by_kind[("retry", "retry")].error, BackendOverloaded)
    assert isinstance(by_kind[("fallback", "fallback")].error, BackendUnavailable)
    assert by_kind[("plain", "done")].result.ok
    failed = by_kind[("rejected", "failed")]
    assert isinstance(failed.error, BackendRejected) and failed.result.error is failed.error


@pytest.fixture
def dispatch_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    """caplog on ``imageworks.dispatch`` even if the CLI's logging setup stopped propagation."""
    monkeypatch.setattr(logging.getLogger("imageworks"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="imageworks.dispatch")
    return caplog


async def test_model_override_on_fixed_model_backend_warns_once(
    dispatch_log: pytest.LogCaptureFixture,
) -> None:
    fake = FakeBackend(capabilities=Capabilities(model_switch=False), model="own-model")
    async with make_client(fake) as client:
        results = await collect(client, [req(i, model="other-model") for i in range(5)])
    assert all(r.ok and r.model == "own-model" for r in results)
    assert all(c.model is None for c in fake.calls)
    warnings = [r for r in dispatch_log.records if "cannot switch models" in r.getMessage()]
    assert len(warnings) == 1
    assert "fake" in warnings[0].getMessage() and "other-model" in warnings[0].getMessage()


async def test_model_override_strict_fails_the_item() -> None:
    fake = FakeBackend(capabilities=Capabilities(model_switch=False))
    async with make_client(fake, strict_model=True) as client:
        results = await collect(client, [req(1, model="other-model"), req(2)])
    got = by_id(results)
    assert isinstance(got["1"].error, BackendRejected)
    assert "other-model" in str(got["1"].error)
    assert got["2"].ok
    assert [c.id for c in fake.calls] == ["2"]


# ------------------------------------------------------------------ streaming


async def test_stream_retries_before_the_first_chunk() -> None:
    fake = FakeBackend(reply="a grey cat").script(BackendUnavailable("refused"))
    async with make_client(fake) as client:
        text = "".join([c.text async for c in client.stream(req(1))])
    assert text == "a grey cat"
    assert len(fake.calls) == 2


async def test_stream_falls_back_before_the_first_chunk() -> None:
    # a primary that never answered is not "out" (it may be a wrong URL): its refusals use up its
    # tries (the default 4), then the item goes to the fallback
    primary = FakeBackend("primary").script(*[BackendUnavailable("down")] * 4)
    backup = FakeBackend("backup", reply="from backup")
    async with make_client(primary, backup, fallback=["backup"]) as client:
        text = "".join([c.text async for c in client.stream(req(1))])
    assert text == "from backup"


async def test_stream_rejected_is_not_retried() -> None:
    fake = FakeBackend().script(BackendRejected("bad", status=400))
    async with make_client(fake) as client:
        with pytest.raises(BackendRejected):
            async for _ in client.stream(req(1)):
                pass
    assert len(fake.calls) == 1


async def test_stream_plugin_exception_is_plugin_error() -> None:
    def reply(request: Request) -> str:
        raise ZeroDivisionError("division by zero in the plugin")

    async with make_client(FakeBackend(reply=reply)) as client:
        with pytest.raises(PluginError, match="ZeroDivisionError"):
            async for _ in client.stream(req(1)):
                pass


# Breaking out without aclosing leaves the caller's own generator to the garbage collector, which
# trio reports (docs/embedding.md says to use aclosing); what this test checks is the slot.
@pytest.mark.filterwarnings("ignore:Async generator 'imageworks_core.client.Client.stream':ResourceWarning")
async def test_abandoned_stream_frees_its_concurrency_slot() -> None:
    """Breaking out of ``client.stream`` (the documented ``async for`` use) must not leak the slot."""
    fake = FakeBackend(reply="one two three four five")
    async with make_client(fake, backends={"fake": {"concurrency": 1}}) as client:
        for i in range(3):
            async for _ in client.stream(req(i)):
                break  # the consumer has seen enough
        with anyio.fail_after(5):
            result = await client.infer(req("after"))
            text = "".join([c.text async for c in client.stream(req("after-stream"))])
    assert result.ok
    assert text == "one two three four five"


async def test_consumer_error_propagates_unwrapped() -> None:
    """An exception raised in the body of ``async with client.map(...)`` comes out as itself."""
    fake = FakeBackend(delay=0.01)
    async with make_client(fake) as client:
        with pytest.raises(KeyError, match="consumer bug"), anyio.fail_after(10):
            async with (
                client.map([req(i) for i in range(50)]) as results,
                contextlib.aclosing(_enumerate(results)) as numbered,
            ):
                async for n, _ in numbered:
                    if n == 3:
                        raise KeyError("consumer bug")
        # the client is still usable afterwards
        assert (await client.infer(req("after"))).ok


async def test_item_iterator_error_propagates_unwrapped() -> None:
    def items() -> Iterator[Request]:
        yield req(0)
        yield req(1)
        raise OSError("the directory walk failed")

    async with make_client(FakeBackend()) as client:
        with pytest.raises(OSError, match="directory walk"), anyio.fail_after(10):
            await collect(client, items())


async def _enumerate(results: Any) -> Any:
    n = 0
    async for r in results:
        n += 1
        yield n, r


@pytest.mark.about("wait_for_backend")
async def test_a_backend_busy_for_longer_than_wait_for_backend_is_given_up() -> None:
    """429 after 429 with no success: the pauses end after ``wait_for_backend`` (the setting under test)."""
    busy = FakeBackend("busy").always(BackendOverloaded("queue full", status=429, retry_after=0.05))
    async with make_client(busy, wait_for_backend=0.5) as client:
        await client.dispatcher.preflight()
        t0 = time.monotonic()
        with anyio.fail_after(10):
            [r] = await collect(client, [req(1)])
    assert isinstance(r.error, BackendDown), r.error
    assert "gave up waiting" in str(r.error)
    assert 0.4 <= time.monotonic() - t0 < 5
