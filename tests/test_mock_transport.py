"""``imageworks_core.testing.MockTransport``: a real plugin (vLLM's) against answers from a function.

No socket: the handler sees what the plugin sent and returns vLLM's exact
answers; network faults are exceptions it raises.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
from PIL import Image

from imageworks_core import (
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    Client,
    PreparedImage,
    Request,
)
from imageworks_core.testing import MockRequest, MockResponse, MockTransport

pytestmark = pytest.mark.anyio

MODEL = "Qwen/Qwen2-VL-2B-Instruct"
URL = "http://gpu-box.invalid:8000/v1"


def jpeg() -> PreparedImage:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 40, 40)).save(buf, "JPEG")
    return PreparedImage.from_bytes(buf.getvalue())


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23},
    }


def vllm(chat: Any = None) -> Any:
    """A handler playing vLLM 0.11: health endpoints, and *chat* (a function) for completions."""

    def handle(request: MockRequest) -> MockResponse:
        if request.path == "/health":
            return MockResponse.text("")
        if request.path == "/v1/models":
            return MockResponse.json(
                {"object": "list", "data": [{"id": MODEL, "object": "model", "max_model_len": 8192}]}
            )
        if request.path == "/version":
            return MockResponse.json({"version": "0.11.2"})
        if request.path == "/metrics":
            return MockResponse.text('vllm:num_requests_waiting{model_name="m"} 3\n')
        assert request.path == "/v1/chat/completions", request
        return chat(request) if chat else MockResponse.json(answer("A red square."))

    return handle


def client(transport: MockTransport, **kw: Any) -> Client:
    return Client(
        backend="vllm",
        base_url=URL,
        model=MODEL,
        transport=transport,
        user_file=False,
        project_file=False,
        allow=["vllm"],
        **kw,
    )


async def test_health_and_infer_go_through_the_handler() -> None:
    mock = MockTransport(vllm())
    async with client(mock, max_tokens=64) as c:
        report = await c.health()
        result = await c.infer(Request(prompt="Describe.", images=(jpeg(),)))
    assert report.ready and report.version == "0.11.2" and report.max_model_len == 8192
    assert report.metrics["waiting"] == 3.0
    assert result.text == "A red square." and result.usage.total_tokens == 23
    (sent,) = mock.sent("/v1/chat/completions")
    body = sent.json()
    assert sent.method == "POST" and sent.headers["content-type"] == "application/json"
    assert body["model"] == MODEL and body["max_tokens"] == 64 and not body.get("stream")
    content = body["messages"][-1]["content"]
    urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
    assert len(urls) == 1 and urls[0].startswith("data:image/jpeg;base64,")
    assert mock.closed  # the client closed its transport


async def test_a_stream_is_served_from_sse_lines() -> None:
    events = [
        {"choices": [{"index": 0, "delta": {"content": "A red "}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "square."}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}},
    ]
    mock = MockTransport(vllm(lambda r: MockResponse.sse(events)))
    async with client(mock) as c:
        chunks = [ch async for ch in c.stream(Request(prompt="Describe.", images=(jpeg(),)))]
    assert "".join(ch.text for ch in chunks) == "A red square."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 23
    (sent,) = mock.sent("/v1/chat/completions")
    assert sent.stream and sent.json()["stream_options"] == {"include_usage": True}


async def test_a_vllm_rejection_keeps_its_hint() -> None:
    too_long = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens. "
            "However, you requested 9000 tokens.",
            "type": "BadRequestError",
            "param": None,
            "code": 400,
        }
    }
    mock = MockTransport(vllm(lambda r: MockResponse.json(too_long, status=400)))
    async with client(mock) as c:
        with pytest.raises(BackendRejected) as info:
            await c.infer(Request(prompt="Describe.", images=(jpeg(),)))
    assert "maximum context length" in info.value.message
    assert "max_model_len" in (info.value.hint or "") or "max-model-len" in (info.value.hint or "")
    assert len(mock.sent("/v1/chat/completions")) == 1  # a rejection is not retried


async def test_refused_then_back_costs_no_attempt() -> None:
    """Connection refused is an outage of the endpoint: the request waits for it, then succeeds."""
    down = {"left": 3}

    def handle(request: MockRequest) -> MockResponse:
        if down["left"] > 0:
            down["left"] -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        return vllm()(request)

    mock = MockTransport(handle)
    async with client(mock) as c:
        result = await c.infer(Request(prompt="Describe.", images=(jpeg(),)))
    assert result.text == "A red square."
    assert all(a.error_type == "BackendUnavailable" for a in result.attempts[:-1])


async def test_network_faults_map_as_the_real_transports_do() -> None:
    async def timeout(request: MockRequest) -> MockResponse:
        raise TimeoutError

    mock = MockTransport(timeout)
    async with client(mock) as c:
        report = await c.health()
    assert not report.ready and not report.reachable
    refused = MockTransport(lambda r: (_ for _ in ()).throw(ConnectionRefusedError(111, "refused")))
    async with client(refused) as c:
        with pytest.raises(BackendUnavailable, match=r"cannot connect to http://gpu-box\.invalid:8000"):
            await c.context("vllm").http.get_json("/health")
    async with client(mock) as c:
        with pytest.raises(BackendTimeout):
            await c.context("vllm").http.get_json("/health")


async def test_a_handler_that_returns_something_else_is_a_clear_type_error() -> None:
    mock = MockTransport(lambda r: {"not": "a response"})  # type: ignore[arg-type,return-value]
    async with client(mock) as c:
        with pytest.raises(TypeError, match="not MockResponse"):
            await c.context("vllm").http.get_json("/health")
