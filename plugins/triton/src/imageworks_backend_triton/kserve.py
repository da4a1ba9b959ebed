"""Triton's KServe v2 HTTP API: health, model discovery, ``/infer``, ``generate``, ``generate_stream``.

Per-client facts live in ``ctx.state`` (keys ``triton_*``): the server root,
each model's discovered inputs, whether the generate extension answers, and
the warnings already given.  See ``tests/servers/TRITON_NOTES.md`` for the
wire shapes these functions were written against.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any
from urllib.parse import quote

import anyio
import attrs

from imageworks_core.plugin import (
    BackendContext,
    BackendError,
    BackendProtocolError,
    BackendRejected,
    Chunk,
    HealthReport,
    HttpResponse,
    Request,
    Result,
    encode_body,
    first_time,
    iter_sse_data,
    probe_metrics,
    redact_url,
)

from ._errors import (
    error_text,
    is_decoupled_on_infer,
    is_unknown_model,
    needs_stream,
    one_line,
    triton_error,
    unknown_model_error,
)
from ._inputs import Plan, build_plan
from ._metrics import metrics_url, parse_metrics
from ._model import ModelInfo, model_info_from
from ._settings import TritonSettings

__all__ = [
    "check_health",
    "discover",
    "generate",
    "generate_stream",
    "infer",
    "infer_v2",
    "resolve_model",
    "root",
    "stream",
]

#: TensorRT-LLM's conventional entry model, tried when no model is configured.
DEFAULT_MODEL = "ensemble"
_HEALTH_TIMEOUT = 10.0
#: A metrics port that does not answer (firewalled) must not hold a health check up.
_METRICS_TIMEOUT = 2.0
_FINISH = "stop"  # Triton does not say why generation ended; a completed answer is reported as "stop"


class _NoGenerate(Exception):
    """The server has no generate extension (404/405 on ``/generate``)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _NeedsStream(Exception):
    """``/generate`` said the model sends several responses, or ``/infer`` that it is decoupled."""


# ------------------------------------------------------------------ small helpers


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


def _model_url(ctx: BackendContext, model: str, tail: str = "") -> str:
    return f"{root(ctx)}/v2/models/{quote(model, safe='')}{tail}"


def _decode(ctx: BackendContext, resp: HttpResponse, url: str) -> Any:
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


