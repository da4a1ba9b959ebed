"""``VllmBackend``: the core's OpenAI-compatible backend plus vLLM's quirks.

What differs from the generic backend:

* health reads ``/health`` (engine alive / dead), ``/v1/models`` (models,
  LoRA adapters, ``max_model_len``), ``/version`` and ``/metrics``, and tells
  "reachable but ``--api-key`` protected" apart from "down";
* vLLM's own body fields come from ``VllmSettings``; the ``guided_*`` fields
  that vLLM 0.12 dropped (silently: the answer is unconstrained) are rewritten
  as ``structured_outputs`` and never sent;
* rejections vLLM explains in words (context too long, too many images, an
  unknown model, an image it could not read) get a hint saying what to change.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import anyio

from imageworks_core import (
    BackendContext,
    BackendError,
    BackendRejected,
    Capabilities,
    Chunk,
    HealthReport,
    OpenAICompatBackend,
    Request,
    Result,
    hookimpl,
)
from imageworks_core.plugin import first_time, max_model_len, probe_metrics, redact_url

from ._metrics import parse_metrics
from ._settings import VllmSettings

__all__ = ["GUIDED_FIELDS", "VllmBackend"]

#: Removed ``guided_*`` request fields -> their key inside ``structured_outputs``.
GUIDED_FIELDS: Mapping[str, str] = {
    "guided_json": "json",
    "guided_regex": "regex",
    "guided_choice": "choice",
    "guided_grammar": "grammar",
    "guided_whitespace_pattern": "whitespace_pattern",
}
#: Removed fields with no per-request replacement: dropped with a warning.
_GUIDED_DROPPED = frozenset({"guided_decoding_backend"})
#: The mutually exclusive constraint kinds of ``structured_outputs``.
_CONSTRAINTS = frozenset({"json", "regex", "choice", "grammar", "json_object", "structural_tag"})
_REWRITTEN = frozenset(GUIDED_FIELDS) | _GUIDED_DROPPED | {"max_pixels", "mm_processor_kwargs"}

_PROBE_TIMEOUT = 10.0
_TOO_MANY_IMAGES = re.compile(r"at most (\d+) image", re.IGNORECASE)
_CONTEXT_MARKERS = ("maximum context length", "maximum model length", "max_model_len")
_UNREADABLE_IMAGE_MARKERS = (
    "cannot identify image",
    "image file is truncated",
    "failed to load image",
    "invalid image",
    "incorrect padding",
    "invalid base64",
    "could not decode",
)
_REMOTE_MARKERS = ("url", "fetch", "download", "media", "connect")


class VllmBackend(OpenAICompatBackend):
    """vLLM's OpenAI-compatible server (``vllm serve``)."""

    name = "vllm"
    description = "vLLM's OpenAI-compatible server (vllm serve)"
    default_base_url = "http://localhost:8000/v1"
    capabilities = Capabilities(
        vision=True,
        streaming=True,
        max_images=None,
        model_switch=True,
        structured_output=True,
        kinds=("vision", "text"),
    )
    settings_cls = VllmSettings
    launch_hints = (
        "vllm serve Qwen/Qwen2-VL-2B-Instruct --max-model-len 8192 --gpu-memory-utilization 0.85"
        " --max-num-seqs 16 --limit-mm-per-prompt '{\"image\":2}'"
        " --mm-processor-kwargs '{\"max_pixels\":1003520}'   # 16 GB GPU (RTX 4080)",
        "vllm serve Qwen/Qwen2.5-VL-7B-Instruct --max-model-len 32768 --gpu-memory-utilization 0.90"
        " --max-num-seqs 128   # 96 GB GPU (RTX 6000 Pro; needs a CUDA >= 12.8 build)",
    )
    docs_url = "docs/backends/vllm.md"
    force_v1 = True

    # ------------------------------------------------------------ hooks

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        try:
            return await super().infer(ctx, request)
        except BackendRejected as exc:
            await self.explain_rejection(ctx, request, exc)
            raise

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncGenerator[Chunk, None]:
        try:
            async with contextlib.aclosing(super().stream(ctx, request)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except BackendRejected as exc:
            await self.explain_rejection(ctx, request, exc)
            raise

    # ------------------------------------------------------------ health

    async def check_health(self, ctx: BackendContext) -> HealthReport:
        """``/health`` first (refused: down or loading), then models, version and metrics together."""
        url = redact_url(ctx.base_url)
        health_url = self.root(ctx, "health")
        resp = await ctx.http.request("GET", health_url, timeout=_PROBE_TIMEOUT)
        if resp.status == 503:
            return HealthReport(
                backend=ctx.name,
                url=url,
                reachable=True,
                ready=False,
                detail=f"HTTP 503 from {redact_url(health_url)}: the vLLM engine is dead "
                "(crashed, or ran out of GPU memory)",
                hint=f"see the vllm serve log for the cause, then restart it\n{ctx.hint}",
            )

        found: dict[str, Any] = {}

        async def models() -> None:
            try:
                found["models"] = await self.list_models(ctx)
            except BackendError as exc:
                found["models_error"] = exc

        async def version() -> None:
            found["version"] = await self._probe_version(ctx)

        async def metrics() -> None:
            found["metrics"] = await self._probe_metrics(ctx)

        async with anyio.create_task_group() as tg:
            tg.start_soon(models)
            tg.start_soon(version)
            tg.start_soon(metrics)

        common: dict[str, Any] = {
            "backend": ctx.name,
            "url": url,
            "reachable": True,
            "version": found.get("version"),
            "metrics": found.get("metrics") or {},
        }
        error = found.get("models_error")
        if error is not None:
            if error.status is None:  # the connection failed after /health answered
                raise error
            if error.status in (401, 403):
                detail, hint = self._auth_problem(ctx)
                return HealthReport(ready=False, detail=detail, hint=hint, **common)
            return HealthReport(ready=False, detail=error.message, hint=error.hint, **common)

        ids, entries = found["models"]
        common["models"] = tuple(ids)
        common["max_model_len"] = max_model_len(entries)
        if resp.status not in (200, 404):
            return HealthReport(
                ready=False,
                detail=f"HTTP {resp.status} from {redact_url(health_url)}: the engine is not healthy",
                hint=f"see the vllm serve log\n{ctx.hint}",
                **common,
            )
        if not ids:
            return HealthReport(
                ready=False,
                detail="the server lists no models",
                hint="start vllm serve with a model (e.g. vllm serve Qwen/Qwen2-VL-2B-Instruct)",
                **common,
            )
        wanted = ctx.settings.model
        if wanted and wanted not in ids:
            return HealthReport(
                ready=False,
                detail=f"the configured model {wanted!r} is not served here (served: {', '.join(ids)})",
                hint=f'set backends.{ctx.name}.model = "{ids[0]}" (or --vlm-model), '
                f"or start vllm serve {wanted}",
                **common,
            )
        notes = []
        adapters = [e for e in entries if e.get("parent")]
        if adapters:
            notes.append("LoRA adapters: " + ", ".join(f"{e['id']} (on {e['parent']})" for e in adapters))
        if resp.status == 404:
            notes.append(f"no {redact_url(health_url)} route (is this a vLLM server?)")
        return HealthReport(ready=True, detail="; ".join(notes) or None, **common)

    async def _probe_version(self, ctx: BackendContext) -> str | None:
        """``GET /version`` -> ``{"version": "x.y.z"}``; ``None`` when absent (other servers)."""
        try:
            resp = await ctx.http.request("GET", self.root(ctx, "version"), timeout=_PROBE_TIMEOUT)
        except BackendError:
            return None
        if resp.status != 200:
            return None
        try:
            obj = json.loads(resp.body)
        except ValueError:
            return None
        value = obj.get("version") if isinstance(obj, Mapping) else None
        return value if isinstance(value, str) and value else None

    async def _probe_metrics(self, ctx: BackendContext) -> dict[str, float]:
        """Load figures from ``GET /metrics`` (Prometheus text); empty when it is absent."""
        return await probe_metrics(ctx, self.root(ctx, "metrics"), parse_metrics, timeout=_PROBE_TIMEOUT)

    def _auth_problem(self, ctx: BackendContext) -> tuple[str, str]:
        """Detail and hint for a 401/403 from ``/v1/models`` while ``/health`` answered."""
        models_url = redact_url(self.api(ctx, "models"))
        env_name = ctx.settings.api_key_env
        if ctx.settings.api_key or (env_name and os.environ.get(env_name)):
            return (
                f"reachable, but {models_url} refused the API key sent (HTTP 401)",
                "the key must equal the one given to vllm serve --api-key; "
                f"check backends.{ctx.name}.api_key_env"
                + (f" (the variable {env_name})" if env_name else ""),
            )
        return (
            f"reachable, but not usable: {models_url} answered HTTP 401 Unauthorized "
            "(the server was started with --api-key)",
            _api_key_hint(ctx),
        )

    # ------------------------------------------------------------ request body

    def extra_fields(self, ctx: BackendContext, request: Request) -> Mapping[str, Any]:
        """vLLM's fields from ``VllmSettings`` (computed once per client: settings are frozen)."""
        fields = ctx.state.get("vllm_fields")
        if fields is None:
            settings = ctx.settings
            fields = settings.body_fields() if isinstance(settings, VllmSettings) else {}
            ctx.state["vllm_fields"] = fields
        return fields

    def build_body(
        self, ctx: BackendContext, request: Request, model: str, *, stream: bool
    ) -> dict[str, Any]:
        body = super().build_body(ctx, request, model, stream=stream)
        layers = (ctx.settings.extra_body, self.extra_fields(ctx, request), request.extra)
        if any(not _REWRITTEN.isdisjoint(layer) for layer in layers):
            self._rewrite(ctx, body, layers)
        return body

    def _rewrite(
        self, ctx: BackendContext, body: dict[str, Any], layers: tuple[Mapping[str, Any], ...]
    ) -> None:
        """Merge ``mm_processor_kwargs`` across layers and turn ``guided_*`` into ``structured_outputs``.

        *layers* run from lowest to highest precedence (``extra_body``,
        settings, ``Request.extra``).  The highest layer that asks for a
        constraint decides ``structured_outputs``; ``mm_processor_kwargs`` is
        merged key by key, ``max_pixels`` being a shortcut for its key.
        """
        structured: Any = None
        mm: dict[str, Any] = {}
        for layer in layers:
            own = self._structured_in(ctx, layer)
            if own is not None:
                structured = own
            value = layer.get("mm_processor_kwargs")
            if isinstance(value, Mapping):
                mm.update(value)
            if layer.get("max_pixels") is not None:
                mm["max_pixels"] = layer["max_pixels"]
        for key in _REWRITTEN:
            body.pop(key, None)
        if structured is not None:
            body["structured_outputs"] = structured
        if mm:
            body["mm_processor_kwargs"] = mm

    def _structured_in(self, ctx: BackendContext, layer: Mapping[str, Any]) -> Any:
        """The ``structured_outputs`` one layer asks for, its ``guided_*`` fields translated."""
        translated = {GUIDED_FIELDS[k]: v for k, v in layer.items() if k in GUIDED_FIELDS}
        for key in layer:
            if key in GUIDED_FIELDS or key in _GUIDED_DROPPED:
                self._warn_guided(ctx, key)
        given = layer.get("structured_outputs")
        if isinstance(given, Mapping):
            merged = dict(given)
            has_constraint = not _CONSTRAINTS.isdisjoint(merged)
            for key, value in translated.items():
                if key not in merged and not (has_constraint and key in _CONSTRAINTS):
                    merged[key] = value  # e.g. a whitespace_pattern beside an explicit constraint
            return merged
        if given is not None:
            return given  # not ours to judge; vLLM will say what is wrong with it
        return translated or None

    def _warn_guided(self, ctx: BackendContext, key: str) -> None:
        if not first_time(ctx, "vllm_guided", [key]):
            return
        if key in GUIDED_FIELDS:
            ctx.log.warning(
                "%s: %r was removed in vLLM 0.12 and is silently ignored there; "
                'sending it as structured_outputs {"%s": ...} instead (use structured_outputs directly)',
                ctx.name,
                key,
                GUIDED_FIELDS[key],
            )
        else:
            ctx.log.warning(
                "%s: %r was removed in vLLM 0.12 and has no per-request replacement; not sending it "
                "(choose the structured-output backend when starting vllm serve)",
                ctx.name,
                key,
            )

    # ------------------------------------------------------------ errors

    async def explain_rejection(self, ctx: BackendContext, request: Request, exc: BackendRejected) -> None:
        """Replace the hint of a rejection vLLM explained in words by what to change."""
        message = exc.message
        lower = message.lower()
        hint: str | None = None
        model = request.model or ctx.settings.model or ctx.state.get("served_model")
        too_many = _TOO_MANY_IMAGES.search(message)
        if exc.status in (401, 403):
            hint = _api_key_hint(ctx)
        elif too_many:
            hint = (
                f"this server takes at most {too_many.group(1)} image(s) per prompt: send fewer images "
                f"per request, or restart vllm serve with --limit-mm-per-prompt "
                f"'{{\"image\":{max(len(request.images), int(too_many.group(1)) + 1)}}}'"
            )
        elif any(m in lower for m in _CONTEXT_MARKERS):
            hint = (
                "the prompt (text + image tokens) plus max_tokens does not fit the model's context: "
                f"lower backends.{ctx.name}.max_pixels (server-side image budget) or the client's "
                "max_pixels / max_tokens, or restart vllm serve with a larger --max-model-len"
            )
        elif any(m in lower for m in _UNREADABLE_IMAGE_MARKERS):
            hint = (
                "the server could not decode an image: check that the file opens locally "
                "(imageworks_core.prepare_image re-encodes it as JPEG) and that the data URL's "
                "MIME type matches its bytes"
            )
        elif exc.status == 422 and any(m in lower for m in _REMOTE_MARKERS):
            hint = (
                "the server could not fetch an image URL: send images as data (PreparedImage / "
                "prepare_image make data: URLs), or for file:// paths start vllm serve with "
                "--allowed-local-media-path DIR"
            )
        elif model and (
            exc.status == 404
            or model in message
            or ("model" in lower and ("does not exist" in lower or "not found" in lower))
        ):
            hint = await self._unknown_model_hint(ctx, model)
        if hint is not None:
            exc.with_hint(hint)

    async def _unknown_model_hint(self, ctx: BackendContext, model: str) -> str | None:
        try:
            served, _ = await self.list_models(ctx)
        except BackendError:
            return None
        if model in served:
            return None  # the rejection is about something else
        if ctx.state.get("served_model") == model:
            del ctx.state["served_model"]  # the server was restarted with another model
        where = redact_url(ctx.base_url)
        if not served:
            return f"{where} serves no model: start vllm serve with {model}"
        return (
            f"{model!r} is not served at {where}; served: {', '.join(served)}. "
            f'Set backends.{ctx.name}.model = "{served[0]}" (or --vlm-model), or start vllm serve {model}'
        )


def _api_key_hint(ctx: BackendContext) -> str:
    env = f"IMAGEWORKS_BACKENDS__{ctx.name.upper()}__API_KEY_ENV"
    return (
        "put the key given to vllm serve --api-key in an environment variable "
        f'(e.g. VLLM_API_KEY) and set backends.{ctx.name}.api_key_env = "VLLM_API_KEY" '
        f"(or {env}=VLLM_API_KEY)"
    )
