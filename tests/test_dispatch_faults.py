"""The dispatcher against a real fault-injecting server (``tests/servers/faulty_openai.py``).

Every test drives a batch through the generic ``openai`` backend, injects one
kind of fault, and then reads the server's request log to prove what was sent:
which items were retried, which were not, and that every other item of the
batch was answered exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import io
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sniffio
from conftest import require
from PIL import Image
from servers import faulty_openai
from servers._proc import ServerProcess, free_port, python_argv

from imageworks_core import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
    Client,
    PreparedImage,
    Request,
    Result,
)
from imageworks_core.backends.openai import OpenAIBackend

pytestmark = [pytest.mark.anyio, pytest.mark.server]

SERVERS = Path(__file__).parent / "servers"
CHAT = "/v1/chat/completions"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (90, 120, 200)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


IMG = PreparedImage.from_bytes(_jpeg())


class Other(OpenAIBackend):
    """A second instance of the generic backend class under another name."""

    name = "other"


class Dead(OpenAIBackend):
    """The generic backend class, named for the tests where it points at a dead port."""

    name = "dead"


def make_client(
    url: str,
    *,
    retry: dict[str, Any] | None = None,
    backend: str = "openai",
    fallback: Iterable[str] | None = None,
    backends: dict[str, dict[str, Any]] | None = None,
    openai: dict[str, Any] | None = None,
    **top: Any,
) -> Client:
    sections: dict[str, dict[str, Any]] = {"openai": {"base_url": url, "model": "fake-vlm", **(openai or {})}}
    sections.update(backends or {})
    flags: dict[str, Any] = {"backends": sections, **top}
    if retry is not None:
        flags["retry"] = retry
    return Client(
        backend=backend,
        fallback=fallback,
        overrides=flags,
        plugins=[OpenAIBackend(), Other(), Dead()],
        entry_points=False,
        user_file=False,
        project_file=False,
    )


def req(i: int | str) -> Request:
    return Request(prompt=f"item={i}", id=str(i), images=(IMG,))


async def collect(client: Client, items: Any, **kw: Any) -> list[Result]:
    out: list[Result] = []
    with anyio.fail_after(120):
        async with client.map(items, **kw) as results:
            async for r in results:
                out.append(r)
    return out


def by_id(results: list[Result]) -> dict[str, Result]:
    ids = [str(r.id) for r in results]
    dupes = [i for i, n in collections.Counter(ids).items() if n > 1]
    assert not dupes, f"items answered more than once: {dupes}"
    return dict(zip(ids, results, strict=True))


def sent(log: list[dict[str, Any]]) -> collections.Counter[str]:
    """How many requests the server received per item id."""
    return collections.Counter(str(e["request_id"]) for e in log)


def answered(log: list[dict[str, Any]]) -> collections.Counter[str]:
    """How many successful (HTTP 200, written) answers the server gave per item id (``delay`` answers too)."""
    return collections.Counter(
        str(e["request_id"])
        for e in log
        if e["status"] == 200 and e["completed"] and e["fault"] in ("ok", "delay")
    )


def assert_rest_complete(got: dict[str, Result], log: list[dict[str, Any]], faulty_ids: set[str]) -> None:
    """Every item outside *faulty_ids* answered once, correctly, on its first try."""
    per_item = sent(log)
    for rid, r in got.items():
        if rid in faulty_ids:
            continue
        assert r.ok, (rid, r.error)
        assert r.text == f"[{rid}] A grey cat on a sofa.", (rid, r.text)
        assert per_item[rid] == 1, (rid, per_item[rid])
        assert len(r.attempts) == 1 and r.attempts[0].error is None


# ------------------------------------------------------------------ the server dies mid-batch


def _server_and_its_restart(name: str) -> tuple[str, ServerProcess, ServerProcess]:
    """A fault server's base URL, the process to start first and the one that restarts it there."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = python_argv(SERVERS / "faulty_openai.py", "--port", str(port))
    first = ServerProcess(argv, ready_url=base + "/health", name=f"{name}-first", ready_timeout=30)
    second = ServerProcess(argv, ready_url=base + "/health", name=f"{name}-second", ready_timeout=30)
    return base, first, second


