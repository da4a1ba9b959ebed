"""The ComfyUI backend: fill a workflow, queue it, poll its history, fetch its images.

``POST /prompt`` queues the workflow (a 400 names the failing node inputs);
``GET /history/{prompt_id}`` is polled every ``poll_interval`` seconds until the
entry appears (ComfyUI writes it when the prompt is done); each output image
comes from ``GET /view``.  When someone listens for progress, the request also
opens ``/ws`` with its own client id before queuing: the sampler's steps become
``progress`` events and the end of the prompt wakes the poller at once (see
``_progress``); without a working socket (a proxy that refuses it) it polls.
A request cancelled after queuing (the core's timeout, Ctrl-C) takes its prompt
off the server: ``POST /queue {"delete"}`` while pending, ``POST /interrupt
{"prompt_id"}`` while running.
"""

from __future__ import annotations

import contextlib
import io
import json
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import anyio

from imageworks_core import GeneratedImage, ImageRequest, ImageResult
from imageworks_core.plugin import (
    BackendBase,
    BackendContext,
    BackendError,
    BackendProtocolError,
    BackendRejected,
    Capabilities,
    ConfigError,
    HealthReport,
    InputError,
    encode_body,
    first_time,
    hookimpl,
    redact_url,
)

from ._progress import listen
from ._protocol import ImageRef, checkpoints_from_object_info, history_outcome, prompt_refusal, queue_place
from ._settings import ComfyUISettings
from ._workflow import PLACEHOLDERS, default_workflow, fill, load_workflow, placeholders_in, request_workflow

__all__ = ["ComfyUIBackend"]

#: ``ImageRequest.extras`` keys this backend reads.
EXTRAS = ("workflow", "sampler_name", "scheduler")
#: Polls between two checks that the prompt is still queued (a deleted prompt never reaches the history).
QUEUE_CHECK_EVERY = 20
#: Largest seed drawn when a request has none (ComfyUI's KSampler takes 0 .. 2**64-1).
SEED_BITS = 48
#: Request fields and the placeholders that carry them (warned once when a workflow lacks them).
_CARRIED_BY = {"size": "width", "steps": "steps", "guidance": "cfg", "negative_prompt": "negative_prompt"}


