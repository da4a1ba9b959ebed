"""The httpx transport: runs under asyncio and trio (httpx2 when installed, else httpx)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from typing import Any

from .errors import BackendTimeout, redact_url
from .transport import (
    HttpResponse,
    StreamBase,
    StreamResponse,
    Timeouts,
    WebSocketOpener,
    connect_failed,
    ssl_context,
)


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


class _HttpxStream(StreamBase):
    def __init__(self, resp: Any, url: str, idle: float | None) -> None:
        super().__init__(resp, url, idle, resp.status_code, resp.headers)

    async def read(self) -> bytes:
        httpx = _httpx()
        try:
            return bytes(await self._resp.aread())
        except httpx.HTTPError as exc:
            raise self.broke_off(exc) from exc

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
                    raise self.went_silent() from exc
                except BaseException as exc:
                    finished = True  # an error inside httpx ends its generators as it passes
                    if isinstance(exc, httpx.TimeoutException):
                        raise BackendTimeout(
                            f"stream from {self._shown} timed out: {exc}", url=self._url
                        ) from exc
                    if isinstance(exc, httpx.HTTPError):
                        raise self.broke_off(exc, streaming=True) from exc
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


class HttpxTransport(WebSocketOpener):
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
        with self._mapped(method, url):
            resp = await self._resent(
                lambda: self._client.request(
                    method, url, headers=headers, content=body, timeout=self._timeout(timeouts)
                )
            )
        return HttpResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.content)

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> AsyncIterator[StreamResponse]:
        req = self._client.build_request(
            method, url, headers=headers, content=body, timeout=self._timeout(timeouts)
        )
        with self._mapped(method, url):
            resp = await self._resent(lambda: self._client.send(req, stream=True))
        stream = _HttpxStream(resp, url, timeouts.idle)
        try:
            yield stream
        finally:
            try:
                await stream.aclose()
            finally:
                await resp.aclose()

    async def _resent(self, send: Callable[[], Awaitable[Any]]) -> Any:
        """*send* once more on a new connection when the pooled one the server had just closed fails
        before any answer (see ``transport_aiohttp._dropped_before_answer``)."""
        httpx = self._httpx
        try:
            return await send()
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            return await send()

    @contextlib.contextmanager
    def _mapped(self, method: str, url: str) -> Iterator[None]:
        """httpx's errors before an answer as the seam's: an outage, or a timed-out try."""
        httpx = self._httpx
        try:
            yield
        except httpx.ConnectTimeout as exc:
            raise connect_failed(url, exc, connect_timed_out=True) from exc
        except httpx.TimeoutException as exc:
            raise BackendTimeout(
                f"{method} {redact_url(url)} timed out ({type(exc).__name__})", url=url
            ) from exc
        except httpx.HTTPError as exc:
            raise connect_failed(url, exc) from exc

    async def aclose(self) -> None:
        await self._client.aclose()
