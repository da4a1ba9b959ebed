"""The LMDeploy backend against the fault-injecting server, in-process, one test per LMDeploy quirk.

Every server answer here is the exact body shape an LMDeploy version sends
(old and new), served by the ``faulty`` fixture's ``status`` fault; request
bodies are checked on the wire with ``body_contains`` rules.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from servers._proc import free_port
from servers.faulty_openai import MockFaulty, transport_for

from imageworks_backend_lmdeploy import LmdeploySettings, parse_metrics, plugin
from imageworks_core import (
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendUnavailable,
    Client,
    ConfigError,
    PreparedImage,
    Request,
    Usage,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def faulty() -> MockFaulty:
    """The fault server in-process (``MockOpenAIServer``): these tests check what is sent and how
    the answers are read, which needs no socket."""
    return MockFaulty()


CHAT = "/v1/chat/completions"
MODEL = "Qwen/Qwen2-VL-2B-Instruct"
README = Path(__file__).resolve().parents[1] / "plugins" / "lmdeploy" / "README.md"

# ---------------------------------------------------------------- exact LMDeploy bodies

MODELS_BODY = {
    "object": "list",
    "data": [
        {
            "id": MODEL,
            "object": "model",
            "created": 1735689600,
            "owned_by": "lmdeploy",
            "root": MODEL,
            "parent": None,
            "permission": [
                {
                    "id": "modelperm-1a2b3c",
                    "object": "model_permission",
                    "created": 1735689600,
                    "allow_create_engine": False,
                    "allow_sampling": True,
                    "allow_logprobs": True,
                    "allow_search_indices": True,
                    "allow_view": True,
                    "allow_fine_tuning": False,
                    "organization": "*",
                    "group": None,
                    "is_blocking": False,
                }
            ],
        }
    ],
}

METRICS_TEXT = """\
# HELP lmdeploy:num_requests_running Number of requests currently running.
# TYPE lmdeploy:num_requests_running gauge
lmdeploy:num_requests_running{model_name="Qwen/Qwen2-VL-2B-Instruct"} 3.0
# HELP lmdeploy:num_requests_waiting Number of requests waiting.
# TYPE lmdeploy:num_requests_waiting gauge
lmdeploy:num_requests_waiting{model_name="Qwen/Qwen2-VL-2B-Instruct"} 5.0
# HELP lmdeploy:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.
# TYPE lmdeploy:gpu_cache_usage_perc gauge
lmdeploy:gpu_cache_usage_perc{model_name="Qwen/Qwen2-VL-2B-Instruct"} 0.42
# HELP lmdeploy:iteration_tokens_total Tokens per engine step.
# TYPE lmdeploy:iteration_tokens_total histogram
lmdeploy:iteration_tokens_total_bucket{le="1.0",model_name="Qwen/Qwen2-VL-2B-Instruct"} 7.0
"""


def completion(content: str, finish_reason: str, completion_tokens: int = 0) -> dict[str, Any]:
    """A non-streaming LMDeploy 0.15 chat completion."""
    return {
        "id": "17",
        "object": "chat.completion",
        "created": 1735689600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content,
                    "gen_tokens": None,
                    "reasoning_content": None,
                    "tool_calls": None,
                },
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": 9000,
            "total_tokens": 9000 + completion_tokens,
            "completion_tokens": completion_tokens,
        },
    }


def chunk(content: str | None, finish_reason: str | None, usage: Any = None, choices: bool = True) -> str:
    event: dict[str, Any] = {
        "id": "17",
        "object": "chat.completion.chunk",
        "created": 1735689600,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": content, "tool_calls": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ]
        if choices
        else [],
        "usage": usage,
    }
    return "data: " + json.dumps(event, separators=(",", ":")) + "\n\n"


def sse(*events: str) -> str:
    return "".join(events) + "data: [DONE]\n\n"


def serve(path: str, status: int, body: Any, *, stream: bool | None = None, **extra: Any) -> dict[str, Any]:
    """A faulty rule that serves *body* on *path* with *status*."""
    match: dict[str, Any] = {"path": path}
    if stream is not None:
        match["stream"] = stream
    rule: dict[str, Any] = {"match": match, "fault": "status", "status": status, "body": body}
    rule.update(extra)
    return rule


def serve_sse(text: str) -> dict[str, Any]:
    return serve(CHAT, 200, text, stream=True, content_type="text/event-stream")


# ---------------------------------------------------------------- helpers


def jpeg(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def image_request(**kw: Any) -> Request:
    return Request(prompt="Describe the colours.", images=(PreparedImage.from_bytes(jpeg()),), **kw)


def lmdeploy_client(
    base_url: str | None,
    *,
    retry: dict[str, Any] | None = None,
    wait_for_backend: float | None = None,
    **keys: Any,
) -> Client:
    backend: dict[str, Any] = dict(keys)
    if base_url is not None:
        backend["base_url"] = base_url
    overrides: dict[str, Any] = {"max_tokens": 16, "backends": {"lmdeploy": backend}}
    if wait_for_backend is not None:
        overrides["wait_for_backend"] = wait_for_backend
    if retry:
        overrides["retry"] = retry
    return Client(
        backend="lmdeploy",
        overrides=overrides,
        user_file=False,
        project_file=False,
        allow=["lmdeploy"],
        transport=transport_for(base_url),
    )


def chats(faulty: Any) -> list[dict[str, Any]]:
    return faulty.log(CHAT)


async def collect(client: Client, request: Request) -> list[Any]:
    return [c async for c in client.stream(request)]


# ---------------------------------------------------------------- plugin metadata


def test_entry_point_registers_the_plugin() -> None:
    client = Client(user_file=False, project_file=False, allow=["lmdeploy"])
    loaded = client.registry.get("lmdeploy")
    assert loaded.distribution == "imageworks-backend-lmdeploy"
    assert loaded.version == "0.1.0"
    assert loaded.plugin is plugin
    info = loaded.info
    assert info.default_base_url == "http://localhost:23333/v1"
    assert info.settings_cls is LmdeploySettings
    caps = info.capabilities
    assert (caps.vision, caps.streaming, caps.structured_output) == (True, True, True)
    assert caps.max_images is None
    assert caps.model_switch is False
    assert any("16 GB" in h and "--session-len 8192" in h for h in info.launch_hints)
    assert any("96 GB" in h and "--vision-max-batch-size 8" in h for h in info.launch_hints)


def test_readme_documents_install_launch_lines_and_the_dummy_image_limitation() -> None:
    text = README.read_text()
    assert "pip install imageworks-backend-lmdeploy" in text
    assert "[tool.imageworks.backends.lmdeploy]" in text
    flat = " ".join(text.replace("\\\n", " ").split())
    for hint in plugin.launch_hints:
        command = " ".join(hint.split("#")[0].split())
        assert command in flat, f"README lacks launch line: {command}"
    # LMDeploy <= 0.12.2 swaps an undecodable image for a 32x32 dummy: documented, not "detected".
    assert "0.12.2" in text and "32x32" in text and "0.12.3" in text


def test_readme_config_snippet_is_valid_config(tmp_path: Path) -> None:
    snippet = README.read_text().split("```toml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "pyproject.toml").write_text(snippet)
    settings = Client.from_config(cwd=tmp_path, user_file=False, allow=["lmdeploy"]).settings
    assert settings.backend == "lmdeploy"
    lm = settings.backends["lmdeploy"]
    assert isinstance(lm, LmdeploySettings)
    assert lm.base_url == "http://localhost:23333"
    assert lm.max_pixels == 1003520 and lm.concurrency == 16


# ---------------------------------------------------------------- base URL


async def test_default_base_url_is_port_23333_v1() -> None:
    async with lmdeploy_client(None) as client:
        ctx = client.context("lmdeploy")
        assert ctx.base_url == "http://localhost:23333/v1"
        assert plugin.api(ctx, "chat/completions") == "http://localhost:23333/v1/chat/completions"
        assert plugin.root(ctx, "health") == "http://localhost:23333/health"
        assert plugin.root(ctx, "metrics") == "http://localhost:23333/metrics"


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_with_or_without_v1(faulty: Any, suffix: str) -> None:
    async with lmdeploy_client(faulty.base_url + suffix) as client:
        result = await client.infer(image_request())
        report = await client.health()
    assert result.text.endswith("A grey cat on a sofa.")
    assert report.ready
    paths = [e["path"] for e in faulty.log()]
    assert paths.count(CHAT) == 1
    assert "/health" in paths and "/v1/models" in paths
    assert not any(p.startswith("/v1/v1") for p in paths)


# ---------------------------------------------------------------- health


async def test_health_old_server_200_empty_body(faulty: Any) -> None:
    """LMDeploy <= 0.13: /health is always 200 with an empty body; /v1/models lists the model."""
    faulty.script(
        [
            serve("/health", 200, ""),
            serve("/v1/models", 200, MODELS_BODY),
            serve("/metrics", 200, METRICS_TEXT, content_type="text/plain; version=0.0.4"),
        ]
    )
    async with lmdeploy_client(faulty.v1) as client:
        report = await client.health()
    assert report.reachable and report.ready
    assert report.models == (MODEL,)
    assert report.version is None  # LMDeploy has no version endpoint
    assert report.detail is None
    assert dict(report.metrics) == {"running": 3.0, "waiting": 5.0, "kv_cache_usage": 0.42}
    paths = [e["path"] for e in faulty.log()]
    assert paths[:2] == ["/health", "/v1/models"]
    assert "/version" not in paths


async def test_health_new_server_healthy_json(faulty: Any) -> None:
    faulty.script(
        [
            serve("/health", 200, {"status": "healthy", "message": "Engine is healthy."}),
            serve("/v1/models", 200, MODELS_BODY),
            serve("/metrics", 200, METRICS_TEXT, content_type="text/plain"),
        ]
    )
    async with lmdeploy_client(faulty.base_url) as client:
        report = await client.health()
    assert report.reachable and report.ready
    assert report.models == (MODEL,)
    assert report.metrics["running"] == 3.0


async def test_health_initializing_is_reachable_not_ready_with_the_server_message(faulty: Any) -> None:
    faulty.script(
        [
            serve("/health", 503, {"status": "initializing", "message": "Engine is initializing."}),
            serve("/metrics", 200, METRICS_TEXT, content_type="text/plain"),
        ]
    )
    async with lmdeploy_client(faulty.base_url) as client:
        report = await client.health()
    assert report.reachable is True
    assert report.ready is False
    assert "initializing" in report.detail
    assert "Engine is initializing." in report.detail
    assert "wait" in report.hint
    assert report.metrics["waiting"] == 5.0  # /metrics is read whenever the server is reachable
    assert "/v1/models" not in [e["path"] for e in faulty.log()]


async def test_health_unhealthy_503(faulty: Any) -> None:
    faulty.script([serve("/health", 503, {"status": "unhealthy", "message": "Engine loop is not running."})])
    async with lmdeploy_client(faulty.base_url) as client:
        report = await client.health()
    assert report.reachable and not report.ready
    assert "unhealthy" in report.detail and "Engine loop is not running." in report.detail
    assert "server log" in report.hint
    assert report.metrics == {}  # faulty has no /metrics (404): no figures, no error


async def test_health_sleeping_200_is_not_ready(faulty: Any) -> None:
    faulty.script([serve("/health", 200, {"status": "sleeping", "message": "Engine is sleeping."})])
    async with lmdeploy_client(faulty.base_url) as client:
        report = await client.health()
    assert report.reachable and not report.ready
    assert "sleeping" in report.detail
    assert "/wakeup" in report.hint


async def test_health_refused_names_backend_url_and_launch_lines() -> None:
    port = free_port()
    async with lmdeploy_client(f"http://127.0.0.1:{port}") as client:
        report = await client.health()
    assert not report.reachable and not report.ready
    assert f"127.0.0.1:{port}" in report.detail
    assert "lmdeploy" in report.detail
    assert "down or still loading" in report.detail
    assert "16 GB" in report.hint and "96 GB" in report.hint
    assert "lmdeploy serve api_server" in report.hint


async def test_health_models_401_asks_for_the_api_key(faulty: Any) -> None:
    """--api-keys guards /v1/models (old 401 shape) while /health stays open."""
    faulty.script(
        [
            serve("/health", 200, ""),
            serve(
                "/v1/models",
                401,
                {
                    "detail": {
                        "error": {
                            "message": "Please request with valid api key!",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    }
                },
            ),
        ]
    )
    async with lmdeploy_client(faulty.base_url) as client:
        report = await client.health()
    assert report.reachable and not report.ready
    assert "Please request with valid api key!" in report.detail
    assert "api_key_env" in report.hint


def test_parse_metrics_sums_label_sets_and_ignores_others() -> None:
    text = METRICS_TEXT + (
        'lmdeploy:num_requests_running{model_name="adapter"} 1\n'
        "lmdeploy:num_requests_waiting 2 1735689600000\n"
        'lmdeploy:gpu_cache_usage_perc{model_name="adapter"} NaN\n'
        "vllm:num_requests_running 99\n"
    )
    assert parse_metrics(text) == {"running": 4.0, "waiting": 7.0, "kv_cache_usage": 0.42}
    assert parse_metrics("") == {}
    assert parse_metrics("not prometheus at all\n{}") == {}


# ---------------------------------------------------------------- error bodies


ERRORS = [
    pytest.param(
        404,
        {
            "object": "error",
            "message": "The model `no/such-model` does not exist.",
            "type": "invalid_request_error",
            "code": 404,
            "param": None,
        },
        "The model `no/such-model` does not exist.",
        None,  # the hint is checked in test_unknown_model_hint_points_at_health (core bug)
        id="unknown-model-flat-404",
    ),
    pytest.param(
        400,
        {
            "object": "error",
            "message": "The temperature `3.0` must be in [0, 2]",
            "type": "invalid_request_error",
            "code": 400,
            "param": None,
        },
        "The temperature `3.0` must be in [0, 2]",
        None,
        id="validation-flat-400",
    ),
    pytest.param(
        422,
        {
            "detail": [
                {
                    "type": "int_parsing",
                    "loc": ["body", "max_tokens"],
                    "msg": "Input should be a valid integer, unable to parse string as an integer",
                    "input": "lots",
                }
            ]
        },
        "max_tokens: Input should be a valid integer",
        None,
        id="validation-older-422",
    ),
    pytest.param(
        401,
        {
            "detail": {
                "error": {
                    "message": "Please request with valid api key!",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "invalid_api_key",
                }
            }
        },
        "Please request with valid api key!",
        "api_key_env",
        id="api-key-older-401",
    ),
    pytest.param(
        401,
        {
            "object": "error",
            "message": "Please request with valid api key!",
            "type": "invalid_request_error",
            "code": 401,
            "param": None,
        },
        "Please request with valid api key!",
        "api_key_env",
        id="api-key-flat-401",
    ),
]


@pytest.mark.parametrize(("status", "body", "message", "hint"), ERRORS)
async def test_error_bodies_become_clear_rejections(
    faulty: Any, status: int, body: Any, message: str, hint: str | None
) -> None:
    faulty.script([serve(CHAT, status, body)])
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendRejected) as info:
            await client.infer(image_request())
    err = info.value
    assert err.status == status
    assert err.backend == "lmdeploy"
    assert message in err.message
    assert f"HTTP {status}" in err.message and "/v1/chat/completions" in err.message
    if hint is not None:
        assert hint in (err.hint or "")
    assert len(chats(faulty)) == 1  # a 4xx is never retried


async def test_unknown_model_hint_points_at_health(faulty: Any) -> None:
    faulty.script([serve(CHAT, 404, ERRORS[0].values[1])])
    async with lmdeploy_client(faulty.base_url, model="no/such-model") as client:
        with pytest.raises(BackendRejected) as info:
            await client.infer(image_request())
    assert "imageworks health" in (info.value.hint or "")
    assert "lmdeploy serve api_server" not in (info.value.hint or "")


@pytest.mark.parametrize(("status", "body", "message", "hint"), ERRORS[:2])
async def test_error_bodies_in_stream_requests(
    faulty: Any, status: int, body: Any, message: str, hint: str | None
) -> None:
    faulty.script([serve(CHAT, status, body)])
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendRejected, match="HTTP") as info:
            await collect(client, image_request())
    assert message in info.value.message
    assert len(chats(faulty)) == 1


async def test_inband_stream_error_after_200(faulty: Any) -> None:
    """LMDeploy sends ``data: {"error": {...}}`` then ``[DONE]`` when generation fails mid-stream."""
    faulty.script(
        [{"match": {"path": CHAT}, "fault": "sse_inband_error", "message": "engine failure", "code": 500}]
    )
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendProtocolError, match="engine failure"):
            await collect(client, image_request())


# ---------------------------------------------------------------- context too long (<= 0.15)


async def test_empty_length_answer_is_rejected_with_session_len_hint(faulty: Any) -> None:
    faulty.script([serve(CHAT, 200, completion("", "length"), stream=False)])
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendRejected) as info:
            await client.infer(image_request())
    err = info.value
    assert "finish_reason 'length'" in err.message and "session length" in err.message
    assert "--session-len" in err.hint
    assert "max_pixels" in err.hint and "max_tokens" in err.hint
    assert len(chats(faulty)) == 1


async def test_empty_length_answer_in_stream_is_rejected(faulty: Any) -> None:
    faulty.script([serve_sse(sse(chunk("", "length")))])
    seen: list[Any] = []
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendRejected) as info:
            async for c in client.stream(image_request()):
                seen.append(c)
    assert "--session-len" in info.value.hint
    assert not any(c.text for c in seen)


async def test_empty_length_via_finish_reason_fault_in_both_modes(faulty: Any) -> None:
    """The same quirk through the fake server's own ``finish_reason`` fault (role chunk, then finish)."""
    faulty.script([{"match": {"path": CHAT}, "fault": "finish_reason", "finish_reason": "length"}])
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendRejected, match="length"):
            await client.infer(image_request())
        with pytest.raises(BackendRejected, match="length"):
            await collect(client, image_request())


