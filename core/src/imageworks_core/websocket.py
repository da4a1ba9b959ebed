"""A WebSocket client for backends that report over one (ComfyUI's ``/ws`` progress messages).

One implementation for asyncio and trio: anyio's TCP (and TLS) streams carry the bytes and
wsproto (python-hyper's sans-I/O WebSocket protocol) frames them, so no second HTTP stack is
needed for a socket that only listens. The transports hand it out (``Transport.websocket``) so
that tests can replace it (``MockTransport``); plugins reach it through ``ctx.http.websocket``.

Only what a listening client needs: the opening handshake with the backend's headers, text and
binary messages (fragments joined), answers to pings, and a clean close. A failed connect is
``BackendUnavailable``; a refused upgrade (an HTTP answer instead of ``101``) or a broken frame is
``BackendProtocolError``.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

import anyio
import anyio.abc
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .errors import BackendProtocolError, BackendUnavailable
from .redact import redact_url

__all__ = ["Messages", "WebSocket", "connect_websocket", "ws_url"]

#: Largest message kept (ComfyUI's previews are sent as binary messages of a few hundred KiB).
MAX_MESSAGE = 16 * 1024 * 1024


def ws_url(url: str) -> str:
    """``http(s)://`` -> ``ws(s)://`` (a ``ws(s)://`` URL is kept)."""
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if url.startswith(http):
            return ws + url[len(http) :]
    return url


class Messages:
    """``async for message in ws``: each message until ``receive()`` says the socket closed."""

    def __aiter__(self) -> Messages:
        return self

    async def __anext__(self) -> str | bytes:
        message = await self.receive()
        if message is None:
            raise StopAsyncIteration
        return message

    async def receive(self) -> str | bytes | None:
        raise NotImplementedError


class WebSocket(Messages):
    """An open WebSocket: ``async for message in ws`` gives each message (``str`` or ``bytes``)
    until the server closes it."""

    def __init__(self, stream: anyio.abc.ByteStream, conn: WSConnection, url: str) -> None:
        self._stream = stream
        self._conn = conn
        self._url = url
        self._closed = False

    async def receive(self) -> str | bytes | None:
        """The next message; ``None`` once the connection is closed (by either side)."""
        text: list[str] = []
        binary: list[bytes] = []
        size = 0
        while not self._closed:
            for event in self._conn.events():
                if isinstance(event, TextMessage | BytesMessage):
                    if isinstance(event, TextMessage):
                        text.append(event.data)
                    else:
                        binary.append(bytes(event.data))
                    size += len(event.data)
                    if size > MAX_MESSAGE:
                        raise BackendProtocolError(
                            f"{redact_url(self._url)}: a WebSocket message over {MAX_MESSAGE} bytes"
                        )
                    if event.message_finished:
                        return "".join(text) if isinstance(event, TextMessage) else b"".join(binary)
                elif isinstance(event, Ping):
                    await self._send(self._conn.send(event.response()))
                elif isinstance(event, CloseConnection):
                    with contextlib.suppress(LocalProtocolError):
                        await self._send(self._conn.send(event.response()))
                    self._closed = True
                    return None
            try:
                data = await self._stream.receive(65536)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                self._closed = True
                return None
            try:
                self._conn.receive_data(data)
            except RemoteProtocolError as exc:
                raise BackendProtocolError(
                    f"{redact_url(self._url)}: broken WebSocket frame ({exc})"
                ) from exc
        return None

    async def _send(self, data: bytes) -> None:
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await self._stream.send(data)

    async def aclose(self) -> None:
        """Say goodbye (a close frame) and close the connection."""
        if not self._closed:
            self._closed = True
            with contextlib.suppress(LocalProtocolError):
                await self._send(self._conn.send(CloseConnection(code=1000)))
        with anyio.CancelScope(shield=True):
            await self._stream.aclose()


@contextlib.asynccontextmanager
async def connect_websocket(
    url: str,
    *,
    headers: Mapping[str, str] | None = None,
    connect_timeout: float | None = 10.0,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[WebSocket]:
    """Open a WebSocket to *url* (``ws://``, ``wss://``, or ``http(s)://`` of the same server).

    Raises:
        BackendUnavailable: Nothing answered the connect (or not within *connect_timeout*).
        BackendProtocolError: The server answered the upgrade with something else than ``101``.
    """
    url = ws_url(url)
    parts = urlsplit(url)
    secure = parts.scheme == "wss"
    host = parts.hostname or ""
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    shown = redact_url(url)
    try:
        with anyio.fail_after(connect_timeout):
            if secure:
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(
                    host, port, tls=True, ssl_context=tls or ssl.create_default_context(), tls_hostname=host
                )
            else:
                stream = await anyio.connect_tcp(host, port)
    except TimeoutError as exc:
        raise BackendUnavailable(f"{shown}: no answer to the connect within {connect_timeout:g}s") from exc
    except OSError as exc:
        raise BackendUnavailable(f"{shown}: {exc.strerror or exc}") from exc
    conn = WSConnection(ConnectionType.CLIENT)
    ws = WebSocket(stream, conn, url)
    try:
        netloc = parts.netloc.rpartition("@")[2]
        extra = [(k.encode(), v.encode()) for k, v in (headers or {}).items() if k.lower() != "host"]
        try:
            with anyio.fail_after(connect_timeout):
                await stream.send(conn.send(Request(host=netloc, target=target, extra_headers=extra)))
                await _handshake(stream, conn, shown)
        except TimeoutError as exc:  # connected, but nothing answers the upgrade (a proxy holding it)
            raise BackendProtocolError(
                f"{shown}: no answer to the WebSocket upgrade within {connect_timeout:g}s"
            ) from exc
        yield ws
    finally:
        await ws.aclose()


async def _handshake(stream: anyio.abc.ByteStream, conn: WSConnection, shown: str) -> None:
    status = 0
    while True:
        for event in conn.events():
            if isinstance(event, AcceptConnection):
                return
            if isinstance(event, RejectConnection):
                status = event.status_code
                if not event.has_body:
                    raise _refused(shown, status)
            elif isinstance(event, RejectData) and event.body_finished:
                raise _refused(shown, status)
        try:
            data = await stream.receive(65536)
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError) as exc:
            raise BackendProtocolError(
                f"{shown}: the connection closed during the WebSocket handshake"
            ) from exc
        try:
            conn.receive_data(data)
        except RemoteProtocolError as exc:
            raise BackendProtocolError(f"{shown}: not a WebSocket handshake answer ({exc})") from exc


def _refused(shown: str, status: int) -> BackendProtocolError:
    return BackendProtocolError(
        f"{shown}: the server refused the WebSocket upgrade (HTTP {status})", status=status
    )
