"""Endpoint pools: one backend, several servers (``base_url`` lists them), real server processes.

Routing goes to the least loaded endpoint that is up; an endpoint that dies
hands its items to the others without using their attempts and rejoins when
it answers again; results say which endpoint answered.
"""

from __future__ import annotations

import collections
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from cli_helpers import read_jsonl, run_cli, show
from PIL import Image
from servers.faulty_process import FaultyProcess

from imageworks_core import Client, ConfigError, PreparedImage, Request, Result

pytestmark = [pytest.mark.anyio, pytest.mark.server]


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 12), (90, 120, 200)).save(buf, "JPEG", quality=80)
    return buf.getvalue()


IMG = PreparedImage.from_bytes(_jpeg())


@pytest.fixture
def two() -> Iterator[tuple[FaultyProcess, FaultyProcess]]:
    a, b = FaultyProcess("pool-a").start(), FaultyProcess("pool-b").start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def client_for(*servers: FaultyProcess, **top: Any) -> Client:
    urls = [s.v1 for s in servers]
    return Client(
        backend="openai",
        overrides={"backends": {"openai": {"base_url": urls, "model": "fake-vlm"}}, **top},
        user_file=False,
        project_file=False,
        allow=["openai"],
    )


def req(i: int) -> Request:
    return Request(prompt=f"item={i}", id=str(i), images=(IMG,))