async def test_finish_reason_error_is_a_protocol_error(faulty: Any) -> None:
    faulty.script(
        [
            serve(CHAT, 200, completion("", "error"), stream=False),
            serve_sse(sse(chunk("", "error"))),
        ]
    )
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendProtocolError, match="finish_reason 'error'") as info:
            await client.infer(image_request())
        assert "--session-len" in info.value.hint
        with pytest.raises(BackendProtocolError, match="finish_reason 'error'"):
            await collect(client, image_request())


async def test_finish_reason_error_with_partial_text_still_fails(faulty: Any) -> None:
    faulty.script([serve(CHAT, 200, completion("A red sq", "error", 3), stream=False)])
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        with pytest.raises(BackendProtocolError):
            await client.infer(image_request())


async def test_length_with_text_is_a_normal_truncated_result(faulty: Any) -> None:
    faulty.script(
        [
            serve(CHAT, 200, completion("A red square on a", "length", 16), stream=False),
            serve_sse(sse(chunk("A red square", None), chunk(" on a", "length"))),
        ]
    )
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        result = await client.infer(image_request())
        chunks = await collect(client, image_request())
    assert result.text == "A red square on a"
    assert result.finish_reason == "length"
    assert result.usage == Usage(prompt_tokens=9000, completion_tokens=16, total_tokens=9016)
    assert "".join(c.text for c in chunks) == "A red square on a"
    assert chunks[-1].finish_reason == "length"


