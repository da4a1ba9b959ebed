"""The transport seam: one interface, two implementations, one pool per endpoint.

``HttpxTransport`` (``transport_httpx``) works under asyncio and trio.
``AiohttpTransport`` (``transport_aiohttp``) is the asyncio fast path (an order
of magnitude less client CPU per request, see ``bench/bench_dispatch.py``).
``open_transport`` picks by the running event loop and imports only the one it
opens.  Transports raise only ``BackendUnavailable`` / ``BackendTimeout`` /
``BackendProtocolError``; turning HTTP statuses into errors is the caller's job.
"""

from __future__ import annotations

import contextlib
import os
import re
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from .errors import BackendProtocolError, BackendTimeout, BackendUnavailable, redact_url

if TYPE_CHECKING:
    from .websocket import WebSocket

__all__ = ["HttpResponse", "StreamResponse", "Timeouts", "Transport", "open_transport"]


@attrs.frozen(slots=True)
class Timeouts:
    """Per-request timeouts in seconds (``None``: no limit).

    Attributes:
        connect: Establishing the TCP/TLS connection.
        read: Waiting for the response (non-streaming: the whole answer).
        idle: Longest silence between two lines of a stream.
    """

    connect: float | None = 5.0
    read: float | None = 120.0
    idle: float | None = 60.0


@attrs.frozen(slots=True)
class HttpResponse:
    """A complete response.

    Attributes:
        status: HTTP status code.
        headers: Response headers with lower-case names.
        body: The raw body.
    """

    status: int
    headers: Mapping[str, str]
    body: bytes


class StreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes:
        """The rest of the body (used for error statuses)."""

    def lines(self) -> AsyncIterator[bytes]:
        """Body lines without line endings; raises ``BackendTimeout`` after ``idle`` silence."""


class Transport(Protocol):
    """One connection pool to one endpoint (scheme, host, port)."""

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> HttpResponse: ...

    def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> contextlib.AbstractAsyncContextManager[StreamResponse]: ...

    def websocket(
        self, url: str, *, headers: Mapping[str, str], timeouts: Timeouts
    ) -> contextlib.AbstractAsyncContextManager[WebSocket]: ...

    async def aclose(self) -> None: ...


class WebSocketOpener:
    """``websocket()`` of the real transports: its own connection (a WebSocket is not pooled),
    the same TLS trust as the pool's requests."""

    _trust_env: bool

    def websocket(
        self, url: str, *, headers: Mapping[str, str], timeouts: Timeouts
    ) -> contextlib.AbstractAsyncContextManager[WebSocket]:
        from .websocket import connect_websocket  # wsproto: loaded by the plugins that use it

        tls = ssl_context(self._trust_env) if url.startswith(("https://", "wss://")) else None
        return connect_websocket(url, headers=headers, connect_timeout=timeouts.connect, tls=tls)


def ssl_context(trust_env: bool) -> ssl.SSLContext:
    """The one TLS context both transports use, so they trust the same CAs.

    ``trust_env=True``: OpenSSL's defaults, which honour ``SSL_CERT_FILE`` and
    ``SSL_CERT_DIR``.  ``False``: the system store compiled into OpenSSL, with
    those variables ignored.
    """
    if trust_env:
        return ssl.create_default_context()
    paths = ssl.get_default_verify_paths()
    cafile = paths.openssl_cafile if os.path.isfile(paths.openssl_cafile) else None
    capath = paths.openssl_capath if os.path.isdir(paths.openssl_capath) else None
    if cafile is None and capath is None:  # pragma: no cover - an OpenSSL without a store
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=cafile, capath=capath)


#: aiohttp's connect error repeats the host and adds its TLS setting ("ssl:default", even for
#: http://) before the reason; the message names the URL already, so only the reason is kept.
_AIOHTTP_CONNECT = re.compile(r"^Cannot connect to host \S+ ssl:\S+ \[(?P<reason>.*)\]$", re.S)


def _reason(exc: BaseException) -> str:
    """*exc*'s message, else that of what caused it (trio's TLS errors reach httpx without text)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            break
        if str(seen):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    return type(exc).__name__


def connect_failed(url: str, exc: BaseException, *, connect_timed_out: bool = False) -> BackendUnavailable:
    reason = _reason(exc)
    found = _AIOHTTP_CONNECT.match(reason)
    if found and found["reason"]:
        reason = found["reason"]
    if connect_timed_out:
        reason = f"no answer to the connect ({reason})"
    elif url.startswith(("https://", "wss://")) and "WRONG_VERSION_NUMBER" in reason:
        reason += "; the server speaks plain HTTP on this port: use an http:// URL"
    return BackendUnavailable(f"cannot connect to {redact_url(url)}: {reason}", url=url)


def broke_off(
    url: str, exc: BaseException, *, streaming: bool = False, retryable: bool | None = None
) -> BackendProtocolError:
    """A body that stopped before its end; a broken stream may be asked again (*streaming*)."""
    what = "stream" if streaming else "response"
    return BackendProtocolError(
        f"{what} from {redact_url(url)} broke off: {exc or type(exc).__name__}",
        url=url,
        retryable=streaming if retryable is None else retryable,
    )


class StreamBase:
    """What both transports' stream responses share: status, headers, the URL for errors, and
    the line generators they hand out, closed with the response.

    A consumer that stops early (``[DONE]``, a ``break``, a cancellation)
    leaves its generator unfinished; the transport closes it when the response
    closes, so no generator is left to the garbage collector (trio warns then).
    """

    def __init__(self, resp: Any, url: str, idle: float | None, status: int, headers: Any) -> None:
        self._open: list[AsyncGenerator[bytes, None]] = []
        self._resp = resp
        self._url = url
        self._shown = redact_url(url)
        self._idle = idle
        self.status = status
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in headers.items()}

    def track(self, gen: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        self._open.append(gen)
        return gen

    def broke_off(self, exc: BaseException, *, streaming: bool = False) -> BackendProtocolError:
        return broke_off(self._url, exc, streaming=streaming)

    def went_silent(self) -> BackendTimeout:
        return BackendTimeout(f"stream from {self._shown} went silent for {self._idle}s", url=self._url)

    async def aclose(self) -> None:
        while self._open:
            await self._open.pop().aclose()


def open_transport(kind: str, *, max_connections: int, trust_env: bool = False) -> Transport:
    """A new pool: *kind* is ``auto``, ``httpx`` or ``aiohttp``.

    *trust_env* lets it use the proxy (``HTTP_PROXY``, ``HTTPS_PROXY``,
    ``NO_PROXY``) and CA (``SSL_CERT_FILE``, ``SSL_CERT_DIR``) variables; both
    transports then behave the same.

    ``auto`` picks aiohttp under asyncio (when installed) and httpx otherwise.
    Must be called inside the running event loop.
    """
    import sniffio

    running = sniffio.current_async_library()
    if kind == "aiohttp" and running != "asyncio":
        kind = "httpx"  # aiohttp cannot run under trio
    if kind == "auto":
        kind = "httpx"
        if running == "asyncio":
            try:
                import aiohttp  # noqa: F401
            except ImportError:
                pass
            else:
                kind = "aiohttp"
    if kind == "aiohttp":
        from .transport_aiohttp import AiohttpTransport

        return AiohttpTransport(max_connections=max_connections, trust_env=trust_env)
    from .transport_httpx import HttpxTransport

    return HttpxTransport(max_connections=max_connections, trust_env=trust_env)
