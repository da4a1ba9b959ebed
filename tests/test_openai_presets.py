"""Hosted-service presets of the ``openai`` backend: each quirk handled, against the fault-injecting server.

The faulty server plays the service: it answers the way the service's docs say
it answers a request with the quirk unhandled (Mistral: HTTP 422
``extra_forbidden`` for a field its schema lacks), so a test passes only when
the quirk is handled on the wire.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import attrs
import pytest
from PIL import Image

from imageworks_core import BackendRejected, Client, PreparedImage, Request
from imageworks_core.backends.openai import MB, PRESETS, QUIRKS
from imageworks_core.backends.openai import plugin as openai_plugin
from imageworks_core.testing import MockRequest, MockResponse, MockTransport

CHAT = "/v1/chat/completions"
MODEL = "fake-vlm"


def _jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (90, 120, 30)).save(buf, "JPEG")
    return buf.getvalue()


def _image(**kw: Any) -> PreparedImage:
    return attrs.evolve(PreparedImage.from_bytes(_jpeg()), **kw)


def _client(preset: str, base_url: str, **keys: Any) -> Client:
    settings = {"preset": preset, "base_url": base_url, "model": MODEL, **keys}
    return Client(
        backend="openai",
        overrides={"max_tokens": 16, "backends": {"openai": settings}},
        user_file=False,
        project_file=False,
        allow=["openai"],
    )


def _mistral_422(field: str) -> dict[str, Any]:
    """What Mistral answers to a field its request schema does not have (its docs' error shape)."""
    body = {
        "object": "error",
        "message": {
            "detail": [
                {"type": "extra_forbidden", "loc": ["body", field], "msg": "Extra inputs are not permitted"}
            ]
        },
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    return {
        "match": {"path": CHAT, "body_contains": f'"{field}":'},
        "fault": "status",
        "status": 422,
        "body": body,
    }


def test_every_hosted_preset_has_a_key_variable_and_https() -> None:
    for name in ("anthropic", "chutes", "nanogpt", "mistral", "openai", "openrouter", "gemini", "dashscope"):
        url, key_env = PRESETS[name]
        assert url.startswith("https://") and key_env and key_env.endswith("_API_KEY"), name
    assert set(QUIRKS) <= set(PRESETS)


@pytest.mark.anyio
async def test_mistral_unsupported_fields_are_not_sent(faulty: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="imageworks")
    faulty.script([_mistral_422(f) for f in ("stream_options", "seed", "max_completion_tokens", "user")])
    extra = {"seed": 7, "max_completion_tokens": 12, "user": "me"}
    async with _client("mistral", faulty.base_url) as client:
        result = await client.infer(Request(prompt="hi", images=(_image(),), extra=extra))
        assert result.text.endswith("A grey cat on a sofa.")
        chunks = [c async for c in client.stream(Request(prompt="hi", extra=extra))]
        assert chunks[-1].finish_reason == "stop"
        body = openai_plugin.build_body(
            client.context("openai"), Request(prompt="hi", extra=extra), MODEL, stream=True
        )
    assert body["random_seed"] == 7 and body["max_tokens"] == 12 and body["stream"] is True
    assert not {"seed", "max_completion_tokens", "user", "stream_options"} & set(body)
    assert [e["status"] for e in faulty.log(CHAT)] == [200, 200]
    warned = [r.getMessage() for r in caplog.records if "not sending" in r.getMessage()]
    assert len(warned) == 2 and "user" in warned[0] and "stream_options" in warned[1], warned


@pytest.mark.anyio
async def test_without_the_preset_mistral_would_refuse_the_body(faulty: Any) -> None:
    """The same server, the generic backend without the preset: the 422 comes back (the test can fail)."""
    faulty.script([_mistral_422("stream_options")])
    overrides = {"backends": {"openai": {"base_url": faulty.base_url, "model": MODEL}}}
    async with Client(
        backend="openai", overrides=overrides, user_file=False, project_file=False, allow=["openai"]
    ) as client:
        with pytest.raises(BackendRejected) as excinfo:
            _ = [c async for c in client.stream(Request(prompt="hi"))]
    assert "extra_forbidden" in str(excinfo.value) or "Extra inputs" in str(excinfo.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("preset", "images", "words"),
    [
        ("mistral", 9, ("at most 8 images", "got 9")),
        ("mistral", 1, ("at most 10000 pixels",)),
        ("anthropic", 1, ("at most 8000 pixels",)),
        ("anthropic", 21, ("at most 2000 pixels", "more than 20 images")),
        ("nanogpt", 1, ("image/gif", "image/webp")),
        ("anthropic", 1, ("MB as base64", "at most 5 MB")),
    ],
)
async def test_image_limits_are_refused_before_sending(
    faulty: Any, preset: str, images: int, words: tuple[str, ...]
) -> None:
    if words[0] == "at most 10000 pixels":
        image = _image(width=12000, height=800)
    elif words[0] == "at most 8000 pixels":
        image = _image(width=8001, height=600)
    elif words[0] == "at most 2000 pixels":
        image = _image(width=2400, height=1600)
    elif words[0] == "image/gif":
        image = _image(mime="image/gif")
    else:
        image = _image(data=b"\xff" * (4 * MB), width=100, height=100)  # 5.3 MB as base64
    async with _client(preset, faulty.base_url) as client:
        with pytest.raises(BackendRejected) as excinfo:
            await client.infer(Request(prompt="hi", images=(image,) * images))
    text = str(excinfo.value)
    assert all(w in text for w in words), text
    assert f"preset {preset}" in text and excinfo.value.hint
    assert faulty.log(CHAT) == []  # nothing sent, nothing retried


@pytest.mark.anyio
async def test_images_within_the_limits_are_sent(faulty: Any) -> None:
    async with _client("anthropic", faulty.base_url) as client:
        result = await client.infer(Request(prompt="hi", images=(_image(width=1900, height=1200),) * 21))
    assert result.ok and len(faulty.log(CHAT)) == 1
    async with _client("mistral", faulty.base_url) as client:
        assert (await client.infer(Request(prompt="hi", images=(_image(),) * 8))).ok


@pytest.mark.anyio
async def test_anthropic_model_list_gets_anthropic_headers(
    faulty: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anthropic's /v1/models is its native route: it gets x-api-key and anthropic-version too."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-preset-key-93b1")
    faulty.script(
        [
            {
                "match": {
                    "path": "/v1/models",
                    "headers": {
                        "x-api-key": "sk-ant-test-preset-key-93b1",
                        "anthropic-version": "2023-06-01",
                    },
                },
                "fault": "ok",
            },
            {"match": {"path": "/v1/models"}, "fault": "status", "status": 401},
        ]
    )
    async with _client("anthropic", faulty.base_url, model=None) as client:
        report = await client.health()
        assert report.ready and report.models, report
        assert (await client.infer(Request(prompt="hi"))).ok
    async with _client("chutes", faulty.base_url, model=None) as client:
        report = await client.health()  # any other preset: the plain OpenAI route, so the 401 shows
        assert not report.ready


@pytest.mark.anyio
async def test_anthropic_model_list_reads_every_page(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anthropic pages /v1/models (20 a page unless ``limit`` says up to 1000; ``has_more`` and
    ``last_id`` -> ``after_id``): a configured model on a later page is still served."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-preset-key-93b1")
    newest = [f"claude-new-{n}" for n in range(3)]
    older = ["claude-old-1", "claude-haiku-4-5"]
    asked: list[dict[str, str]] = []

    def handle(request: MockRequest) -> MockResponse:
        if request.path == "/v1/models":
            asked.append(request.query)
            assert request.headers["x-api-key"] == "sk-ant-test-preset-key-93b1"
            assert request.headers["anthropic-version"] == "2023-06-01"
            ids = older if request.query.get("after_id") == newest[-1] else newest
            return MockResponse.json(
                {
                    "data": [{"type": "model", "id": i, "display_name": i} for i in ids],
                    "has_more": ids is newest,
                    "first_id": ids[0],
                    "last_id": ids[-1],
                }
            )
        assert request.path == CHAT, request
        assert request.json()["model"] == "claude-haiku-4-5"
        return MockResponse.json(
            {
                "id": "msg_1",
                "object": "chat.completion",
                "model": "claude-haiku-4-5",
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": "Hi."}, "finish_reason": "stop"}
                ],
            }
        )

    settings = {"preset": "anthropic", "model": "claude-haiku-4-5"}
    async with Client(
        backend="openai",
        overrides={"max_tokens": 16, "backends": {"openai": settings}},
        transport=MockTransport(handle),
        user_file=False,
        project_file=False,
        allow=["openai"],
    ) as client:
        report = await client.health()
        assert report.ready, report
        assert report.models == (*newest, *older)
        assert (await client.infer(Request(prompt="hi"))).text == "Hi."
    assert asked[:2] == [{"limit": "1000"}, {"limit": "1000", "after_id": newest[-1]}]
