"""The in-process diffusers backend: lazy load, one generation at a time, unload on close.

The pipeline is built by ``diffusers.AutoPipelineForText2Image.from_pretrained``
(any text-to-image pipeline: Stable Diffusion 1.x/2.x, SDXL ...) on the first
request, in a worker thread, under a lock so concurrent first requests load it
once.  Each generation runs in a worker thread under a second lock (a pipeline is
not thread-safe).  Image ``i`` of a request uses ``torch.Generator`` seeded with
``seed + i``, so an image is the same whatever ``n`` was asked.  A cancelled
request (timeout, Ctrl-C) stops the pipeline at its next step
(``callback_on_step_end`` sets the pipeline's interrupt flag); the client's close
drops the pipeline, collects garbage and empties the CUDA cache.
"""

from __future__ import annotations

import gc
import io
import os
import secrets
import threading
import time
from typing import Any

import anyio
import attrs

from imageworks_core import (
    BackendBase,
    BackendContext,
    BackendRejected,
    BackendSettings,
    BackendUnavailable,
    Capabilities,
    GeneratedImage,
    HealthReport,
    ImageRequest,
    ImageResult,
    InputError,
    hookimpl,
)

__all__ = ["DiffusersBackend", "DiffusersSettings"]

DEVICES = ("auto", "cpu", "cuda")


