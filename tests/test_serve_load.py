"""The gateway under load (bounded, loopback): 2,000 requests from 64 concurrent openai SDK clients."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import IN_CI
from serve_helpers import metric, running_gateway
from servers._proc import ServerProcess, free_port, python_argv
from test_serve import data_url, jpeg

try:
    import openai
    import starlette  # noqa: F401
except ImportError as exc:  # skipped locally; in CI a missing extra is a failure
    if IN_CI:
        raise
    pytest.skip(
        f"the gateway's tests need the serve extra and the openai SDK: {exc}", allow_module_level=True
    )

SERVERS = Path(__file__).parent / "servers"
REQUESTS = 2000
CLIENTS = 64


def _stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_stats", timeout=10) as resp:
        return dict(json.load(resp))


@pytest.mark.slow
def test_2000_requests_from_64_sdk_clients_none_lost(tmp_path: Path) -> None:
    port = free_port()
    fast = f"http://127.0.0.1:{port}"
    with ServerProcess(
        python_argv(SERVERS / "fast_openai.py", "--port", str(port)),
        ready_url=fast + "/health",
        name="fast",
        ready_timeout=30,
    ):
        upstream_cfg = {"base_url": fast + "/v1", "model": "fake-vlm"}
        settings = {"backend": "openai", "backends": {"openai": upstream_cfg}}
        with running_gateway(tmp_path, settings, token="load-token") as gw:
            image = data_url(jpeg(320, 240))
            before = _stats(fast)["requests"]

            async def run() -> list[str]:
                clients = [
                    openai.AsyncOpenAI(base_url=gw.v1, api_key="load-token", max_retries=0, timeout=120)
                    for _ in range(CLIENTS)
                ]
                todo = iter(range(REQUESTS))
                answers: list[str] = [""] * REQUESTS

                async def worker(client: Any) -> None:
                    for i in todo:
                        answer = await client.chat.completions.create(
                            model="openai/fake-vlm",
                            messages=[
                                {
                                    "role": "user",
                                    "content": [
                                        {"type": "image_url", "image_url": {"url": image}},
                                        {"type": "text", "text": f"item {i}"},
                                    ],
                                }
                            ],
                        )
                        answers[i] = answer.choices[0].message.content or ""

                try:
                    await asyncio.gather(*(worker(c) for c in clients))
                finally:
                    for c in clients:
                        await c.close()
                return answers

            answers = asyncio.run(run())
            upstream = _stats(fast)["requests"] - before - 1  # this /_stats call counts itself
            text = urllib.request.urlopen(
                urllib.request.Request(gw.url + "/metrics", headers=gw.auth), timeout=10
            ).read()
    assert answers == ["A grey cat on a sofa."] * REQUESTS  # every request answered, none lost
    assert upstream == REQUESTS  # each reached the server once
    metrics = text.decode()
    assert metric(metrics, "imageworks_gateway_requests_total", route="chat", status="200") == REQUESTS
    assert metric(metrics, "imageworks_gateway_in_flight") == 0