@pytest.mark.slow
@pytest.mark.parametrize("down_s", [5.0, 45.0], ids=["5s", "45s"])
async def test_server_killed_mid_batch_and_restarted(real_sleeps: None, down_s: float) -> None:
    """300 items, the server killed after 100 and back *down_s* later: default settings, nothing lost."""
    base, first, second = _server_and_its_restart("faulty")
    slow_ok = {"fault": "delay", "delay_s": 0.02}
    await anyio.to_thread.run_sync(first.start)
    try:
        await anyio.to_thread.run_sync(lambda: faulty_openai.script(base, [], default=slow_ok))
        results: list[Result] = []
        arrived: list[float] = []
        restarted_at: list[float] = []
        events: list[Any] = []
        stamped: list[tuple[float, Any]] = []

        def on_event(e: Any) -> None:
            events.append(e)
            stamped.append((time.monotonic(), e))

        async def restart() -> None:
            await anyio.sleep(down_s)
            await anyio.to_thread.run_sync(second.start)
            restarted_at.append(time.monotonic())
            await anyio.to_thread.run_sync(lambda: faulty_openai.script(base, [], default=slow_ok))

        async with make_client(base + "/v1") as client, anyio.create_task_group() as tg:
            with anyio.fail_after(down_s + 90):
                async with client.map(
                    [req(i) for i in range(300)], on_event=on_event, preflight=True
                ) as stream:
                    async for r in stream:
                        results.append(r)
                        arrived.append(time.monotonic())
                        if len(results) == 100:
                            await anyio.to_thread.run_sync(first.kill)
                            killed_at = time.monotonic()
                            tg.start_soon(restart)
            outages = client.dispatcher.outages()
        assert restarted_at and restarted_at[0] - killed_at >= down_s
        log2 = await anyio.to_thread.run_sync(lambda: faulty_openai.request_log(base, CHAT))
    finally:
        first.stop()
        second.stop()

    got = by_id(results)
    assert set(got) == {str(i) for i in range(300)}, "items were lost"
    failed = {rid: r.error for rid, r in got.items() if not r.ok}
    assert not failed, failed
    for rid, r in got.items():
        assert r.text == f"[{rid}] A grey cat on a sofa.", (rid, r.text)
    # the outage was felt and waited out: outage errors only, never an item's attempt used up
    retried = [r for r in results if len(r.attempts) > 1]
    assert retried, "no item saw the outage"
    assert {a.error_type for r in retried for a in r.attempts[:-1]} <= {"BackendUnavailable"}
    # no successful answer was given twice by the restarted server ...
    twice = {rid: n for rid, n in answered(log2).items() if n > 1}
    assert not twice, twice
    # ... nor were items already answered before the crash sent again
    early = {str(r.id) for r in results[:100]}
    assert not early & set(sent(log2)), sorted(early & set(sent(log2)))
    # and the restarted server did real work: every answer that came after it was back is its own
    # (how many the first server finished before the kill depends on the adaptive limit then)
    assert len(answered(log2)) >= sum(1 for t in arrived if t >= restarted_at[0]) > 0
    # one outage, seen as events, as long as the server was away
    kinds = [e.kind for e in events if e.id == ""]
    assert kinds.count("outage") == 1 and kinds.count("recovered") == 1, kinds
    assert len(outages) == 1 and outages[0][2] >= down_s - 0.5
    # back to work soon after the server returned: the next probe (at most 15 s apart) finds it,
    # and the first new answer follows within 2 s of that probe
    first_after = min(t for t in arrived[100:] if t >= restarted_at[0])
    recovered_at = next(t for t, e in stamped if e.kind == "recovered")
    back_in = first_after - restarted_at[0]
    print(
        f"\nkilled for {down_s:g}s: first new answer {back_in:.2f}s after the server was back, "
        f"{first_after - recovered_at:.2f}s after the probe that found it"
    )
    assert back_in < 15.0 + 2.0
    assert first_after - recovered_at < 2.0


# ------------------------------------------------------------------ overload: 429 / 503


async def test_bursts_of_429_and_503_all_complete(faulty: Any) -> None:
    faulty.script(
        [
            {
                "match": {"path": CHAT},
                "fault": "status",
                "status": 429,
                "headers": {"Retry-After": "0"},
                "times": 15,
            },
            {"match": {"path": CHAT}, "fault": "status", "status": 503, "times": 15},
        ]
    )
    async with make_client(faulty.v1) as client:
        results = await collect(client, [req(i) for i in range(40)])
    assert set(by_id(results)) == {str(i) for i in range(40)}
    assert all(r.ok for r in results), [r.error for r in results if not r.ok]
    log = faulty.log(CHAT)
    assert len(log) == 70
    assert set(answered(log).values()) == {1} and len(answered(log)) == 40
    failed_tries = [a for r in results for a in r.attempts if a.error is not None]
    assert len(failed_tries) == 30
    assert {a.error_type for a in failed_tries} == {"BackendOverloaded"}
    assert collections.Counter(a.status for a in failed_tries) == {429: 15, 503: 15}


