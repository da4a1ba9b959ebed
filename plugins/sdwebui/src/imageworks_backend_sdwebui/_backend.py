"""The ``sdwebui`` backend: ``generate_image`` over ``/sdapi/v1/txt2img`` / ``img2img``, and health.

One request is one WebUI job (``batch_size = n``, ``n_iter = 1``).  The WebUI
runs its jobs one at a time behind a queue lock, so several requests in flight
wait for each other there; nothing is retried here (the core owns retries).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from imageworks_core import (
    BackendBase,
    BackendContext,
    BackendProtocolError,
    Capabilities,
    HealthReport,
    ImageRequest,
    ImageResult,
    hookimpl,
)
from imageworks_core.plugin import encode_body, redact_url

from ._protocol import (
    API_HINT,
    build_body,
    checkpoint_ids,
    map_error,
    parse_images,
    parse_info,
    parse_progress,
)
from ._settings import SdWebuiSettings

__all__ = ["SdWebuiBackend"]

MODELS = "/sdapi/v1/sd-models"
#: The running job's progress; without the preview image (a base64 PNG each time otherwise).
PROGRESS = "/sdapi/v1/progress?skip_current_image=true"
#: Seconds between progress reads while a job runs (the WebUI's own page polls about this often).
PROGRESS_EVERY = 0.5
OPTIONS = "/sdapi/v1/options"
#: ``Processed.js()`` keys reported as used, under the names the core's infotext reads.
_USED = {
    "steps": "steps",
    "sampler_name": "sampler",
    "cfg_scale": "guidance",
    "denoising_strength": "denoising_strength",
    "sd_model_hash": "model_hash",
    "sd_vae_name": "vae",
    "clip_skip": "clip_skip",
}


class SdWebuiBackend(BackendBase):
    name = "sdwebui"
    description = "Stable Diffusion WebUI API (AUTOMATIC1111, Forge, SD.Next): /sdapi/v1 txt2img and img2img"
    default_base_url = "http://127.0.0.1:7860"
    capabilities = Capabilities(vision=False, streaming=False, kinds=("image_generation",), init_image=True)
    settings_cls = SdWebuiSettings
    launch_hints = (
        "./webui.sh --api --listen",
        "Windows: set COMMANDLINE_ARGS=--api in webui-user.bat, then run webui-user.bat",
        "API only (port 7861): ./webui.sh --nowebui",
    )
    docs_url = "docs/backends/sdwebui.md"

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        settings = ctx.settings_as(SdWebuiSettings)
        resp = await ctx.http.request("GET", MODELS)  # down: BackendUnavailable propagates
        if resp.status == 404:
            return HealthReport.not_ready(
                ctx,
                f"{MODELS} answered HTTP 404: the WebUI runs without its API (--api)",
                API_HINT,
                rejected=True,
            )
        if resp.status >= 400:
            raise map_error(ctx.name, resp.status, resp.headers, resp.body, ctx.http.url(MODELS), ctx.hint)
        entries = ctx.http.json(resp, MODELS)
        if not isinstance(entries, list):
            raise BackendProtocolError(
                f"{ctx.name}: {MODELS} is not a list: {str(entries)[:200]}", backend=ctx.name
            )
        entries = [e for e in entries if isinstance(e, Mapping)]
        titles = tuple(str(e.get("title") or e.get("model_name") or "?") for e in entries)
        loaded = await self._loaded(ctx)
        detail = f"loaded checkpoint: {loaded}" if loaded else None
        if not entries:
            return HealthReport.not_ready(
                ctx,
                "the WebUI has no checkpoint installed",
                "put a checkpoint (.safetensors) in models/Stable-diffusion, then restart the WebUI "
                "or POST /sdapi/v1/refresh-checkpoints",
            )
        model = settings.model
        if model and not any(model in checkpoint_ids(e) for e in entries):
            return HealthReport.not_ready(
                ctx,
                f"checkpoint {model!r} is not installed in the WebUI (it has: {', '.join(titles[:5])})",
                "set backends.sdwebui.model to one of the listed titles (imageworks health lists them), "
                "or add that checkpoint to models/Stable-diffusion",
                models=titles,
                rejected=True,
            )
        return HealthReport.up(ctx, models=titles, detail=detail)

    async def _loaded(self, ctx: BackendContext) -> str | None:
        """``sd_model_checkpoint`` from ``/sdapi/v1/options`` (the loaded checkpoint), when it answers."""
        resp = await ctx.http.request("GET", OPTIONS)
        if resp.status >= 400:
            return None
        try:
            options = ctx.http.json(resp, OPTIONS)
        except BackendProtocolError:
            return None
        value = options.get("sd_model_checkpoint") if isinstance(options, Mapping) else None
        return value if isinstance(value, str) and value else None

    @hookimpl
    async def generate_image(self, ctx: BackendContext, request: ImageRequest) -> ImageResult:
        settings = ctx.settings_as(SdWebuiSettings)
        model = request.model or settings.model or None
        path, body = build_body(settings, request, model)
        url = ctx.http.url(path)
        started = time.perf_counter()
        post = ctx.http.request("POST", path, body=encode_body(body), timeout=request.timeout)
        if ctx.progress_wanted:  # the job's steps, read beside it while it runs

            async def poll() -> None:
                reply = await ctx.http.request("GET", PROGRESS, timeout=5.0)
                if reply.status == 200 and (step := parse_progress(ctx.http.json(reply, PROGRESS))):
                    ctx.progress(*step)

            resp = await ctx.polling(post, poll, every=PROGRESS_EVERY)
        else:
            resp = await post
        generated = time.perf_counter()
        if resp.status >= 400:
            raise map_error(ctx.name, resp.status, resp.headers, resp.body, url, ctx.hint)
        data = ctx.http.json(resp, path)
        if not isinstance(data, Mapping):
            raise BackendProtocolError(
                f"{ctx.name} at {redact_url(url)}: the answer is not a JSON object", backend=ctx.name, url=url
            )
        info = parse_info(data.get("info"))
        images = parse_images(ctx.name, url, data, info, request.n)
        done = time.perf_counter()
        seed = info.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            seed = images[0].seed
        return ImageResult(
            images=images,
            backend=ctx.name,
            model=str(info.get("sd_model_name") or model or ""),
            seed=seed,
            parameters=_used(body, info, path),
            timings={"generate": generated - started, "decode": done - generated},
        )


def _used(body: Mapping[str, Any], info: Mapping[str, Any], path: str) -> dict[str, Any]:
    """What the WebUI says it used (``info``), else nothing: a value only sent is not reported."""
    used: dict[str, Any] = {"mode": "img2img" if path.endswith("img2img") else "txt2img"}
    width, height = info.get("width"), info.get("height")
    if isinstance(width, int) and isinstance(height, int):
        used["size"] = f"{width}x{height}"
    for key, name in _USED.items():
        value = info.get(key)
        if value is not None and value != "":
            used[name] = value
    if info.get("negative_prompt"):
        used["negative_prompt"] = info["negative_prompt"]
    scheduler = body.get("scheduler")
    if isinstance(scheduler, str):  # not in Processed.js(); the WebUI validates it or refuses the request
        used["scheduler"] = scheduler
    return used
