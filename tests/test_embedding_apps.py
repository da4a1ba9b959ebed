"""Embedding (issue 20): two host programs, run as users run them, leak nothing.

Each program runs in its own interpreter under ``python -X dev -W
error::ResourceWarning``, in a working directory holding a hostile
``pyproject.toml`` and with hostile ``IMAGEWORKS_*`` variables, against the
real fault-injecting server.  Its ``Client(..., trust_env=False)`` must behave
exactly as its code says: the server sees the code's ``max_tokens`` (a request
with any other value gets a 400) and never more than the code's concurrency.
Any ResourceWarning, unclosed resource or unfinished async generator fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent / "embedding"
CHAT = "/v1/chat/completions"
LEAK_SIGNS = (
    "ResourceWarning",
    "Unclosed",
    "unclosed",
    "was never awaited",
    "Task was destroyed",
    "Exception ignored",
    "was garbage collected",
)


def _hostile(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.imageworks]\nmax_tokens = 3\nconcurrency = 1\nfallback = ['vllm']\n"
        "[tool.imageworks.backends.openai]\nmodel = 'from-the-cwd'\n"
    )
    user = tmp_path / "user.toml"
    user.write_text("max_tokens = 2\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWORKS_")}
    env.update(
        IMAGEWORKS_CONCURRENCY="64",
        IMAGEWORKS_MAX_TOKENS="5",
        IMAGEWORKS_MAX_TOKEN="5",  # a near miss, fatal to a client that reads the environment
        IMAGEWORKS_CONFIG_FILE=str(user),
        IMAGEWORKS_BACKENDS_DENY="openai",
        IMAGEWORKS_STRICT_PLUGINS="1",
    )
    return env


def _rules(delay: float) -> list[dict[str, Any]]:
    code = '"max_tokens": 7'
    return [
        {"match": {"path": CHAT, "request_id": "cut"}, "fault": "sse_cut", "chunks": 2},
        {"match": {"path": CHAT, "request_id": "inband"}, "fault": "sse_inband_error"},
        {"match": {"path": CHAT, "request_id": ["slow", "slow-stream"]}, "fault": "delay", "delay_s": 5},
        {"match": {"path": CHAT, "body_contains": code}, "fault": "delay", "delay_s": delay},
        {"match": {"path": CHAT}, "fault": "status", "status": 400, "body": {"error": {"message": "not 7"}}},
    ]


def _run(script: str, args: list[str], tmp_path: Path) -> tuple[dict[str, Any], str]:
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error::ResourceWarning", str(HERE / script), *args],
        cwd=tmp_path,
        env=_hostile(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for sign in LEAK_SIGNS:
        assert sign not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _max_in_flight(entries: list[dict[str, Any]]) -> int:
    """Most answered requests the server held at once (a cancelled one may outlive its client slot)."""
    edges = []
    for e in entries:
        if e["completed"] and e["duration_s"] is not None:
            edges += [(e["time"], 1), (e["time"] + e["duration_s"], -1)]
    level = peak = 0
    for _, step in sorted(edges, key=lambda x: (x[0], x[1])):
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_script_map_stream_timeouts_leak_nothing(faulty: Any, tmp_path: Path, loop: str) -> None:
    faulty.script(_rules(delay=0.05))
    seen, _ = _run("embed_script.py", [faulty.v1, loop], tmp_path)
    assert seen["map_full"] == 12
    assert seen["stream_full"] == "[s1] A grey cat on a sofa."
    assert seen["stream_cut"] == "BackendProtocolError"  # cut after text was yielded: raised as is
    assert seen["stream_inband"] == "BackendServerError"  # an in-band error with code 500
    assert seen["infer_moved_on"] is True and seen["infer_failed_after"] is True
    assert seen["infer_after"] is True
    log = faulty.log(CHAT)
    assert all(e["status"] != 400 for e in log), [e for e in log if e["status"] == 400]  # always max_tokens 7
    assert 1 < _max_in_flight([e for e in log if e["request_id"].startswith("map")]) <= 4


def test_aiohttp_app_50_uploads_12_disconnects(faulty: Any, tmp_path: Path) -> None:
    faulty.script(_rules(delay=0.25))
    seen, _ = _run("aiohttp_app.py", [faulty.v1, "50", "12"], tmp_path)
    assert seen == {"ok": 38, "disconnected": 12, "other": 0}
    log = faulty.log(CHAT)
    assert all(e["status"] != 400 for e in log)  # the code's max_tokens, not the cwd's or the env's
    assert 1 < _max_in_flight(log) <= 4  # the code's concurrency, not 1 (pyproject) nor 64 (env)
    answered = {e["request_id"] for e in log if e["completed"]}
    assert {f"up{i}" for i in range(12, 50)} <= answered
    assert len(log) < 50  # some hung-up uploads were cancelled before they reached the server