def _retry_after_date(offset: float) -> tuple[str, float]:
    when = math.ceil(time.time()) + offset
    return email.utils.formatdate(when, usegmt=True), when


@pytest.mark.slow
@pytest.mark.parametrize(
    ("status", "form"),
    [(429, "seconds"), (503, "seconds"), (429, "http-date")],
    ids=["429-s", "503-s", "429-date"],
)
async def test_retry_after_is_honoured(faulty: Any, real_sleeps: None, status: int, form: str) -> None:
    # An HTTP date has whole-second resolution: the wait it asks for runs to
    # that instant, so it is anything from ~1 s to 2 s after the first try
    # (the date is two seconds past the current whole second). Its check is
    # "not before the date"; the gap check belongs to the delta-seconds form.
    if form == "seconds":
        header, not_before = "1", None
    else:
        header, not_before = _retry_after_date(2)
    faulty.script(
        [
            {
                "match": {"path": CHAT, "request_id": ["1", "2"]},
                "fault": "status",
                "status": status,
                "headers": {"Retry-After": header},
                "times": 2,
            }
        ]
    )
    t0 = time.monotonic()
    async with make_client(faulty.v1) as client:
        results = await collect(client, [req(i) for i in range(6)])
    elapsed = time.monotonic() - t0
    got = by_id(results)
    assert all(r.ok for r in results)
    log = faulty.log(CHAT)
    for rid in ("1", "2"):
        tries = [e for e in log if e["request_id"] == rid]
        assert [e["status"] for e in tries] == [status, 200], tries
        gap = tries[1]["time"] - tries[0]["time"]
        if not_before is None:
            assert gap >= 0.98, f"item {rid} retried {gap:.3f}s after a Retry-After of {header!r}"
        else:
            early = not_before - tries[1]["time"]
            assert early <= 0.02, f"item {rid} retried {early:.3f}s before the HTTP date {header!r}"
            assert gap >= 0.5, f"item {rid} retried {gap:.3f}s after a Retry-After of {header!r}"
        assert got[rid].attempts[0].error_type == "BackendOverloaded"
        assert got[rid].attempts[0].status == status
    assert_rest_complete(got, log, {"1", "2"})
    assert elapsed < 8.0


@pytest.mark.slow
async def test_a_429_storm_pauses_the_backend_once(faulty: Any, real_sleeps: None) -> None:
    """64 requests in flight all get ``429 Retry-After: 2``: one shared pause, ~no requests during it."""
    faulty.script(
        [
            {
                "match": {"path": CHAT},
                "fault": "status",
                "status": 429,
                "headers": {"Retry-After": "2"},
                "delay_s": 0.5,  # so that all 64 are in flight before the first answer
                "times": 64,
            }
        ]
    )
    events: list[Any] = []
    # the test is about 64 requests in flight: concurrency is the setting under test
    async with make_client(faulty.v1, openai={"concurrency": 64}) as client:
        results = await collect(client, [req(i) for i in range(64)], on_event=events.append)
    got = by_id(results)
    assert set(got) == {str(i) for i in range(64)} and all(r.ok for r in results)
    log = faulty.log(CHAT)
    storm = [e for e in log if e["status"] == 429]
    assert len(storm) == 64, "not all 64 were in flight together"
    first_answer = min(e["time"] + e["duration_s"] for e in storm)
    last_storm_arrival = max(e["time"] for e in storm)
    during = [e for e in log if first_answer < e["time"] < first_answer + 1.95 and e["status"] != 429]
    print(f"\n429 storm: {len(during)} requests during the 2 s Retry-After pause")
    assert not during, during
    assert last_storm_arrival < first_answer
    paused = [e for e in events if e.id == "" and e.kind == "paused"]
    assert len(paused) == 1, paused
    # every item was answered once after the pause, no attempt used for the backend's 429
    assert set(answered(log).values()) == {1} and len(answered(log)) == 64
    assert all(len([a for a in r.attempts if a.error is None]) == 1 for r in results)


# ------------------------------------------------------------------ slow, malformed, cut, reset


