"""Image generation: the kinds, the ``generate_image`` contract, routing, and the ``openai`` backend.

The ``openai`` tests run against the fault-injecting server's images route
(``tests/servers/faulty_openai.py``), whose request checks and answer shapes
follow the OpenAI API reference (Images: create image).
"""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image
from servers._proc import free_port

from imageworks_core import (
    KINDS,
    BackendInfo,
    BackendRejected,
    BackendSettings,
    Capabilities,
    Client,
    ConfigError,
    GeneratedImage,
    HealthReport,
    ImageRequest,
    ImageResult,
    InputError,
    PluginError,
    Request,
    hookimpl,
)

SECRET = "sk-img-test-5e4d3c2b1a-DO-NOT-PRINT"
KEY_ENV = "IW_TEST_IMAGES_KEY"


def png(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


class PaintBackend:
    """An in-process image-only backend: no ``infer`` / ``stream`` (it declares no text kind)."""

    def __init__(self, name: str = "paint", init_image: bool = False) -> None:
        self.name = name
        self.init_image = init_image
        self.calls: list[ImageRequest] = []

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            description="test painter",
            default_base_url="http://in-process.invalid",
            capabilities=Capabilities(
                streaming=False, kinds=("image_generation",), init_image=self.init_image
            ),
        )

    @hookimpl
    async def health(self, ctx: Any) -> HealthReport:
        return HealthReport(backend=self.name, url=ctx.base_url, reachable=True, ready=True)

    @hookimpl
    async def generate_image(self, ctx: Any, request: ImageRequest) -> ImageResult:
        self.calls.append(request)
        seed = 7 if request.seed is None else request.seed
        return ImageResult(
            images=tuple(GeneratedImage(png(), "image/png", 8, 8, seed + i) for i in range(request.n)),
            backend=self.name,
            model="paint-1",
            seed=seed,
            parameters={"size": "8x8"},
        )


def client(**kw: Any) -> Client:
    kw.setdefault("user_file", False)
    kw.setdefault("project_file", False)
    return Client(**kw)


def openai_client(base_url: str, **kw: Any) -> Client:
    keys = {"base_url": base_url, "api_key_env": KEY_ENV, **kw.pop("keys", {})}
    return client(
        backend="openai",
        overrides={"backends": {"openai": keys}},
        allow=["openai"],
        env={KEY_ENV: SECRET},
        **kw,
    )


def images_rule(fault: str, **action: Any) -> dict[str, Any]:
    return {"match": {"path": "/v1/images/generations"}, "fault": fault, **action}


# ---------------------------------------------------------------- the contract


def test_kinds_default_from_vision_and_validate() -> None:
    assert KINDS == ("vision", "text", "image_generation")
    assert Capabilities().kinds == ("vision", "text")
    assert Capabilities(vision=False).kinds == ("text",)
    only = Capabilities(kinds=("image_generation",))
    assert only.kinds == ("image_generation",) and only.vision is False
    with pytest.raises(ValueError, match="unknown backend kind"):
        Capabilities(kinds=("video",))
    with pytest.raises(ValueError, match="at least one kind"):
        Capabilities(kinds=())


def test_image_request_checks_its_values() -> None:
    r = ImageRequest("a red square", size="64x32", n=2, seed=5, steps=3, guidance=7.5)
    assert r.size == (64, 32) and r.n == 2
    assert ImageRequest("x", size=(16, 8)).size == (16, 8)
    for bad in ({"prompt": " "}, {"prompt": "x", "n": 0}, {"prompt": "x", "n": True}):
        with pytest.raises(InputError):
            ImageRequest(**bad)
    for size in ("64", "0x64", "64x99999", "axb"):
        with pytest.raises(InputError, match="size"):
            ImageRequest("x", size=size)
    with pytest.raises(InputError, match="seed"):
        ImageRequest("x", seed=-1)
    with pytest.raises(InputError, match="steps"):
        ImageRequest("x", steps=0)


