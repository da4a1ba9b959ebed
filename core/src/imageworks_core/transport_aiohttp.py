"""The aiohttp transport: the fast path under asyncio."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any

from .errors import BackendTimeout, redact_url
from .transport import (
    HttpResponse,
    StreamBase,
    StreamResponse,
    Timeouts,
    WebSocketOpener,
    broke_off,
    connect_failed,
    ssl_context,
)


class _AiohttpStream(StreamBase):
    def __init__(self, resp: Any, url: str, idle: float | None) -> None:
        super().__init__(resp, url, idle, resp.status, resp.headers)

    async def read(self) -> bytes:
        import aiohttp

        try:
            return bytes(await self._resp.read())
        except (aiohttp.ClientError, OSError) as exc:
            raise self.broke_off(exc) from exc

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
                raise self.went_silent() from exc
            except (aiohttp.ClientError, OSError) as exc:
                raise self.broke_off(exc, streaming=True) from exc
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


class AiohttpTransport(WebSocketOpener):
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
            raise connect_failed(url, exc, connect_timed_out=True) from exc
        except TimeoutError as exc:
            raise BackendTimeout(f"{method} {redact_url(url)} timed out", url=url) from exc
        except aiohttp.ClientPayloadError as exc:
            raise broke_off(url, exc, retryable=True) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise connect_failed(url, exc) from exc

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
            raise connect_failed(url, exc, connect_timed_out=True) from exc
        except TimeoutError as exc:
            raise BackendTimeout(f"{method} {redact_url(url)} timed out", url=url) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise connect_failed(url, exc) from exc
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