async def test_slow_responses_time_out_and_the_rest_completes(faulty: Any) -> None:
    faulty.script(
        [
            {"match": {"path": CHAT, "request_id": "3"}, "fault": "delay", "delay_s": 1.5, "times": 1},
            {"match": {"path": CHAT, "request_id": "5"}, "fault": "delay", "delay_s": 1.5},
        ]
    )
    t0 = time.monotonic()
    async with make_client(faulty.v1, openai={"timeout": 0.5}) as client:
        results = await collect(client, [req(i) for i in range(12)])
    elapsed = time.monotonic() - t0
    got = by_id(results)
    assert got["3"].ok
    assert [a.error_type for a in got["3"].attempts] == ["BackendTimeout", None]
    assert isinstance(got["5"].error, BackendTimeout)
    assert "openai" in str(got["5"].error)
    assert [a.error_type for a in got["5"].attempts] == ["BackendTimeout"] * 4  # the default attempts
    log = faulty.log(CHAT)
    assert sent(log)["3"] == 2 and sent(log)["5"] == 4
    assert_rest_complete(got, log, {"3", "5"})
    # the slow items did not hold the others back
    assert {str(r.id) for r in results[:10]} == {str(i) for i in range(12)} - {"3", "5"}
    assert elapsed < 6.0


async def test_malformed_json_is_retried_then_a_protocol_error(faulty: Any) -> None:
    faulty.script(
        [
            {"match": {"path": CHAT, "request_id": "2"}, "fault": "malformed_json"},
            {"match": {"path": CHAT, "request_id": "4"}, "fault": "malformed_json", "times": 1},
        ]
    )
    async with make_client(faulty.v1) as client:
        results = await collect(client, [req(i) for i in range(10)])
    got = by_id(results)
    assert isinstance(got["2"].error, BackendProtocolError)
    assert "malformed JSON" in str(got["2"].error)
    assert got["4"].ok and [a.error_type for a in got["4"].attempts] == ["BackendProtocolError", None]
    log = faulty.log(CHAT)
    assert sent(log)["2"] == 4 and sent(log)["4"] == 2
    assert_rest_complete(got, log, {"2", "4"})


async def test_in_band_error_in_a_200_json_answer(faulty: Any) -> None:
    oom = {"error": {"message": "CUDA out of memory", "type": "InternalServerError", "code": 500}}
    faulty.script(
        [
            {
                "match": {"path": CHAT, "request_id": "1"},
                "fault": "status",
                "status": 200,
                "body": oom,
                "times": 1,
            },
            {"match": {"path": CHAT, "request_id": "2"}, "fault": "status", "status": 200, "body": oom},
        ]
    )
    async with make_client(faulty.v1) as client:
        results = await collect(client, [req(i) for i in range(8)])
    got = by_id(results)
    assert got["1"].ok and got["1"].attempts[0].error_type == "BackendServerError"
    assert isinstance(got["2"].error, BackendServerError)
    assert sent(faulty.log(CHAT))["2"] == 4
    assert "CUDA out of memory" in str(got["2"].error)
    assert got["2"].text == ""
    assert_rest_complete(got, faulty.log(CHAT), {"1", "2"})


@pytest.mark.parametrize("rst", [False, True], ids=["fin", "rst"])
async def test_stream_cut_midway_is_an_error_not_short_text(faulty: Any, rst: bool) -> None:
    faulty.script([{"match": {"path": CHAT, "stream": True}, "fault": "sse_cut", "chunks": 2, "rst": rst}])
    texts: list[str] = []
    async with make_client(faulty.v1) as client:
        with pytest.raises(BackendProtocolError) as info, anyio.fail_after(20):
            async for chunk in client.stream(req(7)):
                texts.append(chunk.text)
        assert "".join(texts) == "[7] A grey cat"  # what came before the cut ...
        # ... and the rest of the batch is unaffected
        faulty.script([])
        results = await collect(client, [req(i) for i in range(5)])
    assert "openai" in str(info.value) or "127.0.0.1" in str(info.value)
    assert sent(faulty.log(CHAT))["7"] == 1  # text was already out: no silent retry
    assert all(r.ok for r in results)


async def test_stream_cut_before_any_text_is_retried(faulty: Any) -> None:
    faulty.script([{"match": {"path": CHAT, "stream": True}, "fault": "sse_cut", "chunks": 0, "times": 1}])
    async with make_client(faulty.v1) as client:
        with anyio.fail_after(20):
            text = "".join([c.text async for c in client.stream(req(8))])
    assert text == "[8] A grey cat on a sofa."
    assert sent(faulty.log(CHAT))["8"] == 2


@pytest.mark.parametrize(
    ("code", "error"), [(500, BackendProtocolError), (429, BackendOverloaded)], ids=["500", "429"]
)
async def test_stream_in_band_error_after_200(faulty: Any, code: int, error: type[Exception]) -> None:
    faulty.script(
        [
            {
                "match": {"path": CHAT, "stream": True},
                "fault": "sse_inband_error",
                "message": "engine died",
                "code": code,
            }
        ]
    )
    texts: list[str] = []
    async with make_client(faulty.v1) as client:
        with pytest.raises(error) as info, anyio.fail_after(20):
            async for chunk in client.stream(req(3)):
                texts.append(chunk.text)
    assert "engine died" in str(info.value)
    assert "".join(texts) == "A grey"  # never presented as a complete answer
    assert sent(faulty.log(CHAT))["3"] == 1


