"""A backend's view of HTTP: its base URL, headers, timeouts and error mapping.

Every backend talks HTTP through a ``HttpClient`` bound to it.  The client
adds the backend's name and launch hint to connection errors and turns every
error body shape the servers send (see PROTOCOLS.md) into the error tree.
"""

from __future__ import annotations

import contextlib
import email.utils
import json
import math
import re
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from html.parser import HTMLParser
from typing import TYPE_CHECKING, Any

from .byok import caller_key
from .errors import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    BackendUnavailable,
    redact_url,
)
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

_MAX_MESSAGE = 500


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "inf" / "nan" / "1e400" would mean sleeping forever (or not at all)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _message_from_obj(obj: Any) -> str | None:
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, Mapping):
        return None
    err = obj.get("error")
    if isinstance(err, Mapping) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(obj.get("message"), str):
        return obj["message"]
    if "detail" in obj:
        detail = obj["detail"]
        if isinstance(detail, str):
            return detail
        if isinstance(detail, Mapping):
            return _message_from_obj(detail) or json.dumps(detail)[:_MAX_MESSAGE]
        if isinstance(detail, list) and detail:  # FastAPI validation errors
            parts = []
            for d in detail[:3]:
                if isinstance(d, Mapping):
                    loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
                    parts.append(f"{loc}: {d.get('msg', d)}" if loc else str(d.get("msg", d)))
            return "; ".join(parts) or json.dumps(detail)[:_MAX_MESSAGE]
    if isinstance(err, str):
        return err
    return None


def extract_error_message(body: bytes | str | Any) -> str:
    """The message from an error body: ``error.message``, ``message``, ``detail``, ``error`` — or the text."""
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        if text.lstrip().startswith("data:"):  # an error sent as one SSE event
            text = text.lstrip()[5:].strip()
        try:
            obj = json.loads(text)
        except ValueError:
            text = _html_text(text) or text.strip()
            return (text[:_MAX_MESSAGE] + "…") if len(text) > _MAX_MESSAGE else (text or "(empty body)")
    else:
        obj = body
    msg = _message_from_obj(obj)
    if msg is None:
        msg = json.dumps(obj)[:_MAX_MESSAGE] if not isinstance(obj, str) else obj
    msg = msg.strip()
    return (msg[:_MAX_MESSAGE] + "…") if len(msg) > _MAX_MESSAGE else (msg or "(empty message)")


_HTML_START = re.compile(r"\s*(<!doctype html|<html|<head|<body|<title|<h1)", re.I)
#: Only the start of an HTML error page is read: its title and heading say what happened.
_HTML_READ = 64 * 1024


class _PageText(HTMLParser):
    """The visible text of an HTML page (scripts and styles left out), in linear time."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.words: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.words += data.split()


def _html_text(text: str) -> str | None:
    """An HTML error page (a web server or proxy, not the API, answered) as one line of its text."""
    if not _HTML_START.match(text):
        return None
    page = _PageText()
    page.feed(text[:_HTML_READ])
    page.close()
    return "an HTML page, not an API answer: " + (" ".join(page.words) or "(no text)")


def _looks_busy(message: str) -> bool:
    m = message.lower()
    return any(
        s in m for s in ("exceeds maximum queue size", "server is busy", "too many requests", "overloaded")
    )


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | Any,
    *,
    backend: str | None,
    url: str,
    hint: str | None = None,
) -> BackendError:
    """Map an HTTP error response (any body shape) onto the error tree."""
    message = extract_error_message(body)
    where = f"{backend or 'backend'} at {redact_url(url)}"
    text = f"{where} answered HTTP {status}: {message}"
    kw: dict[str, Any] = {"backend": backend, "url": url, "status": status}
    if status == 429 or status == 503 or _looks_busy(message):
        return BackendOverloaded(
            text,
            retry_after=parse_retry_after(headers.get("retry-after")),
            hint="the server is busy; lower Client(concurrency=...) or raise the server's queue/batch size",
            **kw,
        )
    if status in (401, 403):
        return BackendRejected(
            text, hint="check the API key: set the backend's api_key_env to a variable holding it", **kw
        )
    if (
        status in (404, 400, 422)
        and "model" in message.lower()
        and ("not found" in message.lower() or "does not exist" in message.lower() or status == 404)
    ):
        return BackendRejected(
            text, hint="run `imageworks health` to list the served models, then set the model", **kw
        )
    if 400 <= status < 500:
        return BackendRejected(text, **kw)
    if status in (502, 504):
        return BackendUnavailable(text, hint=hint, **kw)
    if status >= 500:
        return BackendServerError(text, **kw)
    return BackendProtocolError(text, **kw)


def redirect_error(status: int, headers: Mapping[str, str], *, backend: str, url: str) -> BackendRejected:
    """A 3xx answer: reported as a redirect, never followed (the API key must not go elsewhere)."""
    target = headers.get("location")
    to = f" to {redact_url(target)}" if target else ""
    return BackendRejected(
        f"{backend} at {redact_url(url)} answered with a redirect (HTTP {status}){to}; "
        "redirects are not followed, so that the API key is never sent to another address",
        backend=backend,
        url=url,
        status=status,
        hint="set the backend's base_url to the address the server redirects to",
    )


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
