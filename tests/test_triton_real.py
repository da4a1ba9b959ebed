"""The Triton backend against a real Triton Inference Server (tritonserver 2.51 from nvidia-pytriton).

The ``triton_server`` fixture serves the tiny test models of
tests/servers/triton_models.py (see TRITON_NOTES.md): ``tiny_vlm`` (image_url_input),
``tiny_vlm_stream`` (decoupled), ``tiny_vlm_batched`` (max_batch_size 4),
``vllm_style`` (Triton's vLLM-backend convention) and ``text_only``.  Their answers
are deterministic and say what the model received, so every assertion here is
about what went over the wire.
"""

from __future__ import annotations

import contextlib
import io
import json
import urllib.request
from typing import Any

import pytest
from PIL import Image

from imageworks_backend_triton import kserve
from imageworks_backend_triton._metrics import metrics_url
from imageworks_core import BackendProtocolError, BackendRejected, Client, PreparedImage, Request

pytestmark = [pytest.mark.anyio, pytest.mark.server]

RED = (200, 100, 50)
DARK = (10, 20, 30)


def image(
    size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = RED, fmt: str = "PNG"
) -> PreparedImage:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, fmt)
    return PreparedImage.from_bytes(buf.getvalue())


def client(server: Any, model: str = "tiny_vlm", **backend: Any) -> Client:
    return Client(
        backend="triton",
        overrides={"backends": {"triton": {"base_url": server.base_url, "model": model, **backend}}},
        user_file=False,
        project_file=False,
        allow=["triton"],
    )


def inference_count(server: Any, model: str) -> int:
    with urllib.request.urlopen(f"{server.model_url(model)}/stats", timeout=10) as resp:
        stats = json.loads(resp.read())["model_stats"][0]
    return int(stats["inference_stats"]["success"]["count"]) + int(stats["inference_stats"]["fail"]["count"])


def params_of(text: str) -> dict[str, Any]:
    """The JSON an ``ECHO_PARAMS`` prompt makes the model answer with."""
    return json.loads(text.split("params: ", 1)[1])


# ------------------------------------------------------------------ health and discovery


async def test_health_ready(triton_server: Any) -> None:
    async with client(triton_server) as c:
        r = await c.health()
    assert (r.reachable, r.ready, r.models, r.version) == (True, True, ("tiny_vlm",), "2.51.0")
    assert "image_url_input" in (r.detail or "")
    assert r.url == triton_server.base_url


async def test_health_reads_the_models_queue_from_the_metrics_port(triton_server: Any) -> None:
    url = f"http://127.0.0.1:{triton_server.metrics_port}/metrics"
    async with client(triton_server, metrics_url=url) as c:
        r = await c.health()
        # tiny_vlm's own nv_inference_pending_request_count (the other models' series are left out)
        assert r.ready and r.metrics == {"waiting": 0.0}
        ctx = c.context("triton")
        assert metrics_url(ctx, "http://gpu1:8000") == url  # configured wins
    async with client(triton_server, metrics_url="") as c:
        assert (await c.health()).metrics == {}
        ctx = c.context("triton")
        assert metrics_url(ctx, "http://gpu1:8000") is None
    async with client(triton_server) as c:
        ctx = c.context("triton")
        assert metrics_url(ctx, "http://gpu1:8000") == "http://gpu1:8002/metrics"  # Triton's default port
        assert metrics_url(ctx, "https://[::1]:8000") == "https://[::1]:8002/metrics"


async def test_health_unknown_model(triton_server: Any) -> None:
    async with client(triton_server, model="nope") as c:
        r = await c.health()
    assert (r.reachable, r.ready, r.models) == (True, False, ())
    assert "'nope'" in (r.detail or "") and "Model version not ready" in (r.detail or "")
    assert "/v2/repository/index" in (r.hint or "")


async def test_metadata_discovery(triton_server: Any) -> None:
    async with client(triton_server) as c:
        ctx = c.context("triton")
        vlm = await kserve.discover(ctx, "tiny_vlm")
        batched = await kserve.discover(ctx, "tiny_vlm_batched")
        streaming = await kserve.discover(ctx, "tiny_vlm_stream")
        vllm = await kserve.discover(ctx, "vllm_style")
        assert await kserve.discover(ctx, "tiny_vlm") is vlm  # cached per client
    assert vlm.input_names == ("text_input", "image_url_input", "max_tokens", "temperature")
    assert [(t.datatype, t.optional) for t in vlm.inputs] == [
        ("BYTES", False),
        ("BYTES", True),
        ("INT32", True),
        ("FP32", True),
    ]
    assert (vlm.batched, vlm.decoupled, vlm.has_config) == (False, False, True)
    assert (batched.max_batch_size, batched.decoupled) == (4, False)
    assert batched.input("text_input").dims == (1,)  # type: ignore[union-attr]  # batch dim stripped
    assert (streaming.decoupled, vllm.decoupled) == (True, True)
    assert vllm.input("sampling_parameters").datatype == "BYTES"  # type: ignore[union-attr]
    assert vllm.input("stream").datatype == "BOOL"  # type: ignore[union-attr]