# ---------------------------------------------------------------- streaming usage shape


async def test_stream_usage_null_chunks_and_final_usage_chunk(faulty: Any) -> None:
    """With include_usage every chunk has ``"usage": null``; a final ``choices: []`` chunk has the usage."""
    usage = {"prompt_tokens": 300, "total_tokens": 303, "completion_tokens": 3}
    body = sse(
        chunk("", None),  # the role chunk
        chunk("A red", None),
        chunk(" square", None),
        chunk("", "stop"),
        chunk(None, None, usage=usage, choices=False),
    )
    faulty.script([serve_sse(body)])
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        chunks = await collect(client, image_request())
    assert "".join(c.text for c in chunks) == "A red square"
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["stop"]
    usages = [c.usage for c in chunks if c.usage is not None]
    assert usages == [Usage(prompt_tokens=300, completion_tokens=3, total_tokens=303)]
    assert all(c.text or c.finish_reason or c.usage for c in chunks)  # no empty chunks


async def test_stream_older_cumulative_usage_on_every_chunk(faulty: Any) -> None:
    """Older servers put (cumulative) usage on every chunk, the role chunk included."""

    def u(n: int) -> dict[str, int]:
        return {"prompt_tokens": 300, "total_tokens": 300 + n, "completion_tokens": n}

    body = sse(chunk("", None, u(0)), chunk("A red", None, u(2)), chunk(" square", "stop", u(3)))
    faulty.script([serve_sse(body)])
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        chunks = await collect(client, image_request())
    assert [c.text for c in chunks] == ["A red", " square"]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].usage == Usage(prompt_tokens=300, completion_tokens=3, total_tokens=303)