def test_installed_backends_declare_their_kinds() -> None:
    c = client()
    kinds = {name: b.info.capabilities.kinds for name, b in c.registry.backends.items()}
    assert "image_generation" in kinds["openai"]
    for name in ("vllm", "lmdeploy", "transformers", "triton"):
        if name in kinds:
            assert kinds[name] == ("vision", "text"), name


def test_declaring_image_generation_requires_the_hook() -> None:
    class NoHook:
        @hookimpl
        def backend_info(self) -> BackendInfo:
            return BackendInfo(
                name="nohook",
                description="",
                default_base_url="http://x.invalid",
                capabilities=Capabilities(kinds=("image_generation",)),
            )

        @hookimpl
        async def health(self, ctx: Any) -> HealthReport:
            raise NotImplementedError

    with pytest.raises(PluginError, match="generate_image"):
        client(plugins=[NoHook()], entry_points=False)


def test_a_text_backend_still_needs_infer_and_stream() -> None:
    class TextOnly:
        @hookimpl
        def backend_info(self) -> BackendInfo:
            return BackendInfo(name="texty", description="", default_base_url="http://x.invalid")

        @hookimpl
        async def health(self, ctx: Any) -> HealthReport:
            raise NotImplementedError

    with pytest.raises(PluginError, match="infer"):
        client(plugins=[TextOnly()], entry_points=False)


# ---------------------------------------------------------------- routing


@pytest.mark.anyio
async def test_routes_to_the_first_configured_image_backend() -> None:
    paint = PaintBackend()
    c = client(plugins=[paint], backend="openai", fallback=["paint"], allow=["openai"])
    async with c:
        result = await c.generate_image(ImageRequest("a red square", n=2, seed=11))
    assert result.backend == "paint" and len(result.images) == 2
    assert [i.seed for i in result.images] == [11, 12]
    assert result.attempts and result.attempts[-1].backend == "paint" and result.attempts[-1].error is None
    assert paint.calls[0].prompt == "a red square"


@pytest.mark.anyio
async def test_an_init_image_goes_only_to_backends_that_take_one() -> None:
    from imageworks_core import PreparedImage

    start = PreparedImage.from_bytes(png(size=(16, 8)))
    paint, sketch = PaintBackend(), PaintBackend("sketch", init_image=True)
    async with client(plugins=[paint, sketch], backend="paint", fallback=["sketch"], allow=[]) as c:
        result = await c.generate_image(ImageRequest("x", init_image=start, strength=0.4))
        assert result.backend == "sketch" and paint.calls == []  # paint was left out, not tried
        assert sketch.calls[0].init_image == start and sketch.calls[0].strength == 0.4
        await c.generate_image(ImageRequest("x"))  # without one: the first configured, as ever
        assert len(paint.calls) == 1
        with pytest.raises(ConfigError, match="'paint' cannot start from an image") as info:
            await c.generate_image(ImageRequest("x", backend="paint", init_image=start))
        assert "sketch" in (info.value.hint or "")
    async with client(plugins=[PaintBackend()], backend="paint", allow=["openai"]) as c:
        with pytest.raises(ConfigError, match="no configured backend can start from an image") as info:
            await c.generate_image(ImageRequest("x", init_image=start))
        assert "pip install imageworks-backend-sdwebui" in (info.value.hint or "")


def test_init_image_and_strength_are_checked() -> None:
    from imageworks_core import InputError

    for bad in (0, -0.1, 1.5, float("nan"), True, "0.5"):
        with pytest.raises(InputError, match="strength"):
            ImageRequest("x", strength=bad)
    with pytest.raises(InputError, match="init_image must be a PreparedImage"):
        ImageRequest("x", init_image=png())  # type: ignore[arg-type]
    assert ImageRequest("x", strength=1).strength == 1


@pytest.mark.anyio
async def test_a_named_backend_without_the_kind_is_a_config_error() -> None:
    c = client(plugins=[PaintBackend()], backend="paint", allow=["vllm"])
    async with c:
        with pytest.raises(ConfigError, match="'vllm' does not generate images") as info:
            await c.generate_image(ImageRequest("x", backend="vllm"))
    assert "paint" in (info.value.hint or "")