# ------------------------------------------------------------------ inference


async def test_infer_via_generate_with_an_image(triton_server: Any) -> None:
    async with client(triton_server) as c:
        r = await c.infer(Request(prompt="What is in this picture?", images=(image(),)))
        assert c.context("triton").state["triton_generate"] is True  # generate answered
    assert r.text == "described 1 image(s) [32x24 mean=(200,100,50)] for prompt: What is in this picture?"
    assert (r.model, r.backend, r.finish_reason) == ("tiny_vlm", "triton", "stop")


async def test_two_images_jpeg_and_png(triton_server: Any) -> None:
    imgs = (image(), image((16, 16), DARK, "JPEG"))
    async with client(triton_server) as c:
        r = await c.infer(Request(prompt="two images", images=imgs))
    assert r.text.startswith("described 2 image(s) [32x24 mean=(200,100,50)] [16x16 mean=(")


async def test_declared_datatypes_on_the_wire(triton_server: Any) -> None:
    async with client(triton_server) as c:
        r = await c.infer(Request(prompt="ECHO_PARAMS", images=(image(),), max_tokens=30, temperature=0.25))
        plain = await c.infer(Request(prompt="ECHO_PARAMS"))
    assert params_of(r.text) == {"images": 1, "max_tokens": 30, "temperature": 0.25}
    assert params_of(plain.text) == {"images": 0, "max_tokens": 512, "temperature": None}  # none configured


async def test_max_tokens_caps_the_answer(triton_server: Any) -> None:
    async with client(triton_server) as c:
        r = await c.infer(Request(prompt="describe", images=(image(),), max_tokens=3))
    assert r.text == "described 1 image(s)"


async def test_chat_template_is_applied(triton_server: Any) -> None:
    async with client(triton_server, chat_template="USER: {prompt} ASSISTANT:") as c:
        r = await c.infer(Request(prompt="hi", images=(image(),)))
    assert r.text.endswith("for prompt: USER: hi ASSISTANT:")


async def test_generate_stream(triton_server: Any) -> None:
    async with client(triton_server, model="tiny_vlm_stream") as c:
        chunks = [ch async for ch in c.stream(Request(prompt="describe", images=(image(),)))]
        whole = await c.infer(Request(prompt="describe", images=(image(),)))  # decoupled: collected
    texts = [ch.text for ch in chunks]
    assert texts[:3] == ["described", " 1", " image(s)"] and len(chunks) > 5
    assert (
        "".join(texts) == whole.text == "described 1 image(s) [32x24 mean=(200,100,50)] for prompt: describe"
    )
    assert chunks[-1].finish_reason == "stop" and all(ch.finish_reason is None for ch in chunks[:-1])
    assert {ch.model for ch in chunks} == {"tiny_vlm_stream"}


async def test_abandoned_stream_leaves_the_client_usable(triton_server: Any) -> None:
    async with client(triton_server, model="tiny_vlm_stream") as c:
        # The dispatcher's generator, closed explicitly: Client.stream does not yet close it
        # when abandoned (reported to the core); this checks the plugin's side.
        chunks = c.dispatcher.stream_one(Request(prompt="describe", images=(image(),)))
        async with contextlib.aclosing(chunks):
            first = await anext(chunks)
        again = await c.infer(Request(prompt="again", max_tokens=4))
    assert first.text == "described"
    assert again.text == "described 0 image(s) for"


async def test_stream_of_a_non_decoupled_model(triton_server: Any) -> None:
    async with client(triton_server) as c:
        chunks = [ch async for ch in c.stream(Request(prompt="describe", images=(image(),)))]
    assert [ch.finish_reason for ch in chunks] == [None, "stop"]
    assert chunks[0].text.startswith("described 1 image(s) [32x24")


@pytest.mark.parametrize("model", ["tiny_vlm", "tiny_vlm_batched"])
async def test_infer_endpoint_with_exact_shapes(triton_server: Any, model: str) -> None:
    imgs = (image(), image((16, 16), DARK))
    async with client(triton_server, model=model, endpoint="infer", parameters={"top_k": 3}) as c:
        r = await c.infer(Request(prompt="ECHO_PARAMS", images=imgs, max_tokens=9, temperature=0.5))
        text = await c.infer(Request(prompt="shapes", images=imgs))
        chunks = [ch async for ch in c.stream(Request(prompt="shapes", images=imgs))]
    # /infer rejects undeclared inputs (400), so top_k was left out, and every shape fit exactly.
    assert params_of(r.text) == {"images": 2, "max_tokens": 9, "temperature": 0.5}
    assert (
        text.text
        == "described 2 image(s) [32x24 mean=(200,100,50)] [16x16 mean=(10,20,30)] for prompt: shapes"
    )
    assert [ch.text for ch in chunks] == [text.text, ""]