async def test_stream_request_asks_for_usage(faulty: Any) -> None:
    faulty.script(
        [
            {
                "match": {"path": CHAT, "body_contains": '"stream_options": {"include_usage": true}'},
                "fault": "ok",
                "content": "usage asked",
            },
            {"match": {"path_prefix": "/v1/models"}, "fault": "ok"},
        ],
        default={"fault": "status", "status": 418},
    )
    async with lmdeploy_client(faulty.base_url) as client:
        chunks = await collect(client, image_request())
    assert "".join(c.text for c in chunks) == "usage asked"
    assert [c.usage for c in chunks if c.usage] == [Usage(72, 2, 74)]  # 8 text + 64 image tokens


# ---------------------------------------------------------------- settings on the wire


def _b64() -> str:
    return base64.b64encode(jpeg()).decode("ascii")


async def test_body_carries_pixels_inside_image_url_and_extras_only_when_set(faulty: Any) -> None:
    keys = {
        "max_pixels": 401408,
        "min_pixels": 3136,
        "top_k": 20,
        "min_p": 0.05,
        "repetition_penalty": 1.05,
        "min_new_tokens": 2,
        "seed": 7,
        "skip_special_tokens": False,
        "chat_template_kwargs": {"enable_thinking": False},
        "response_format": {"type": "json_object"},
    }
    async with lmdeploy_client(faulty.base_url, model=MODEL, **keys) as client:
        ctx = client.context("lmdeploy")
        body = plugin.build_body(ctx, image_request(), MODEL, stream=False)
    assert body == {
        "model": MODEL,
        "messages": [
            {
                "role": "user",
                "content": [
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": "data:image/jpeg;base64," + _b64(),
                            "max_pixels": 401408,
                            "min_pixels": 3136,
                        },
                    },
                    {"type": "text", "text": "Describe the colours."},
                ],
            }
        ],
        "max_tokens": 16,
        "top_k": 20,
        "min_p": 0.05,
        "repetition_penalty": 1.05,
        "min_new_tokens": 2,
        "seed": 7,
        "skip_special_tokens": False,
        "chat_template_kwargs": {"enable_thinking": False},
        "response_format": {"type": "json_object"},
    }
    # and on the wire: the image object as LMDeploy reads it
    inside = (
        f'"image_url": {{"url": "data:image/jpeg;base64,{_b64()}", "max_pixels": 401408, "min_pixels": 3136}}'
    )
    faulty.script(
        [{"match": {"path": CHAT, "body_contains": inside}, "fault": "ok", "content": "pixels inside"}],
        default={"fault": "status", "status": 418},
    )
    async with lmdeploy_client(faulty.base_url, model=MODEL, **keys) as client:
        result = await client.infer(image_request())
    assert result.text == "pixels inside"