def per_item(log: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(str(e["request_id"]) for e in log if e["status"] == 200 and e["completed"])


async def test_a_pool_spreads_the_batch_and_records_who_answered(
    two: tuple[FaultyProcess, FaultyProcess],
) -> None:
    a, b = two
    for s in two:
        s.script([], default={"fault": "delay", "delay_s": 0.05})
    results: list[Result] = []
    async with client_for(a, b) as client:
        await client.dispatcher.preflight()
        with anyio.fail_after(60):
            async with client.map([req(i) for i in range(80)]) as rs:
                async for r in rs:
                    results.append(r)
    assert len(results) == 80 and all(r.ok for r in results), [r.error for r in results if not r.ok]
    by_url = collections.Counter(r.base_url for r in results)
    assert set(by_url) == {a.v1, b.v1}
    # least loaded: two equal servers share the work about evenly
    assert min(by_url.values()) >= 30, by_url
    answered = per_item(a.log()) + per_item(b.log())
    assert set(answered.values()) == {1} and len(answered) == 80


async def test_an_endpoint_that_dies_hands_its_items_over_and_rejoins(
    two: tuple[FaultyProcess, FaultyProcess], real_sleeps: None
) -> None:
    """Default settings: one of two dies mid-batch; every item is answered once; it comes back."""
    a, b = two
    slow = {"fault": "delay", "delay_s": 0.1}
    # The batch goes on until the revived endpoint has answered a few (how soon that is depends
    # on the prober's backoff and on how long the restart takes on a loaded machine), at most CAP.
    CAP = 30000
    for s in two:
        s.script([], default=slow)
    results: list[Result] = []
    revived = anyio.Event()
    from_a_after_revival = 0
    produced = 0

    async def items() -> Any:
        nonlocal produced
        while produced < CAP and from_a_after_revival < 20:
            yield req(produced)
            produced += 1

    async with client_for(a, b) as client, anyio.create_task_group() as tg:
        await client.dispatcher.preflight()

        async def revive() -> None:
            await anyio.sleep(2.0)
            await anyio.to_thread.run_sync(a.start)
            await anyio.to_thread.run_sync(lambda: a.script([], default=slow))
            revived.set()

        with anyio.fail_after(90):
            async with client.map(items()) as rs:
                async for r in rs:
                    results.append(r)
                    if len(results) == 60:
                        await anyio.to_thread.run_sync(a.kill)
                        tg.start_soon(revive)
                    elif revived.is_set() and r.base_url == a.v1:
                        from_a_after_revival += 1
        states = client.dispatcher.endpoint_states("openai")
    assert len(results) == produced and all(r.ok for r in results), [r.error for r in results if not r.ok]
    ids = collections.Counter(str(r.id) for r in results)
    assert set(ids.values()) == {1}
    # the failed tries on the dead endpoint were its outage, never an item's attempt
    for r in results:
        for attempt in r.attempts[:-1]:
            assert attempt.error_type == "BackendUnavailable", r.attempts
    # after the crash, b took the work; after the restart, a got work again
    after = results[60:]
    assert any(r.base_url == b.v1 for r in after)
    assert from_a_after_revival >= 20 and a.answered() >= 20, "the revived endpoint never rejoined"
    assert dict(states) == {a.v1: "up", b.v1: "up"}


async def test_the_queue_of_an_endpoint_that_dies_moves_to_the_others_at_once(
    two: tuple[FaultyProcess, FaultyProcess], real_sleeps: None
) -> None:
    """Default settings (wait_for_backend 600 s): a stays dead; the items that were queued for it
    go to b instead of waiting for a to come back."""
    a, b = two
    for s in two:
        s.script([], default={"fault": "delay", "delay_s": 0.1})
    results: list[Result] = []
    async with client_for(a, b) as client:
        await client.dispatcher.preflight()
        t0 = time.monotonic()
        with anyio.fail_after(60):
            async with client.map([req(i) for i in range(400)]) as rs:
                async for r in rs:
                    results.append(r)
                    if len(results) == 40:
                        assert client.dispatcher.runner.pool("openai")[0].waiting > 0  # a has a queue
                        await anyio.to_thread.run_sync(a.kill)
        took = time.monotonic() - t0
    assert len(results) == 400 and all(r.ok for r in results), [r.error for r in results if not r.ok]
    assert collections.Counter(str(r.id) for r in results).most_common(1)[0][1] == 1
    assert took < 30, f"{took:.1f}s: the queue waited for the dead endpoint"


async def test_endpoints_serving_different_models_are_reported_at_preflight(
    two: tuple[FaultyProcess, FaultyProcess],
) -> None:
    a, b = two
    other = {"object": "list", "data": [{"id": "another-model", "object": "model"}]}
    b.script([{"match": {"path": "/v1/models"}, "fault": "status", "status": 200, "body": other}])
    client = Client(
        backend="openai",
        overrides={"backends": {"openai": {"base_url": [a.v1, b.v1]}}},
        user_file=False,
        project_file=False,
        allow=["openai"],
    )
    async with client:
        with pytest.raises(ConfigError) as info:
            await client.dispatcher.preflight()
    text = str(info.value)
    assert "do not serve the same model" in text and a.v1 in text and b.v1 in text
    assert "fake-vlm" in text and "another-model" in text


def test_the_cli_takes_a_list_of_urls_and_health_lists_each(
    tmp_path: Path, two: tuple[FaultyProcess, FaultyProcess]
) -> None:
    a, b = two
    for i in range(6):
        Image.new("RGB", (8, 8), (i, 2, 3)).save(tmp_path / f"{i}.jpg", "JPEG")
    urls = f"{a.v1},{b.v1}"
    common = ["--vlm-backend", "openai", "--vlm-base-url", urls, "--vlm-model", "fake-vlm"]
    proc = run_cli(tmp_path, "describe", ".", "--xmp", "none", "--no-json-sidecar", *common)
    assert proc.returncode == 0, show(proc)
    records = read_jsonl(tmp_path / "imageworks-results.jsonl")
    assert len(records) == 6 and {r["base_url"] for r in records} <= {a.v1, b.v1}
    health = run_cli(tmp_path, "health", *common)
    assert health.returncode == 0, show(health)
    assert f"ready at {a.v1}" in health.stdout and f"ready at {b.v1}" in health.stdout
    # a config file lists them as a TOML list
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[backends.openai]\nbase_url = ["{a.v1}", "{b.v1}"]\nmodel = "fake-vlm"\n')
    shown = run_cli(tmp_path, "health", "--vlm-backend", "openai", "--config", str(cfg))
    assert shown.returncode == 0 and shown.stdout.count("ready at") == 2, show(shown)
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[backends.openai]\nbase_url = ["{a.v1}", 3]\n')
    refused = run_cli(tmp_path, "health", "--vlm-backend", "openai", "--config", str(bad))
    assert refused.returncode == 2 and "base_url" in refused.stderr, show(refused)
