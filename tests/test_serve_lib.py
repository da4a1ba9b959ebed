"""The gateway's pieces in process: the bind decision, tokens, rate limits, chat parsing, caller keys."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from conftest import IN_CI

try:
    import starlette  # noqa: F401
except ImportError as exc:  # skipped locally; in CI a missing extra is a failure
    if IN_CI:
        raise
    pytest.skip(f"the gateway's tests need the serve extra: {exc}", allow_module_level=True)

from imageworks_core import Client, Request
from imageworks_core.backends.openai import OpenAIBackend
from imageworks_core.byok import caller_key, using_caller_key
from imageworks_core.errors import BackendOverloaded, BackendRejected, BackendUnavailable, ConfigError
from imageworks_core.serve import ServeOptions, check_bind, read_tokens
from imageworks_core.serve.chat import parse_chat
from imageworks_core.serve.gateway import Gateway, RateLimiter
from imageworks_core.serve.wire import GatewayError, status_of
from imageworks_core.settings import Secret

CHAT = "/v1/chat/completions"


class Other(OpenAIBackend):
    name = "other"


def client(url: str = "http://127.0.0.1:9/v1", **backends: dict[str, Any]) -> Client:
    sections = {"openai": {"base_url": url, "model": "fake-vlm"}, **backends}
    return Client(
        overrides={"backends": sections},
        backend="openai",
        plugins=[OpenAIBackend(), Other()],
        entry_points=False,
        user_file=False,
        project_file=False,
    )


def jpeg_url(width: int, height: int) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height)).save(buf, "JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    check_bind(ServeOptions(host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "gpu-box.local"])
def test_other_hosts_need_a_token(host: str) -> None:
    with pytest.raises(ConfigError, match="without an access token"):
        check_bind(ServeOptions(host=host))
    check_bind(ServeOptions(host=host, tokens=(Secret("t"),)))


def test_tokens_come_from_the_named_variable() -> None:
    tokens = read_tokens("TOK", {"TOK": "a, b  c"})
    assert [t.reveal() for t in tokens] == ["a", "b", "c"]
    assert "a" not in repr(tokens)
    with pytest.raises(ConfigError, match="TOK is unset or empty"):
        read_tokens("TOK", {"TOK": " , "})
    assert read_tokens(None) == ()


def test_rate_limiter_allows_a_burst_then_says_how_long_to_wait() -> None:
    limiter = RateLimiter(2.0)
    assert limiter.take("a", now=0.0) == 0 and limiter.take("a", now=0.0) == 0
    assert limiter.take("a", now=0.0) == pytest.approx(0.5)
    assert limiter.take("b", now=0.0) == 0  # one bucket per caller
    assert limiter.take("a", now=0.5) == 0  # refilled


def test_status_codes_of_errors() -> None:
    assert status_of(BackendOverloaded("busy", retry_after=3.0)) == (429, "backend_overloaded", 3.0)
    assert status_of(BackendUnavailable("down"))[0] == 503
    assert status_of(BackendRejected("no such model", status=404))[0] == 404
    assert status_of(GatewayError(413, "big"))[0] == 413


@pytest.mark.anyio
async def test_chat_bodies_become_requests() -> None:
    async with client() as c:
        gw = Gateway(c, ServeOptions(max_images=1, max_image_pixels=10_000))
        body = {
            "model": "other/big-model",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 7,
            "temperature": 0.2,
            "stop": "END",
            "top_k": 5,
            "imageworks": {"fallback": ["openai"]},
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        request, stream, usage = parse_chat(body, gw)
        assert (request.backend, request.model, request.fallback) == ("other", "big-model", ("openai",))
        assert (request.max_tokens, request.temperature, request.stop) == (7, 0.2, ("END",))
        assert dict(request.extra) == {"top_k": 5} and stream and usage
        assert parse_chat({**body, "model": "Qwen/Qwen2-VL"}, gw)[0].model == "Qwen/Qwen2-VL"
        only = parse_chat({**body, "model": "other"}, gw)[0]
        assert (only.backend, only.model) == ("other", None)  # a backend name alone: its own model

        bad: list[tuple[dict[str, Any], str]] = [
            ({"messages": []}, "messages must be a non-empty list"),
            ({**body, "n": 2}, "only n = 1"),
            ({**body, "imageworks": {"fallback": ["nope"]}}, "unknown fallback backend 'nope'"),
            ({**body, "max_tokens": 0}, "max_tokens must be a number >= 1"),
            ({**body, "temperature": "hot"}, "temperature must be a number"),
        ]
        for obj, message in bad:
            with pytest.raises(GatewayError, match=message):
                parse_chat(obj, gw)
        two = [{"type": "image_url", "image_url": {"url": jpeg_url(8, 8)}}] * 2
        with pytest.raises(GatewayError, match="too many images") as err:
            parse_chat({"messages": [{"role": "user", "content": two}]}, gw)
        assert err.value.status == 413
        big = [{"type": "image_url", "image_url": {"url": jpeg_url(200, 100)}}]
        with pytest.raises(GatewayError, match=r"the limit is 0\.0 MP") as err:
            parse_chat({"messages": [{"role": "user", "content": big}]}, gw)
        assert err.value.status == 413


@pytest.mark.anyio
async def test_per_request_fallback_replaces_the_configured_order(faulty: Any) -> None:
    """``Request.fallback``: the dispatcher tries the request's own fallback after its backend."""
    faulty.script([{"match": {"path": CHAT, "model": "fake-vlm"}, "fault": "status", "status": 400}])
    async with client(faulty.v1, other={"base_url": faulty.v1, "model": "other-vlm"}) as c:
        failed = await c.dispatcher.run_one(Request(prompt="x"))
        assert failed.error is not None  # a 400 ends the item: no fallback configured, none tried
        faulty.script([{"match": {"path": CHAT, "model": "fake-vlm"}, "fault": "status", "status": 500}])
        result = await c.dispatcher.run_one(Request(prompt="x", fallback=("other",)))
    assert result.ok and result.backend == "other"
    assert [a.backend for a in result.attempts][-1] == "other"


