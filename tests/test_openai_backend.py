"""The generic ``openai`` backend shipped with the core: presets, ``/v1`` handling, API keys.

Unit-level behaviour runs against the ``faulty`` server; the last group runs
against a real OpenAI-compatible VLM server (``transformers serve``).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from servers._proc import free_port
from servers.recording_proxy import recording_proxy

from imageworks_core import (
    BackendRejected,
    BackendSettings,
    BackendUnavailable,
    Client,
    ConfigError,
    PluginError,
    PreparedImage,
    Request,
)
from imageworks_core.backends.openai import PRESETS, OpenAISettings, plugin

SECRET = "sk-test-9f8e7d6c5b4a-DO-NOT-PRINT"
KEY_ENV = "IW_TEST_OPENAI_KEY"
MAX_TOKENS = 12


def jpeg(color: tuple[int, int, int] = (40, 90, 200), size: tuple[int, int] = (80, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def image_request(color: tuple[int, int, int] = (40, 90, 200), **kw: Any) -> Request:
    kw.setdefault("max_tokens", MAX_TOKENS)
    return Request(prompt="Describe the colours.", images=(PreparedImage.from_bytes(jpeg(color)),), **kw)


def openai_client(*, retry: dict[str, Any] | None = None, **keys: Any) -> Client:
    overrides: dict[str, Any] = {"max_tokens": MAX_TOKENS, "backends": {"openai": keys}}
    if retry:
        overrides["retry"] = retry
    return Client(
        backend="openai", overrides=overrides, user_file=False, project_file=False, allow=["openai"]
    )


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize(
    ("preset", "url", "key_env"),
    [
        ("ollama", "http://localhost:11434/v1", None),
        ("llamacpp", "http://localhost:8080/v1", None),
        ("lmstudio", "http://localhost:1234/v1", None),
        ("koboldcpp", "http://localhost:5001/v1", None),
        ("textgen-webui", "http://localhost:5000/v1", None),
        ("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
        ("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        ("gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
        ("dashscope", "https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY"),
        ("anthropic", "https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
        ("chutes", "https://llm.chutes.ai/v1", "CHUTES_API_KEY"),
        ("nanogpt", "https://nano-gpt.com/api/v1", "NANOGPT_API_KEY"),
        ("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    ],
)
def test_preset_fills_base_url_and_key_env(preset: str, url: str, key_env: str | None) -> None:
    settings = openai_client(preset=preset).settings.backends["openai"]
    assert isinstance(settings, OpenAISettings)
    assert settings.base_url == url
    assert settings.api_key_env == key_env


def test_every_preset_is_covered() -> None:
    assert len(PRESETS) == 13


def test_the_triton_openai_preset_points_to_the_triton_backend() -> None:
    """Triton's OpenAI frontend has one implementation: the triton plugin's mode = "openai"."""
    with pytest.raises(ConfigError) as info:
        openai_client(preset="triton-openai").settings  # noqa: B018
    text = str(info.value) + (info.value.hint or "")
    assert 'backends.triton.mode = "openai"' in text, text


def test_explicit_values_win_over_the_preset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.imageworks]\nbackend = "openai"\n'
        '[tool.imageworks.backends.openai]\npreset = "openrouter"\napi_key_env = "MY_ROUTER_KEY"\n'
    )
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__OPENAI__BASE_URL", "http://gpu-box:4000/api/v1/")
    settings = Client.from_config(cwd=tmp_path, user_file=False, allow=["openai"]).settings.backends["openai"]
    assert settings.preset == "openrouter"
    assert settings.base_url == "http://gpu-box:4000/api/v1"
    assert settings.api_key_env == "MY_ROUTER_KEY"


def test_unknown_preset_is_a_config_error_naming_the_presets() -> None:
    client = openai_client(preset="olama")
    with pytest.raises(ConfigError) as info:
        client.config  # noqa: B018
    text = str(info.value)
    assert "'olama'" in text
    for name in PRESETS:
        assert name in text


def test_unknown_preset_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__OPENAI__PRESET", "vllm")
    with pytest.raises(ConfigError, match="known presets: anthropic, chutes, dashscope, gemini"):
        Client(backend="openai", user_file=False, project_file=False, allow=["openai"]).config  # noqa: B018


# ---------------------------------------------------------------- /v1 handling


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("base_url", "api"),
    [
        ("http://localhost:11434", "http://localhost:11434/v1"),  # Ollama root: /v1 added
        ("http://localhost:11434/", "http://localhost:11434/v1"),
        ("http://localhost:11434/v1", "http://localhost:11434/v1"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api/v1"),
        (
            "https://generativelanguage.googleapis.com/v1beta/openai",
            "https://generativelanguage.googleapis.com/v1beta/openai",
        ),
        (
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
            "https://dashscope-intl.aliyuncs.com/compatible-mode/v1",
        ),
    ],
)
async def test_api_base(base_url: str, api: str) -> None:
    async with openai_client(base_url=base_url) as client:
        ctx = client.context("openai")
        assert plugin.api(ctx, "chat/completions") == f"{api}/chat/completions"
        assert plugin.api(ctx, "models") == f"{api}/models"


@pytest.mark.anyio
async def test_preset_urls_resolve_to_their_api_base() -> None:
    async with openai_client(preset="gemini") as client:
        ctx = client.context("openai")
        assert plugin.api(ctx, "chat/completions") == (
            "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions"
        )
    async with openai_client(preset="ollama") as client:
        assert plugin.api(client.context("openai"), "models") == "http://localhost:11434/v1/models"


@pytest.mark.anyio
async def test_server_root_gets_v1_on_the_wire(faulty: Any) -> None:
    async with openai_client(base_url=faulty.base_url) as client:
        result = await client.infer(image_request())
    assert result.text.endswith("A grey cat on a sofa.")
    assert [e["path"] for e in faulty.log()] == ["/v1/models", "/v1/chat/completions"]


@pytest.mark.anyio
async def test_a_path_that_is_not_v1_is_kept_on_the_wire(faulty: Any) -> None:
    models = {"object": "list", "data": [{"id": "router/vlm", "object": "model", "owned_by": "router"}]}
    completion = {
        "id": "gen-1",
        "object": "chat.completion",
        "created": 1735689600,
        "model": "router/vlm",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "kept"}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }
    faulty.script(
        [
            {"match": {"path": "/v1beta/openai/models"}, "fault": "status", "status": 200, "body": models},
            {
                "match": {"path": "/v1beta/openai/chat/completions"},
                "fault": "status",
                "status": 200,
                "body": completion,
            },
        ],
        default={"fault": "status", "status": 404, "body": {"error": {"message": "wrong path"}}},
    )
    async with openai_client(base_url=faulty.base_url + "/v1beta/openai") as client:
        result = await client.infer(image_request())
    assert result.text == "kept"
    assert result.model == "router/vlm"
    assert [e["path"] for e in faulty.log()] == ["/v1beta/openai/models", "/v1beta/openai/chat/completions"]


# ---------------------------------------------------------------- API keys


def _key_rules(content: str = "key ok") -> list[dict[str, Any]]:
    return [{"match": {"headers": {"Authorization": f"Bearer {SECRET}"}}, "fault": "ok", "content": content}]


_NO_KEY = {
    "fault": "status",
    "status": 401,
    "body": {"error": {"message": "Missing or invalid bearer token", "type": "invalid_request_error"}},
}


@pytest.mark.anyio
async def test_api_key_is_sent_as_bearer_from_the_env_var(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, SECRET)
    faulty.script(_key_rules(), default=_NO_KEY)
    async with openai_client(base_url=faulty.base_url, api_key_env=KEY_ENV) as client:
        result = await client.infer(image_request())
        chunks = [c async for c in client.stream(image_request())]
        report = await client.health()
    assert result.text == "key ok"
    assert "".join(c.text for c in chunks) == "key ok"
    assert report.ready
    log = faulty.log()
    assert len(log) >= 3
    assert all(e["rule"] == 0 and e["status"] == 200 for e in log)  # every request carried the key


@pytest.mark.anyio
async def test_preset_key_env_is_used(faulty: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENROUTER_API_KEY", SECRET)
    faulty.script(_key_rules("router ok"), default=_NO_KEY)
    async with openai_client(preset="openrouter", base_url=faulty.v1) as client:
        result = await client.infer(image_request())
    assert result.text == "router ok"


@pytest.mark.anyio
async def test_missing_key_is_a_rejection_with_a_hint(faulty: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    faulty.script(_key_rules(), default=_NO_KEY)
    async with openai_client(base_url=faulty.base_url, api_key_env=KEY_ENV, model="m") as client:
        with pytest.raises(BackendRejected) as info:
            await client.infer(image_request())
    assert info.value.status == 401
    assert "Missing or invalid bearer token" in info.value.message
    assert "api_key_env" in info.value.hint
    assert len(faulty.log()) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["api_key_env", "api_key"])
async def test_the_key_never_shows_in_repr_errors_or_logs(
    faulty: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, how: str
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv(KEY_ENV, SECRET)
    key = {"api_key_env": KEY_ENV} if how == "api_key_env" else {"api_key": SECRET}
    seen: list[str] = []
    # the server rejects everything: errors, attempts and logs all pass through with the key set
    faulty.script([], default=_NO_KEY)
    async with openai_client(base_url=faulty.base_url, model="m", **key) as client:
        ctx = client.context("openai")
        seen += [repr(client), repr(client.settings), repr(ctx), repr(ctx.settings), str(ctx.settings)]
        seen += [repr(client.config.rows()), repr(client.config.sources)]
        with pytest.raises(BackendRejected) as info:
            await client.infer(image_request())
        seen += [str(info.value), repr(info.value), info.value.message, str(info.value.hint)]
        with pytest.raises(BackendRejected) as stream_info:
            _ = [c async for c in client.stream(image_request())]
        seen += [str(stream_info.value), repr(stream_info.value)]
        seen.append(repr(await client.health()))
        async with client.map([jpeg()], prompt="Describe") as results:
            seen += [repr(r) + repr(r.attempts) async for r in results]
    port = free_port()  # and a connection error, with the key in the headers
    async with openai_client(base_url=f"http://127.0.0.1:{port}", model="m", **key) as c:
        with pytest.raises(BackendUnavailable) as down:
            await c.infer(image_request())
        seen += [str(down.value), repr(down.value)]
    seen.append(caplog.text)
    seen += [repr(r.__dict__) for r in caplog.records]
    assert any("Missing or invalid bearer token" in s for s in seen)  # the errors did happen
    leaks = [s for s in seen if SECRET in s]
    assert leaks == []
    if how == "api_key":
        assert "***" in repr(client.settings)


# ---------------------------------------------------------------- against a real server


def real_client(server: Any, **keys: Any) -> Client:
    return openai_client(base_url=server.base_url, **keys)


@pytest.mark.anyio
@pytest.mark.server
async def test_real_health(hf_server: Any) -> None:
    async with real_client(hf_server) as client:
        report = await client.health()
    assert report.reachable and report.ready
    assert hf_server.model_id in report.models
    assert report.version is None


@pytest.mark.anyio
@pytest.mark.server
async def test_real_infer_with_an_image(hf_server: Any) -> None:
    async with real_client(hf_server) as client:
        result = await client.infer(image_request())
    assert result.ok and result.text.strip()
    assert result.backend == "openai"
    assert result.model == f"{hf_server.model_id}@main"
    assert result.usage.completion_tokens == MAX_TOKENS
    assert result.usage.prompt_tokens and result.usage.prompt_tokens > 16


@pytest.mark.anyio
@pytest.mark.server
async def test_real_stream(hf_server: Any) -> None:
    """transformers serve ends its stream without ``[DONE]``: the finish chunk is enough."""
    async with (
        recording_proxy(hf_server.base_url) as server,
        openai_client(base_url=server.url) as client,
    ):
        whole = await client.infer(image_request())
        chunks = [c async for c in client.stream(image_request())]
    assert "".join(c.text for c in chunks) == whole.text
    # every text event the server sent, one chunk each (the server joins the tokens of a
    # reader that fell behind, so it decides the count)
    assert [c.text for c in chunks if c.text] == server.stream_texts() != []
    assert chunks[-1].finish_reason == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == MAX_TOKENS


@pytest.mark.anyio
@pytest.mark.server
async def test_real_unknown_model(hf_server: Any) -> None:
    async with real_client(hf_server) as client:
        with pytest.raises(BackendRejected) as info:
            await client.infer(image_request(model="no/such-model"))
        ok = await client.infer(image_request())  # the configured (discovered) model still works
    err = info.value
    assert err.status == 400
    assert "no/such-model" in err.message
    assert err.backend == "openai"
    assert ok.ok


@pytest.mark.anyio
@pytest.mark.server
async def test_real_sixteen_concurrent_requests(hf_server: Any) -> None:
    colours = [((i * 61) % 256, (i * 17) % 256, (i * 113) % 256) for i in range(16)]
    results: dict[int, Any] = {}
    async with real_client(hf_server, concurrency=16) as client:

        async def one(i: int) -> None:
            results[i] = await client.infer(image_request(colours[i], id=f"req-{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
    assert sorted(results) == list(range(16))
    assert all(r.ok and r.text.strip() and r.id == f"req-{i}" for i, r in results.items())


@pytest.mark.anyio
async def test_settings_as_gives_the_plugin_its_own_settings_class() -> None:
    async with openai_client(preset="ollama") as client:
        ctx = client.context("openai")
        assert ctx.settings_as(OpenAISettings) is ctx.settings
        with pytest.raises(PluginError, match="settings are OpenAISettings, not TransformersLike") as info:
            ctx.settings_as(TransformersLike)
        assert info.value.plugin == "openai"
        assert "settings_cls=TransformersLike" in (info.value.hint or "")


class TransformersLike(BackendSettings):
    """A settings class the openai backend does not use."""