async def test_connection_reset(faulty: Any) -> None:
    faulty.script(
        [
            {"match": {"path": CHAT, "request_id": "1"}, "fault": "reset", "times": 1},
            {"match": {"path": CHAT, "request_id": "2"}, "fault": "reset"},
        ]
    )
    async with make_client(faulty.v1) as client:
        results = await collect(client, [req(i) for i in range(10)], preflight=True)
    got = by_id(results)
    # one reset is a dropped connection: the transport sends it once more on a new one,
    # inside the same try (test_transport's kept-alive test)
    assert got["1"].ok and [a.error_type for a in got["1"].attempts] == [None]
    # a request that kills its connection every time: an outage at first, then (as the server
    # answers the others) the item's own fault, bounded by its attempts; never an endless wait
    assert isinstance(got["2"].error, BackendUnavailable)
    log = faulty.log(CHAT)
    assert sent(log)["1"] == 2 and 2 <= sent(log)["2"] <= 2 * (1 + 3 + 4)
    assert_rest_complete(got, log, {"1", "2"})


async def test_4xx_is_not_retried_nor_sent_to_the_fallback(faulty: Any) -> None:
    too_many = {"error": {"message": "At most 1 image(s) may be provided in one prompt.", "code": 400}}
    no_model = {
        "error": {"message": "The model `fake-vlm` does not exist.", "type": "NotFoundError", "code": 404}
    }
    faulty.script(
        [
            {"match": {"path": CHAT, "request_id": "1"}, "fault": "status", "status": 400, "body": too_many},
            {"match": {"path": CHAT, "request_id": "2"}, "fault": "status", "status": 404, "body": no_model},
            {
                "match": {"path": CHAT, "request_id": "3"},
                "fault": "status",
                "status": 422,
                "body": {"detail": "bad"},
            },
        ]
    )
    backends = {"other": {"base_url": faulty.v1, "model": "fallback-vlm"}}
    async with make_client(faulty.v1, fallback=["other"], backends=backends) as client:
        results = await collect(client, [req(i) for i in range(10)])
    got = by_id(results)
    for rid, status, text in (("1", 400, "At most 1 image"), ("2", 404, "does not exist"), ("3", 422, "bad")):
        assert isinstance(got[rid].error, BackendRejected), got[rid].error
        assert got[rid].error.status == status
        assert text in str(got[rid].error)
        assert [(a.backend, a.status) for a in got[rid].attempts] == [("openai", status)]
    log = faulty.log(CHAT)
    assert sent(log)["1"] == 1 and sent(log)["2"] == 1 and sent(log)["3"] == 1
    assert all(e["model"] == "fake-vlm" for e in log), "a 4xx item went to the fallback"
    assert_rest_complete(got, log, {"1", "2", "3"})


# ------------------------------------------------------------------ fallback and preflight


@pytest.fixture
def dispatch_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> pytest.LogCaptureFixture:
    monkeypatch.setattr(logging.getLogger("imageworks"), "propagate", True)
    caplog.set_level(logging.WARNING, logger="imageworks.dispatch")
    return caplog


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


async def test_primary_down_fallback_answers_everything(faulty: Any) -> None:
    """A primary that never answered: its tries are spent like any error, then the fallback answers."""
    dead = dead_url()
    backends = {"dead": {"base_url": dead, "model": "fake-vlm"}}
    async with make_client(faulty.v1, backend="dead", fallback=["openai"], backends=backends) as client:
        results = await collect(client, [req(i) for i in range(12)])
    got = by_id(results)
    for rid, r in got.items():
        assert r.ok and r.backend == "openai" and r.text == f"[{rid}] A grey cat on a sofa."
        *tries, last = [(a.backend, a.error_type) for a in r.attempts]
        assert last == ("openai", None)
        # up to its 4 tries on the dead one, until the breaker (5 failures in a row) skips it
        assert tries in ([], [("dead", "BackendUnavailable")] * len(tries)) and len(tries) <= 4
        if tries:
            assert dead.removesuffix("/v1") in (r.attempts[0].error or "")
    assert not client.dispatcher.runner.breaker("dead").available()
    assert set(sent(faulty.log(CHAT)).values()) == {1}


