"""Triton's KServe v2 HTTP API: the server root, model discovery and health.

Per-client facts live in ``ctx.state`` (keys ``triton_*``): the server root,
the server's metadata, the default model, each model's discovered inputs and
whether the generate extension answers.  ``kserve`` sends the requests.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import anyio
import attrs

from imageworks_core.plugin import (
    BackendContext,
    BackendProtocolError,
    BackendRejected,
    HealthReport,
    HttpResponse,
    Request,
    probe_metrics,
    redact_url,
)

from ._errors import error_text, is_unknown_model, one_line, triton_error, unknown_model_error
from ._metrics import metrics_url, parse_metrics
from ._model import ModelInfo, model_info_from
from ._settings import TritonSettings

__all__ = [
    "check_health",
    "decode_json",
    "discover",
    "forget",
    "mark_decoupled",
    "model_url",
    "resolve_model",
    "root",
    "server_metadata",
]

#: TensorRT-LLM's conventional entry model, tried when no model is configured.
DEFAULT_MODEL = "ensemble"
_HEALTH_TIMEOUT = 10.0
#: A metrics port that does not answer (firewalled) must not hold a health check up.
_METRICS_TIMEOUT = 2.0

# ------------------------------------------------------------------ the server root


def root(ctx: BackendContext) -> str:
    """The server root the ``/v2/...`` paths hang off (a trailing ``/v2`` in the base URL is dropped)."""
    base = ctx.state.get("triton_root")
    if base is None:
        base = ctx.base_url.rstrip("/")
        base = base.removesuffix("/v2")
        if base.endswith("/v1"):
            ctx.log.warning(
                "%s base URL %s ends in /v1, an OpenAI-style path; Triton's KServe API lives at the server "
                'root (port 8000). For Triton\'s OpenAI frontend set backends.triton.mode = "openai"',
                ctx.name,
                redact_url(base),
            )
        ctx.state["triton_root"] = base
    return base


def model_url(ctx: BackendContext, model: str, tail: str = "") -> str:
    return f"{root(ctx)}/v2/models/{quote(model, safe='')}{tail}"


def _optional_json(resp: HttpResponse) -> Any:
    """The JSON of a 200 answer to a question the server need not answer; ``None`` otherwise."""
    if resp.status != 200:
        return None
    try:
        return json.loads(resp.body)
    except ValueError:
        return None


def decode_json(ctx: BackendContext, resp: HttpResponse, url: str) -> Any:
    try:
        return json.loads(resp.body)
    except ValueError:
        raise BackendProtocolError(
            f"{ctx.name} at {redact_url(url)} sent malformed JSON (HTTP {resp.status}): "
            f"{resp.body[:200].decode('utf-8', 'replace')!r}",
            backend=ctx.name,
            url=url,
            status=resp.status,
            retryable=True,
        ) from None


# ------------------------------------------------------------------ server and model discovery


async def server_metadata(ctx: BackendContext) -> Mapping[str, Any]:
    """``GET /v2`` (name, version, extensions), cached; ``{}`` when the server does not say."""
    meta = ctx.state.get("triton_server")
    if meta is None:
        resp = await ctx.http.request("GET", f"{root(ctx)}/v2", timeout=_HEALTH_TIMEOUT)
        meta = {}
        obj = _optional_json(resp)
        if isinstance(obj, Mapping):
            meta = dict(obj)
        ctx.state["triton_server"] = meta
        if "triton_generate" not in ctx.state:
            ctx.state["triton_generate"] = _generate_from_extensions(meta)
    return meta


def _generate_from_extensions(meta: Mapping[str, Any]) -> bool | None:
    """``True``/``False`` when ``/v2`` settles it; ``None``: try it (Triton works but does not list it)."""
    extensions = meta.get("extensions")
    if not isinstance(extensions, list):
        return None
    if "generate" in extensions:
        return True
    if str(meta.get("name", "")).lower() == "triton":
        return None
    return False  # another KServe v2 server that lists its extensions: /infer only


async def resolve_model(ctx: BackendContext, request: Request) -> tuple[str, bool]:
    """``(model, defaulted)``: the request's, the configured, or one found in the repository index."""
    model = request.model or ctx.settings.model
    if model:
        return model, False
    cached = ctx.state.get("triton_default_model")
    if cached is not None:
        return cached
    url = f"{root(ctx)}/v2/repository/index"
    resp = await ctx.http.request("POST", url, body=b"{}", timeout=_HEALTH_TIMEOUT)
    names: list[str] = []
    entries = _optional_json(resp)
    if isinstance(entries, list):
        names = [
            str(e["name"])
            for e in entries
            if isinstance(e, Mapping) and e.get("name") and e.get("state", "READY") == "READY"
        ]
    names = list(dict.fromkeys(names))
    if DEFAULT_MODEL in names or not names:
        choice = (DEFAULT_MODEL, not names)
    elif len(names) == 1:
        choice = (names[0], False)
    else:
        raise BackendRejected(
            f"{ctx.name} at {redact_url(root(ctx))} serves several models ({', '.join(names)}) "
            "and none is configured",
            backend=ctx.name,
            hint=f'choose one: backends.triton.model = "{names[0]}" or --vlm-model NAME',
        )
    ctx.state["triton_default_model"] = choice
    return choice


