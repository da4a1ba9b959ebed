"""The transport seam: one interface, two implementations, one pool per endpoint.

``HttpxTransport`` works under asyncio and trio.  ``AiohttpTransport`` is the
asyncio fast path (an order of magnitude less client CPU per request, see
``bench/bench_dispatch.py``).  ``open_transport`` picks by the running event
loop.  Transports raise only ``BackendUnavailable`` / ``BackendTimeout`` /
``BackendProtocolError``; turning HTTP statuses into errors is the caller's job.
"""

from __future__ import annotations

import contextlib
import os
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


class _WebSockets:
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


def _unavailable(url: str, exc: BaseException, *, connect_timed_out: bool = False) -> BackendUnavailable:
    reason = str(exc) or type(exc).__name__
    if connect_timed_out:
        reason = f"no answer to the connect ({reason})"
    return BackendUnavailable(f"cannot connect to {redact_url(url)}: {reason}", url=url)


# ---------------------------------------------------------------- httpx


def _httpx() -> Any:
    """httpx2 (pydantic's maintained httpx line, the one the openai SDK uses) when installed, else httpx.

    Same API; under trio httpx2's pool costs ~0.4 ms CPU per request where
    httpx 0.28/0.29 costs ~2.8 ms (httpcore's per-request pool scan and
    locking), ~6x the throughput (bench/bench_dispatch.py with BENCH_LOOP=trio).
    """
    try:
        import httpx2
    except ImportError:
        import httpx

        return httpx
    return httpx2


class _Lines:
    """Owns the line generators a stream response hands out, and closes them with it.

    A consumer that stops early (``[DONE]``, a ``break``, a cancellation)
    leaves its generator unfinished; the transport closes it when the response
    closes, so no generator is left to the garbage collector (trio warns then).
    """

    def __init__(self) -> None:
        self._open: list[AsyncGenerator[bytes, None]] = []

    def track(self, gen: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
        self._open.append(gen)
        return gen

    async def aclose(self) -> None:
        while self._open:
            await self._open.pop().aclose()


class _HttpxStream(_Lines):
    def __init__(self, resp: Any, url: str, idle: float | None) -> None:
        super().__init__()
        self._resp = resp
        self._url = url
        self._shown = redact_url(url)
        self._idle = idle
        self.status: int = resp.status_code
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in resp.headers.items()}

    async def read(self) -> bytes:
        httpx = _httpx()
        try:
            return bytes(await self._resp.aread())
        except httpx.HTTPError as exc:
            raise BackendProtocolError(
                f"response from {self._shown} broke off: {exc}", url=self._url
            ) from exc

    def lines(self) -> AsyncIterator[bytes]:
        return self.track(self._lines())

    async def _lines(self) -> AsyncGenerator[bytes, None]:
        import anyio

        httpx = _httpx()
        it = self._resp.aiter_lines()
        finished = False
        try:
            while True:
                try:
                    with anyio.fail_after(self._idle):
                        line = await it.__anext__()
                except StopAsyncIteration:
                    finished = True
                    return
                except TimeoutError as exc:
                    finished = True
                    raise BackendTimeout(
                        f"stream from {self._shown} went silent for {self._idle}s", url=self._url
                    ) from exc
                except BaseException as exc:
                    finished = True  # an error inside httpx ends its generators as it passes
                    if isinstance(exc, httpx.TimeoutException):
                        raise BackendTimeout(
                            f"stream from {self._shown} timed out: {exc}", url=self._url
                        ) from exc
                    if isinstance(exc, httpx.HTTPError):
                        raise BackendProtocolError(
                            f"stream from {self._shown} broke off: {exc or type(exc).__name__}",
                            url=self._url,
                            retryable=True,
                        ) from exc
                    raise
                yield line.encode()
        finally:
            if not finished:
                await self._unwind(it)

    async def _unwind(self, it: Any) -> None:
        """Finish httpx's chain of generators (lines < text < bytes < raw < httpcore) after an early stop.

        Closing the outermost one leaves the inner ones suspended for the
        garbage collector.  Closing the response and reading on makes the
        innermost raise, and the error ends each generator on its way out.
        """
        import anyio

        with anyio.CancelScope(shield=True) as scope:
            scope.deadline = anyio.current_time() + 5.0
            with contextlib.suppress(Exception):  # a broken response: the read below settles it
                await self._resp.aclose()
            for _ in range(100_000):  # lines already buffered come first; then the closed stream ends it
                try:
                    await it.__anext__()
                except BaseException:
                    break


