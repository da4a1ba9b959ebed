"""The ``sdwebui`` plugin against the WebUI's recorded, source-checked answer shapes (no server).

Shapes from AUTOMATIC1111/stable-diffusion-webui: ``modules/api/api.py``
(``text2imgapi``, ``get_sd_models``, ``handle_exception``), ``modules/api/models.py``
and ``modules/processing.py`` (``Processed.js``).
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from imageworks_core import (
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    Client,
    ImageRequest,
)
from imageworks_core.testing import MockRequest, MockResponse, MockTransport

pytestmark = pytest.mark.anyio

URL = "http://webui.invalid:7860"
TITLE = "v1-5-pruned-emaonly.safetensors [6ce0161689]"
SD_MODELS = [
    {
        "title": TITLE,
        "model_name": "v1-5-pruned-emaonly",
        "hash": "6ce0161689",
        "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        "filename": "/webui/models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
        "config": None,
    },
    {
        "title": "sdxl/juggernautXL.safetensors [a1b2c3d4e5]",
        "model_name": "sdxl_juggernautXL",
        "hash": "a1b2c3d4e5",
        "sha256": None,
        "filename": "/webui/models/Stable-diffusion/sdxl/juggernautXL.safetensors",
        "config": None,
    },
]


def png(w: int, h: int, colour: tuple[int, int, int] = (10, 120, 200)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def info(seed: int, n: int, w: int, h: int, **kw: Any) -> str:
    """``Processed.js()``: a JSON string (its keys as in modules/processing.py)."""
    obj = {
        "prompt": "a lighthouse",
        "all_prompts": ["a lighthouse"] * n,
        "negative_prompt": "",
        "all_negative_prompts": [""] * n,
        "seed": seed,
        "all_seeds": [seed + i for i in range(n)],
        "subseed": 1234,
        "all_subseeds": [1234 + i for i in range(n)],
        "subseed_strength": 0,
        "width": w,
        "height": h,
        "sampler_name": "DPM++ 2M",
        "cfg_scale": 6.5,
        "steps": 20,
        "batch_size": n,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": "v1-5-pruned-emaonly",
        "sd_model_hash": "6ce0161689",
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": None,
        "extra_generation_params": {"Schedule type": "Karras"},
        "index_of_first_image": 0,
        "infotexts": ["a lighthouse\nSteps: 20"] * n,
        "styles": [],
        "job_timestamp": "20240601120000",
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
    }
    obj.update(kw)
    return json.dumps(obj)


def answer(request: MockRequest, *, extra: int = 0, grid: bool = False) -> MockResponse:
    body = request.json()
    n, w, h = body.get("batch_size", 1), body.get("width", 512), body.get("height", 512)
    seed = body["seed"] if body.get("seed", -1) != -1 else 3141592
    images = [png(w, h, (i * 40, 0, 0)) for i in range(n)]
    if grid:
        images.insert(0, png(w * n, h))
    images += [png(64, 64, (0, 255, 0))] * extra  # e.g. ControlNet's detected maps
    return MockResponse.json(
        {"images": images, "parameters": body, "info": info(seed, n, w, h, index_of_first_image=int(grid))}
    )


def webui(generate: Any = None, *, models: Any = SD_MODELS, loaded: str = TITLE) -> Any:
    def handle(request: MockRequest) -> MockResponse:
        if request.path == "/sdapi/v1/sd-models":
            return MockResponse.json(models)
        if request.path == "/sdapi/v1/options":
            return MockResponse.json({"sd_model_checkpoint": loaded, "samples_format": "png"})
        assert request.path in ("/sdapi/v1/txt2img", "/sdapi/v1/img2img"), request
        return generate(request) if generate else answer(request)

    return handle


def client(mock: MockTransport, **backend: Any) -> Client:
    return Client(
        backend="sdwebui",
        base_url=URL,
        transport=mock,
        user_file=False,
        project_file=False,
        allow=["sdwebui"],
        overrides={"backends": {"sdwebui": backend}} if backend else None,
    )


async def test_txt2img_body_maps_every_field() -> None:
    mock = MockTransport(webui())
    settings = {"sampler_name": "DPM++ 2M", "scheduler": "Karras", "model": "v1-5-pruned-emaonly"}
    async with client(mock, **settings, extra_body={"tiling": False}) as c:
        await c.generate_image(
            ImageRequest(
                "a lighthouse",
                negative_prompt="blurry",
                size="640x384",
                n=2,
                seed=7,
                steps=22,
                guidance=6.5,
                model=TITLE,
                extras={
                    "restore_faces": True,
                    "enable_hr": None,
                    "override_settings": {"CLIP_stop_at_last_layers": 2},
                },
            )
        )
    (sent,) = mock.sent("/sdapi/v1/txt2img")
    assert sent.method == "POST"
    assert sent.json() == {
        "prompt": "a lighthouse",
        "negative_prompt": "blurry",
        "batch_size": 2,
        "n_iter": 1,
        "seed": 7,
        "width": 640,
        "height": 384,
        "steps": 22,
        "cfg_scale": 6.5,
        "sampler_name": "DPM++ 2M",
        "scheduler": "Karras",
        "send_images": True,
        "save_images": False,
        "override_settings": {"sd_model_checkpoint": TITLE, "CLIP_stop_at_last_layers": 2},
        "override_settings_restore_afterwards": True,
        "tiling": False,
        "restore_faces": True,
    }


async def test_defaults_come_from_settings_and_no_seed_is_minus_one() -> None:
    mock = MockTransport(webui())
    async with client(mock, steps=30, cfg_scale=5.0, width=768, height=512, restore_model=False) as c:
        await c.generate_image(ImageRequest("a lighthouse"))
        await c.generate_image(ImageRequest("a lighthouse", model="sdxl_juggernautXL"))
    first, second = (r.json() for r in mock.sent("/sdapi/v1/txt2img"))
    assert first["seed"] == -1 and first["steps"] == 30 and first["cfg_scale"] == 5.0
    assert (first["width"], first["height"]) == (768, 512)
    assert "override_settings" not in first and "negative_prompt" not in first and "sampler_name" not in first
    assert second["override_settings"] == {"sd_model_checkpoint": "sdxl_juggernautXL"}
    assert second["override_settings_restore_afterwards"] is False


async def test_answer_is_read_images_seeds_parameters() -> None:
    mock = MockTransport(webui())
    async with client(mock) as c:
        result = await c.generate_image(ImageRequest("a lighthouse", size=(96, 64), n=3))
    assert [(i.width, i.height, i.mime) for i in result.images] == [(96, 64, "image/png")] * 3
    assert [i.seed for i in result.images] == [3141592, 3141593, 3141594]
    assert result.seed == 3141592 and result.model == "v1-5-pruned-emaonly"
    assert result.parameters["size"] == "96x64" and result.parameters["steps"] == 20
    assert result.parameters["sampler"] == "DPM++ 2M" and result.parameters["guidance"] == 6.5
    assert result.parameters["model_hash"] == "6ce0161689" and result.parameters["mode"] == "txt2img"
    assert Image.open(io.BytesIO(result.images[1].data)).getpixel((0, 0)) == (40, 0, 0)
    assert set(result.timings) == {"generate", "decode"}


async def test_extra_images_and_a_grid_are_dropped() -> None:
    mock = MockTransport(webui(lambda r: answer(r, extra=2, grid=True)))
    async with client(mock) as c:
        result = await c.generate_image(ImageRequest("a lighthouse", size=(32, 32), n=2, seed=11))
    assert len(result.images) == 2  # not the grid before them, nor the 2 maps after
    assert [(i.width, i.height, i.seed) for i in result.images] == [(32, 32, 11), (32, 32, 12)]
    pixels = [Image.open(io.BytesIO(i.data)).getpixel((0, 0)) for i in result.images]
    assert pixels == [(0, 0, 0), (40, 0, 0)]


async def test_init_images_switch_to_img2img() -> None:
    raw = base64.b64decode(png(16, 16))
    mock = MockTransport(webui())
    async with client(mock, denoising_strength=0.4) as c:
        result = await c.generate_image(
            ImageRequest("a lighthouse", size=(32, 32), extras={"init_images": [raw, png(8, 8)]})
        )
        await c.generate_image(
            ImageRequest("a lighthouse", extras={"init_images": [raw], "denoising_strength": 0.9})
        )
    assert not mock.sent("/sdapi/v1/txt2img")
    first, second = (r.json() for r in mock.sent("/sdapi/v1/img2img"))
    assert first["init_images"] == [base64.b64encode(raw).decode(), png(8, 8)]
    assert first["denoising_strength"] == 0.4 and second["denoising_strength"] == 0.9
    assert result.parameters["mode"] == "img2img" and len(result.images) == 1


async def test_health_ready_lists_checkpoints() -> None:
    mock = MockTransport(webui())
    async with client(mock, model="v1-5-pruned-emaonly.safetensors") as c:
        report = await c.health()
    assert report.ready and report.reachable
    assert report.models == (TITLE, "sdxl/juggernautXL.safetensors [a1b2c3d4e5]")
    assert TITLE in (report.detail or "")


async def test_health_without_api_says_start_with_api() -> None:
    mock = MockTransport(lambda r: MockResponse.json({"detail": "Not Found"}, status=404))
    async with client(mock) as c:
        report = await c.health()
        with pytest.raises(BackendRejected) as info_:
            await c.generate_image(ImageRequest("a lighthouse"))
    assert report.reachable and not report.ready
    assert "--api" in (report.detail or "") and "--api" in (report.hint or "")
    assert "--api" in (info_.value.hint or "")
    assert len(mock.sent("/sdapi/v1/txt2img")) == 1


async def test_health_configured_model_missing_and_no_models() -> None:
    async with client(MockTransport(webui()), model="dreamshaper_8") as c:
        report = await c.health()
    assert not report.ready and report.reachable
    assert "dreamshaper_8" in (report.detail or "") and "backends.sdwebui.model" in (report.hint or "")
    async with client(MockTransport(webui(models=[]))) as c:
        empty = await c.health()
    assert not empty.ready and "no checkpoint" in (empty.detail or "")


async def test_health_unreachable() -> None:
    def refuse(request: MockRequest) -> MockResponse:
        raise ConnectionRefusedError(111, "Connection refused")

    async with client(MockTransport(refuse)) as c:
        report = await c.health()
    assert not report.reachable and not report.ready
    assert "webui.sh --api" in (report.hint or "")


async def test_422_validation_is_rejected_once() -> None:
    body = {
        "detail": [
            {"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}
        ]
    }
    mock = MockTransport(webui(lambda r: MockResponse.json(body, status=422)))
    async with client(mock) as c:
        with pytest.raises(BackendRejected) as exc:
            await c.generate_image(ImageRequest("a lighthouse", extras={"steps": "many"}))
    assert "steps: value is not a valid integer" in exc.value.message
    assert len(mock.sent("/sdapi/v1/txt2img")) == 1  # a 4xx is not retried


async def test_webui_http_exception_400_keeps_its_detail() -> None:
    body = {
        "error": "HTTPException",
        "detail": "Sampler not found",
        "body": "",
        "errors": "400: Sampler not found",
    }
    mock = MockTransport(webui(lambda r: MockResponse.json(body, status=400)))
    async with client(mock) as c:
        with pytest.raises(BackendRejected, match="Sampler not found"):
            await c.generate_image(ImageRequest("a lighthouse"))
    assert len(mock.sent("/sdapi/v1/txt2img")) == 1


async def test_500_out_of_memory_is_retried_with_a_hint() -> None:
    body = {
        "error": "OutOfMemoryError",
        "detail": "",
        "body": "",
        "errors": "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)",
    }
    mock = MockTransport(webui(lambda r: MockResponse.json(body, status=500)))
    async with client(mock) as c:
        with pytest.raises(BackendServerError) as exc:
            await c.generate_image(ImageRequest("a lighthouse", size=(2048, 2048)))
    assert "OutOfMemoryError: CUDA out of memory" in exc.value.message
    assert "smaller size" in (exc.value.hint or "")
    assert len(mock.sent("/sdapi/v1/txt2img")) > 1  # a 5xx is retried


async def test_answer_without_images_is_a_protocol_error() -> None:
    empty = {"images": [], "parameters": {}, "info": info(1, 1, 512, 512)}
    mock = MockTransport(webui(lambda r: MockResponse.json(empty)))
    async with client(mock) as c:
        with pytest.raises(BackendProtocolError, match="without images"):
            await c.generate_image(ImageRequest("a lighthouse"))


async def test_end_to_end_through_the_public_client() -> None:
    mock = MockTransport(webui())
    async with client(mock, model=TITLE) as c:
        assert (await c.health()).ready
        result = await c.generate_image(ImageRequest("a lighthouse", size="64x48", seed=5, n=2))
    assert result.ok and result.backend == "sdwebui"
    assert [(i.width, i.height, i.seed) for i in result.images] == [(64, 48, 5), (64, 48, 6)]
    assert mock.sent("/sdapi/v1/txt2img")[0].json()["override_settings"]["sd_model_checkpoint"] == TITLE


def test_imageworks_backends_lists_it_as_image_generation() -> None:
    cli = Path(sys.executable).with_name("imageworks")
    proc = subprocess.run([str(cli), "backends"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout[proc.stdout.index("\nsdwebui ") :].splitlines()[:6]
    assert any(line.strip() == "kinds: image_generation" for line in lines), proc.stdout


async def test_an_answer_that_is_not_json_is_a_protocol_error_with_its_first_bytes() -> None:
    """A proxy's HTML page instead of the WebUI's JSON: retried (the server may recover), then reported."""
    mock = MockTransport(webui(lambda r: MockResponse.text("<html>502 from the proxy</html>")))
    async with client(mock) as c:
        with pytest.raises(BackendProtocolError, match="malformed JSON") as info:
            await c.generate_image(ImageRequest("a lighthouse"))
    assert "<html>502 from the proxy" in info.value.message
    assert len(mock.sent("/sdapi/v1/txt2img")) == 4  # retry.max_attempts: a retryable error


def _state(job_no: int, job_count: int, step: int, steps: int) -> dict[str, Any]:
    """``GET /sdapi/v1/progress``: ``ProgressResponse`` with ``State.dict()`` (modules/shared_state.py)."""
    return {
        "progress": 0.0,
        "eta_relative": 1.0,
        "state": {
            "skipped": False,
            "interrupted": False,
            "stopping_generation": False,
            "job": "txt2img",
            "job_count": job_count,
            "job_timestamp": "20240601120000",
            "job_no": job_no,
            "sampling_step": step,
            "sampling_steps": steps,
        },
        "current_image": None,
        "textinfo": None,
        "current_task": "task(abc)",
    }


async def test_progress_is_read_beside_the_job_and_reaches_the_caller_as_events() -> None:
    import anyio

    from imageworks_core import Event

    seen: dict[str, int] = {"step": 0}
    finished = anyio.Event()

    async def handle(request: MockRequest) -> MockResponse:
        if request.path == "/sdapi/v1/progress":
            assert request.query == {"skip_current_image": "true"}  # never the preview image
            if finished.is_set():
                return MockResponse.json(_state(0, 0, 0, 0))  # idle
            seen["step"] += 5
            return MockResponse.json(_state(0, 1, min(seen["step"], 20), 20))
        if request.path == "/sdapi/v1/txt2img":
            await anyio.sleep(1.8)  # the job runs: about three progress reads at 0.5 s
            finished.set()
            return answer(request)
        return webui()(request)

    events: list[Event] = []
    mock = MockTransport(handle)
    async with client(mock) as c:
        result = await c.generate_image(ImageRequest("a lighthouse"), on_event=events.append)
        reads = len(mock.sent("/sdapi/v1/progress"))
        await anyio.sleep(0.7)  # no read after the job ended
        assert len(mock.sent("/sdapi/v1/progress")) == reads
    assert len(result.images) == 1
    progress = [e for e in events if e.kind == "progress"]
    assert 2 <= len(progress) <= 4, progress
    assert [e.step for e in progress] == sorted(e.step for e in progress) and progress[0].step == 5
    assert {(e.total, e.backend, e.attempt, e.detail) for e in progress} == {(20, "sdwebui", 1, None)}
    assert events[-1].kind == "done"

    # nobody listening: not one progress read
    quiet = MockTransport(handle)
    finished = anyio.Event()
    async with client(quiet) as c:
        await c.generate_image(ImageRequest("a lighthouse"))
    assert quiet.sent("/sdapi/v1/progress") == []


async def test_progress_reads_that_fail_never_fail_the_job() -> None:
    import anyio

    from imageworks_core import Event

    async def handle(request: MockRequest) -> MockResponse:
        if request.path == "/sdapi/v1/progress":
            calls = len(mock.sent("/sdapi/v1/progress"))
            if calls == 1:
                raise ConnectionResetError("reset")
            if calls == 2:
                return MockResponse.text("<html>busy</html>", status=200)
            return MockResponse.json({"detail": "Not Found"}, status=404)
        if request.path == "/sdapi/v1/txt2img":
            await anyio.sleep(1.8)
            return answer(request)
        return webui()(request)

    events: list[Event] = []
    mock = MockTransport(handle)
    async with client(mock) as c:
        result = await c.generate_image(ImageRequest("a lighthouse"), on_event=events.append)
    assert len(result.images) == 1 and len(mock.sent("/sdapi/v1/progress")) >= 3
    assert [e.kind for e in events] == ["started", "done"]


def test_parse_progress_steps_across_jobs_and_idle() -> None:
    from imageworks_backend_sdwebui._protocol import parse_progress

    assert parse_progress(_state(0, 0, 0, 0)) is None  # idle: job_count 0
    assert parse_progress(_state(0, 1, 7, 20)) == (7, 20, None)
    assert parse_progress(_state(1, 3, 4, 10)) == (14, 30, "job 2/3")
    assert parse_progress(_state(5, 3, 40, 10)) == (30, 30, "job 3/3")  # clamped
    assert parse_progress({"state": {"job_count": "1"}}) is None and parse_progress([]) is None


async def test_a_failed_job_raises_its_own_error_while_progress_is_watched() -> None:
    """The job's error comes out as it is (no exception group from the polling beside it)."""
    import anyio

    async def handle(request: MockRequest) -> MockResponse:
        if request.path == "/sdapi/v1/progress":
            return MockResponse.json(_state(0, 1, 3, 20))
        if request.path == "/sdapi/v1/txt2img":
            await anyio.sleep(0.7)
            return MockResponse.json({"error": "HTTPException", "detail": "Sampler not found"}, status=404)
        return webui()(request)

    events: list[Any] = []
    mock = MockTransport(handle)
    async with client(mock) as c:
        with pytest.raises(BackendRejected) as exc:
            await c.generate_image(ImageRequest("a lighthouse"), on_event=events.append)
    assert "Sampler not found" in exc.value.message
    assert [e.kind for e in events] == ["started", "progress", "failed"]


async def test_an_init_image_is_img2img_at_its_own_size_with_the_strength() -> None:
    from imageworks_core import PreparedImage

    raw = base64.b64decode(png(48, 32))
    start = PreparedImage.from_bytes(raw)
    mock = MockTransport(webui())
    async with client(mock, denoising_strength=0.4) as c:
        result = await c.generate_image(ImageRequest("a lighthouse", init_image=start, strength=0.65))
        await c.generate_image(ImageRequest("a lighthouse", init_image=start, size=(64, 64)))
    first, second = (r.json() for r in mock.sent("/sdapi/v1/img2img"))
    assert first["init_images"] == [base64.b64encode(raw).decode()]
    assert (first["width"], first["height"], first["denoising_strength"]) == (48, 32, 0.65)
    assert (second["width"], second["height"], second["denoising_strength"]) == (64, 64, 0.4)
    assert result.parameters["mode"] == "img2img" and (result.images[0].width, result.images[0].height) == (
        48,
        32,
    )
