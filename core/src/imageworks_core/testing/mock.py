"""``MockTransport``: answer a client's HTTP requests in-process, from a function.

In the spirit of ``httpx.MockTransport``: a test hands ``Client`` a transport
whose *handler* sees each request (method, URL, headers, body) and returns the
response, so a plugin's request bodies and its reading of a server's exact
answers are checked without a socket::

    def handler(request: MockRequest) -> MockResponse:
        if request.path == "/v1/models":
            return MockResponse.json({"data": [{"id": "m"}]})
        assert request.json()["max_tokens"] == 64
        return MockResponse.json({"choices": [{"message": {"content": "a cat"}}]})

    async with Client(backend="vllm", model="m", transport=MockTransport(handler)) as client:
        ...

The handler may be a coroutine function.  It plays the network's faults by
raising: ``ConnectionRefusedError`` (or any ``OSError``) arrives as
``BackendUnavailable`` and ``TimeoutError`` as ``BackendTimeout``, as the real
transports report them; a handler that has not answered within the request's
read timeout is a ``BackendTimeout`` too.  Streams are served from the response body, split
into lines (``MockResponse.sse`` builds one).  A WebSocket the client opens
(``ctx.http.websocket``) is a ``GET`` request with ``websocket=True``; answer it
with ``MockResponse.websocket(messages)``, where *messages* (``str`` or ``bytes``,
a list or an async iterator, to pace them) are what the server sends; any other
answer is a refused upgrade.  What needs real sockets (a
process that dies, a connection cut mid-answer) needs a real server:
``FakeOpenAIServer``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio.lowlevel
import attrs

from ..errors import BackendProtocolError, BackendTimeout, BackendUnavailable, redact_url
from ..transport import HttpResponse, Timeouts, broke_off
from ..websocket import Messages

__all__ = ["MockRequest", "MockResponse", "MockTransport"]


@attrs.frozen(slots=True)
class MockRequest:
    """One request the client sent.

    Attributes:
        method: ``GET``, ``POST`` ...
        url: The full URL.
        headers: The headers, names in lower case.
        body: The raw body (``b""`` for none).
        stream: Whether the client asked for a streamed response.
        websocket: Whether the client opened a WebSocket.
    """

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes = b""
    stream: bool = False
    websocket: bool = False

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def query(self) -> dict[str, str]:
        return dict(parse_qsl(urlsplit(self.url).query))

    def json(self) -> Any:
        return json.loads(self.body)


@attrs.frozen(slots=True)
class MockResponse:
    """A response to hand back: status, headers, body (a stream's lines come from the body).

    ``broken=True`` cuts the connection after the body: the client gets the same
    "broke off" error as from a real server that closes mid-answer.
    """

    status: int = 200
    headers: Mapping[str, str] = attrs.field(factory=dict)
    body: bytes = b""
    messages: Iterable[Any] | AsyncIterable[Any] | None = None
    broken: bool = False

    @classmethod
    def websocket(cls, messages: Iterable[Any] | AsyncIterable[Any]) -> MockResponse:
        """An accepted WebSocket: the server sends *messages* (a dict is JSON-encoded), then closes."""
        return cls(101, {"upgrade": "websocket"}, b"", messages)

    @classmethod
    def json(cls, data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> MockResponse:
        return cls(status, {"content-type": "application/json", **(headers or {})}, json.dumps(data).encode())

    @classmethod
    def text(cls, text: str, status: int = 200, headers: Mapping[str, str] | None = None) -> MockResponse:
        return cls(status, {"content-type": "text/plain", **(headers or {})}, text.encode())

    @classmethod
    def sse(cls, events: Iterable[Any], *, done: bool = True, status: int = 200) -> MockResponse:
        """A server-sent event stream: each event (a dict is JSON-encoded) as one ``data:`` line."""
        lines = [f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events]
        if done:
            lines.append("data: [DONE]\n\n")
        return cls(status, {"content-type": "text/event-stream"}, "".join(lines).encode())


Handler = Callable[[MockRequest], "MockResponse | Awaitable[MockResponse]"]


_CUT = ConnectionResetError("the server closed the connection")


class _MockStream:
    def __init__(self, resp: MockResponse, url: str) -> None:
        self.status = resp.status
        self.headers: Mapping[str, str] = {k.lower(): v for k, v in resp.headers.items()}
        self._body = resp.body
        self._broken = resp.broken
        self._url = url

    async def read(self) -> bytes:
        if self._broken:
            raise broke_off(self._url, _CUT)
        return self._body

    def lines(self) -> AsyncIterator[bytes]:
        return _Lines(
            self._body.splitlines(), broke_off(self._url, _CUT, streaming=True) if self._broken else None
        )


class _Lines:
    """An async iterator over ready lines (no generator: nothing to leave unfinished)."""

    def __init__(self, lines: list[bytes], error: Exception | None = None) -> None:
        self._lines = iter(lines)
        self._error = error

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> bytes:
        import anyio.lowlevel

        await anyio.lowlevel.checkpoint()
        try:
            return next(self._lines)
        except StopIteration:
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None


class MockTransport:
    """A transport that answers from *handler*; ``requests`` lists what the client sent, in order.

    Pass it as ``Client(transport=MockTransport(handler))``: every endpoint's
    requests (health checks included) go to the one handler.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[MockRequest] = []
        self.closed = False

    def sent(self, path: str | None = None) -> list[MockRequest]:
        """The requests sent (to *path* only, when given)."""
        return [r for r in self.requests if path is None or r.path == path]

    async def _answer(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes | None,
        stream: bool,
        timeouts: Timeouts,
        websocket: bool = False,
    ) -> MockResponse:
        request = MockRequest(
            method, url, {k.lower(): v for k, v in headers.items()}, bytes(body or b""), stream, websocket
        )
        self.requests.append(request)
        limit = timeouts.read
        try:
            with anyio.fail_after(limit):  # a handler that never answers times out as a silent server does
                answer = self.handler(request)
                if inspect.isawaitable(answer):
                    answer = await answer
        except TimeoutError as exc:
            why = str(exc) or f"nothing within {limit:g}s"
            raise BackendTimeout(f"{method} {redact_url(url)} timed out ({why})", url=url) from exc
        except OSError as exc:
            reason = str(exc) or type(exc).__name__
            raise BackendUnavailable(f"cannot connect to {redact_url(url)}: {reason}", url=url) from exc
        if not isinstance(answer, MockResponse):
            raise TypeError(f"the MockTransport handler returned {type(answer).__name__}, not MockResponse")
        return answer

    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> HttpResponse:
        resp = await self._answer(method, url, headers, body, False, timeouts)
        if resp.broken:
            raise broke_off(url, _CUT)
        return HttpResponse(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.body)

    @contextlib.asynccontextmanager
    async def stream(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None, timeouts: Timeouts
    ) -> AsyncIterator[_MockStream]:
        yield _MockStream(await self._answer(method, url, headers, body, True, timeouts), url)

    @contextlib.asynccontextmanager
    async def websocket(
        self, url: str, *, headers: Mapping[str, str], timeouts: Timeouts
    ) -> AsyncIterator[_MockWebSocket]:
        answer = await self._answer("GET", url, headers, None, False, timeouts, websocket=True)
        if answer.status != 101 or answer.messages is None:
            raise BackendProtocolError(
                f"{redact_url(url)}: the server refused the WebSocket upgrade (HTTP {answer.status})",
                status=answer.status,
            )
        ws = _MockWebSocket(answer.messages)
        try:
            yield ws
        finally:
            await ws.aclose()

    async def aclose(self) -> None:
        self.closed = True


class _MockWebSocket(Messages):
    """What ``MockTransport.websocket`` yields: the scripted messages, then the close."""

    def __init__(self, messages: Iterable[Any] | AsyncIterable[Any]) -> None:
        self._sync = None if isinstance(messages, AsyncIterable) else iter(messages)
        self._async = messages.__aiter__() if isinstance(messages, AsyncIterable) else None
        self.closed = False

    async def receive(self) -> str | bytes | None:
        """The next scripted message; ``None`` after the last (the server closed)."""
        if self.closed:
            return None
        try:
            if self._async is not None:
                message = await self._async.__anext__()
            else:
                await anyio.lowlevel.checkpoint()
                message = next(self._sync)  # type: ignore[arg-type]
        except (StopIteration, StopAsyncIteration):
            self.closed = True
            return None
        return _encoded(message)

    async def aclose(self) -> None:
        self.closed = True
        aclose = getattr(self._async, "aclose", None)
        if aclose is not None:
            await aclose()


def _encoded(message: Any) -> str | bytes:
    return message if isinstance(message, str | bytes) else json.dumps(message)