class HttpxTransport(_WebSockets):
    """httpx pool; the transport under trio and the fallback under asyncio."""

    def __init__(self, *, max_connections: int, trust_env: bool = False) -> None:
        httpx = _httpx()
        self._httpx = httpx
        self._trust_env = trust_env
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        # Timeouts are set per request (Timeouts), so the client-wide default is none.
        self._client = httpx.AsyncClient(
            limits=limits,
            timeout=None,
            follow_redirects=False,
            trust_env=trust_env,  # HTTP(S)_PROXY / ALL_PROXY / NO_PROXY
            verify=ssl_context(trust_env),
        )

    def _timeout(self, t: Timeouts) -> Any:
        return self._httpx.Timeout(connect=t.connect, read=t.read, write=t.read, pool=None)

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> HttpResponse:
        httpx = self._httpx
        try:
            try:
                resp = await self._client.request(
                    method, url, headers=headers, content=body, timeout=self._timeout(timeouts)
                )
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # a kept-alive connection the server closed as it was reused (see _dropped_before_answer)
                resp = await self._client.request(
                    method, url, headers=headers, content=body, timeout=self._timeout(timeouts)
                )
        except httpx.ConnectTimeout as exc:
            raise _unavailable(url, exc, connect_timed_out=True) from exc
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"{method} {redact_url(url)} timed out ({type(exc).__name__})", url=url
            ) from exc
        except httpx.HTTPError as exc:
            raise _unavailable(url, exc) from exc
        return HttpResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> AsyncIterator[StreamResponse]:
        httpx = self._httpx
        req = self._client.build_request(
            method, url, headers=headers, content=body, timeout=self._timeout(timeouts)
        )
        try:
            try:
                resp = await self._client.send(req, stream=True)
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                # a kept-alive connection the server closed as it was reused (see _dropped_before_answer)
                resp = await self._client.send(req, stream=True)
        except httpx.ConnectTimeout as exc:
            raise _unavailable(url, exc, connect_timed_out=True) from exc
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"{method} {redact_url(url)} timed out ({type(exc).__name__})", url=url
            ) from exc
        except httpx.HTTPError as exc:
            raise _unavailable(url, exc) from exc
        stream = _HttpxStream(resp, url, timeouts.idle)
        try:
            yield stream
        finally:
            try:
                await stream.aclose()
            finally:
                await resp.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()


# ---------------------------------------------------------------- aiohttp


class _AiohttpStream(_Lines):
    def __init__(self, resp: Any, url: str, idle: float | None) -> None:
        super().__init__()
        self._resp = resp
        self._url = url
        self._shown = redact_url(url)
        self._idle = idle
        self.status: int = resp.status
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in resp.headers.items()}

    async def read(self) -> bytes:
        import aiohttp

        try:
            return bytes(await self._resp.read())
        except (aiohttp.ClientError, OSError) as exc:
            raise BackendProtocolError(
                f"response from {self._shown} broke off: {exc}", url=self._url
            ) from exc

    def lines(self) -> AsyncIterator[bytes]:
        """Lines of any length, split here as httpx does (aiohttp's ``readline`` stops at 128 KiB)."""
        return self.track(self._lines())

    async def _lines(self) -> AsyncGenerator[bytes, None]:
        import asyncio

        import aiohttp

        content = self._resp.content
        buf = bytearray()
        while True:
            try:
                async with asyncio.timeout(self._idle):
                    data = await content.readany()
            except TimeoutError as exc:
                raise BackendTimeout(
                    f"stream from {self._shown} went silent for {self._idle}s", url=self._url
                ) from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise BackendProtocolError(
                    f"stream from {self._shown} broke off: {exc or type(exc).__name__}",
                    url=self._url,
                    retryable=True,
                ) from exc
            if not data:
                if buf:
                    yield bytes(buf).rstrip(b"\r")
                return
            scan = len(buf)  # only the new bytes can hold the next newline
            buf += data
            start = 0
            while (nl := buf.find(b"\n", scan)) >= 0:
                yield bytes(buf[start:nl]).rstrip(b"\r")
                start = scan = nl + 1
            del buf[:start]


