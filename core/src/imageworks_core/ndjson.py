"""``iter_ndjson``: the JSON objects of a newline-delimited JSON stream (Ollama's native API, ...).

The NDJSON counterpart of ``iter_sse_data``: one JSON value per line, blank
lines skipped, a line that is not JSON a retryable ``BackendProtocolError``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from .errors import BackendProtocolError, redact_url
from .transport import StreamResponse

__all__ = ["iter_ndjson"]


def iter_ndjson(resp: StreamResponse, *, backend: str, url: str) -> AsyncIterator[Any]:
    """Decoded JSON values of *resp*, one per non-blank line, until the body ends.

    A plain iterator, like ``iter_sse_data``: a consumer that stops early
    leaves nothing unfinished behind (the response closes its line reader).
    """
    return _NDJSON(resp, backend=backend, url=url)


class _NDJSON:
    def __init__(self, resp: StreamResponse, *, backend: str, url: str) -> None:
        self._lines = resp.lines()
        self._backend = backend
        self._url = url

    def __aiter__(self) -> _NDJSON:
        return self

    async def __anext__(self) -> Any:
        while True:
            line = (await self._lines.__anext__()).strip()  # StopAsyncIteration ends us too
            if not line:
                continue
            try:
                return json.loads(line)
            except ValueError as exc:
                raise BackendProtocolError(
                    f"{self._backend} at {redact_url(self._url)} sent a non-JSON line: {line[:200]!r}",
                    backend=self._backend,
                    url=self._url,
                    retryable=True,
                ) from exc