def _text_of(value: Any) -> str | None:
    """A BYTES output as text: a string, or a (nested) list of strings joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = [_text_of(v) for v in value]
        if all(p is not None for p in parts):
            return "".join(p for p in parts if p is not None)
    return None


def _missing_output(ctx: BackendContext, url: str, output: str, keys: Any) -> BackendProtocolError:
    return BackendProtocolError(
        f"{ctx.name} at {redact_url(url)} answered without {output!r} (it sent: {keys})",
        backend=ctx.name,
        url=url,
        hint="set backends.triton.text_output_name to the model's text output",
    )


def _warn_dropped(ctx: BackendContext, plan: Plan) -> None:
    if not plan.dropped:
        return
    fresh = first_time(ctx, f"triton_inputs:{plan.model.name}", plan.dropped)
    if fresh:
        ctx.log.warning(
            "%s: model %r does not declare %s; not sent (its inputs: %s)",
            ctx.name,
            plan.model.name,
            ", ".join(fresh),
            plan.model.describe_inputs(),
        )


def _plan(ctx: BackendContext, request: Request, info: ModelInfo, *, stream: bool) -> Plan:
    plan = build_plan(
        ctx.settings_as(TritonSettings), ctx.client_settings, request, info, stream=stream, backend=ctx.name
    )
    _warn_dropped(ctx, plan)
    return plan


# ------------------------------------------------------------------ server and model discovery


async def server_metadata(ctx: BackendContext) -> Mapping[str, Any]:
    """``GET /v2`` (name, version, extensions), cached; ``{}`` when the server does not say."""
    meta = ctx.state.get("triton_server")
    if meta is None:
        resp = await ctx.http.request("GET", f"{root(ctx)}/v2", timeout=_HEALTH_TIMEOUT)
        meta = {}
        if resp.status == 200:
            try:
                obj = json.loads(resp.body)
            except ValueError:
                obj = None
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
    if resp.status == 200:
        try:
            entries = json.loads(resp.body)
        except ValueError:
            entries = None
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
        url = _model_url(ctx, model)
        resp = await ctx.http.request("GET", url)
        if resp.status >= 400:
            text = error_text(resp.body)
            if resp.status == 404 or is_unknown_model(text):
                raise unknown_model_error(ctx, model, url, resp.status, text, defaulted=defaulted)
            raise triton_error(ctx, resp.status, resp.headers, resp.body, url=url, model=model)
        metadata = _decode(ctx, resp, url)
        if not isinstance(metadata, Mapping) or not isinstance(metadata.get("inputs"), list):
            raise BackendProtocolError(
                f"{ctx.name} at {redact_url(url)}: model metadata without an 'inputs' list: "
                f"{str(metadata)[:200]}",
                backend=ctx.name,
                url=url,
            )
        config: Mapping[str, Any] | None = None
        conf = await ctx.http.request("GET", url + "/config")
        if conf.status == 200:  # optional: other KServe v2 servers have no /config
            try:
                obj = json.loads(conf.body)
            except ValueError:
                obj = None
            config = obj if isinstance(obj, Mapping) else None
        info = model_info_from(model, metadata, config)
        cache[model] = info
        ctx.log.debug("%s: model %s: %s", ctx.name, model, info)
    return info


def _mark_decoupled(ctx: BackendContext, info: ModelInfo) -> ModelInfo:
    info = attrs.evolve(info, decoupled=True)
    ctx.state.setdefault("triton_models", {})[info.name] = info
    return info


def _forget(ctx: BackendContext, model: str) -> None:
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
    url = _model_url(ctx, model, "/ready")
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


# ------------------------------------------------------------------ requests


async def _use_generate(ctx: BackendContext) -> bool:
    endpoint = ctx.settings_as(TritonSettings).endpoint
    if endpoint != "auto":
        return endpoint == "generate"
    if "triton_generate" not in ctx.state:
        await server_metadata(ctx)
    return ctx.state.get("triton_generate") is not False


def _no_generate(ctx: BackendContext, url: str, status: int, info: ModelInfo) -> BackendError:
    if info.decoupled:
        return BackendRejected(
            f"{ctx.name} at {redact_url(url)}: model {info.name!r} is decoupled (it streams), Triton's HTTP "
            f"/infer cannot serve it and this server has no generate extension (HTTP {status})",
            backend=ctx.name,
            url=url,
            status=status,
            hint="serve a non-decoupled model for /infer, or use a Triton with the generate extension",
        )
    return BackendRejected(
        f"{ctx.name} at {redact_url(url)}: the server has no generate extension (HTTP {status})",
        backend=ctx.name,
        url=url,
        status=status,
        hint='set backends.triton.endpoint = "infer" (or "auto")',
    )


async def infer(ctx: BackendContext, request: Request) -> Result:
    """One answer: generate, else ``/infer``; decoupled models through ``generate_stream``."""
    model, defaulted = await resolve_model(ctx, request)
    info = await discover(ctx, model, defaulted=defaulted)
    if not info.decoupled and await _use_generate(ctx):
        try:
            return await generate(ctx, request, info)
        except _NoGenerate as exc:
            if ctx.settings_as(TritonSettings).endpoint == "generate":
                raise _no_generate(ctx, _model_url(ctx, model, "/generate"), exc.status, info) from None
            ctx.state["triton_generate"] = False
            ctx.log.info("%s: no generate extension at %s; using /infer", ctx.name, redact_url(root(ctx)))
        except _NeedsStream:
            info = _mark_decoupled(ctx, info)
    if not info.decoupled:
        try:
            return await infer_v2(ctx, request, info)
        except _NeedsStream:
            info = _mark_decoupled(ctx, info)
    return await _collect(ctx, request, info)


async def _collect(ctx: BackendContext, request: Request, info: ModelInfo) -> Result:
    texts: list[str] = []
    model = info.name
    finish: str | None = None
    try:
        chunks = generate_stream(ctx, request, info, stream=False)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                texts.append(chunk.text)
                model = chunk.model or model
                finish = chunk.finish_reason or finish
    except _NoGenerate as exc:
        raise _no_generate(ctx, _model_url(ctx, info.name, "/generate_stream"), exc.status, info) from None
    return Result(text="".join(texts), backend=ctx.name, model=model, finish_reason=finish)


async def generate(ctx: BackendContext, request: Request, info: ModelInfo) -> Result:
    """``POST /v2/models/{m}/generate``: one JSON answer."""
    plan = _plan(ctx, request, info, stream=False)
    url = _model_url(ctx, info.name, "/generate")
    resp = await ctx.http.request(
        "POST", url, body=encode_body(plan.generate_body()), timeout=request.timeout
    )
    if resp.status >= 400:
        text = error_text(resp.body)
        if resp.status in (404, 405) and not is_unknown_model(text):
            raise _NoGenerate(resp.status)
        if resp.status == 404:
            _forget(ctx, info.name)
        raise triton_error(
            ctx, resp.status, resp.headers, resp.body, url=url, model=info.name, inputs=info.describe_inputs()
        )
    ctx.state["triton_generate"] = True  # the extension answered
    obj = _decode(ctx, resp, url)
    if not isinstance(obj, Mapping):
        raise BackendProtocolError(
            f"{ctx.name} at {redact_url(url)}: answer is not a JSON object", backend=ctx.name, url=url
        )
    if "error" in obj:
        if needs_stream(error_text(obj)):
            raise _NeedsStream
        raise triton_error(ctx, resp.status, resp.headers, obj, url=url, model=info.name)
    answer = _text_of(obj.get(plan.output))
    if answer is None:
        raise _missing_output(ctx, url, plan.output, ", ".join(map(str, obj)))
    return Result(
        text=answer, backend=ctx.name, model=str(obj.get("model_name") or info.name), finish_reason=_FINISH
    )


async def infer_v2(ctx: BackendContext, request: Request, info: ModelInfo) -> Result:
    """``POST /v2/models/{m}/infer`` with BYTES tensors of the exact declared shapes."""
    plan = _plan(ctx, request, info, stream=False)
    url = _model_url(ctx, info.name, "/infer")
    resp = await ctx.http.request("POST", url, body=encode_body(plan.infer_body()), timeout=request.timeout)
    if resp.status >= 400:
        text = error_text(resp.body)
        if resp.status == 501 and is_decoupled_on_infer(text):
            raise _NeedsStream
        if resp.status == 404:
            _forget(ctx, info.name)
        raise triton_error(
            ctx, resp.status, resp.headers, resp.body, url=url, model=info.name, inputs=info.describe_inputs()
        )
    obj = _decode(ctx, resp, url)
    if not isinstance(obj, Mapping):
        raise BackendProtocolError(
            f"{ctx.name} at {redact_url(url)}: answer is not a JSON object", backend=ctx.name, url=url
        )
    if "error" in obj:
        raise triton_error(ctx, resp.status, resp.headers, obj, url=url, model=info.name)
    outputs = obj.get("outputs")
    entry = next(
        (o for o in outputs or () if isinstance(o, Mapping) and o.get("name") == plan.output),
        None,
    )
    answer = _text_of(entry.get("data")) if entry is not None else None
    if answer is None:
        names = [o.get("name") for o in outputs or () if isinstance(o, Mapping)]
        raise _missing_output(ctx, url, plan.output, f"outputs {names}")
    return Result(
        text=answer, backend=ctx.name, model=str(obj.get("model_name") or info.name), finish_reason=_FINISH
    )


async def stream(ctx: BackendContext, request: Request) -> AsyncGenerator[Chunk, None]:
    """Text deltas from ``generate_stream``; one chunk from ``/infer`` when generate is not offered."""
    model, defaulted = await resolve_model(ctx, request)
    info = await discover(ctx, model, defaulted=defaulted)
    if info.decoupled or await _use_generate(ctx):
        try:
            chunks = generate_stream(ctx, request, info, stream=True)
            async with contextlib.aclosing(chunks):
                async for chunk in chunks:
                    yield chunk
            return
        except _NoGenerate as exc:  # raised before any chunk
            if ctx.settings_as(TritonSettings).endpoint == "generate" or info.decoupled:
                raise _no_generate(
                    ctx, _model_url(ctx, model, "/generate_stream"), exc.status, info
                ) from None
            ctx.state["triton_generate"] = False
    try:
        result = await infer_v2(ctx, request, info)
    except _NeedsStream:
        _mark_decoupled(ctx, info)
        chunks = generate_stream(ctx, request, attrs.evolve(info, decoupled=True), stream=True)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk
        return
    yield Chunk(text=result.text, model=result.model)
    yield Chunk(finish_reason=_FINISH, model=result.model)


async def generate_stream(
    ctx: BackendContext, request: Request, info: ModelInfo, *, stream: bool
) -> AsyncGenerator[Chunk, None]:
    """``POST /v2/models/{m}/generate_stream``: SSE events, no ``[DONE]`` (ends when the server closes).

    Raises ``_NoGenerate`` before the first chunk when the server has no generate
    extension.  Every event is checked for ``{"error": ...}``; a clean end
    yields a last chunk with ``finish_reason`` set.
    """
    plan = _plan(ctx, request, info, stream=stream)
    url = _model_url(ctx, info.name, "/generate_stream")
    body = encode_body(plan.generate_body())
    events = 0
    keys: set[str] = set()
    model_name: str | None = None
    # raise_for_status=False: the full error body is needed (Triton's tracebacks end in the useful line)
    async with ctx.http.stream(
        "POST", url, body=body, timeout=request.timeout, raise_for_status=False
    ) as resp:
        if resp.status >= 400:
            data = await resp.read()
            text = error_text(data)
            if resp.status in (404, 405) and not is_unknown_model(text):
                raise _NoGenerate(resp.status)
            if resp.status == 404:
                _forget(ctx, info.name)
            raise triton_error(
                ctx,
                resp.status,
                resp.headers,
                data,
                url=url,
                model=info.name,
                inputs=info.describe_inputs(),
            )
        ctx.state["triton_generate"] = True
        async for obj in iter_sse_data(resp, backend=ctx.name, url=url):
            if not isinstance(obj, Mapping):
                raise BackendProtocolError(
                    f"{ctx.name} at {redact_url(url)}: stream event is not an object: {obj!r:.200}",
                    backend=ctx.name,
                    url=url,
                )
            if "error" in obj:
                raise triton_error(
                    ctx, None, {}, obj, url=url, model=info.name, inband="reported inside the stream"
                )
            events += 1
            keys.update(map(str, obj))
            model_name = str(obj.get("model_name") or model_name or info.name)
            delta = _text_of(obj.get(plan.output))
            if delta:
                yield Chunk(text=delta, model=model_name)
    if events == 0:
        raise BackendProtocolError(
            f"{ctx.name} at {redact_url(url)} closed the stream without sending any response",
            backend=ctx.name,
            url=url,
            retryable=True,
        )
    if plan.output not in keys:
        raise _missing_output(ctx, url, plan.output, ", ".join(sorted(keys)))
    yield Chunk(finish_reason=_FINISH, model=model_name)
