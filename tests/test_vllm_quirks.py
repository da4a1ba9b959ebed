"""The vLLM backend against the fault-injecting server, in-process: every vLLM quirk, old and new shapes.

The ``faulty`` server (tests/servers/faulty_openai.py) plays vLLM: its "status"
fault serves the exact health, version, metrics, models and error bodies that
vLLM sends (PROTOCOLS.md), and its request log shows what the plugin sent.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
from PIL import Image
from servers._proc import free_port
from servers.faulty_openai import MockFaulty, transport_for

from imageworks_backend_vllm import GUIDED_FIELDS, VllmBackend, VllmSettings, parse_metrics, plugin
from imageworks_core import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    BackendUnavailable,
    Chunk,
    Client,
    ConfigError,
    PreparedImage,
    Request,
)
from imageworks_core.plugins import BackendRegistry, installed_backend_names

pytestmark = pytest.mark.anyio


@pytest.fixture
def faulty() -> MockFaulty:
    """The fault server in-process (``MockOpenAIServer``): these tests check what is sent and how
    the answers are read, which needs no socket."""
    return MockFaulty()


CHAT = "/v1/chat/completions"
BASE_MODEL = "Qwen/Qwen2-VL-2B-Instruct"


# ------------------------------------------------------------------ helpers


def client(base_url: str, **backend: Any) -> Client:
    """A client on the installed vllm entry point only, no config files, pointed at *base_url*."""
    top = {k: backend.pop(k) for k in ("max_tokens", "temperature", "wait_for_backend") if k in backend}
    return Client(
        backend="vllm",
        overrides={**top, "backends": {"vllm": {"base_url": base_url, **backend}}},
        user_file=False,
        project_file=False,
        allow=["vllm"],
        transport=transport_for(base_url),
    )


def image(fmt: str = "JPEG", color: tuple[int, int, int] = (200, 40, 40)) -> PreparedImage:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, fmt)
    return PreparedImage.from_bytes(buf.getvalue())


def describe(**kw: Any) -> Request:
    return Request(prompt=kw.pop("prompt", "id=item-1 Describe this image."), images=(image(),), **kw)


def status(path: str, code: int, body: Any, **extra: Any) -> dict[str, Any]:
    """A rule serving *body* with *code* on *path*."""
    return {"match": {"path": path}, "fault": "status", "status": code, "body": body, **extra}


def vllm_error(message: str, err_type: str, code: int, *, new: bool) -> dict[str, Any]:
    """vLLM's error body: nested since 0.10.1, flat before."""
    if new:
        return {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    return {"object": "error", "message": message, "type": err_type, "param": None, "code": code}


def models_body(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"object": "list", "data": list(entries)}


def model_entry(model_id: str, parent: str | None = None, max_len: int | None = 8192) -> dict[str, Any]:
    return {
        "id": model_id,
        "object": "model",
        "created": 1_700_000_000,
        "owned_by": "vllm",
        "root": model_id if parent is None else f"/loras/{model_id}",
        "parent": parent,
        "max_model_len": max_len if parent is None else None,
        "permission": [],
    }


def chat_requests(faulty: Any) -> list[dict[str, Any]]:
    return faulty.log(CHAT)


async def collect(c: Client, request: Request) -> list[Chunk]:
    return [chunk async for chunk in c.stream(request)]


# ------------------------------------------------------------------ metadata and discovery


async def test_entry_point_metadata_and_capabilities() -> None:
    assert "vllm" in installed_backend_names()
    registry = BackendRegistry(allow=["vllm"])
    loaded = registry.get("vllm")
    assert loaded.distribution == "imageworks-backend-vllm"
    assert loaded.version == "0.1.0"
    info = loaded.info
    assert info.default_base_url == "http://localhost:8000/v1"
    assert info.settings_cls is VllmSettings
    caps = info.capabilities
    assert (caps.vision, caps.streaming, caps.structured_output, caps.model_switch) == (
        True,
        True,
        True,
        True,
    )
    assert caps.max_images is None  # the server decides (--limit-mm-per-prompt, default 999)
    hints = "\n".join(info.launch_hints)
    assert "16 GB" in hints and "96 GB" in hints
    assert "Qwen/Qwen2-VL-2B-Instruct" in hints and "Qwen/Qwen2.5-VL-7B-Instruct" in hints
    assert isinstance(plugin, VllmBackend)


async def test_default_base_url_and_paths() -> None:
    async with Client(backend="vllm", user_file=False, project_file=False, allow=["vllm"]) as c:
        ctx = c.context("vllm")
        assert ctx.base_url == "http://localhost:8000/v1"
        assert plugin.api(ctx, "chat/completions") == "http://localhost:8000/v1/chat/completions"
        assert plugin.root(ctx, "health") == "http://localhost:8000/health"


@pytest.mark.parametrize("suffix", ["", "/", "/v1", "/v1/"])
async def test_base_url_with_or_without_v1(faulty: Any, suffix: str) -> None:
    async with client(faulty.base_url + suffix) as c:
        report = await c.health()
        result = await c.infer(describe())
    assert report.ready, report
    assert result.text == "[item-1] A grey cat on a sofa."
    paths = [e["path"] for e in faulty.log()]
    assert "/health" in paths and "/v1/models" in paths and CHAT in paths
    assert not any(p.startswith("/v1/v1") for p in paths)


# ------------------------------------------------------------------ health


METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2-VL-2B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2-VL-2B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2-VL-2B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="Qwen/Qwen2-VL-2B-Instruct"} 4.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2-VL-2B-Instruct"} 0.25
vllm:kv_cache_usage_perc{engine="1",model_name="Qwen/Qwen2-VL-2B-Instruct"} 0.75
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="Qwen/Qwen2-VL-2B-Instruct"} 0.0
python_gc_objects_collected_total{generation="0"} 123.0
"""


async def test_health_reads_health_models_lora_version_metrics(faulty: Any) -> None:
    faulty.script(
        [
            status("/health", 200, ""),
            status(
                "/v1/models",
                200,
                models_body(
                    model_entry(BASE_MODEL, max_len=8192), model_entry("captioner", parent=BASE_MODEL)
                ),
            ),
            status("/version", 200, {"version": "0.11.2"}),
            status("/metrics", 200, METRICS),
        ]
    )
    async with client(faulty.v1) as c:
        report = await c.health()
    assert report.reachable and report.ready
    assert report.backend == "vllm"
    assert report.models == (BASE_MODEL, "captioner")  # LoRA adapters count as models
    assert report.max_model_len == 8192
    assert report.version == "0.11.2"
    assert report.metrics == {"running": 5.0, "waiting": 5.0, "kv_cache_usage": 0.75}  # the fullest engine
    assert report.latency > 0
    assert "captioner" in (report.detail or "") and "LoRA" in (report.detail or "")
    assert {e["path"] for e in faulty.log()} == {"/health", "/v1/models", "/version", "/metrics"}


async def test_health_older_cache_metric_name(faulty: Any) -> None:
    old = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.4\nvllm:num_requests_running{model_name="m"} 1\n'
    faulty.script([status("/metrics", 200, old)])
    async with client(faulty.v1) as c:
        report = await c.health()
    assert report.ready
    assert report.metrics == {"running": 1.0, "kv_cache_usage": 0.4}


async def test_health_without_version_or_metrics_is_fine(faulty: Any) -> None:
    """Other servers (and vLLM behind a proxy) may not serve /version or /metrics: 404 is tolerated."""
    faulty.script(
        [
            status("/version", 404, {"detail": "Not Found"}),
            status("/metrics", 404, {"detail": "Not Found"}),
        ]
    )
    async with client(faulty.v1) as c:
        report = await c.health()
    assert report.ready
    assert report.models == ("fake-vlm",)
    assert report.max_model_len == 4096
    assert report.version is None
    assert dict(report.metrics) == {}


async def test_health_version_garbage_is_ignored(faulty: Any) -> None:
    faulty.script([status("/version", 200, "not json"), status("/metrics", 500, "boom")])
    async with client(faulty.v1) as c:
        report = await c.health()
    assert report.ready and report.version is None and dict(report.metrics) == {}


async def test_health_engine_dead_503(faulty: Any) -> None:
    faulty.script([status("/health", 503, "")])
    async with client(faulty.v1) as c:
        report = await c.health()
    assert report.reachable and not report.ready
    assert "503" in (report.detail or "") and "dead" in (report.detail or "")
    assert "vllm serve" in (report.hint or "")


async def test_health_api_key_required(faulty: Any) -> None:
    """--api-key guards /v1/* only: /health 200 + /v1/models 401 is reachable-but-unusable."""
    faulty.script([status("/v1/models", 401, {"error": "Unauthorized"})])
    async with client(faulty.v1) as c:
        report = await c.health()
    assert report.reachable and not report.ready
    assert "not usable" in (report.detail or "") and "--api-key" in (report.detail or "")
    assert "api_key_env" in (report.hint or "")


async def test_health_api_key_sent_and_wrong_key_reported(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_VLLM_KEY", "right-key")
    faulty.script(
        [
            {
                "match": {"path_prefix": "/v1/", "headers": {"Authorization": "Bearer right-key"}},
                "fault": "ok",
            },
            {
                "match": {"path_prefix": "/v1/"},
                "fault": "status",
                "status": 401,
                "body": {"error": "Unauthorized"},
            },
        ]
    )
    async with client(faulty.v1, api_key_env="MY_VLLM_KEY") as c:
        good = await c.health()
        assert (await c.infer(describe())).ok
    assert good.ready, good
    async with client(faulty.v1, api_key="wrong-key") as c:
        bad = await c.health()
        with pytest.raises(BackendRejected) as info:
            await c.infer(describe())
    assert not bad.ready and "refused the API key" in (bad.detail or "")
    assert "api_key_env" in (info.value.hint or "")
    for text in (bad.detail, bad.hint, str(info.value)):
        assert "wrong-key" not in (text or "")


async def test_health_configured_model_not_served(faulty: Any) -> None:
    async with client(faulty.v1, model="Qwen/Qwen2.5-VL-7B-Instruct") as c:
        report = await c.health()
    assert report.reachable and not report.ready
    assert "fake-vlm" in (report.detail or "")
    assert 'model = "fake-vlm"' in (report.hint or "")


async def test_health_refused_names_backend_url_and_launch_lines() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with client(url) as c:
        report = await c.health()
    assert not report.reachable and not report.ready
    detail = report.detail or ""
    assert "vllm" in detail and url.removesuffix("/v1") in detail
    assert "down or still loading" in detail and "\n" not in detail
    assert "16 GB" in (report.hint or "") and "96 GB" in (report.hint or "")


async def test_infer_refused_is_one_clear_line() -> None:
    port = free_port()
    async with client(f"http://127.0.0.1:{port}") as c:
        with pytest.raises(BackendUnavailable) as info:
            await c.infer(describe(model="m"))
    exc = info.value
    assert "\n" not in exc.message
    assert exc.message.startswith("vllm backend: cannot connect to")
    assert f"127.0.0.1:{port}" in exc.message and "down or still loading" in exc.message
    assert "vllm serve Qwen/Qwen2-VL-2B-Instruct" in (exc.hint or "")
    assert "16 GB" in (exc.hint or "") and "96 GB" in (exc.hint or "")


def test_parse_metrics_edge_cases() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="a b}c"} 2 1700000000000\n'  # a brace in a label, a timestamp
        "vllm:num_requests_running 1\n"
        'vllm:num_requests_waiting{model_name="a"} NaN\n'
        "vllm:kv_cache_usage_perc 0.1\n"
        "vllm:gpu_cache_usage_perc 0.9\n"  # the new name wins
        "vllm:num_requests_waiting_other 7\n"
        "garbage line\n"
    )
    assert parse_metrics(text) == {"running": 3.0, "kv_cache_usage": 0.1}
    assert parse_metrics("") == {}


# ------------------------------------------------------------------ what is sent


async def test_max_tokens_always_sent_and_data_url_mime(faulty: Any) -> None:
    faulty.script(
        [
            {"match": {"body_contains": "data:image/png;base64,"}, "fault": "ok", "content": "png"},
            {"match": {"body_contains": "data:image/jpeg;base64,"}, "fault": "ok", "content": "jpeg"},
        ]
    )
    async with client(faulty.v1, max_tokens=77) as c:
        png = await c.infer(Request(prompt="x", images=(image("PNG"),)))
        jpeg = await c.infer(Request(prompt="x", images=(image("JPEG"),)))
        ctx = c.context("vllm")
        body = plugin.build_body(ctx, Request(prompt="x"), "fake-vlm", stream=False)
    assert (png.text, jpeg.text) == ("png", "jpeg")
    assert body["max_tokens"] == 77
    faulty.reset()
    faulty.script(
        [{"match": {"body_contains": '"max_tokens": 512'}, "fault": "ok", "content": "default cap sent"}]
    )
    async with client(faulty.v1) as c:  # the client default (512) when nothing is configured
        assert (await c.infer(describe())).text == "default cap sent"
    (entry,) = chat_requests(faulty)
    assert entry["model"] == "fake-vlm" and entry["stream"] is False


async def test_infer_reads_usage_and_finish_reason(faulty: Any) -> None:
    async with client(faulty.v1) as c:
        result = await c.infer(describe())
    assert result.finish_reason == "stop"
    assert result.model == "fake-vlm"
    assert result.usage.prompt_tokens == 8 + 64  # the fake server counts 8 text tokens and 64 per image
    assert result.usage.completion_tokens == 7  # one per word of its answer
    assert result.usage.total_tokens == 72 + 7


async def test_stream_asks_for_usage_and_reads_final_usage_chunk(faulty: Any) -> None:
    faulty.script(
        [
            {
                "match": {"stream": True, "body_contains": '"stream_options": {"include_usage": true}'},
                "fault": "ok",
            },
            status(
                CHAT, 400, vllm_error("include_usage was not asked for", "BadRequestError", 400, new=True)
            ),
        ]
    )
    async with client(faulty.v1) as c:
        chunks = await collect(c, describe())
    text = "".join(ch.text for ch in chunks)
    assert text == "[item-1] A grey cat on a sofa."
    assert [ch.finish_reason for ch in chunks if ch.finish_reason] == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 72  # the `choices: []` chunk
    assert chunks[-1].text == ""
    (entry,) = chat_requests(faulty)
    assert entry["stream"] is True


@pytest.mark.parametrize("code", [400, 500])
async def test_stream_inband_error_is_raised_not_text(faulty: Any, code: int) -> None:
    message = "At most 2 image(s) may be provided in one prompt." if code == 400 else "engine failure"
    faulty.script([{"match": {"path": CHAT}, "fault": "sse_inband_error", "message": message, "code": code}])
    got: list[str] = []
    async with client(faulty.v1) as c:
        with pytest.raises(BackendError) as info:
            async for chunk in c.stream(describe()):
                got.append(chunk.text)
    assert message not in "".join(got)
    assert message in str(info.value)
    if code == 400:
        assert isinstance(info.value, BackendRejected)
        assert "inside the stream" in info.value.message
        assert "--limit-mm-per-prompt" in (info.value.hint or "")
    else:
        assert isinstance(info.value, BackendProtocolError)


def _sse(*events: Any) -> str:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events)


_ROLE_CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "model": "fake-vlm",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
}


@pytest.mark.parametrize(
    ("code", "expected"), [(400, BackendRejected), (503, BackendOverloaded), (500, BackendServerError)]
)
@pytest.mark.about("wait_for_backend")
async def test_stream_inband_error_old_flat_shape(
    faulty: Any, code: int, expected: type[BackendError]
) -> None:
    """Before 0.10.1 vLLM streamed the flat shape: its ``code`` decides the error, never silent text."""
    message = "This model's maximum context length is 4096 tokens." if code == 400 else f"failure {code}"
    flat = vllm_error(message, "BadRequestError", code, new=False)
    faulty.script([status(CHAT, 200, _sse(_ROLE_CHUNK, flat, "[DONE]"), content_type="text/event-stream")])
    # the plugin's mapping is under test: no outage waiting, so the final error comes out at once
    async with client(faulty.v1, wait_for_backend=0) as c:
        with pytest.raises(BackendError) as info:
            await collect(c, describe())
    exc = info.value
    assert type(exc) is expected, repr(exc)
    assert message in exc.message and "inside the stream" in exc.message
    if code == 400:
        assert "--max-model-len" in (exc.hint or "")
        assert len(chat_requests(faulty)) == 1  # the input's fault: not retried
    else:
        assert len(chat_requests(faulty)) == 4  # retried like any server-side failure


# ------------------------------------------------------------------ which model


async def test_no_model_configured_one_served_is_used(faulty: Any) -> None:
    async with client(faulty.v1) as c:
        await c.infer(describe())
        await c.infer(describe())
    assert [e["model"] for e in chat_requests(faulty)] == ["fake-vlm", "fake-vlm"]
    assert len(faulty.log("/v1/models")) == 1  # discovered once per client


async def test_no_model_configured_base_plus_lora_uses_base(faulty: Any) -> None:
    faulty.script(
        [
            status(
                "/v1/models", 200, models_body(model_entry(BASE_MODEL), model_entry("captioner", BASE_MODEL))
            )
        ]
    )
    async with client(faulty.v1) as c:
        await c.infer(describe())
        await c.infer(describe(model="captioner"))  # a LoRA adapter is chosen by naming it
    assert [e["model"] for e in chat_requests(faulty)] == [BASE_MODEL, "captioner"]


async def test_no_model_configured_several_served_is_rejected(faulty: Any) -> None:
    faulty.script(
        [
            status(
                "/v1/models", 200, models_body(model_entry(BASE_MODEL), model_entry("OpenGVLab/InternVL3-2B"))
            )
        ]
    )
    async with client(faulty.v1) as c:
        with pytest.raises(BackendRejected) as info:
            await c.infer(describe())
    assert BASE_MODEL in info.value.message and "OpenGVLab/InternVL3-2B" in info.value.message
    assert "backends.vllm.model" in (info.value.hint or "") and "Client(model=...)" in (
        info.value.hint or ""
    )  # the CLI shows its flag instead
    assert chat_requests(faulty) == []


# ------------------------------------------------------------------ vLLM options


FULL = {
    "top_k": 20,
    "min_p": 0.05,
    "repetition_penalty": 1.1,
    "seed": 7,
    "min_tokens": 2,
    "chat_template_kwargs": {"enable_thinking": False},
    "response_format": {"type": "json_object"},
    "structured_outputs": {"json": {"type": "object"}},
    "mm_processor_kwargs": {"min_pixels": 3136},
    "max_pixels": 1003520,
}
VLLM_KEYS = set(FULL) - {"max_pixels"}


async def test_options_sent_only_when_set(faulty: Any) -> None:
    async with client(faulty.v1) as c:
        bare = plugin.build_body(c.context("vllm"), describe(), "fake-vlm", stream=False)
    assert not (VLLM_KEYS | {"max_pixels"} | set(GUIDED_FIELDS)) & set(bare)
    async with client(faulty.v1, **FULL) as c:
        full = plugin.build_body(c.context("vllm"), describe(), "fake-vlm", stream=True)
    for key in VLLM_KEYS - {"mm_processor_kwargs"}:
        assert full[key] == FULL[key], key
    assert full["mm_processor_kwargs"] == {"min_pixels": 3136, "max_pixels": 1003520}
    assert "max_pixels" not in full
    assert full["stream_options"] == {"include_usage": True} and full["max_tokens"] == 512


async def test_options_reach_the_server(faulty: Any) -> None:
    faulty.script(
        [
            {
                "match": {"body_contains": '"mm_processor_kwargs": {"max_pixels": 1003520}'},
                "fault": "ok",
                "content": "budget sent",
            }
        ]
    )
    async with client(faulty.v1, max_pixels=1003520, top_k=20) as c:
        assert (await c.infer(describe())).text == "budget sent"


async def test_request_extra_wins_and_mm_kwargs_merge(faulty: Any) -> None:
    async with client(
        faulty.v1, top_k=20, max_pixels=1000, mm_processor_kwargs={"min_pixels": 10}, extra_body={"seed": 1}
    ) as c:
        ctx = c.context("vllm")
        body = plugin.build_body(
            ctx, describe(extra={"top_k": 5, "mm_processor_kwargs": {"max_pixels": 500}}), "m", stream=False
        )
        shortcut = plugin.build_body(ctx, describe(extra={"max_pixels": 200}), "m", stream=False)
    assert body["top_k"] == 5 and body["seed"] == 1
    assert body["mm_processor_kwargs"] == {"min_pixels": 10, "max_pixels": 500}
    assert shortcut["mm_processor_kwargs"] == {"min_pixels": 10, "max_pixels": 200}
    assert "max_pixels" not in shortcut


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("guided_json", {"type": "object", "properties": {"caption": {"type": "string"}}}),
        ("guided_regex", r"\d{4}"),
        ("guided_choice", ["indoor", "outdoor"]),
        ("guided_grammar", 'root ::= "yes" | "no"'),
    ],
)
async def test_guided_fields_become_structured_outputs(
    faulty: Any, caplog: pytest.LogCaptureFixture, field: str, value: Any
) -> None:
    """vLLM >= 0.12 silently ignores guided_*: they must never be sent, only their translation."""
    kind = GUIDED_FIELDS[field]
    faulty.script(
        [
            {"match": {"body_contains": '"guided_'}, "fault": "status", "status": 400},
            {
                "match": {"body_contains": f'"structured_outputs": {{"{kind}": '},
                "fault": "ok",
                "content": "constrained",
            },
            {"match": {"path": CHAT}, "fault": "status", "status": 400},
        ]
    )
    caplog.set_level(logging.WARNING, logger="imageworks")
    async with client(faulty.v1) as c:
        first = await c.infer(describe(extra={field: value}))
        second = await c.infer(describe(extra={field: value}))
        body = plugin.build_body(c.context("vllm"), describe(extra={field: value}), "m", stream=False)
    assert (first.text, second.text) == ("constrained", "constrained")
    assert body["structured_outputs"] == {kind: value}
    assert field not in body
    warnings = [r for r in caplog.records if field in r.getMessage()]
    assert len(warnings) == 1  # once per client, not per request
    assert "0.12" in warnings[0].getMessage() and "structured_outputs" in warnings[0].getMessage()


async def test_guided_fields_in_extra_body_and_precedence(faulty: Any) -> None:
    async with client(
        faulty.v1,
        extra_body={"guided_regex": r"\d+", "guided_decoding_backend": "xgrammar"},
    ) as c:
        ctx = c.context("vllm")
        from_config = plugin.build_body(ctx, describe(), "m", stream=False)
        per_request = plugin.build_body(ctx, describe(extra={"guided_choice": ["a", "b"]}), "m", stream=False)
        explicit = plugin.build_body(
            ctx, describe(extra={"structured_outputs": {"json": {}}, "guided_regex": "x"}), "m", stream=False
        )
    assert from_config["structured_outputs"] == {"regex": r"\d+"}
    assert not {k for k in from_config if k.startswith("guided_")}
    assert per_request["structured_outputs"] == {"choice": ["a", "b"]}  # the request's constraint wins
    assert explicit["structured_outputs"] == {"json": {}}  # an explicit constraint wins inside a layer
    async with client(faulty.v1, structured_outputs={"json": {"type": "object"}}) as c:
        over = plugin.build_body(c.context("vllm"), describe(extra={"guided_regex": "y"}), "m", stream=False)
    assert over["structured_outputs"] == {"regex": "y"}


async def test_settings_from_config_layers_are_validated() -> None:
    env = {
        "IMAGEWORKS_BACKENDS__VLLM__MAX_PIXELS": "1003520",
        "IMAGEWORKS_BACKENDS__VLLM__MIN_P": "0.05",
        "IMAGEWORKS_BACKENDS__VLLM__STRUCTURED_OUTPUTS": '{"regex": "\\\\d+"}',
    }
    c = Client(backend="vllm", env=env, user_file=False, project_file=False, allow=["vllm"])
    s = c.settings.backend_settings("vllm")
    assert isinstance(s, VllmSettings)
    assert (s.max_pixels, s.min_p, s.structured_outputs) == (1003520, 0.05, {"regex": "\\d+"})
    for bad in ({"min_p": 2.0}, {"top_k": "many"}, {"max_pixels": 0}, {"guided_json": {}}):
        with pytest.raises(ConfigError):
            _ = client("http://localhost:8000", **bad).settings


# ------------------------------------------------------------------ errors, both body shapes

ERRORS = {
    "unknown_model": (404, "The model `nope/missing` does not exist.", "NotFoundError"),
    "context_too_long": (
        400,
        "This model's maximum context length is 4096 tokens. However, you requested 4608 tokens "
        "(4096 in the messages, 512 in the completion). "
        "Please reduce the length of the messages or completion.",
        "BadRequestError",
    ),
    "too_many_images": (400, "At most 2 image(s) may be provided in one prompt.", "BadRequestError"),
    "undecodable_image": (
        400,
        "cannot identify image file <_io.BytesIO object at 0x7f3a2c1b9e40>",
        "BadRequestError",
    ),
    "bad_remote_image": (
        422,
        "Failed to fetch image from URL https://example.invalid/cat.jpg: cannot connect",
        "UnprocessableEntityError",
    ),
}
HINTS = {
    "unknown_model": "served: fake-vlm",
    "context_too_long": "--max-model-len",
    "too_many_images": "--limit-mm-per-prompt",
    "undecodable_image": "could not decode an image",
    "bad_remote_image": "could not fetch an image URL",
}


@pytest.mark.parametrize("mode", ["infer", "stream"])
@pytest.mark.parametrize("new", [True, False], ids=["nested", "flat"])
@pytest.mark.parametrize("case", list(ERRORS))
async def test_rejections_both_shapes_with_hints(faulty: Any, case: str, new: bool, mode: str) -> None:
    code, message, err_type = ERRORS[case]
    faulty.script([status(CHAT, code, vllm_error(message, err_type, code, new=new))])
    model = "nope/missing" if case == "unknown_model" else "fake-vlm"
    async with client(faulty.v1) as c:
        with pytest.raises(BackendRejected) as info:
            if mode == "infer":
                await c.infer(describe(model=model))
            else:
                await collect(c, describe(model=model))
    exc = info.value
    assert exc.status == code and exc.backend == "vllm"
    assert message in exc.message and f"HTTP {code}" in exc.message and faulty.v1 in exc.message
    assert HINTS[case] in (exc.hint or ""), exc.hint
    assert HINTS[case] in str(exc)
    assert len(chat_requests(faulty)) == 1  # a rejection ends the item: no retry, no duplicate


@pytest.mark.parametrize("new", [True, False], ids=["nested", "flat"])
@pytest.mark.about("wait_for_backend")
async def test_busy_503_is_overloaded_with_retry_after(faulty: Any, new: bool) -> None:
    busy = vllm_error(
        "The server is busy; too many queued requests.", "ServiceUnavailableError", 503, new=new
    )
    faulty.script([status(CHAT, 503, busy, headers={"Retry-After": "3"})])
    # the plugin's mapping is under test: no outage waiting (a server busy for ever is given up on
    # after wait_for_backend; see test_dispatch_unit), so the final error comes out at once
    async with client(faulty.v1, wait_for_backend=0) as c:
        with pytest.raises(BackendOverloaded) as info:
            await c.infer(describe())
    assert info.value.retry_after == 3.0 and info.value.status == 503
    assert len(chat_requests(faulty)) == 4  # retried (max_attempts), honouring Retry-After


async def test_busy_503_then_served(faulty: Any) -> None:
    busy = vllm_error("busy", "ServiceUnavailableError", 503, new=True)
    faulty.script([{**status(CHAT, 503, busy, headers={"Retry-After": "1"}), "times": 1}])
    async with client(faulty.v1) as c:
        result = await c.infer(describe())
    assert result.ok and len(result.attempts) == 2
    assert result.attempts[0].error_type == "BackendOverloaded"
    assert [e["status"] for e in chat_requests(faulty)] == [503, 200]


async def test_unknown_model_forgets_a_discovered_model(faulty: Any) -> None:
    """The server restarted with another model: the cached discovery is dropped, the next item works."""
    async with client(faulty.v1) as c:
        assert (await c.infer(describe())).model == "fake-vlm"
        faulty.script(
            [
                {
                    **status(
                        CHAT,
                        404,
                        vllm_error("The model `fake-vlm` does not exist.", "NotFoundError", 404, new=True),
                    ),
                    "match": {"path": CHAT, "model": "fake-vlm"},
                },
                status("/v1/models", 200, models_body(model_entry(BASE_MODEL))),
            ]
        )
        with pytest.raises(BackendRejected) as info:
            await c.infer(describe())
        assert BASE_MODEL in (info.value.hint or "")
        assert (await c.infer(describe())).model == BASE_MODEL
    assert [e["model"] for e in chat_requests(faulty)] == ["fake-vlm", "fake-vlm", BASE_MODEL]
