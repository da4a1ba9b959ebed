"""A backend's view of HTTP: its base URL, headers, timeouts and error mapping.

Every backend talks HTTP through a ``HttpClient`` bound to it.  The client
adds the backend's name and launch hint to connection errors and turns every
error body shape the servers send (see PROTOCOLS.md) into the error tree
(``http_errors``).  The error helpers and ``iter_sse_data`` (``sse``) are
re-exported here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from .byok import caller_key
from .errors import (
    BackendError,
    BackendProtocolError,
    BackendUnavailable,
    redact_url,
)
from .http_errors import (
    error_from_response,
    extract_error_message,
    parse_retry_after,
    redirect_error,
)
from .sse import iter_sse_data
from .transport import HttpResponse, StreamResponse, Timeouts, Transport

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = [
    "HttpClient",
    "error_from_response",
    "extract_error_message",
    "iter_sse_data",
    "parse_retry_after",
    "redirect_error",
]


def _decode_json(resp: HttpResponse, *, backend: str, url: str) -> Any:
    try:
        return json.loads(resp.body)
    except ValueError as exc:
        snippet = resp.body[:200].decode("utf-8", "replace")
        raise BackendProtocolError(
            f"{backend} at {redact_url(url)} sent malformed JSON (HTTP {resp.status}): {snippet!r}",
            backend=backend,
            url=url,
            status=resp.status,
            retryable=True,
        ) from exc


class HttpClient:
    """HTTP for one backend: a shared pool, its base URL, auth headers, timeouts.

    Attributes:
        backend: Backend name used in every error.
        base_url: Absolute base the paths are joined to.
        timeouts: Default timeouts.
        hint: Launch hint attached to "cannot connect" errors.
        query: The base URL's query string, added to every request URL (never shown).
    """

    def __init__(
        self,
        transport: Transport,
        *,
        backend: str,
        base_url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        hint: str | None = None,
        query: str = "",
    ) -> None:
        self.transport = transport
        self.query = query
        self.backend = backend
        self.base_url = base_url.rstrip("/")
        self._headers = dict(headers)
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        self.timeouts = timeouts
        self.hint = hint

    def url(self, path: str) -> str:
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def _sent(self, url: str) -> str:
        """*url* with the base URL's query (``?key=...``) added: it travels with every request."""
        if not self.query or self.query in url:
            return url
        return f"{url}{'&' if '?' in url else '?'}{self.query}"

    def _enrich(self, exc: BackendError, url: str) -> BackendError:
        if isinstance(exc, BackendUnavailable) and exc.backend is None:
            reason = exc.message.split(": ", 1)[-1]
            return BackendUnavailable(
                f"{self.backend} backend: cannot connect to {redact_url(url)} ({reason}); "
                "the server is down or still loading its model",
                backend=self.backend,
                url=url,
                hint=self.hint,
            )
        if exc.backend is None:
            exc.backend = self.backend
            exc.message = f"{self.backend} backend: {exc.message}"
            exc.args = (exc.message if exc.hint is None else f"{exc.message}\n  hint: {exc.hint}",)
        return exc

    @contextlib.contextmanager
    def _named(self, url: str) -> Iterator[None]:
        """A transport error raised inside is raised again named by this backend (``_enrich``)."""
        try:
            yield
        except BackendError as exc:
            enriched = self._enrich(exc, url)
            if enriched is exc:
                raise
            raise enriched from exc.__cause__

    def _with_caller_key(self, headers: dict[str, str]) -> dict[str, str]:
        """*headers* with a gateway caller's own key for this backend, when one is set (``byok``)."""
        key = caller_key(self.backend)
        if key is None:
            return headers
        return {**headers, "Authorization": f"Bearer {key.reveal()}"}

    def _timeouts(self, read: float | None) -> Timeouts:
        if read is None or read == self.timeouts.read:
            return self.timeouts
        return Timeouts(connect=self.timeouts.connect, read=read, idle=self.timeouts.idle)

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        timeout: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """Send and return the response whatever its status (no error mapping).

        Raises:
            BackendRejected: The server answered with a redirect (never followed).
        """
        url = self.url(path)
        hdrs = self._json_headers if body is not None else self._headers
        if headers:
            hdrs = {**hdrs, **headers}
        hdrs = self._with_caller_key(hdrs)
        with self._named(url):
            resp = await self.transport.request(
                method, self._sent(url), headers=hdrs, body=body, timeouts=self._timeouts(timeout)
            )
        if 300 <= resp.status < 400:
            raise redirect_error(resp.status, resp.headers, backend=self.backend, url=url)
        return resp

    def error(self, resp: HttpResponse, path: str) -> BackendError:
        return error_from_response(
            resp.status, resp.headers, resp.body, backend=self.backend, url=self.url(path), hint=self.hint
        )

    def json(self, resp: HttpResponse, path: str) -> Any:
        """The decoded JSON body of *resp* (from *path*), whatever its status.

        Raises:
            BackendProtocolError: The body is not JSON (retryable; its first bytes in the message).
        """
        return _decode_json(resp, backend=self.backend, url=self.url(path))

    def _check(self, resp: HttpResponse, path: str) -> None:
        if resp.status >= 400:
            raise self.error(resp, path)

    async def get_json(self, path: str, *, timeout: float | None = None) -> Any:
        resp = await self.request("GET", path, timeout=timeout)
        self._check(resp, path)
        return _decode_json(resp, backend=self.backend, url=self.url(path))

    async def post_json(self, path: str, body: bytes, *, timeout: float | None = None) -> Any:
        """POST a pre-encoded JSON body; return the decoded answer or raise the mapped error."""
        resp = await self.request("POST", path, body=body, timeout=timeout)
        self._check(resp, path)
        return _decode_json(resp, backend=self.backend, url=self.url(path))

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        timeout: float | None = None,
        raise_for_status: bool = True,
    ) -> AsyncIterator[StreamResponse]:
        """Open a streaming response.

        Error statuses are raised (mapped onto the error tree) before anything is
        yielded, unless *raise_for_status* is false: then the caller gets the
        response whatever its status and reads the full error body itself.
        """
        url = self.url(path)
        hdrs = {**self._json_headers, "Accept": "text/event-stream"} if body is not None else self._headers
        hdrs = self._with_caller_key(hdrs)
        with self._named(url):
            async with self.transport.stream(
                method, self._sent(url), headers=hdrs, body=body, timeouts=self._timeouts(timeout)
            ) as resp:
                if resp.status >= 400 and raise_for_status:
                    data = await resp.read()
                    raise error_from_response(
                        resp.status, resp.headers, data, backend=self.backend, url=url, hint=self.hint
                    )
                if 300 <= resp.status < 400:
                    raise redirect_error(resp.status, resp.headers, backend=self.backend, url=url)
                yield resp

    @contextlib.asynccontextmanager
    async def websocket(self, path: str) -> AsyncIterator[WebSocket]:
        """Open a WebSocket to *path* on the backend (``ws://`` or ``wss://`` as the base URL is
        ``http://`` or ``https://``), with the backend's headers (its key); ``async for message in
        ws`` gives each text (``str``) or binary (``bytes``) message until the server closes it.

        Raises:
            BackendUnavailable: Nothing answered the connect.
            BackendProtocolError: The server refused the upgrade (e.g. a proxy without WebSockets).
        """
        url = self.url(path)
        with self._named(url):
            async with self.transport.websocket(
                self._sent(url), headers=self._with_caller_key(self._headers), timeouts=self.timeouts
            ) as ws:
                yield ws