async def test_primary_outage_mid_batch_goes_to_the_fallback_and_back(faulty: Any) -> None:
    """An outage of a primary that was up: the fallback takes the items, the primary gets them back.

    Documented behaviour (prefer the primary): every item starts at the first backend in the
    order that accepts requests, so once the primary's probe finds it back, new items go to it.
    """
    primary_model = "primary-vlm"
    backends = {"other": {"base_url": faulty.v1, "model": primary_model}}
    async with make_client(faulty.v1, backend="other", fallback=["openai"], backends=backends) as client:
        await client.dispatcher.preflight()
        # two resets: the try and the transport's one resend on a new connection
        faulty.script([{"match": {"path": CHAT, "model": primary_model}, "fault": "reset", "times": 2}])
        with anyio.fail_after(30):
            first = await collect(client, [req(i) for i in range(8)], concurrency=1)
        assert first[0].attempts[0].error_type == "BackendUnavailable"
        await anyio.sleep(0.05)  # past the (shortened) probe interval
        later = await collect(client, [req(i) for i in range(8, 12)], concurrency=1)
    assert all(r.ok for r in first + later)
    assert first[0].backend == "openai"  # the item that met the outage went to the fallback
    assert all(r.backend == "other" for r in later), [r.backend for r in later]
    assert set(sent(faulty.log(CHAT)).values()) <= {1, 2, 3}


@pytest.mark.slow
async def test_primary_process_killed_and_restarted_with_a_fallback_process(
    faulty: Any, real_sleeps: None
) -> None:
    """Two server processes: the primary is killed mid-batch and back 3 s later, the fallback (another
    process) is up throughout. Default settings: the fallback takes the items during the outage, the
    primary gets them back once its probe finds it, every item is answered once across both."""
    base, first, second = _server_and_its_restart("primary")
    slow_ok = {"fault": "delay", "delay_s": 0.05}
    faulty.script([], default=slow_ok)
    backends = {"other": {"base_url": base + "/v1", "model": "primary-vlm"}}
    # wall-clock times throughout, to compare with the times in the servers' request logs
    done: list[tuple[float, str]] = []  # (when, backend) of each answer, as the dispatcher saw it
    killed: list[float] = []
    back: list[float] = []

    def on_event(e: Any) -> None:
        if e.kind == "done":
            done.append((time.time(), e.backend))

    async def kill_and_restart() -> None:
        while len(done) < 40:
            await anyio.sleep(0.01)
        await anyio.to_thread.run_sync(first.kill)
        killed.append(time.time())
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(second.start)
        back.append(time.time())  # listening again (an upper bound: see back_at below)
        await anyio.to_thread.run_sync(lambda: faulty_openai.script(base, [], default=slow_ok))

    await anyio.to_thread.run_sync(first.start)
    try:
        await anyio.to_thread.run_sync(lambda: faulty_openai.script(base, [], default=slow_ok))
        # the fallback is a smaller box (2 at a time): the batch outlasts the outage and the probe
        client = make_client(
            faulty.v1, backend="other", fallback=["openai"], backends=backends, openai={"concurrency": 2}
        )
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(kill_and_restart)
            with anyio.fail_after(120):
                results = await collect(
                    client, [req(i) for i in range(500)], on_event=on_event, preflight=True
                )
        restarted_log = await anyio.to_thread.run_sync(lambda: faulty_openai.request_log(base, CHAT))
    finally:
        first.stop()
        second.stop()
    got = by_id(results)
    assert set(got) == {str(i) for i in range(500)} and all(r.ok for r in got.values())
    # the items that met the outage went to the fallback (without using up their tries on it)
    met = [r for r in results if any(a.backend == "other" and a.error for a in r.attempts)]
    assert met and all(r.backend == "openai" for r in met), [(r.backend, r.attempts) for r in met]
    # The restarted process is back from the moment it listens, which is before second.start()
    # returns (it polls every 0.1 s) and the test records it: a probe may find it in that gap and
    # an item be answered there. So it counts as back from its first request, if that came sooner.
    first_request = min((e["time"] for e in restarted_log), default=back[0])
    back_at = min(back[0], first_request)
    # while the primary was away (past the answers already on their way), the fallback answered
    during = [b for t, b in done if killed[0] + 0.5 < t < back_at]
    assert during and set(during) == {"openai"}, during
    # once its probe (at most 15 s apart) found it back, the primary answered again
    again = [t for t, b in done if t > back_at and b == "other"]
    assert again, "the primary never got items back"
    print(f"\nthe primary answered again {again[0] - back_at:.2f}s after it was back")
    # answered once across both processes: the fallback's log and the restarted primary's
    both = answered(faulty.log(CHAT)) + answered(restarted_log)
    twice = {rid: n for rid, n in both.items() if n > 1}
    assert not twice, twice