async def test_batched_model_under_concurrency(triton_server: Any) -> None:
    requests = [Request(prompt=f"item {i}", images=(image(),), id=str(i)) for i in range(8)]
    c = client(triton_server, model="tiny_vlm_batched", endpoint="infer")
    async with c, c.map(requests) as results:
        got = {r.id: r async for r in results}
    assert all(r.ok for r in got.values()), [r.error for r in got.values()]
    assert {r.text for r in got.values()} == {
        f"described 1 image(s) [32x24 mean=(200,100,50)] for prompt: item {i}" for i in range(8)
    }


async def test_vllm_style_model(triton_server: Any) -> None:
    async with client(triton_server, model="vllm_style", stop_words=("END",)) as c:
        echo = await c.infer(Request(prompt="ECHO_PARAMS", images=(image(),), max_tokens=20, temperature=0.5))
        r = await c.infer(Request(prompt="describe", images=(image(),)))
        chunks = [ch async for ch in c.stream(Request(prompt="describe", images=(image(),)))]
    params = params_of(echo.text)
    assert params["source"] == "sampling_parameters" and params["images"] == 1  # plain base64 decoded
    assert params["sampling"] == {"max_tokens": 20, "temperature": 0.5, "stop": ["END"]}
    # exclude_input_in_output=true: the answer does not start with the prompt
    assert r.text == "described 1 image(s) [32x24 mean=(200,100,50)] for prompt: describe"
    assert (
        len(chunks) > 3 and "".join(ch.text for ch in chunks) == r.text and chunks[-1].finish_reason == "stop"
    )


async def test_model_switch_per_request(triton_server: Any) -> None:
    async with client(triton_server) as c:
        r = await c.infer(Request(prompt="hello", model="text_only"))
    assert (r.text, r.model) == ("text-only answer for prompt: hello", "text_only")


# ------------------------------------------------------------------ errors


async def test_text_only_model_with_an_image_fails_before_sending(triton_server: Any) -> None:
    async with client(triton_server, model="text_only") as c:
        assert (await c.infer(Request(prompt="warm up"))).text == "text-only answer for prompt: warm up"
        before = inference_count(triton_server, "text_only")
        with pytest.raises(BackendRejected) as info:
            await c.infer(Request(prompt="describe", images=(image(),)))
        with pytest.raises(BackendRejected):
            async for _ in c.stream(Request(prompt="describe", images=(image(),))):
                pass
    assert "model 'text_only' takes no images (its inputs: text_input, max_tokens)" in info.value.message
    assert inference_count(triton_server, "text_only") == before  # nothing reached the model


@pytest.mark.parametrize(
    ("model", "endpoint", "status"),
    [("tiny_vlm", "auto", 400), ("tiny_vlm", "infer", 500), ("tiny_vlm_stream", "auto", 400)],
)
async def test_raise_error_is_one_line(triton_server: Any, model: str, endpoint: str, status: int) -> None:
    async with client(triton_server, model=model, endpoint=endpoint) as c:
        with pytest.raises(BackendProtocolError) as info:
            await c.infer(Request(prompt="RAISE_ERROR please"))
    err = info.value
    assert err.message.endswith(f"model '{model}' raised RuntimeError: RAISE_ERROR requested by the prompt")
    assert "\n" not in err.message and "Traceback" not in err.message
    assert err.status == status and not err.retryable
    assert len(err.message) < 200


async def test_fail_midstream_after_some_chunks(triton_server: Any) -> None:
    got: list[str] = []
    async with client(triton_server, model="tiny_vlm_stream") as c:
        with pytest.raises(BackendProtocolError) as info:
            async for ch in c.stream(Request(prompt="FAIL_MIDSTREAM now", images=(image(),))):
                got.append(ch.text)
        with pytest.raises(BackendProtocolError):  # collected for infer: an error, never partial text
            await c.infer(Request(prompt="FAIL_MIDSTREAM now"))
    assert got == ["described", " 1"]
    assert (
        "RuntimeError: FAIL_MIDSTREAM requested by the prompt (reported inside the stream)"
        in info.value.message
    )
    assert "Traceback" not in info.value.message


async def test_bad_image_before_the_first_chunk(triton_server: Any) -> None:
    msgs = (
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
                {"type": "text", "text": "describe"},
            ],
        },
    )
    async with client(triton_server, model="tiny_vlm_stream") as c:
        with pytest.raises(BackendProtocolError, match=r"raised ValueError: cannot decode image") as info:
            async for _ in c.stream(Request(messages=msgs)):
                pytest.fail("no chunk expected")
    assert info.value.status == 400


@pytest.mark.parametrize("per_request", [False, True])
async def test_unknown_model(triton_server: Any, per_request: bool) -> None:
    configured = "tiny_vlm" if per_request else "nope"
    async with client(triton_server, model=configured) as c:
        with pytest.raises(BackendRejected) as info:
            await c.infer(Request(prompt="hi", model="nope" if per_request else None))
    err = info.value
    assert "serves no model named 'nope'" in err.message and err.status == 404
    assert "is not found" in err.message
    assert "/v2/repository/index" in (err.hint or "") and "backends.triton.model" in (err.hint or "")