class ComfyUIBackend(BackendBase):
    name = "comfyui"
    description = "Text-to-image on a ComfyUI server: an API-format workflow queued over its HTTP API"
    default_base_url = "http://localhost:8188"
    capabilities = Capabilities(vision=False, streaming=False, kinds=("image_generation",))
    settings_cls = ComfyUISettings
    launch_hints = ("python main.py --listen 127.0.0.1 --port 8188   # in the ComfyUI folder",)
    docs_url = "docs/backends/comfyui.md"

    # ------------------------------------------------------------ health

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        settings = ctx.settings_as(ComfyUISettings)
        stats = await ctx.http.get_json("/system_stats")  # down: BackendUnavailable propagates
        system = stats.get("system") if isinstance(stats, Mapping) else None
        version = system.get("comfyui_version") if isinstance(system, Mapping) else None
        fields: dict[str, Any] = {
            "version": str(version) if version else None,
            "metrics": await _metrics(ctx, stats),
        }
        if settings.workflow:
            try:
                await load_workflow(settings.workflow, ctx.name)
            except ConfigError as exc:
                return HealthReport.not_ready(ctx, exc.message, exc.hint, rejected=True, **fields)
        checkpoints = await self._checkpoints(ctx)
        model = settings.model
        if model and checkpoints is not None and model not in checkpoints:
            shown = ", ".join(checkpoints[:10]) or "none"
            return HealthReport.not_ready(
                ctx,
                f"checkpoint {model!r} is not on the server (it has: {shown})",
                f"set backends.{ctx.name}.model to one of them, "
                "or copy the file into ComfyUI/models/checkpoints",
                models=tuple(checkpoints),
                rejected=True,
                **fields,
            )
        if not checkpoints and not settings.workflow:
            return HealthReport.not_ready(
                ctx,
                "ComfyUI lists no checkpoint (models/checkpoints is empty)",
                "put a checkpoint (.safetensors) into ComfyUI/models/checkpoints",
                **fields,
            )
        return HealthReport.up(ctx, checkpoints or (), **fields)

    async def _checkpoints(self, ctx: BackendContext) -> list[str] | None:
        """Checkpoint file names: ``/models/checkpoints``, else ``/object_info/CheckpointLoaderSimple``."""
        resp = await ctx.http.request("GET", "/models/checkpoints")
        if resp.status == 200:
            data = ctx.http.json(resp, "/models/checkpoints")
            if isinstance(data, list):
                return [str(x) for x in data]
        elif resp.status != 404:  # 404: a ComfyUI older than the /models routes
            raise ctx.http.error(resp, "/models/checkpoints")
        return checkpoints_from_object_info(await ctx.http.get_json("/object_info/CheckpointLoaderSimple"))

    # ------------------------------------------------------------ generation

    @hookimpl
    async def generate_image(self, ctx: BackendContext, request: ImageRequest) -> ImageResult:
        settings = ctx.settings_as(ComfyUISettings)
        workflow, values, used, source = await self._workflow(ctx, settings, request)
        started = time.perf_counter()
        async with contextlib.AsyncExitStack() as stack:
            socket, client_id = await self._socket(ctx, stack)
            prompt_id = await self._queue(ctx, workflow, client_id, request.timeout)
            try:
                refs = await self._wait(ctx, settings, prompt_id, request.timeout, socket)
            except BaseException:
                await self._withdraw(ctx, settings, prompt_id)
                raise
        generated = time.perf_counter()
        images = [await self._view(ctx, ref, request.timeout) for ref in refs]
        done = time.perf_counter()
        seed = values["seed"] if "seed" in used else None
        images[0] = GeneratedImage(images[0].data, images[0].mime, images[0].width, images[0].height, seed)
        parameters: dict[str, Any] = {k: values[k] for k in PLACEHOLDERS if k in used and k != "prompt"}
        parameters.pop("model", None)
        parameters.update(workflow=source, prompt_id=prompt_id, size=f"{images[0].width}x{images[0].height}")
        return ImageResult(
            images=tuple(images),
            backend=ctx.name,
            model=_checkpoint_of(workflow),
            seed=seed,
            parameters=parameters,
            timings={"generate": generated - started, "download": done - generated},
        )

    async def _workflow(
        self, ctx: BackendContext, settings: ComfyUISettings, request: ImageRequest
    ) -> tuple[dict[str, Any], dict[str, Any], set[str], str]:
        """The filled workflow, the values, the placeholders used, and where it came from."""
        unknown = sorted(set(request.extras) - set(EXTRAS))
        if unknown:
            raise InputError(
                f"{ctx.name}: unknown extras {', '.join(unknown)}",
                hint=f"the {ctx.name} backend reads extras {', '.join(EXTRAS)}; "
                "put anything else into the workflow",
            )
        template: dict[str, Any] | None = None
        source = "default"
        if "workflow" in request.extras:
            template, source = request_workflow(request.extras["workflow"]), "request"
        elif settings.workflow:
            template, source = await load_workflow(settings.workflow, ctx.name), settings.workflow
        try:
            used = set(PLACEHOLDERS) if template is None else placeholders_in(template)
        except ValueError as exc:  # already checked on load; kept for the type checker
            raise InputError(str(exc)) from None
        if template is not None:
            if request.n > 1 and "batch_size" not in used:
                raise InputError(
                    f"{ctx.name}: n={request.n} but the workflow has no {{{{batch_size}}}} placeholder",
                    hint='put "{{batch_size}}" in the EmptyLatentImage batch_size input, or ask for n=1',
                )
            missing = [f for f, p in _CARRIED_BY.items() if getattr(request, f) is not None and p not in used]
            if fresh := first_time(ctx, "comfyui-unused", missing):
                ctx.log.warning(
                    "%s: the workflow has no placeholder for %s; the workflow's own values are used",
                    ctx.name,
                    ", ".join(fresh),
                )
        width, height = request.size or (settings.width, settings.height)
        values: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or "",
            "seed": request.seed if request.seed is not None else secrets.randbits(SEED_BITS),
            "width": width,
            "height": height,
            "steps": request.steps or settings.steps,
            "cfg": float(request.guidance if request.guidance is not None else settings.cfg),
            "batch_size": request.n,
            "sampler_name": str(request.extras.get("sampler_name") or settings.sampler_name),
            "scheduler": str(request.extras.get("scheduler") or settings.scheduler),
            "model": None,
        }
        if "model" in used:
            values["model"] = await self._model(ctx, request)
        if template is None:
            return default_workflow(values, settings.filename_prefix), values, used, source
        return fill(template, values), values, used, source

    async def _model(self, ctx: BackendContext, request: ImageRequest) -> str:
        """The request's checkpoint, else the configured one, else the server's only one."""
        model = request.model or ctx.settings.model
        if model:
            return str(model)
        found = await self._checkpoints(ctx) or []
        where = redact_url(ctx.base_url)
        if len(found) == 1:
            return found[0]
        what = f"has several checkpoints ({', '.join(found[:10])})" if found else "lists no checkpoint"
        raise BackendRejected(
            f"{ctx.name} at {where} {what} and no model is set",
            backend=ctx.name,
            hint=f'set backends.{ctx.name}.model = "<checkpoint file name>" (see `imageworks health`)',
        )

    async def _queue(
        self, ctx: BackendContext, workflow: dict[str, Any], client_id: str, timeout: float | None
    ) -> str:
        """``POST /prompt``; the prompt id."""
        body = encode_body({"prompt": workflow, "client_id": client_id})
        resp = await ctx.http.request("POST", "/prompt", body=body, timeout=timeout)
        url = redact_url(ctx.http.url("/prompt"))
        if resp.status >= 400:
            refusal = None
            if 400 <= resp.status < 500:
                refusal = prompt_refusal(_json(resp.body), backend=ctx.name, url=url, status=resp.status)
            raise refusal or ctx.http.error(resp, "/prompt")
        answer = ctx.http.json(resp, "/prompt")
        prompt_id = answer.get("prompt_id") if isinstance(answer, Mapping) else None
        if not isinstance(prompt_id, str) or not prompt_id:
            raise BackendProtocolError(
                f"{ctx.name} at {url} answered without a prompt_id: {resp.body[:200]!r}",
                backend=ctx.name,
                url=url,
                retryable=True,
            )
        if node_errors := answer.get("node_errors"):  # some outputs invalid, the others run
            ctx.log.warning("%s: ComfyUI skips invalid outputs of the workflow: %s", ctx.name, node_errors)
        return prompt_id

    async def _socket(self, ctx: BackendContext, stack: contextlib.AsyncExitStack) -> tuple[Any, str]:
        """``(socket, client_id)``: ``/ws`` opened with a client id of this request's own when
        someone listens for progress (``(None, the context's id)`` otherwise, or when it fails)."""
        if not ctx.progress_wanted or ctx.state.get("comfyui_no_ws"):
            return None, ctx.state.setdefault("comfyui_client_id", uuid.uuid4().hex)
        client_id = uuid.uuid4().hex
        try:
            socket = await stack.enter_async_context(ctx.http.websocket(f"/ws?clientId={client_id}"))
        except BackendProtocolError as exc:  # refused (a proxy without WebSockets): poll from now on
            ctx.state["comfyui_no_ws"] = True
            ctx.log.warning("%s: no progress over /ws (%s); polling the history only", ctx.name, exc.message)
            return None, client_id
        except BackendError:
            return None, client_id  # down: queuing the prompt says so
        return socket, client_id

    async def _wait(
        self,
        ctx: BackendContext,
        settings: ComfyUISettings,
        prompt_id: str,
        timeout: float | None,
        socket: Any = None,
    ) -> list[ImageRef]:
        """The prompt's output images, once it is done; its progress from *socket* meanwhile."""
        ended = anyio.Event()
        if socket is None:
            return await self._poll(ctx, settings, prompt_id, timeout, ended)
        refs: list[ImageRef] = []
        failed: Exception | None = None  # raised as itself, not inside an exception group
        async with anyio.create_task_group() as tg:
            tg.start_soon(_listen, ctx, socket, prompt_id, ended)
            try:
                refs = await self._poll(ctx, settings, prompt_id, timeout, ended)
            except Exception as exc:
                failed = exc
            finally:
                tg.cancel_scope.cancel()
        if failed is not None:
            raise failed
        return refs

    async def _poll(
        self,
        ctx: BackendContext,
        settings: ComfyUISettings,
        prompt_id: str,
        timeout: float | None,
        ended: anyio.Event,
    ) -> list[ImageRef]:
        """Poll ``/history/{prompt_id}`` until the prompt is done (sooner when *ended* is set)."""
        path = f"/history/{prompt_id}"
        url = redact_url(ctx.http.url(path))
        polls = 0
        while True:
            refs = history_outcome(
                await ctx.http.get_json(path, timeout=timeout), prompt_id, backend=ctx.name, url=url
            )
            if refs is not None:
                return refs
            polls += 1
            if (
                polls % QUEUE_CHECK_EVERY == 0
                and queue_place(await ctx.http.get_json("/queue"), prompt_id) is None
            ):
                refs = history_outcome(await ctx.http.get_json(path), prompt_id, backend=ctx.name, url=url)
                if refs is not None:  # it finished between the two looks
                    return refs
                raise BackendProtocolError(
                    f"{ctx.name}: prompt {prompt_id} left the queue without reaching the history "
                    "(deleted by someone, or the server restarted)",
                    backend=ctx.name,
                    url=url,
                    retryable=True,
                )
            if ended.is_set():  # the socket said it ended: the history entry is a moment away
                await anyio.sleep(min(settings.poll_interval, 0.05))
            else:
                with anyio.move_on_after(settings.poll_interval):
                    await ended.wait()

    async def _view(self, ctx: BackendContext, ref: ImageRef, timeout: float | None) -> GeneratedImage:
        """``GET /view?filename=..&subfolder=..&type=..``: one image."""
        path = f"/view?{urlencode(ref.query())}"
        resp = await ctx.http.request("GET", path, timeout=timeout)
        if resp.status >= 400:
            raise ctx.http.error(resp, path)
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(resp.body)) as img:
                mime = Image.MIME.get(img.format or "", "application/octet-stream")
                width, height = img.size
        except (UnidentifiedImageError, OSError) as exc:
            raise BackendProtocolError(
                f"{ctx.name}: {ref.filename!r} from /view is not an image it can read: {exc}",
                backend=ctx.name,
                retryable=True,
            ) from None
        return GeneratedImage(resp.body, mime, width, height)

    async def _withdraw(self, ctx: BackendContext, settings: ComfyUISettings, prompt_id: str) -> None:
        """Take an abandoned prompt off the server, within ``cancel_timeout`` seconds, shielded."""
        with anyio.move_on_after(settings.cancel_timeout, shield=True):
            try:
                for _ in range(2):  # a pending prompt may start between the look and the delete
                    place = queue_place(await ctx.http.get_json("/queue"), prompt_id)
                    if place == "pending":
                        await ctx.http.request("POST", "/queue", body=encode_body({"delete": [prompt_id]}))
                    elif place == "running":
                        # scoped by prompt_id in newer ComfyUI; older ones interrupt whatever runs,
                        # which is ours: it was running a moment ago
                        await ctx.http.request(
                            "POST", "/interrupt", body=encode_body({"prompt_id": prompt_id})
                        )
                        return
                    else:
                        return
            except BackendError as exc:
                ctx.log.warning("%s: could not withdraw prompt %s: %s", ctx.name, prompt_id, exc.message)
                return
        ctx.log.debug("%s: withdrew prompt %s", ctx.name, prompt_id)