def _device(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in DEVICES and not (value.startswith("cuda:") and value[5:].isdigit()):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {value!r}")


def _at_least_one(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


@attrs.frozen(slots=True)
class DiffusersSettings(BackendSettings):
    """Settings of the in-process diffusers backend.

    ``model`` (common key) is a local pipeline folder (``save_pretrained``
    layout) or a Hub id.  ``extra_body`` (common key) and ``ImageRequest.extras``
    are passed to the pipeline call (e.g. ``{"eta": 0.0}``).  ``timeout`` caps
    one request; ``base_url`` and the HTTP settings do not apply.

    Attributes:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        steps: Denoising steps when a request gives none.
        guidance: Guidance scale when a request gives none.
        local_files_only: Never contact the Hub (also on with ``HF_HUB_OFFLINE=1``).
    """

    device: str = attrs.field(default="auto", validator=_device)
    steps: int = attrs.field(default=30, validator=_at_least_one)
    guidance: float = 7.5
    local_files_only: bool = False


class _State:
    def __init__(self) -> None:
        self.load_lock = anyio.Lock()
        self.run_lock = threading.Lock()  # one generation at a time, held by the worker thread
        self.pipe: Any = None
        self.img2img: Any = None  # the same components as an image-to-image pipeline, made on first use
        self.device = "cpu"
        self.closed = False
        self.generations = 0
        self.load_seconds: float | None = None


def _pick_device(setting: str) -> str:
    if setting != "auto":
        return setting
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class DiffusersBackend(BackendBase):
    name = "diffusers"
    description = "A Hugging Face diffusers text-to-image pipeline run in-process (no server; CPU or CUDA)"
    default_base_url = "http://in-process.invalid"
    capabilities = Capabilities(
        vision=False, streaming=False, model_switch=False, kinds=("image_generation",), init_image=True
    )
    settings_cls = DiffusersSettings
    launch_hints = (
        "nothing to start: the pipeline loads inside this process on the first request",
        "set backends.diffusers.model to a pipeline folder or a Hub id (e.g. a Stable Diffusion 1.5 copy)",
    )
    docs_url = "plugins/diffusers/README.md"

    # ------------------------------------------------------------ hooks

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        settings = ctx.settings_as(DiffusersSettings)
        st = self._state(ctx)
        model = settings.model
        if not model:
            return HealthReport(
                backend=ctx.name,
                url=ctx.base_url,
                reachable=True,
                ready=False,
                detail="no pipeline configured",
                hint="set backends.diffusers.model (a pipeline folder or a Hub id), or --model",
                rejected=True,
            )
        local = await anyio.to_thread.run_sync(os.path.isdir, str(model))
        if not local and (settings.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1"):
            return HealthReport(
                backend=ctx.name,
                url=ctx.base_url,
                reachable=True,
                ready=False,
                detail=f"{model!r} is not a folder and the Hub is off",
                hint="point backends.diffusers.model at a pipeline folder (save_pretrained layout)",
                rejected=True,
            )
        return HealthReport(
            backend=ctx.name,
            url=ctx.base_url,
            reachable=True,
            ready=True,
            models=(str(model),),
            detail="loaded" if st.pipe is not None else "loads on the first request",
            metrics={"generations": float(st.generations)},
        )

    @hookimpl
    async def generate_image(self, ctx: BackendContext, request: ImageRequest) -> ImageResult:
        settings = ctx.settings_as(DiffusersSettings)
        st = self._state(ctx)
        loaded_now = await self._load(ctx, st, settings)
        steps = request.steps or settings.steps
        guidance = request.guidance if request.guidance is not None else settings.guidance
        seed = request.seed if request.seed is not None else secrets.randbits(63)
        width, height = request.size or (None, None)
        for side in (width, height):
            if side is not None and side % 8:
                raise BackendRejected(
                    f"{ctx.name}: size {width}x{height}: each side must be a multiple of 8",
                    backend=ctx.name,
                    hint="e.g. --size 512x512",
                )
        kwargs: dict[str, Any] = {**ctx.settings.extra_body, **request.extras}
        start = _start_image(request) if request.init_image is not None else None
        stop = threading.Event()
        report = ctx.progress_wanted  # each step a progress event (from the worker thread)

        def run() -> tuple[list[Any], float, float, str]:
            import torch

            with st.run_lock:
                pipe = st.pipe
                if pipe is None or st.closed:
                    raise BackendUnavailable(f"{ctx.name}: the pipeline was unloaded (client closed)")

                def on_step(p: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
                    if stop.is_set():
                        p._interrupt = True
                    elif report:
                        ctx.progress(step + 1, int(getattr(p, "num_timesteps", 0) or steps))
                    return tensors

                gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(request.n)]
                t0 = time.perf_counter()
                call: dict[str, Any] = {
                    "prompt": [request.prompt] * request.n,
                    "negative_prompt": [request.negative_prompt] * request.n
                    if request.negative_prompt
                    else None,
                    "num_inference_steps": steps,
                    "guidance_scale": guidance,
                    "generator": gens,
                    "callback_on_step_end": on_step,
                }
                if start is None:
                    call.update(height=height, width=width)
                else:  # the same weights as an image-to-image pipeline; the size is the image's
                    if st.img2img is None:
                        from diffusers import AutoPipelineForImage2Image

                        st.img2img = AutoPipelineForImage2Image.from_pipe(pipe)
                    pipe = st.img2img
                    call["image"] = start
                    if request.strength is not None:
                        call["strength"] = request.strength
                out = pipe(**{**call, **kwargs})  # extras may override (and the pipeline judges them)
                t1 = time.perf_counter()
                st.generations += 1
                images = list(out.images)
                encoded = []
                for img in images:
                    buf = io.BytesIO()
                    img.save(buf, "PNG")
                    encoded.append((buf.getvalue(), img.size))
                return encoded, t1 - t0, time.perf_counter() - t1, type(pipe.scheduler).__name__

        try:
            encoded, gen_s, enc_s, sampler = await anyio.to_thread.run_sync(run, abandon_on_cancel=True)
        except anyio.get_cancelled_exc_class():
            stop.set()  # the thread stops at its next step and frees the lock
            raise
        except (ValueError, TypeError) as exc:  # the pipeline refused an argument (an extra, a size)
            raise BackendRejected(
                f"{ctx.name}: the pipeline refused the request: {exc}", backend=ctx.name
            ) from exc
        images = tuple(
            GeneratedImage(data, "image/png", size[0], size[1], seed + i)
            for i, (data, size) in enumerate(encoded)
        )
        timings = {"generate": gen_s, "encode": enc_s}
        if loaded_now and st.load_seconds is not None:
            timings["load"] = st.load_seconds
        w, h = (images[0].width, images[0].height) if images else (0, 0)
        return ImageResult(
            images=images,
            backend=ctx.name,
            model=str(settings.model),
            seed=seed,
            parameters={
                "steps": steps,
                "guidance": guidance,
                "sampler": sampler,
                "size": f"{w}x{h}",
                "negative_prompt": request.negative_prompt,
                **({"mode": "img2img", "strength": request.strength} if start is not None else {}),
                **kwargs,
            },
            timings=timings,
        )

    # ------------------------------------------------------------ loading

    @staticmethod
    def _state(ctx: BackendContext) -> _State:
        st = ctx.state.get("diffusers")
        if st is None:
            st = ctx.state["diffusers"] = _State()
        return st

    async def _load(self, ctx: BackendContext, st: _State, settings: DiffusersSettings) -> bool:
        """Load the pipeline once (True when this call loaded it)."""
        if st.pipe is not None:
            return False
        async with st.load_lock:
            if st.pipe is not None:
                return False
            if st.closed:
                raise BackendUnavailable(f"{ctx.name}: the client is closed")
            if not settings.model:
                raise BackendRejected(
                    f"{ctx.name}: no pipeline configured",
                    backend=ctx.name,
                    hint="set backends.diffusers.model (a pipeline folder or a Hub id)",
                )
            device = _pick_device(settings.device)
            offline = settings.local_files_only or os.environ.get("HF_HUB_OFFLINE") == "1"

            def load() -> Any:
                from diffusers import AutoPipelineForText2Image

                pipe = AutoPipelineForText2Image.from_pretrained(
                    str(settings.model), local_files_only=offline
                )
                pipe.set_progress_bar_config(disable=True)
                return pipe.to(device)

            t0 = time.perf_counter()
            try:
                pipe = await anyio.to_thread.run_sync(load)
            except (OSError, ValueError) as exc:
                raise BackendRejected(
                    f"{ctx.name}: cannot load the pipeline {settings.model!r}: {exc}",
                    backend=ctx.name,
                    hint="point backends.diffusers.model at a pipeline folder (save_pretrained layout)",
                ) from exc
            st.pipe, st.device = pipe, device
            st.load_seconds = time.perf_counter() - t0
            ctx.log.info("%s: loaded %s on %s in %.1fs", ctx.name, settings.model, device, st.load_seconds)

            async def unload() -> None:
                await self._unload(ctx, st)

            ctx.on_close(unload)
            return True

    async def _unload(self, ctx: BackendContext, st: _State) -> None:
        st.closed = True

        def drop() -> None:
            with st.run_lock:  # a running generation finishes (or stops) first
                st.pipe = st.img2img = None
            gc.collect()
            if st.device.startswith("cuda"):
                import torch

                torch.cuda.empty_cache()

        await anyio.to_thread.run_sync(drop)
        ctx.log.info("%s: pipeline unloaded", ctx.name)


def _start_image(request: ImageRequest) -> Any:
    """``request.init_image`` as an RGB PIL image at the output size (sides rounded down to 8)."""
    from PIL import Image

    assert request.init_image is not None
    try:
        with Image.open(io.BytesIO(request.init_image.data)) as im:
            image = im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise InputError(f"init_image cannot be decoded: {exc}") from None
    width, height = request.size or image.size
    width, height = max(8, width - width % 8), max(8, height - height % 8)
    if (width, height) != image.size:
        image = image.resize((width, height), Image.Resampling.LANCZOS)
    return image
