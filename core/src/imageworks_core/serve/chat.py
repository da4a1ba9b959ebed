"""``POST /v1/chat/completions``: the OpenAI chat API in front of the shared dispatcher.

The body becomes one ``Request`` (messages passed through as sent, images as
``data:`` URLs); ``model`` may be ``backend/model``, a backend name or a plain
model; an ``imageworks`` object in the body (``extra_body`` in the openai SDK)
may name ``backend`` and a ``fallback`` list for this request.  Answers are
OpenAI's ``chat.completion`` or, with ``stream``, its SSE chunks; the model
is named ``backend/model`` so that it routes back.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping
from typing import Any

import anyio

from ..dispatch import ungrouped
from ..errors import ImageWorksError, InputError
from ..events import Event
from ..models import Chunk, Request, Result
from .gateway import Gateway
from .sizes import image_size
from .wire import (
    GatewayError,
    Receive,
    Scope,
    Send,
    error_body,
    read_body,
    send_bytes,
    send_error,
    status_of,
    until_disconnect,
)

__all__ = ["ChatRoute", "parse_chat"]

#: Body keys the gateway reads itself; every other key goes to the backend as is.
_OWN_KEYS = frozenset(
    {
        "model",
        "messages",
        "stream",
        "stream_options",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "n",
        "imageworks",
    }
)


def _number(obj: Mapping[str, Any], key: str, kind: type, low: float) -> Any:
    value = obj.get(key)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < low
    ):
        raise GatewayError(400, f"{key} must be a number >= {low:g}, not {value!r}")
    if kind is int and value != int(value):
        raise GatewayError(400, f"{key} must be a whole number, not {value!r}")
    return kind(value)


def check_images(messages: list[Any], gw: Gateway) -> None:
    """Count the image parts and read each one's size from its header (413 beyond the limits)."""
    opts = gw.options
    seen = 0
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "image_url":
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, Mapping) else image
            if not isinstance(url, str) or not url.startswith("data:"):
                raise GatewayError(400, "image_url must be a data: URL (data:image/jpeg;base64,...)")
            seen += 1
            if seen > opts.max_images:
                raise GatewayError(413, f"too many images: the limit is {opts.max_images} per request")
            try:
                width, height = image_size(url.partition(",")[2], f"image {seen}")
            except InputError as exc:
                raise GatewayError(400, exc.message) from None
            if width * height > opts.max_image_pixels:
                raise GatewayError(
                    413,
                    f"image {seen} is {width}x{height} = {width * height / 1e6:.1f} MP; "
                    f"the limit is {opts.max_image_pixels / 1e6:.1f} MP (downscale it first)",
                )


def parse_chat(obj: Any, gw: Gateway) -> tuple[Request, bool, bool]:
    """``(request, stream, include_usage)`` from an OpenAI chat body (400 / 413 on bad input)."""
    if not isinstance(obj, Mapping):
        raise GatewayError(400, "the body must be a JSON object")
    messages = obj.get("messages")
    if not isinstance(messages, list) or not messages:
        raise GatewayError(400, "messages must be a non-empty list")
    if obj.get("n", 1) != 1:
        raise GatewayError(400, "only n = 1 is supported")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise GatewayError(400, "model must be a string")
    backend, model = gw.split_model(model)
    own = obj.get("imageworks") or {}
    if not isinstance(own, Mapping):
        raise GatewayError(400, "imageworks must be an object: {backend, fallback}")
    fallback = None
    if own.get("backend") is not None:
        backend = gw.check_backend(str(own["backend"]))
    if own.get("fallback") is not None:
        raw = own["fallback"]
        if isinstance(raw, str):
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise GatewayError(400, "imageworks.fallback must be a list of backend names")
        fallback = tuple(gw.check_backend(x, "fallback backend") for x in raw)
    stop = obj.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or not all(isinstance(s, str) for s in stop):
        raise GatewayError(400, "stop must be a string or a list of strings")
    check_images(messages, gw)
    options = obj.get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    request = Request(
        messages=tuple(messages),
        model=model,
        backend=backend,
        max_tokens=_number(obj, "max_completion_tokens", int, 1) or _number(obj, "max_tokens", int, 1),
        temperature=_number(obj, "temperature", float, 0),
        top_p=_number(obj, "top_p", float, 0),
        stop=tuple(stop),
        extra={k: v for k, v in obj.items() if k not in _OWN_KEYS},
        fallback=fallback,
    )
    return request, bool(obj.get("stream")), include_usage


def _usage(result_usage: Any) -> dict[str, Any]:
    p, c = result_usage.prompt_tokens, result_usage.completion_tokens
    total = result_usage.total_tokens
    if total is None and p is not None and c is not None:
        total = p + c
    return {"prompt_tokens": p or 0, "completion_tokens": c or 0, "total_tokens": total or 0}