def _json(body: bytes) -> Any:
    """A refusal's body, when it is JSON (else ``None``: the core's error mapping reads it)."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _checkpoint_of(workflow: Mapping[str, Any]) -> str:
    """The ``ckpt_name`` the workflow loads (its first checkpoint loader), or ``""``."""
    for node in workflow.values():
        name = node.get("inputs", {}).get("ckpt_name") if isinstance(node, Mapping) else None
        if isinstance(name, str):
            return name
    return ""


async def _metrics(ctx: BackendContext, stats: Any) -> dict[str, float]:
    """VRAM of the first device (bytes) and queue lengths, as far as the server tells."""
    out: dict[str, float] = {}
    devices = stats.get("devices") if isinstance(stats, Mapping) else None
    if isinstance(devices, list) and devices and isinstance(devices[0], Mapping):
        for key in ("vram_total", "vram_free"):
            if isinstance(devices[0].get(key), int | float):
                out[f"{key}_bytes"] = float(devices[0][key])
    try:
        queue = await ctx.http.get_json("/queue")
    except BackendError:
        return out
    if isinstance(queue, Mapping):
        out["running"] = float(len(queue.get("queue_running") or ()))
        out["waiting"] = float(len(queue.get("queue_pending") or ()))
    return out


async def _listen(ctx: BackendContext, socket: Any, prompt_id: str, ended: anyio.Event) -> None:
    """The socket's progress, until it ends or breaks (then the history polling carries on)."""
    try:
        await listen(ctx, socket, prompt_id, ended)
    except BackendError as exc:
        ctx.log.debug("%s: /ws ended early (%s); polling the history", ctx.name, exc.message)
