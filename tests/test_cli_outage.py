"""``imageworks describe`` through outages, as a user runs it: default settings, a real server process.

The server (``tests/servers/faulty_openai.py``) is started by each test so it
can be killed and brought back; the request log proves what was sent.
"""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from cli_helpers import cli_argv, cli_env, read_jsonl, run_cli, show
from PIL import Image
from servers import faulty_openai
from servers.faulty_process import FaultyProcess as Server

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server().start()
    try:
        yield s
    finally:
        s.stop()


def _images(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.jpg"
        Image.new("RGB", (24, 16), (i % 255, 90, 200)).save(p, "JPEG")
        paths.append(p)
    return paths


def _args(server: Server, folder: Path, *extra: str) -> list[str]:
    return [
        "describe",
        str(folder),
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        server.base + "/v1",
        "--vlm-model",
        "fake-vlm",
        "--xmp",
        "none",
        "--no-json-sidecar",
        "--output",
        str(folder.parent / "results.jsonl"),
        *extra,
    ]


def _popen(cwd: Path, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_argv(*args),
        cwd=cwd,
        env=cli_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
    )


def _wait_answered(server: Server, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while server.answered() < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"the server answered only {server.answered()} of {n}"
        time.sleep(0.05)


def test_a_server_still_loading_at_start_is_waited_for(tmp_path: Path, server: Server) -> None:
    """Listening but answering 503 "loading" for 10 s: the batch waits, then completes (exit 0)."""
    _images(tmp_path / "imgs", 6)
    loading = {"fault": "status", "status": 503, "body": {"error": {"message": "model is loading"}}}
    faulty_openai.script(server.base, [{"match": {"path_prefix": "/"}, **loading}])
    proc = _popen(tmp_path, _args(server, tmp_path / "imgs"))
    t0 = time.monotonic()
    time.sleep(10)
    assert proc.poll() is None, proc.communicate()
    faulty_openai.script(server.base, [])
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    assert proc.returncode == 0, (out, err)
    assert "Traceback" not in err
    assert "loading" in err, err
    records = read_jsonl(tmp_path / "results.jsonl")
    assert len(records) == 6 and all(r["error"] is None for r in records), records
    assert took < 10 + 16 + 5, f"took {took:.1f}s after the server was ready at 10 s"


@pytest.mark.about("wait_for_backend")
def test_a_server_that_never_returns_fails_the_rest_with_exit_3_then_resume(
    tmp_path: Path, server: Server
) -> None:
    """Killed after 10 answers, ``--wait-for-backend 5``: exit 3 within ~6 s, one clear message;
    the finished results are on disk and ``--resume`` sends only the rest."""
    _images(tmp_path / "imgs", 40)
    faulty_openai.script(server.base, [], default={"fault": "delay", "delay_s": 0.3})
    proc = _popen(tmp_path, _args(server, tmp_path / "imgs", "--wait-for-backend", "5"))
    _wait_answered(server, 10, proc)
    server.kill()
    killed = time.monotonic()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - killed
    assert proc.returncode == 3, (out, err)
    assert "Traceback" not in err
    assert 4.5 <= took < 7.0, f"gave up {took:.1f}s after the crash (wait_for_backend=5; ~5.1 s measured)"
    # one clear message naming the backend, the URL, how long it was down, what to do
    assert "not described, the backend stayed down" in out, out
    assert f"openai at {server.base}/v1 has been unavailable for 0:0" in out, out
    assert "--resume" in out
    assert out.count("has been unavailable") == 1, out
    assert f"start the openai server at {server.base}/v1, e.g.:" in out and "ollama serve" in out, out
    assert f"outages: openai at {server.base}/v1: 1, 0:0" in out, out  # the summary counts it
    [(ok, failed)] = re.findall(r"^  openai: (\d+) ok, (\d+) failed", out, re.M)
    assert int(ok) + int(failed) == 40, out  # the backend's line accounts for every image
    records = read_jsonl(tmp_path / "results.jsonl")
    done = {r["image"] for r in records if r["error"] is None}
    failed = {r["image"] for r in records if r["error"] is not None}
    assert (
        len(records) == 40
        and len(done) >= 10
        and done | failed == {str(p) for p in (tmp_path / "imgs").iterdir()}
    )
    assert all("unavailable" in r["error"] for r in records if r["error"] is not None)

    server.start()
    again = run_cli(tmp_path, *_args(server, tmp_path / "imgs"), "--resume")
    assert again.returncode == 0, show(again)
    sent = [e["request_id"] for e in server.log()]
    assert len(sent) == len(failed), (len(sent), len(failed))
    final = read_jsonl(tmp_path / "results.jsonl")  # the first run's records, then the resumed ones
    for image in done:  # described once, never asked again
        assert [r["error"] for r in final if r["image"] == image] == [None], image
    for image in failed:  # asked once more, and answered
        assert [r["error"] is None for r in final if r["image"] == image] == [False, True], image
    final = {r["image"] for r in read_jsonl(tmp_path / "results.jsonl") if r["error"] is None}
    assert len(final) == 40


def test_ctrl_c_during_an_outage_exits_at_once_with_the_results_kept(tmp_path: Path, server: Server) -> None:
    _images(tmp_path / "imgs", 30)
    faulty_openai.script(server.base, [], default={"fault": "delay", "delay_s": 0.1})
    proc = _popen(tmp_path, [*_args(server, tmp_path / "imgs"), "--json"])
    _wait_answered(server, 5, proc)
    server.kill()
    time.sleep(2.0)  # well into the outage: items wait, the prober backs off
    assert proc.poll() is None
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    print(f"\nCtrl-C during an outage: exit {proc.returncode} after {took:.2f}s")
    assert proc.returncode == 130, (out, err)
    assert took < 3.0, f"took {took:.2f}s to stop (the outage wait is 600 s)"
    assert "Traceback" not in err
    records = read_jsonl(tmp_path / "results.jsonl")
    assert len([r for r in records if r["error"] is None]) >= 5
    # --json: the outage was logged as a structured line
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert any(line.get("event") == "outage" and line.get("backend") == "openai" for line in lines), err


# ------------------------------------------------------------------ the same, in-process, asyncio and trio


async def _describe_in_process(tmp_path: Path, server: Server, *, stream: bool, **settings: Any) -> Any:
    from imageworks_core import Client
    from imageworks_core.describe import DescribeOptions, run_describe

    backends = {"openai": {"base_url": server.base + "/v1", "model": "fake-vlm"}}
    opts = DescribeOptions(
        paths=(str(tmp_path / "imgs"),),
        output=tmp_path / "results.jsonl",
        stream=stream,
        xmp="none",
        json_sidecar=False,
    )
    async with Client(
        backend="openai", overrides={"backends": backends, **settings}, user_file=False, project_file=False
    ) as client:
        return await run_describe(client, opts, out=io.StringIO())


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True], ids=["batch", "stream"])
async def test_run_describe_waits_out_a_restart_in_process(
    tmp_path: Path, server: Server, real_sleeps: None, stream: bool
) -> None:
    """What the CLI runs, embedded in an asyncio or a trio program, default settings: the server is
    killed after 5 answers and back 3 s later; every image is described once, one outage counted."""
    _images(tmp_path / "imgs", 16)
    server.script([], default={"fault": "delay", "delay_s": 0.1})

    async def crash_and_restart() -> None:
        while server.answered() < 5:
            await anyio.sleep(0.02)
        await anyio.to_thread.run_sync(server.kill)
        await anyio.sleep(3)
        await anyio.to_thread.run_sync(server.start)
        await anyio.to_thread.run_sync(lambda: server.script([], default={"fault": "delay", "delay_s": 0.1}))

    with anyio.fail_after(120):
        async with anyio.create_task_group() as tg:
            tg.start_soon(crash_and_restart)
            summary = await _describe_in_process(tmp_path, server, stream=stream)
    assert len(summary.ok) == 16 and not summary.failed, summary.failed
    [(backend, url, seconds)] = summary.outages
    assert backend == "openai" and url == server.base + "/v1" and seconds >= 2.5
    records = read_jsonl(tmp_path / "results.jsonl")
    assert sorted(r["image"] for r in records) == sorted(str(p) for p in (tmp_path / "imgs").iterdir())
    assert all(r["error"] is None and r["description"] for r in records)
    # the restarted server got only what the first had not answered (at least 5 were, before the kill)
    assert 1 <= len(server.log()) <= 16 - 5, len(server.log())


@pytest.mark.anyio
@pytest.mark.about("wait_for_backend")
async def test_run_describe_gives_up_after_wait_for_backend_in_process(
    tmp_path: Path, server: Server, real_sleeps: None
) -> None:
    """The server never comes back, ``wait_for_backend = 2``: the rest fail with BackendDown, the
    finished ones are on disk, once each."""
    _images(tmp_path / "imgs", 16)
    server.script([], default={"fault": "delay", "delay_s": 0.1})

    async def crash() -> None:
        while server.answered() < 5:
            await anyio.sleep(0.02)
        await anyio.to_thread.run_sync(server.kill)

    t0 = time.monotonic()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            tg.start_soon(crash)
            summary = await _describe_in_process(tmp_path, server, stream=False, wait_for_backend=2)
    assert time.monotonic() - t0 < 20
    assert len(summary.ok) >= 5 and len(summary.ok) + len(summary.failed) == 16
    assert all("has been unavailable for" in why for _, why in summary.failed), summary.failed
    records = read_jsonl(tmp_path / "results.jsonl")
    assert len(records) == 16 and len({r["image"] for r in records}) == 16
    assert sum(r["error"] is None for r in records) == len(summary.ok)