async def test_unset_settings_send_nothing_extra(faulty: Any) -> None:
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        body = plugin.build_body(client.context("lmdeploy"), image_request(), MODEL, stream=True)
    assert set(body) == {"model", "messages", "max_tokens", "stream", "stream_options"}
    assert body["messages"][0]["content"][0] == {
        "type": "image_url",
        "image_url": {"url": "data:image/jpeg;base64," + _b64()},
    }


async def test_per_request_pixels_go_into_the_images(faulty: Any) -> None:
    async with lmdeploy_client(faulty.base_url, model=MODEL, max_pixels=401408, min_pixels=3136) as client:
        ctx = client.context("lmdeploy")
        override = plugin.build_body(ctx, image_request(extra={"max_pixels": 200704}), MODEL, stream=False)
        dropped = plugin.build_body(ctx, image_request(extra={"min_pixels": None}), MODEL, stream=False)
    assert "max_pixels" not in override and "min_pixels" not in override
    image_url = override["messages"][0]["content"][0]["image_url"]
    assert (image_url["max_pixels"], image_url["min_pixels"]) == (200704, 3136)
    image_url = dropped["messages"][0]["content"][0]["image_url"]
    assert image_url["max_pixels"] == 401408 and "min_pixels" not in image_url


async def test_caller_messages_are_not_mutated(faulty: Any) -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    messages = ({"role": "user", "content": [part, {"type": "text", "text": "hi"}]},)
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        body = plugin.build_body(
            client.context("lmdeploy"),
            Request(messages=messages, extra={"max_pixels": 1000}),
            MODEL,
            stream=False,
        )
    assert body["messages"][0]["content"][0]["image_url"]["max_pixels"] == 1000
    assert part == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


