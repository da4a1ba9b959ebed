"""``iter_sse_data``: the JSON payloads of a server-sent event stream (OpenAI-shaped servers ...).

The SSE counterpart of ``iter_ndjson``: ``data:`` lines joined per event,
``event:``/``id:``/``retry:`` fields and comments skipped, ``[DONE]`` the end,
a payload that is not JSON a retryable ``BackendProtocolError``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from .errors import (
    BackendProtocolError,
    redact_url,
)
from .transport import StreamResponse

__all__ = ["iter_sse_data"]


def iter_sse_data(resp: StreamResponse, *, backend: str, url: str) -> AsyncIterator[Any]:
    """Decoded JSON payloads of an SSE stream's ``data:`` events; stops at ``[DONE]`` or end of body.

    A plain iterator, not an async generator: a consumer that stops early
    leaves nothing unfinished behind (the response closes its line reader).
    """
    return _SSEData(resp, backend=backend, url=url)


class _SSEData:
    def __init__(self, resp: StreamResponse, *, backend: str, url: str) -> None:
        self._lines = resp.lines()
        self._backend = backend
        self._url = url
        self._buf: list[bytes] = []
        self._done = False

    def __aiter__(self) -> _SSEData:
        return self

    async def _finish(self) -> None:
        self._done = True
        aclose = getattr(self._lines, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __anext__(self) -> Any:
        buf = self._buf
        while not self._done:
            try:
                line = await self._lines.__anext__()
            except StopAsyncIteration:
                self._done = True
                break
            if line.startswith(b"data:"):
                buf.append(line[5:].lstrip(b" "))
                continue
            if line and not line.startswith(b":") and b":" in line:
                continue  # event:, id:, retry: fields
            if not line and buf:
                payload = b"\n".join(buf)
                buf.clear()
                if payload.strip() == b"[DONE]":
                    await self._finish()
                    raise StopAsyncIteration
                return _sse_json(payload, backend=self._backend, url=self._url)
        if buf:
            payload = b"\n".join(buf)
            buf.clear()
            if payload.strip() != b"[DONE]":
                return _sse_json(payload, backend=self._backend, url=self._url)
        raise StopAsyncIteration


def _sse_json(payload: bytes, *, backend: str, url: str) -> Any:
    try:
        return json.loads(payload)
    except ValueError as exc:
        raise BackendProtocolError(
            f"{backend} at {redact_url(url)} sent a malformed stream event: {payload[:200]!r}",
            backend=backend,
            url=url,
            retryable=True,
        ) from exc
