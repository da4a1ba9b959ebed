"""Triton's KServe v2 HTTP API: ``/infer``, ``generate``, ``generate_stream`` (and, from
``_discovery``, health and model discovery).

Per-client facts live in ``ctx.state`` (keys ``triton_*``): the server root,
each model's discovered inputs, whether the generate extension answers, and
the warnings already given.  See ``tests/servers/TRITON_NOTES.md`` for the
wire shapes these functions were written against.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import attrs

from imageworks_core.plugin import (
    BackendContext,
    BackendError,
    BackendProtocolError,
    BackendRejected,
    Chunk,
    Request,
    Result,
    encode_body,
    first_time,
    iter_sse_data,
    redact_url,
)

from ._discovery import (
    check_health,
    decode_json,
    discover,
    forget,
    mark_decoupled,
    model_url,
    resolve_model,
    root,
    server_metadata,
)
from ._errors import (
    error_text,
    is_decoupled_on_infer,
    is_unknown_model,
    needs_stream,
    triton_error,
)
from ._inputs import Plan, build_plan
from ._model import ModelInfo
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

_FINISH = "stop"  # Triton does not say why generation ended; a completed answer is reported as "stop"


class _NoGenerate(Exception):
    """The server has no generate extension (404/405 on ``/generate``)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class _NeedsStream(Exception):
    """``/generate`` said the model sends several responses, or ``/infer`` that it is decoupled."""


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
                raise _no_generate(ctx, model_url(ctx, model, "/generate"), exc.status, info) from None
            ctx.state["triton_generate"] = False
            ctx.log.info("%s: no generate extension at %s; using /infer", ctx.name, redact_url(root(ctx)))
        except _NeedsStream:
            info = mark_decoupled(ctx, info)
    if not info.decoupled:
        try:
            return await infer_v2(ctx, request, info)
        except _NeedsStream:
            info = mark_decoupled(ctx, info)
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
        raise _no_generate(ctx, model_url(ctx, info.name, "/generate_stream"), exc.status, info) from None
    return Result(text="".join(texts), backend=ctx.name, model=model, finish_reason=finish)


async def generate(ctx: BackendContext, request: Request, info: ModelInfo) -> Result:
    """``POST /v2/models/{m}/generate``: one JSON answer."""
    plan = _plan(ctx, request, info, stream=False)
    url = model_url(ctx, info.name, "/generate")
    resp = await ctx.http.request(
        "POST", url, body=encode_body(plan.generate_body()), timeout=request.timeout
    )
    if resp.status >= 400:
        text = error_text(resp.body)
        if resp.status in (404, 405) and not is_unknown_model(text):
            raise _NoGenerate(resp.status)
        if resp.status == 404:
            forget(ctx, info.name)
        raise triton_error(
            ctx, resp.status, resp.headers, resp.body, url=url, model=info.name, inputs=info.describe_inputs()
        )
    ctx.state["triton_generate"] = True  # the extension answered
    obj = decode_json(ctx, resp, url)
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
    url = model_url(ctx, info.name, "/infer")
    resp = await ctx.http.request("POST", url, body=encode_body(plan.infer_body()), timeout=request.timeout)
    if resp.status >= 400:
        text = error_text(resp.body)
        if resp.status == 501 and is_decoupled_on_infer(text):
            raise _NeedsStream
        if resp.status == 404:
            forget(ctx, info.name)
        raise triton_error(
            ctx, resp.status, resp.headers, resp.body, url=url, model=info.name, inputs=info.describe_inputs()
        )
    obj = decode_json(ctx, resp, url)
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
                raise _no_generate(ctx, model_url(ctx, model, "/generate_stream"), exc.status, info) from None
            ctx.state["triton_generate"] = False
    try:
        result = await infer_v2(ctx, request, info)
    except _NeedsStream:
        mark_decoupled(ctx, info)
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
    url = model_url(ctx, info.name, "/generate_stream")
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
                forget(ctx, info.name)
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