async def discover(ctx: BackendContext, model: str, *, defaulted: bool = False) -> ModelInfo:
    """Inputs, outputs, batching and decoupling of *model* (``/v2/models/{m}`` + ``/config``), cached."""
    cache: dict[str, ModelInfo] = ctx.state.setdefault("triton_models", {})
    info = cache.get(model)
    if info is not None:
        return info
    lock: anyio.Lock = ctx.state.setdefault("triton_lock", anyio.Lock())
    async with lock:
        info = cache.get(model)
        if info is not None:
            return info
        url = model_url(ctx, model)
        resp = await ctx.http.request("GET", url)
        if resp.status >= 400:
            text = error_text(resp.body)
            if resp.status == 404 or is_unknown_model(text):
                raise unknown_model_error(ctx, model, url, resp.status, text, defaulted=defaulted)
            raise triton_error(ctx, resp.status, resp.headers, resp.body, url=url, model=model)
        metadata = decode_json(ctx, resp, url)
        if not isinstance(metadata, Mapping) or not isinstance(metadata.get("inputs"), list):
            raise BackendProtocolError(
                f"{ctx.name} at {redact_url(url)}: model metadata without an 'inputs' list: "
                f"{str(metadata)[:200]}",
                backend=ctx.name,
                url=url,
            )
        config: Mapping[str, Any] | None = None
        conf = await ctx.http.request("GET", url + "/config")
        obj = _optional_json(conf)  # optional: other KServe v2 servers have no /config
        config = obj if isinstance(obj, Mapping) else None
        info = model_info_from(model, metadata, config)
        cache[model] = info
        ctx.log.debug("%s: model %s: %s", ctx.name, model, info)
    return info


def mark_decoupled(ctx: BackendContext, info: ModelInfo) -> ModelInfo:
    info = attrs.evolve(info, decoupled=True)
    ctx.state.setdefault("triton_models", {})[info.name] = info
    return info


def forget(ctx: BackendContext, model: str) -> None:
    ctx.state.get("triton_models", {}).pop(model, None)


# ------------------------------------------------------------------ health


async def check_health(ctx: BackendContext) -> HealthReport:
    """Live, ready, server metadata, then the model's readiness and inputs."""
    start = time.perf_counter()
    base = root(ctx)

    def report(ready: bool, **kw: Any) -> HealthReport:
        return HealthReport(
            backend=ctx.name,
            url=redact_url(base),
            reachable=True,
            ready=ready,
            latency=time.perf_counter() - start,
            **kw,
        )

    live = await ctx.http.request("GET", f"{base}/v2/health/live", timeout=_HEALTH_TIMEOUT)
    if live.status not in (200, 400):
        return report(
            False,
            detail=f"no KServe v2 API at {redact_url(base)} (HTTP {live.status} from /v2/health/live)",
            hint=(
                'for Triton\'s OpenAI frontend (port 9000) set backends.triton.mode = "openai"; '
                "otherwise point backends.triton.base_url at Triton's HTTP port (8000)"
            ),
        )
    ready = await ctx.http.request("GET", f"{base}/v2/health/ready", timeout=_HEALTH_TIMEOUT)
    meta = await server_metadata(ctx)
    version = str(meta["version"]) if meta.get("version") else None
    if live.status != 200 or ready.status != 200:
        which = "/v2/health/live" if live.status != 200 else "/v2/health/ready"
        return report(
            False,
            version=version,
            detail=(
                f"Triton is up but not ready (HTTP {ready.status if live.status == 200 else live.status} "
                f"from {which}): its models are still loading, or one failed to load"
            ),
            hint="wait (imageworks health --wait 300), or read the server log for a model that failed",
        )
    model, defaulted = await resolve_model(ctx, Request())
    url = model_url(ctx, model, "/ready")
    mready = await ctx.http.request("GET", url, timeout=_HEALTH_TIMEOUT)
    if mready.status != 200:
        err = unknown_model_error(
            ctx, model, url, mready.status, error_text(mready.body), defaulted=defaulted
        )
        return report(
            False,
            version=version,
            models=(),
            detail=(
                f"model {model!r} is not ready or not loaded (HTTP {mready.status} from "
                f"/v2/models/{model}/ready: {one_line(error_text(mready.body))})"
                + (" - backends.triton.model is unset, so the TensorRT-LLM default was tried" * defaulted)
            ),
            hint=err.hint,
        )
    info = await discover(ctx, model, defaulted=defaulted)
    where = metrics_url(ctx, base)
    metrics: dict[str, float] = {}
    if where is not None:
        metrics = await probe_metrics(
            ctx, where, lambda text: parse_metrics(text, model), timeout=_METRICS_TIMEOUT
        )
    return report(True, version=version, models=(model,), detail=_describe(ctx, info), metrics=metrics)


def _describe(ctx: BackendContext, info: ModelInfo) -> str:
    if info.input("image_url_input") is not None:
        images = "images as data: URLs (image_url_input)"
    elif info.input("image") is not None:
        images = "images as base64 (image)"
    else:
        images = "no image input"
    route = {True: "generate", False: "/infer", None: "generate if offered, else /infer"}[
        ctx.state.get("triton_generate")
    ]
    endpoint = ctx.settings_as(TritonSettings).endpoint
    if endpoint != "auto":
        route = endpoint
    parts = [
        f"model {info.name!r} ready",
        f"inputs: {info.describe_inputs()}",
        images,
        "decoupled (streams via generate_stream)" if info.decoupled else f"via {route}",
    ]
    if info.batched:
        parts.append(f"max_batch_size {info.max_batch_size}")
    return "; ".join(parts)