@pytest.mark.anyio
async def test_no_configured_image_backend_is_a_config_error() -> None:
    c = client(backend="vllm", allow=["vllm", "openai"])
    async with c:
        with pytest.raises(ConfigError, match="no configured backend generates images") as info:
            await c.generate_image(ImageRequest("x"))
    assert "openai" in (info.value.hint or "")


@pytest.mark.anyio
async def test_image_backend_without_text_kind_refuses_text_routing_cleanly() -> None:
    # an image-only backend has no infer hook: a text request to it is a clear error, not a crash
    c = client(plugins=[PaintBackend()], backend="paint", entry_points=False)
    async with c:
        with pytest.raises(ConfigError, match="'paint' cannot answer text or vision requests"):
            await c.infer(Request(prompt="hi"))


# ---------------------------------------------------------------- the openai backend


@pytest.mark.anyio
async def test_openai_b64_json(faulty: Any) -> None:
    c = openai_client(faulty.v1, keys={"image_model": "dall-e-2"})
    async with c:
        result = await c.generate_image(ImageRequest("req_id=img-1 a lighthouse", n=2, size="48x32"))
    assert result.backend == "openai" and result.model == "dall-e-2"
    assert len(result.images) == 2
    for img in result.images:
        assert img.mime == "image/png" and (img.width, img.height) == (48, 32)
        with Image.open(io.BytesIO(img.data)) as im:
            assert im.size == (48, 32)
    assert result.images[0].data != result.images[1].data  # one colour per index
    assert result.parameters["size"] == "48x32" and result.parameters["response_format"] == "b64_json"
    assert result.seed is None  # the API reports none: none is claimed
    assert set(result.timings) == {"generate", "download"}
    log = faulty.log("/v1/images/generations")
    assert len(log) == 1 and log[0]["model"] == "dall-e-2" and log[0]["request_id"] == "img-1"


@pytest.mark.anyio
async def test_openai_url_same_origin_sends_the_key(faulty: Any) -> None:
    # the /files answer is refused unless the key comes along (same origin: it must)
    faulty.script(
        [
            {
                "match": {"path_prefix": "/files/", "headers": {"Authorization": f"Bearer {SECRET}"}},
                "fault": "ok",
            },
            {"match": {"path_prefix": "/files/"}, "fault": "status", "status": 401},
        ]
    )
    c = openai_client(faulty.v1)
    async with c:
        result = await c.generate_image(
            ImageRequest("a url image", extras={"response_format": "url"}, size="16x16")
        )
    assert len(result.images) == 1 and result.images[0].width == 16
    assert [e["status"] for e in faulty.log() if e["path"].startswith("/files/")] == [200]


@pytest.mark.anyio
async def test_an_expired_image_url_is_asked_for_again(faulty: Any) -> None:
    """The image's signed URL answers 403 once (expired): a new try generates and fetches again."""
    faulty.script(
        [
            {"match": {"path_prefix": "/files/"}, "fault": "status", "status": 403, "times": 1},
            {"match": {"path_prefix": "/files/"}, "fault": "ok"},
        ]
    )
    c = openai_client(faulty.v1)
    async with c:
        result = await c.generate_image(
            ImageRequest("again", extras={"response_format": "url"}, size="16x16")
        )
    assert len(result.images) == 1 and result.images[0].width == 16
    assert len(faulty.log("/v1/images/generations")) == 2
    assert [e["status"] for e in faulty.log() if e["path"].startswith("/files/")] == [403, 200]


@pytest.mark.anyio
async def test_openai_url_elsewhere_gets_no_credentials(faulty: Any) -> None:
    port = faulty.base_url.rsplit(":", 1)[1]
    faulty.script(
        [
            {
                "match": {"path": "/v1/images/generations"},
                "fault": "ok",
                "url_base": f"http://localhost:{port}",  # another origin by name
                "revised_prompt": "A tall lighthouse at dusk, oil painting",
            },
            {
                "match": {"path_prefix": "/files/", "headers": {"Authorization": f"Bearer {SECRET}"}},
                "fault": "status",
                "status": 418,
                "body": {"error": {"message": "credentials leaked to a third party"}},
            },
        ]
    )
    c = openai_client(faulty.v1)
    async with c:
        result = await c.generate_image(ImageRequest("lighthouse", extras={"response_format": "url"}))
    assert result.revised_prompt == "A tall lighthouse at dusk, oil painting"
    assert [e["status"] for e in faulty.log() if e["path"].startswith("/files/")] == [200]