async def test_presence_and_frequency_penalty_dropped_with_one_warning(
    faulty: Any, caplog: pytest.LogCaptureFixture
) -> None:
    faulty.script(
        [
            {"match": {"path": CHAT, "body_contains": "presence_penalty"}, "fault": "status", "status": 418},
            {"match": {"path": CHAT, "body_contains": "frequency_penalty"}, "fault": "status", "status": 418},
        ]
    )
    caplog.set_level(logging.WARNING, logger="imageworks")
    extra = {"presence_penalty": 0.5, "frequency_penalty": 0.2, "top_k": 5}
    async with lmdeploy_client(faulty.base_url, model=MODEL, extra_body={"presence_penalty": 1.0}) as client:
        for _ in range(3):
            result = await client.infer(image_request(extra=extra))
            assert result.text.endswith("A grey cat on a sofa.")
        body = plugin.build_body(client.context("lmdeploy"), image_request(extra=extra), MODEL, stream=False)
    assert "presence_penalty" not in body and "frequency_penalty" not in body
    assert body["top_k"] == 5  # other extras pass through
    warnings = [r for r in caplog.records if "presence_penalty" in r.getMessage()]
    assert len(warnings) == 1
    assert "frequency_penalty" in warnings[0].getMessage()
    assert "repetition_penalty" in warnings[0].getMessage()
    assert all(e["status"] == 200 for e in chats(faulty))


