"""The vLLM backend against a real OpenAI-compatible VLM server: Hugging Face ``transformers serve``.

No vLLM runs here (no GPU), so the backend is pointed at ``transformers serve``
with a tiny random-weight LLaVA (tests/servers/HF_SERVE_NOTES.md): real image
decoding, real chat template, real SSE — and that server's own quirks (no
``[DONE]``, ``model`` echoed with ``@main``, no ``/version`` or ``/metrics``,
400 ``{"detail": ...}`` for an unknown model, one generation at a time).
"""

from __future__ import annotations

import io
from typing import Any

import anyio
import pytest
from PIL import Image

from imageworks_core import BackendRejected, Client, PreparedImage, Request

pytestmark = [pytest.mark.anyio, pytest.mark.server]

MAX_TOKENS = 12


def client(server: Any, **backend: Any) -> Client:
    return Client(
        backend="vllm",
        overrides={"max_tokens": MAX_TOKENS, "backends": {"vllm": {"base_url": server.base_url, **backend}}},
        user_file=False,
        project_file=False,
        allow=["vllm"],
    )


def photo(color: tuple[int, int, int], fmt: str = "JPEG", size: tuple[int, int] = (64, 48)) -> PreparedImage:
    """A small two-tone picture, encoded with Pillow."""
    img = Image.new("RGB", size, color)
    img.paste((255 - color[0], 255 - color[1], 255 - color[2]), (0, 0, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    img.save(buf, fmt)
    return PreparedImage.from_bytes(buf.getvalue())


def describe(color: tuple[int, int, int] = (200, 30, 30), **kw: Any) -> Request:
    return Request(prompt="Describe this image.", images=(photo(color, **kw),))


async def test_health_lists_the_served_model(hf_server: Any) -> None:
    async with client(hf_server) as c:
        report = await c.health()
    assert report.reachable and report.ready, report
    assert report.backend == "vllm"
    assert hf_server.model_id in report.models
    assert report.version is None  # transformers serve has no /version: tolerated
    assert dict(report.metrics) == {}  # nor /metrics
    assert report.latency > 0


async def test_describe_image_non_streaming(hf_server: Any) -> None:
    async with client(hf_server) as c:  # no model configured: the only served one is found
        result = await c.infer(describe())
    assert result.ok and result.text.strip()
    assert result.backend == "vllm"
    assert result.model.startswith(hf_server.model_id)
    assert result.finish_reason in ("length", "stop")
    usage = result.usage
    assert usage.prompt_tokens and usage.prompt_tokens > 16  # the image's 16 tokens plus the text
    assert usage.completion_tokens and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_describe_image_streaming_matches_non_streaming(hf_server: Any) -> None:
    request = describe((30, 30, 200), fmt="PNG")
    async with client(hf_server, model=hf_server.model_id) as c:
        chunks = [chunk async for chunk in c.stream(request)]
        whole = await c.infer(request)
    text = "".join(ch.text for ch in chunks)
    assert text.strip()
    assert text == whole.text  # greedy decoding: the stream carries the same answer
    finishes = [ch.finish_reason for ch in chunks if ch.finish_reason]
    assert finishes and finishes[-1] in ("length", "stop")
    usage = next(ch.usage for ch in reversed(chunks) if ch.usage is not None)
    assert usage.completion_tokens and 0 < usage.completion_tokens <= MAX_TOKENS
    assert usage.prompt_tokens and usage.prompt_tokens > 16


async def test_unknown_model_is_rejected_clearly(hf_server: Any) -> None:
    async with client(hf_server) as c:
        with pytest.raises(BackendRejected) as info:
            await c.infer(Request(prompt="Describe.", images=(photo((0, 128, 0)),), model="no/such-model"))
        assert (await c.infer(describe())).ok  # the client is still usable
    exc = info.value
    assert exc.status == 400 and exc.backend == "vllm"
    assert "no/such-model" in exc.message and hf_server.base_url in exc.message
    assert hf_server.model_id in (exc.hint or "")  # the served model is named, with the key to set
    assert "backends.vllm.model" in (exc.hint or "")


async def test_sixteen_concurrent_requests_all_succeed(hf_server: Any) -> None:
    requests = [
        Request(prompt="Describe this image.", images=(photo((i * 15, 255 - i * 15, 90)),), id=f"img-{i}")
        for i in range(16)
    ]
    results = []
    with anyio.fail_after(60):
        async with client(hf_server, concurrency=16) as c, c.map(requests) as stream:
            async for result in stream:
                results.append(result)
    assert len(results) == 16
    assert sorted(r.id or "" for r in results) == sorted(f"img-{i}" for i in range(16))
    failed = [(r.id, r.error) for r in results if not r.ok]
    assert not failed, failed
    assert all(r.text.strip() and r.usage.completion_tokens for r in results)