@pytest.mark.anyio
async def test_openai_rejection_is_mapped_and_keeps_no_secret(faulty: Any) -> None:
    body = {
        "error": {
            "message": f"Your request was rejected as a result of our safety system. key {SECRET}",
            "type": "invalid_request_error",
            "param": None,
            "code": "content_policy_violation",
        }
    }
    faulty.script(
        [{"match": {"path": "/v1/images/generations"}, "fault": "status", "status": 400, "body": body}]
    )
    c = openai_client(faulty.v1)
    async with c:
        with pytest.raises(BackendRejected, match="safety system") as info:
            await c.generate_image(ImageRequest("something refused"))
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)
    assert len(info.value.attempts) == 1  # a 4xx ends the item at once
    assert len(faulty.log("/v1/images/generations")) == 1


@pytest.mark.anyio
async def test_openai_bad_request_shape_is_the_servers_400(faulty: Any) -> None:
    c = openai_client(faulty.v1)
    async with c:
        with pytest.raises(BackendRejected, match="Invalid 'n'"):
            await c.generate_image(ImageRequest("x", extras={"n": 11}))


@pytest.mark.anyio
async def test_openai_overload_is_waited_out(faulty: Any) -> None:
    faulty.script(
        [
            {
                "match": {"path": "/v1/images/generations"},
                "fault": "status",
                "status": 429,
                "headers": {"Retry-After": "0.2"},
                "times": 1,
            }
        ]
    )
    c = openai_client(faulty.v1)
    async with c:
        result = await c.generate_image(ImageRequest("busy server"))
    assert len(result.images) == 1
    assert [a.status for a in result.attempts] == [429, None]
    assert [e["status"] for e in faulty.log("/v1/images/generations")] == [429, 200]


@pytest.mark.anyio
async def test_openai_malformed_answers_are_protocol_errors(faulty: Any) -> None:
    from imageworks_core import BackendProtocolError

    bad = {"created": 1, "data": [{"b64_json": base64.b64encode(b"not an image").decode()}]}
    faulty.script(
        [{"match": {"path": "/v1/images/generations"}, "fault": "status", "status": 200, "body": bad}]
    )
    c = openai_client(faulty.v1)
    async with c:
        with pytest.raises(BackendProtocolError, match="not an image"):
            await c.generate_image(ImageRequest("x"))
    faulty.script(
        [
            {
                "match": {"path": "/v1/images/generations"},
                "fault": "status",
                "status": 200,
                "body": {"data": []},
            }
        ]
    )
    async with openai_client(faulty.v1) as c2:
        with pytest.raises(BackendProtocolError, match="without images"):
            await c2.generate_image(ImageRequest("x"))


@pytest.mark.anyio
async def test_fallback_from_a_down_image_backend(faulty: Any) -> None:
    paint = PaintBackend()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    c = client(
        plugins=[paint],
        backend="openai",
        fallback=["vllm", "paint"],  # vllm cannot generate images: left out, not tried
        overrides={"backends": {"openai": {"base_url": dead}}},
        allow=["openai", "vllm"],
    )
    async with c:
        result = await c.generate_image(ImageRequest("fallback please"))
    assert result.backend == "paint"
    assert [a.backend for a in result.attempts][-1] == "paint"
    assert {a.backend for a in result.attempts} == {"openai", "paint"}


def test_settings_of_openai_name_the_image_model() -> None:
    from imageworks_core.backends.openai import OpenAISettings

    assert issubclass(OpenAISettings, BackendSettings)
    assert OpenAISettings(image_model="gpt-image-1").image_model == "gpt-image-1"