def _installed_plugin(name: str) -> Any:
    from importlib.metadata import entry_points

    found = list(entry_points(group="imageworks.backends", name=name))
    require(bool(found), f"the {name} backend plugin is not installed")
    return found[0].load()


@pytest.mark.parametrize("primary", ["vllm", "lmdeploy"])
async def test_installed_plugin_down_falls_back(faulty: Any, primary: str) -> None:
    """A real first-party plugin pointed at a dead port: its failures are BackendUnavailable."""
    plugin = _installed_plugin(primary)
    dead = dead_url()
    client = Client(
        backend=primary,
        fallback=["openai"],
        overrides={
            "backends": {
                primary: {"base_url": dead, "model": "fake-vlm"},
                "openai": {"base_url": faulty.v1, "model": "fake-vlm"},
            },
        },
        plugins=[OpenAIBackend(), plugin],
        entry_points=False,
        user_file=False,
        project_file=False,
    )
    async with client:
        results = await collect(client, [req(i) for i in range(6)])
        report = await client.health(primary)
    for r in results:
        assert r.ok and r.backend == "openai", r.error
        *tries, last = [(a.backend, a.error_type) for a in r.attempts]
        assert last == ("openai", None)
        assert tries == [(primary, "BackendUnavailable")] * len(tries) and len(tries) <= 4
    assert not report.ready and not report.reachable
    assert report.hint  # says how to start the server
    assert set(sent(faulty.log(CHAT)).values()) == {1}


async def test_preflight_warns_and_trips_the_dead_backend(
    faulty: Any, dispatch_log: pytest.LogCaptureFixture
) -> None:
    dead = dead_url()
    backends = {"dead": {"base_url": dead, "model": "fake-vlm"}}
    async with make_client(faulty.v1, backend="dead", fallback=["openai"], backends=backends) as client:
        results = await collect(client, [req(i) for i in range(10)], preflight=True)
        assert client.dispatcher.state("dead") == "out"  # probed while the fallback works
    assert all(r.ok and r.backend == "openai" for r in results)
    assert all([a.backend for a in r.attempts] == ["openai"] for r in results), (
        "the dead backend was still tried"
    )
    warnings = [r.getMessage() for r in dispatch_log.records if r.levelno == logging.WARNING]
    assert any("dead" in w and "not ready" in w and "openai" in w for w in warnings), warnings


async def test_all_down_is_one_clear_error_naming_each_backend() -> None:
    dead, also_dead = dead_url(), dead_url()
    backends = {"dead": {"base_url": dead, "model": "fake-vlm"}}
    async with make_client(also_dead, backend="dead", fallback=["openai"], backends=backends) as client:
        with pytest.raises(BackendUnavailable) as info:
            await collect(client, [req(1)], preflight=True)
        text = str(info.value)
        assert "dead" in text and "openai" in text
        assert dead.removesuffix("/v1") in text and also_dead.removesuffix("/v1") in text
        with pytest.raises(BackendUnavailable) as info2:
            await client.infer(req(2))
        text = str(info2.value)
        assert "dead:" in text and "openai:" in text
        results = await collect(client, [req(i) for i in range(3)])
        assert all(isinstance(r.error, BackendUnavailable) for r in results)


# ------------------------------------------------------------------ cooldown


