"""The LMDeploy backend (``lmdeploy serve api_server``) for ImageWorks.

LMDeploy speaks the OpenAI chat-completions protocol on port 23333, so this
plugin is ``OpenAICompatBackend`` plus LMDeploy's quirks:

- ``/health`` has two shapes: up to 0.13 it is always ``200`` with an empty
  body; from 0.14 it is JSON ``{"status", "message"}`` with ``200`` for
  ``healthy`` / ``sleeping`` and ``503`` for ``initializing`` / ``unhealthy``.
  There is no version endpoint.  ``/metrics`` (Prometheus) gives the load.
- Per-image resizing travels *inside* the ``image_url`` object
  (``{"url": ..., "max_pixels": N, "min_pixels": M}``).
- Older servers (<= 0.15) report a prompt longer than ``--session-len`` as an
  HTTP 200 answer with ``finish_reason: "length"`` and no text, or with
  ``finish_reason: "error"``: both become errors here, never an empty result.
- LMDeploy has no ``presence_penalty`` / ``frequency_penalty``: they are
  dropped (with one warning) rather than sent.
- ``/v1/models`` lists the base model first, then any LoRA adapters: with no
  model configured, requests go to the base model.

Not detectable from the answer: LMDeploy <= 0.12.2 silently replaces an image
it cannot decode with a 32x32 dummy (see the README: upgrade the server).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import attrs

from imageworks_core.plugin import (
    BackendContext,
    BackendProtocolError,
    BackendRejected,
    BackendSettings,
    Capabilities,
    Chunk,
    HealthReport,
    OpenAICompatBackend,
    PreparedImage,
    Request,
    drop_fields,
    extract_error_message,
    load_metrics,
    max_model_len,
    probe_metrics,
    redact_url,
    set_fields,
)

__all__ = ["LmdeployBackend", "LmdeploySettings", "parse_metrics", "plugin"]

#: Prometheus metric -> ``HealthReport.metrics`` key.
METRICS: dict[str, str] = {
    "lmdeploy:num_requests_running": "running",
    "lmdeploy:num_requests_waiting": "waiting",
    "lmdeploy:gpu_cache_usage_perc": "kv_cache_usage",
}
#: OpenAI sampling fields LMDeploy does not implement (it offers ``repetition_penalty``).
UNSUPPORTED_FIELDS: tuple[str, ...] = ("presence_penalty", "frequency_penalty")
#: Per-image resize keys LMDeploy reads inside each ``image_url`` object.
PIXEL_KEYS: tuple[str, ...] = ("max_pixels", "min_pixels")
#: Settings sent as top-level body fields when set.
BODY_FIELDS: tuple[str, ...] = (
    "top_k",
    "min_p",
    "repetition_penalty",
    "min_new_tokens",
    "seed",
    "skip_special_tokens",
    "chat_template_kwargs",
    "response_format",
)
HEALTH_TIMEOUT = 10.0
SESSION_LEN_HINT = (
    "the prompt (text plus image tokens) and max_tokens must fit the server's --session-len: "
    "raise --session-len when starting lmdeploy, or lower backends.lmdeploy.max_pixels "
    "(fewer image tokens) or max_tokens"
)

_positive = attrs.validators.optional(attrs.validators.gt(0))
_non_negative = attrs.validators.optional(attrs.validators.ge(0))


def _check_min_pixels(instance: LmdeploySettings, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and instance.max_pixels is not None and value > instance.max_pixels:
        raise ValueError(f"min_pixels ({value}) must not exceed max_pixels ({instance.max_pixels})")


def _check_min_p(instance: LmdeploySettings, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"min_p must be between 0 and 1, got {value}")


@attrs.frozen(slots=True)
class LmdeploySettings(BackendSettings):
    """Settings of the LMDeploy backend (``[tool.imageworks.backends.lmdeploy]``).

    Every LMDeploy-specific key is sent only when set; unset keys leave the
    server's own defaults in force.

    Attributes:
        max_pixels: Per-image pixel cap applied by the server's processor
            (Qwen2-VL family), sent inside each ``image_url`` object.  Lower it
            to fit more images into ``--session-len`` and a small GPU.
        min_pixels: Per-image pixel floor, sent the same way.
        top_k: Keep only the *k* most likely tokens when sampling.
        min_p: Minimum token probability relative to the most likely one (0..1).
        repetition_penalty: LMDeploy's penalty for repeats (1.0 = none); it
            stands in for OpenAI's presence/frequency penalties, which
            LMDeploy does not have.
        min_new_tokens: Generate at least this many tokens.
        seed: Random seed for sampling (repeatable output).
        skip_special_tokens: Remove special tokens from the text (server
            default: true).
        chat_template_kwargs: Extra variables for the model's chat template
            (e.g. ``{"enable_thinking": false}``).
        response_format: Structured output, as OpenAI's ``response_format``
            (``{"type": "json_schema", "json_schema": {...}}``,
            ``{"type": "json_object"}``) or LMDeploy's
            ``{"type": "regex_schema", "regex_schema": "..."}`` (PyTorch engine).
    """

    max_pixels: int | None = attrs.field(default=None, validator=_positive)
    min_pixels: int | None = attrs.field(default=None, validator=[_positive, _check_min_pixels])
    top_k: int | None = attrs.field(default=None, validator=_non_negative)
    min_p: float | None = attrs.field(default=None, validator=_check_min_p)
    repetition_penalty: float | None = attrs.field(default=None, validator=_positive)
    min_new_tokens: int | None = attrs.field(default=None, validator=_non_negative)
    seed: int | None = None
    skip_special_tokens: bool | None = None
    chat_template_kwargs: Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None


def parse_metrics(text: str) -> dict[str, float]:
    """LMDeploy's load figures from a Prometheus exposition.

    Returns ``running`` and ``waiting`` (summed over label sets) and
    ``kv_cache_usage`` (the highest: see ``imageworks_core.load_metrics``),
    for whichever of them the text holds.
    """
    names = {key: tuple(m for m, k in METRICS.items() if k == key) for key in set(METRICS.values())}
    return load_metrics(
        text, running=names["running"], waiting=names["waiting"], kv_cache=names["kv_cache_usage"]
    )


def _health_state(status: int, body: bytes) -> tuple[str, str | None]:
    """``(state, server message)`` from a ``/health`` answer of any LMDeploy version."""
    text = body.strip()
    obj: Any = None
    if text:
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
    if isinstance(obj, Mapping) and isinstance(obj.get("status"), str):
        message = obj.get("message")
        return obj["status"].strip().lower(), (str(message) if message else None)
    if status == 200:
        return "healthy", None  # <= 0.13: always 200, empty body
    if status == 503:
        return "unhealthy", (extract_error_message(body) if text else None)
    if status in (401, 403, 404, 405):
        return "unknown", None  # a proxy in front, or not /health at all: ask /v1/models
    return "error", extract_error_message(body)


def _with_pixels(messages: list[Any], pixels: Mapping[str, Any]) -> list[Any]:
    """Copies of *messages* whose ``image_url`` parts carry *pixels* (``None`` removes a key)."""
    out: list[Any] = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            out.append(message)
            continue
        parts: list[Any] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "image_url":
                image_url = part.get("image_url")
                obj = dict(image_url) if isinstance(image_url, Mapping) else {"url": image_url}
                for key, value in pixels.items():
                    if value is None:
                        obj.pop(key, None)
                    else:
                        obj[key] = value
                part = {**part, "image_url": obj}
            parts.append(part)
        out.append({**message, "content": parts})
    return out


class LmdeployBackend(OpenAICompatBackend):
    """LMDeploy's ``api_server``: OpenAI-compatible, one model per server."""

    name = "lmdeploy"
    description = "LMDeploy api_server (TurboMind / PyTorch engines), OpenAI-compatible on port 23333"
    default_base_url = "http://localhost:23333/v1"
    capabilities = Capabilities(
        vision=True,
        streaming=True,
        max_images=None,
        model_switch=False,
        structured_output=True,
        kinds=("vision", "text"),
    )
    settings_cls = LmdeploySettings
    launch_hints = (
        "lmdeploy serve api_server Qwen/Qwen2-VL-2B-Instruct --backend pytorch --session-len 8192"
        " --cache-max-entry-count 0.5 --max-batch-size 16   # 16 GB GPU",
        "lmdeploy serve api_server Qwen/Qwen2.5-VL-7B-Instruct --backend pytorch --session-len 32768"
        " --cache-max-entry-count 0.8 --max-batch-size 128 --vision-max-batch-size 8   # 96 GB GPU",
    )
    docs_url = "docs/backends/lmdeploy.md"
    force_v1 = True

    # ------------------------------------------------------------ health

    async def check_health(self, ctx: BackendContext) -> HealthReport:
        health_url = self.root(ctx, "health")
        resp = await ctx.http.request("GET", health_url, timeout=min(HEALTH_TIMEOUT, ctx.settings.timeout))
        state, message = _health_state(resp.status, resp.body)
        where = f"{ctx.name} at {redact_url(health_url)}"
        said = f": {message}" if message else ""
        report = HealthReport(backend=ctx.name, url=redact_url(ctx.base_url), reachable=True, ready=False)
        if state == "initializing":
            report = attrs.evolve(
                report,
                detail=f"{where} is initializing (HTTP {resp.status}){said}",
                hint="the server is up but still loading its model; wait until it reports healthy, "
                "then retry (a large model can take minutes)",
            )
        elif state == "sleeping":
            report = attrs.evolve(
                report,
                detail=f"{where} is sleeping (its model is offloaded){said}",
                hint=f"wake it: curl -X POST {redact_url(self.root(ctx, 'wakeup'))}",
            )
        elif state == "unhealthy" or (resp.status >= 500 and state not in ("healthy", "unknown")):
            report = attrs.evolve(
                report,
                detail=f"{where} reports it is unhealthy (HTTP {resp.status}){said}",
                hint="see the lmdeploy server log; restart the server if the engine died",
            )
        elif state == "error":
            report = attrs.evolve(report, detail=f"{where} answered HTTP {resp.status}{said}")
        else:  # healthy (any version), or a /health we cannot read: /v1/models decides
            models, entries = await self.list_models(ctx)
            owners = sorted({str(e.get("owned_by")) for e in entries if e.get("owned_by")} - {"lmdeploy"})
            detail = None if models else f"{ctx.name} at {redact_url(ctx.base_url)} lists no models"
            if models and owners:
                detail = (
                    f"models are owned_by {', '.join(owners)}, not 'lmdeploy': is this an LMDeploy server?"
                )
            report = attrs.evolve(
                report,
                ready=bool(models),
                models=tuple(models),
                max_model_len=max_model_len(entries),
                detail=detail,
            )
        return attrs.evolve(report, metrics=await self.fetch_metrics(ctx))

    async def fetch_metrics(self, ctx: BackendContext) -> dict[str, float]:
        """Load figures from ``/metrics`` (on by default since LMDeploy 0.11); ``{}`` when unavailable."""
        return await probe_metrics(ctx, self.root(ctx, "metrics"), parse_metrics, timeout=HEALTH_TIMEOUT)

    # ------------------------------------------------------------ requests

    def choose_model(self, ctx: BackendContext, entries: list[Mapping[str, Any]]) -> str:
        """LMDeploy serves one model; adapters are listed after it, so the first entry is the base."""
        models = [str(e["id"]) for e in entries]
        if len(models) > 1:
            ctx.log.info(
                "%s serves %s; using the base model %r (set backends.%s.model for an adapter)",
                ctx.name,
                ", ".join(models),
                models[0],
                ctx.name,
            )
        return models[0]

    def image_part(self, ctx: BackendContext, image: PreparedImage) -> dict[str, Any]:
        image_url: dict[str, Any] = {"url": image.data_url(), **set_fields(ctx.settings, PIXEL_KEYS)}
        return {"type": "image_url", "image_url": image_url}

    def extra_fields(self, ctx: BackendContext, request: Request) -> Mapping[str, Any]:
        fields = ctx.state.get("extra_fields")
        if fields is None:
            fields = ctx.state["extra_fields"] = set_fields(ctx.settings, BODY_FIELDS)
        return fields

    def build_body(
        self, ctx: BackendContext, request: Request, model: str, *, stream: bool
    ) -> dict[str, Any]:
        body = super().build_body(ctx, request, model, stream=stream)
        drop_fields(
            ctx,
            body,
            UNSUPPORTED_FIELDS,
            f"LMDeploy has no such field (use backends.{ctx.name}.repetition_penalty instead)",
        )
        # max_pixels / min_pixels given as extras (per request or extra_body) belong in each image.
        pixels = {key: body.pop(key) for key in PIXEL_KEYS if key in body}
        if pixels:
            body["messages"] = _with_pixels(body["messages"], pixels)
        return body

    # ------------------------------------------------------------ answers

    def parse_chunk(self, ctx: BackendContext, obj: Mapping[str, Any]) -> Chunk | None:
        chunk = super().parse_chunk(ctx, obj)
        # Older servers repeat (cumulative) usage on every chunk: a chunk with
        # choices but neither text nor finish_reason carries nothing new.
        if chunk is not None and not chunk.text and chunk.finish_reason is None and obj.get("choices"):
            return None
        return chunk

    def check_finish(
        self, ctx: BackendContext, finish_reason: str | None, has_text: bool, model: str
    ) -> None:
        url = self.api(ctx, "chat/completions")
        if finish_reason == "length" and not has_text:
            raise BackendRejected(
                f"{ctx.name} at {redact_url(url)} stopped with finish_reason 'length' before writing any "
                f"text (model {model}): LMDeploy <= 0.15 answers this way when the prompt does not fit "
                "its session length",
                backend=ctx.name,
                url=url,
                hint=SESSION_LEN_HINT,
            )
        if finish_reason == "error":
            raise BackendProtocolError(
                f"{ctx.name} at {redact_url(url)} ended generation with finish_reason 'error' "
                f"(model {model}): the engine failed on this request",
                backend=ctx.name,
                url=url,
                hint="see the lmdeploy server log; on LMDeploy <= 0.15 this usually means "
                + SESSION_LEN_HINT,
            )


#: The entry-point target: a stateless plugin object (per-client state lives in the context).
plugin = LmdeployBackend()