# ---------------------------------------------------------------- settings through the config loader


def test_settings_from_toml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text(
        "[tool.imageworks]\n"
        'backend = "lmdeploy"\n'
        "[tool.imageworks.backends.lmdeploy]\n"
        'base_url = "localhost:23333"\n'
        "max_pixels = 1003520\n"
        "repetition_penalty = 1\n"
        "chat_template_kwargs = { enable_thinking = false }\n"
        'response_format = { type = "regex_schema", regex_schema = "[a-z ]+" }\n'
    )
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__LMDEPLOY__MIN_PIXELS", "3136")
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__LMDEPLOY__SKIP_SPECIAL_TOKENS", "false")
    client = Client.from_config(cwd=tmp_path, user_file=False, allow=["lmdeploy"])
    s = client.settings.backends["lmdeploy"]
    assert isinstance(s, LmdeploySettings)
    assert s.base_url == "http://localhost:23333"
    assert (s.max_pixels, s.min_pixels, s.repetition_penalty) == (1003520, 3136, 1.0)
    assert s.skip_special_tokens is False
    assert s.chat_template_kwargs == {"enable_thinking": False}
    assert s.response_format == {"type": "regex_schema", "regex_schema": "[a-z ]+"}
    assert s.top_k is None and s.seed is None


@pytest.mark.parametrize(
    ("keys", "needle"),
    [
        ({"max_pixels": 0}, "max_pixels"),
        ({"max_pixels": 1000, "min_pixels": 5000}, "min_pixels"),
        ({"min_p": 1.5}, "min_p"),
        ({"top_k": -1}, "top_k"),
        ({"max_pixels": "big"}, "max_pixels"),
        ({"presence_penalty": 0.5}, "presence_penalty"),
    ],
)
def test_bad_settings_are_config_errors(keys: dict[str, Any], needle: str) -> None:
    client = lmdeploy_client("http://localhost:23333", **keys)
    with pytest.raises(ConfigError, match=needle):
        client.config  # noqa: B018


# ---------------------------------------------------------------- models