class AiohttpTransport(_WebSockets):
    """aiohttp pool: the fast path under asyncio.

    With *trust_env*, the proxy (``HTTP(S)_PROXY`` / ``NO_PROXY``) is looked up once
    per origin and kept: aiohttp's own ``trust_env`` looks it up again in a worker
    thread on every request, and a ``.netrc`` login too (two thread hops, ~0.2 ms
    CPU a request: a third of the dispatcher's cost).  ``.netrc`` is not read, as
    under httpx: the environment means the same on both transports.
    """

    def __init__(self, *, max_connections: int, trust_env: bool = False) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        self._trust_env = trust_env
        self._routes: dict[str, dict[str, Any]] = {}
        connector = aiohttp.TCPConnector(
            limit=max_connections,
            limit_per_host=max_connections,
            ttl_dns_cache=300,
            ssl=ssl_context(trust_env),
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=True,
            trust_env=False,  # the proxy is looked up once per origin instead (_route)
            skip_auto_headers=("User-Agent",),
        )

    def _route(self, url: str) -> dict[str, Any]:
        """The proxy arguments for a request to *url* (``{}`` without *trust_env*)."""
        if not self._trust_env:
            return _DIRECT
        scheme, _, rest = url.partition("://")
        origin = scheme + "://" + rest.split("/", 1)[0]
        found = self._routes.get(origin)
        if found is None:
            found = self._routes[origin] = _env_proxy(origin)
        return found

    def _timeout(self, t: Timeouts) -> Any:
        return self._aiohttp.ClientTimeout(total=None, sock_connect=t.connect, sock_read=t.read)

    def _send(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> Any:
        """aiohttp's request context manager for one request (redirects are reported, not followed)."""
        return self._session.request(
            method,
            url,
            headers=headers,
            data=body,
            timeout=self._timeout(timeouts),
            allow_redirects=False,
            **self._route(url),
        )

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> HttpResponse:
        aiohttp = self._aiohttp
        try:
            for retry in (True, False):
                try:
                    async with self._send(method, url, headers, body, timeouts) as resp:
                        data = await resp.read()
                        return HttpResponse(
                            resp.status, {k.lower(): v for k, v in resp.headers.items()}, data
                        )
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                    if not (retry and _dropped_before_answer(aiohttp, exc)):
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except aiohttp.ConnectionTimeoutError as exc:  # nothing answered the connect: an outage
            raise _unavailable(url, exc, connect_timed_out=True) from exc
        except TimeoutError as exc:
            raise BackendTimeout(f"{method} {redact_url(url)} timed out", url=url) from exc
        except aiohttp.ClientPayloadError as exc:
            raise BackendProtocolError(
                f"response from {redact_url(url)} broke off: {exc}", url=url, retryable=True
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _unavailable(url, exc) from exc

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> AsyncIterator[StreamResponse]:
        aiohttp = self._aiohttp
        try:
            for retry in (True, False):
                cm = self._send(method, url, headers, body, timeouts)
                try:
                    resp = await cm.__aenter__()
                    break
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as exc:
                    if not (retry and _dropped_before_answer(aiohttp, exc)):
                        raise
        except aiohttp.ConnectionTimeoutError as exc:  # nothing answered the connect: an outage
            raise _unavailable(url, exc, connect_timed_out=True) from exc
        except TimeoutError as exc:
            raise BackendTimeout(f"{method} {redact_url(url)} timed out", url=url) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise _unavailable(url, exc) from exc
        stream = _AiohttpStream(resp, url, timeouts.idle)
        try:
            yield stream
        finally:
            try:
                await stream.aclose()
            finally:
                resp.release()
                await cm.__aexit__(None, None, None)

    async def aclose(self) -> None:
        await self._session.close()


_DIRECT: dict[str, Any] = {}


def _dropped_before_answer(aiohttp: Any, exc: BaseException) -> bool:
    """Whether *exc* is a kept-alive connection the server had already closed.

    A server may close an idle connection (a keep-alive timeout, or no
    keep-alive at all without saying so) just as the pool hands it out again:
    writing the request then fails, or the answer is an immediate EOF.  aiohttp
    retries that only for idempotent methods; httpx checks a pooled connection
    before using it.  Inference requests change nothing on the server, so one
    more try on a new connection is what the user wants.  A failed *connect*
    is an outage, never retried here.
    """
    return not isinstance(exc, aiohttp.ClientConnectorError)


def _env_proxy(origin: str) -> dict[str, Any]:
    """The environment's proxy for *origin*, as aiohttp's ``trust_env`` finds it (``{}``: none)."""
    from aiohttp import helpers
    from yarl import URL

    with contextlib.suppress(LookupError):
        proxy, auth = helpers.get_env_proxy_for_url(URL(origin))
        return {"proxy": proxy, "proxy_auth": auth}
    return _DIRECT


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
        return AiohttpTransport(max_connections=max_connections, trust_env=trust_env)
    return HttpxTransport(max_connections=max_connections, trust_env=trust_env)