KEY = "sk-configured-7c1e"


@pytest.mark.anyio
async def test_a_caller_key_goes_to_its_backend_only(faulty: Any) -> None:
    configured = {"Authorization": "Bearer sk-configured-7c1e"}
    mine = {"Authorization": "Bearer sk-caller-3b9d"}
    faulty.script(
        [
            {"match": {"path": CHAT, "model": "fake-vlm", "headers": mine}, "fault": "ok", "content": "mine"},
            {"match": {"path": CHAT, "headers": configured}, "fault": "ok", "content": "configured"},
        ]
    )
    sections = {"openai": {"base_url": faulty.v1, "model": "fake-vlm", "api_key": KEY, "byok": True}}
    async with Client(
        overrides={"backends": {**sections, "other": {"base_url": faulty.v1, "api_key": KEY}}},
        backend="openai",
        plugins=[OpenAIBackend(), Other()],
        entry_points=False,
        user_file=False,
        project_file=False,
    ) as c:
        with using_caller_key("openai", Secret("sk-caller-3b9d")):
            assert caller_key("openai") is not None and caller_key("other") is None
            assert (await c.infer(Request(prompt="x"))).text == "mine"
            assert (await c.infer(Request(prompt="x", backend="other", model="o"))).text == "configured"
        assert caller_key("openai") is None
        assert (await c.infer(Request(prompt="x"))).text == "configured"


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("JPEG", {}),
        ("JPEG", {"exif": b"Exif\x00\x00" + b"\x00" * 60_000}),  # the frame header far from the start
        ("JPEG", {"progressive": True}),
        ("PNG", {}),
        ("GIF", {}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"exif": b"Exif\x00\x00abcd"}),  # the extended (VP8X) header
    ],
)
def test_image_size_from_the_base64_prefix_matches_pillow(fmt: str, options: dict[str, Any]) -> None:
    from PIL import Image

    from imageworks_core.serve.sizes import image_size

    buf = io.BytesIO()
    noise = Image.effect_noise((1237, 611), 64).convert("RGB")
    noise.save(buf, fmt, **options)
    assert image_size(base64.b64encode(buf.getvalue()).decode(), "x") == (1237, 611)
    wrapped = base64.encodebytes(buf.getvalue()).decode()  # with line breaks: decoded in full
    assert image_size(wrapped, "x") == (1237, 611)


def test_image_size_of_garbage_is_an_input_error() -> None:
    from imageworks_core.errors import InputError
    from imageworks_core.serve.sizes import image_size

    with pytest.raises(InputError):
        image_size(base64.b64encode(b"not an image at all").decode(), "image 1")