async def test_no_model_configured_uses_the_base_model_not_an_adapter(faulty: Any) -> None:
    adapters = {
        "object": "list",
        "data": [
            {**MODELS_BODY["data"][0]},
            {**MODELS_BODY["data"][0], "id": "my-lora", "root": "my-lora"},
        ],
    }
    faulty.script([serve("/v1/models", 200, adapters)])
    async with lmdeploy_client(faulty.base_url) as client:
        await client.infer(image_request())
        await client.infer(image_request())
    assert [e["model"] for e in chats(faulty)] == [MODEL, MODEL]
    assert len(faulty.log("/v1/models")) == 1  # discovered once per client


async def test_configured_model_is_sent_and_request_model_is_ignored(faulty: Any) -> None:
    async with lmdeploy_client(faulty.base_url, model="my-lora") as client:
        await client.infer(image_request(model="something-else"))
    assert [e["model"] for e in chats(faulty)] == ["my-lora"]
    assert faulty.log("/v1/models") == []


# ---------------------------------------------------------------- overload and connection refused


async def test_503_and_429_are_retried_until_the_server_answers(faulty: Any) -> None:
    faulty.script(
        [
            {
                "match": {"path": CHAT},
                "fault": "status",
                "status": 503,
                "times": 1,
                "body": {
                    "object": "error",
                    "message": "Service Unavailable",
                    "type": "server_error",
                    "code": 503,
                    "param": None,
                },
            },
            {
                "match": {"path": CHAT},
                "fault": "status",
                "status": 429,
                "times": 1,
                "headers": {"Retry-After": "1"},
                "body": {
                    "object": "error",
                    "message": "Too many requests",
                    "type": "rate_limit",
                    "code": 429,
                },
            },
        ]
    )
    async with lmdeploy_client(faulty.base_url, model=MODEL) as client:
        result = await client.infer(image_request())
    assert result.text.endswith("A grey cat on a sofa.")
    assert [e["status"] for e in chats(faulty)] == [503, 429, 200]
    assert [a.error_type for a in result.attempts] == ["BackendOverloaded", "BackendOverloaded", None]


@pytest.mark.about("wait_for_backend")
async def test_429_carries_retry_after(faulty: Any) -> None:
    faulty.script(
        [
            serve(
                CHAT,
                429,
                {"object": "error", "message": "Too many requests", "type": "rate_limit", "code": 429},
                headers={"Retry-After": "7"},
            )
        ]
    )
    # the plugin's mapping is under test: no outage waiting, so the final error comes out at once
    async with lmdeploy_client(faulty.base_url, model=MODEL, wait_for_backend=0) as client:
        with pytest.raises(BackendOverloaded) as info:
            await client.infer(image_request())
        with pytest.raises(BackendOverloaded):
            await collect(client, image_request())
    assert info.value.retry_after == 7.0
    assert info.value.status == 429


async def test_connection_refused_is_one_line_with_launch_hints() -> None:
    port = free_port()
    async with lmdeploy_client(f"http://127.0.0.1:{port}", model=MODEL) as client:
        with pytest.raises(BackendUnavailable) as info:
            await client.infer(image_request())
    async with lmdeploy_client(f"http://127.0.0.1:{port}", model=MODEL) as client:
        with pytest.raises(BackendUnavailable) as stream_info:
            await collect(client, image_request())
    for err in (info.value, stream_info.value):
        assert "\n" not in err.message
        assert err.message.startswith("lmdeploy backend: cannot connect to")
        assert f"http://127.0.0.1:{port}/v1/chat/completions" in err.message
        assert "down or still loading" in err.message
        assert "lmdeploy serve api_server Qwen/Qwen2-VL-2B-Instruct" in err.hint
        assert "16 GB" in err.hint and "96 GB" in err.hint
        assert "--vision-max-batch-size 8" in err.hint


async def test_connection_refused_stream_after_retries_is_still_one_line() -> None:
    port = free_port()
    async with lmdeploy_client(f"http://127.0.0.1:{port}", model=MODEL) as client:
        with pytest.raises(BackendUnavailable) as info:
            await collect(client, image_request())
    assert "\n" not in info.value.message
    assert "down or still loading" in info.value.message
