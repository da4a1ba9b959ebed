"""Raw ASGI plumbing for the hot routes: read a bounded body, answer JSON, map errors to statuses.

The chat route is on the path of every request, so it speaks ASGI directly
(no per-request ``Request``/``Response`` objects) and watches for the
caller hanging up, which cancels the upstream request.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, TypeVar

from ..errors import (
    BackendDown,
    BackendOverloaded,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ImageWorksError,
    InputError,
)

__all__ = [
    "Disconnected",
    "GatewayError",
    "Receive",
    "Scope",
    "Send",
    "error_body",
    "header",
    "read_body",
    "send_bytes",
    "send_error",
    "send_json",
    "status_of",
    "until_disconnect",
]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
T = TypeVar("T")

_JSON = (b"content-type", b"application/json")


class GatewayError(Exception):
    """A request the gateway itself turns down: HTTP *status* with an OpenAI-style error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        kind: str = "invalid_request_error",
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.retry_after = retry_after


class Disconnected(Exception):
    """The caller hung up while sending its request (nothing is answered)."""


def header(scope: Scope, name: bytes) -> str | None:
    """The first value of request header *name* (lower case), decoded as latin-1."""
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return None


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The whole request body, refusing more than *limit* bytes (413) before reading it all."""
    declared = header(scope, b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(int(declared), limit)
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _too_large(size, limit)
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(size: int, limit: int) -> GatewayError:
    return GatewayError(
        413,
        f"request body too large: {size / 1e6:.1f} MB, the limit is {limit / 1e6:.1f} MB "
        "(send smaller images, or start the gateway with a larger --max-body-mb)",
    )


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = b"application/json",
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            # a length (not chunked): uvicorn then writes the body in one piece, no closing chunk
            "headers": [(b"content-type", content_type), (b"content-length", b"%d" % len(body)), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def send_json(send: Send, status: int, obj: Any, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    await send_bytes(send, status, json.dumps(obj, separators=(",", ":")).encode(), headers=headers)


def error_body(message: str, kind: str, status: int) -> dict[str, Any]:
    """An error in the OpenAI shape, which every OpenAI client reads."""
    return {"error": {"message": message, "type": kind, "code": status}}


def status_of(exc: BaseException) -> tuple[int, str, float | None]:
    """``(HTTP status, error type, Retry-After seconds)`` for an error that ended a request."""
    if isinstance(exc, GatewayError):
        return exc.status, exc.kind, exc.retry_after
    if isinstance(exc, BackendOverloaded):
        return 429, "backend_overloaded", exc.retry_after if exc.retry_after is not None else 1.0
    if isinstance(exc, BackendDown | BackendUnavailable):
        return 503, "backend_unavailable", 5.0
    if isinstance(exc, BackendTimeout):
        return 504, "backend_timeout", None
    if isinstance(exc, BackendRejected):
        status = exc.status if exc.status is not None and 400 <= exc.status < 500 else 400
        return status, "invalid_request_error", None
    if isinstance(exc, InputError | ConfigError):
        return 400, "invalid_request_error", None
    return 502, "backend_error", None


def _message(exc: BaseException) -> str:
    if isinstance(exc, ImageWorksError):
        text = exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        return " ".join(text.split())
    return str(exc)


async def send_error(send: Send, exc: BaseException) -> int:
    """Answer *exc* as an OpenAI-style error; returns the status sent."""
    status, kind, retry_after = status_of(exc)
    headers = [] if retry_after is None else [(b"retry-after", str(max(1, math.ceil(retry_after))).encode())]
    await send_json(send, status, error_body(_message(exc), kind, status), headers)
    return status


async def until_disconnect(receive: Receive, work: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
    """Run *work* watching the connection: ``(True, result)``, or ``(False, None)`` if the caller left.

    A caller that hangs up cancels *work*, and with it the upstream request.  The
    gateway runs on uvicorn's asyncio loop; one watcher task with a done-callback
    costs a fraction of a task group on the path of every request.
    """
    task = asyncio.current_task()
    assert task is not None
    gone = False

    def on_message(fut: asyncio.Future[MutableMapping[str, Any]]) -> None:
        nonlocal gone
        if fut.cancelled() or fut.exception() is not None:
            return
        if fut.result()["type"] == "http.disconnect":
            gone = True
            task.cancel()

    watcher = asyncio.ensure_future(receive())
    watcher.add_done_callback(on_message)
    try:
        return True, await work()
    except asyncio.CancelledError:
        if gone and task.uncancel() == 0:
            return False, None
        raise
    finally:
        watcher.remove_done_callback(on_message)
        watcher.cancel()