def per_model(log: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(str(e["model"]) for e in log)


@pytest.mark.slow
@pytest.mark.about("max_attempts", "cooldown_after")
async def test_cooldown_skips_then_probes_the_failing_backend(faulty: Any) -> None:
    backends = {"other": {"base_url": faulty.v1, "model": "primary-vlm"}}
    retry = {"max_attempts": 1, "cooldown_after": 3, "cooldown": 1.0}
    faulty.script([{"match": {"path": CHAT, "model": "primary-vlm"}, "fault": "status", "status": 500}])
    async with make_client(
        faulty.v1, backend="other", fallback=["openai"], backends=backends, retry=retry
    ) as client:
        for i in range(6):
            r = await client.infer(req(i))
            assert r.backend == "openai"
        assert per_model(faulty.log(CHAT)) == {"primary-vlm": 3, "fake-vlm": 6}
        skipped = await client.infer(req(5))
        assert [a.backend for a in skipped.attempts] == ["openai"]  # straight to the fallback
        await anyio.sleep(1.1)
        r = await client.infer(req(6))  # probed again; still failing: re-opened
        assert [a.backend for a in r.attempts] == ["other", "openai"]
        await client.infer(req(7))
        assert per_model(faulty.log(CHAT))["primary-vlm"] == 4
        faulty.script([])  # the primary recovers
        r = await client.infer(req(8))
        assert r.backend == "openai"  # still cooling down
        await anyio.sleep(1.1)
        r = await client.infer(req(9))
        assert r.backend == "other" and [a.backend for a in r.attempts] == ["other"]
        r = await client.infer(req(10))
        assert r.backend == "other"  # closed again
    assert per_model(faulty.log(CHAT))["primary-vlm"] == 6


@pytest.mark.about("max_attempts", "cooldown_after")
async def test_when_every_backend_cools_down_requests_still_go_out(faulty: Any) -> None:
    backends = {"other": {"base_url": faulty.v1, "model": "primary-vlm"}}
    retry = {"max_attempts": 1, "cooldown_after": 2, "cooldown": 60}
    faulty.script([{"match": {"path": CHAT}, "fault": "status", "status": 500}])
    async with make_client(
        faulty.v1, backend="other", fallback=["openai"], backends=backends, retry=retry
    ) as client:
        for i in range(5):
            with pytest.raises(BackendError):
                await client.infer(req(i))
        assert not client.dispatcher.runner.breaker("other").available()
        assert not client.dispatcher.runner.breaker("openai").available()
        faulty.script([])
        r = await client.infer(req(5))
        assert r.ok and r.backend == "other"
    log = faulty.log(CHAT)
    for i in range(5):
        assert [e["model"] for e in log if e["request_id"] == str(i)] == ["primary-vlm", "fake-vlm"]


# ------------------------------------------------------------------ cancellation


def _socket_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n


def _task_count() -> int:
    if sniffio.current_async_library() == "asyncio":
        return len(asyncio.all_tasks())
    import trio

    def walk(task: Any) -> int:
        return 1 + sum(walk(child) for nursery in task.child_nurseries for child in nursery.child_tasks)

    return walk(trio.lowlevel.current_root_task())


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_cancel_mid_batch_leaves_nothing_behind(faulty: Any) -> None:
    quick = [str(i) for i in range(4)]
    faulty.script(
        [{"match": {"path": CHAT, "request_id": quick}, "fault": "ok"}],
        default={"fault": "delay", "delay_s": 10},
    )
    fds_before = _socket_fds()
    got: list[Result] = []
    async with make_client(faulty.v1, openai={"concurrency": 16}) as client:
        tasks_before = _task_count()
        t0 = time.monotonic()
        with anyio.move_on_after(1.0) as scope:
            async with client.map([req(i) for i in range(100)]) as results:
                async for r in results:
                    got.append(r)
        elapsed = time.monotonic() - t0
        assert scope.cancelled_caught
        assert elapsed < 5.0, f"cancel took {elapsed:.2f}s (the requests in flight hang 10 s)"
        assert _task_count() == tasks_before, "tasks left behind after the cancel"
        in_flight = [e for e in faulty.log(CHAT) if e["request_id"] not in quick]
        assert len(in_flight) >= 8  # there really were requests in flight
    assert sorted(str(r.id) for r in got) == quick  # everything received before the cancel is kept
    assert all(r.ok for r in got)
    with anyio.fail_after(5):
        while _socket_fds() > fds_before:
            await anyio.sleep(0.05)
    assert _socket_fds() == fds_before


# ------------------------------------------------------------------ fail_fast, ordering, events


async def test_fail_fast_ordered_and_events_against_the_server(faulty: Any) -> None:
    faulty.script(
        [
            {"match": {"path": CHAT, "request_id": "0"}, "fault": "delay", "delay_s": 0.3},
            {"match": {"path": CHAT, "request_id": "4"}, "fault": "status", "status": 503, "times": 1},
        ]
    )
    events: list[Any] = []
    async with make_client(faulty.v1) as client:
        results = await collect(client, [req(i) for i in range(12)], ordered=True, on_event=events.append)
    assert [r.id for r in results] == [str(i) for i in range(12)]
    kinds = collections.defaultdict(list)
    for e in events:
        kinds[e.id].append(e.kind)
    assert kinds["4"] == ["queued", "started", "requeued", "retry", "done"]  # a 503 pauses the backend
    assert all(kinds[str(i)] == ["queued", "started", "done"] for i in range(12) if i != 4)

    faulty.script([{"match": {"path": CHAT, "request_id": "5"}, "fault": "status", "status": 400}])
    got: list[Result] = []
    async with make_client(faulty.v1) as client:
        with pytest.raises(BackendRejected, match="HTTP 400"), anyio.fail_after(20):
            async with client.map([req(i) for i in range(200)], fail_fast=True) as stream:
                async for r in stream:
                    got.append(r)
    assert all(r.ok for r in got)
    assert len(faulty.log(CHAT)) < 200