def _completion(result: Result, rid: str, created: int) -> bytes:
    body = {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": f"{result.backend}/{result.model}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason or "stop",
            }
        ],
        "usage": _usage(result.usage),
    }
    return json.dumps(body, separators=(",", ":")).encode()


class ChatRoute:
    """The ASGI app of ``/v1/chat/completions``."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gw.handle("chat", send, lambda: self._answer(scope, receive, send))

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> int:
        body = await read_body(scope, receive, self.gw.options.max_body)
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise GatewayError(400, f"the body is not valid JSON: {exc}") from None
        request, stream, include_usage = parse_chat(obj, self.gw)
        with self.gw.caller_key(scope, request.backend):
            if stream:
                return await self._stream(request, include_usage, receive, send)
            return await self._complete(request, receive, send)

    async def _complete(self, request: Request, receive: Receive, send: Send) -> int:
        dispatcher = self.gw.client.dispatcher
        answered, result = await until_disconnect(receive, lambda: dispatcher.run_one(request))
        if not answered or result is None:
            return 499  # the caller hung up; the upstream request was cancelled
        self.gw.telemetry.result(result, dispatcher)
        if result.error is not None:
            return await send_error(send, result.error)
        await send_bytes(send, 200, _completion(result, _new_id(), int(time.time())))
        return 200

    async def _stream(self, request: Request, include_usage: bool, receive: Receive, send: Send) -> int:
        """Stream as text arrives; the status waits for the first text (an error before it keeps its own)."""
        dispatcher = self.gw.client.dispatcher
        chunks_in, chunks_out = anyio.create_memory_object_stream[Chunk | Result | None](math.inf)
        rid, created = _new_id(), int(time.time())
        started = False
        status = 499
        head = b""

        backend = [request.backend or self.gw.client.settings.backend]

        def on_chunk(_id: str, chunk: Chunk | None) -> None:
            chunks_in.send_nowait(chunk)

        def on_event(event: Event) -> None:
            if event.kind in ("started", "retry") and event.backend:
                backend[0] = event.backend

        async def produce() -> None:
            result = await dispatcher.run_one(request, on_chunk=on_chunk, on_event=on_event)
            chunks_in.send_nowait(result)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()

        def event(delta: dict[str, Any], finish: str | None, model: str) -> bytes:
            obj = {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"

        async def begin() -> None:
            nonlocal started
            started = True
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )

        model = f"{backend[0]}/{request.model or ''}"
        with ungrouped():  # a failure inside comes out as itself
            async with anyio.create_task_group() as tg, chunks_out:
                tg.start_soon(watch)
                tg.start_soon(produce)
                async for item in chunks_out:
                    if item is None:  # the try failed after some text: the caller has it already
                        if started:
                            await self._stream_error(send, "the backend failed in the middle of the answer")
                            status = 502
                            break
                        continue
                    if isinstance(item, Result):
                        self.gw.telemetry.result(item, dispatcher)
                        if item.error is not None:
                            if started:
                                await self._stream_error(send, item.error.message, item.error)
                                status = 502
                            else:
                                status = await send_error(send, item.error)
                            break
                        name = f"{item.backend}/{item.model}"
                        if not started:
                            await begin()
                            head = event({"role": "assistant", "content": ""}, None, name)
                        tail = head + event({}, item.finish_reason or "stop", name)
                        if include_usage:
                            obj = {
                                "id": rid,
                                "object": "chat.completion.chunk",
                                "created": created,
                                "model": name,
                                "choices": [],
                                "usage": _usage(item.usage),
                            }
                            tail += b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
                        await send({"type": "http.response.body", "body": tail + b"data: [DONE]\n\n"})
                        status = 200
                        break
                    if not item.text:
                        continue
                    model = f"{backend[0]}/{item.model}" if item.model else model
                    if not started:
                        await begin()
                        head = event({"role": "assistant", "content": ""}, None, model)
                    await send(
                        {
                            "type": "http.response.body",
                            "body": head + event({"content": item.text}, None, model),
                            "more_body": True,
                        }
                    )
                    head = b""
                tg.cancel_scope.cancel()
        return status

    @staticmethod
    async def _stream_error(send: Send, message: str, exc: ImageWorksError | None = None) -> None:
        status = status_of(exc)[0] if exc is not None else 502
        obj = error_body(" ".join(message.split()), "backend_error", status)
        await send({"type": "http.response.body", "body": b"data: " + json.dumps(obj).encode() + b"\n\n"})


def _new_id() -> str:
    return "chatcmpl-" + uuid.uuid4().hex
