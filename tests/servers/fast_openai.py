"""A fast canned OpenAI-compatible server for benchmarks and load tests.

Run as its own process::

    python tests/servers/fast_openai.py --port N [--delay-ms X] [--no-uvloop]

It is a bare ``asyncio.Protocol`` HTTP/1.1 server (keep-alive, pipelining-safe,
``Content-Length`` request bodies, chunked request bodies tolerated) so that it
costs the shared machine as little CPU per request as possible: the benchmarks
measure the *client*.  uvloop is used when it is importable.

Endpoints (127.0.0.1 only):

* ``GET /health`` -> 200, empty body.
* ``GET /v1/models`` -> one model, ``fake-vlm``.
* ``POST /v1/chat/completions`` -> a canned ``chat.completion``; with
  ``"stream": true`` a chunked SSE stream (role chunk, a few content chunks, a
  finish chunk, a usage chunk with ``"choices": []`` when
  ``stream_options.include_usage`` is true, then ``data: [DONE]``).  The ~40 KB
  body is *not* JSON-parsed: ``model``, ``stream`` and ``include_usage`` are read
  with byte regexes (a base64 image cannot contain a quote, and a key inside a
  JSON string value has escaped quotes, so these cannot be fooled by content).
* ``GET /_stats`` -> ``{"requests": n, "cpu_s": process CPU seconds}`` so a
  benchmark can report the server's own CPU cost per request.

``--delay-ms`` delays every chat answer with ``loop.call_later`` (never blocks).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import signal
import time
from typing import cast

SERVED_MODEL = "fake-vlm"
ANSWER = "A grey cat on a sofa."
_STREAM_PIECES = ("A grey", " cat on", " a sofa.")
_COMPLETION_TOKENS = 7

_MODEL_RE = re.compile(rb'"model"\s*:\s*"((?:[^"\\]|\\.)*)"')
_STREAM_RE = re.compile(rb'"stream"\s*:\s*true')
_USAGE_RE = re.compile(rb'"include_usage"\s*:\s*true')

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024

_MODELS_BODY = json.dumps(
    {
        "object": "list",
        "data": [
            {"id": SERVED_MODEL, "object": "model", "owned_by": "imageworks-test", "max_model_len": 4096}
        ],
    },
    separators=(",", ":"),
).encode()

_CHAT_TEMPLATE = (
    b'{"id":"chatcmpl-%d","object":"chat.completion","created":%d,"model":"%s",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"' + ANSWER.encode() + b'"},'
    b'"logprobs":null,"finish_reason":"stop"}],'
    b'"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}'
)
_CHUNK_HEAD = b'data: {"id":"chatcmpl-%d","object":"chat.completion.chunk","created":%d,"model":"%s",'


def _json_bytes(text: str) -> bytes:
    """*text* as the inside of a JSON string literal."""
    return json.dumps(text)[1:-1].encode()


def _sse_events(seq: int, created: int, model: bytes, prompt_tokens: int, include_usage: bool) -> list[bytes]:
    head = _CHUNK_HEAD % (seq, created, model)
    open_choice = b'"choices":[{"index":0,"delta":'
    events = [head + open_choice + b'{"role":"assistant","content":""},"finish_reason":null}]}\n\n']
    for piece in _STREAM_PIECES:
        events.append(
            head + open_choice + b'{"content":"%s"},"finish_reason":null}]}\n\n' % _json_bytes(piece)
        )
    events.append(head + open_choice + b'{},"finish_reason":"stop"}]}\n\n')
    if include_usage:
        events.append(
            head
            + b'"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            % (prompt_tokens, _COMPLETION_TOKENS, prompt_tokens + _COMPLETION_TOKENS)
        )
    events.append(b"data: [DONE]\n\n")
    return events


def _response(status: bytes, body: bytes, content_type: bytes, keep_alive: bool) -> bytes:
    return b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s" % (
        status,
        content_type,
        len(body),
        b"" if keep_alive else b"Connection: close\r\n",
        body,
    )


def _error(status: bytes, message: str, keep_alive: bool) -> bytes:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "code": None}}).encode()
    return _response(status, body, b"application/json", keep_alive)


class Stats:
    requests = 0


class _Request:
    __slots__ = ("body", "keep_alive", "method", "path")

    def __init__(self, method: bytes, path: bytes, body: bytes, keep_alive: bool) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.keep_alive = keep_alive


class FastOpenAIProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection.  Requests are answered strictly in order."""

    delay_s: float = 0.0

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.head: tuple[bytes, bytes, bool, bool] | None = None  # method, path, keep_alive, chunked
        self.need = 0  # body bytes wanted (Content-Length) once the head is parsed
        self.busy = False  # a delayed answer is pending; later requests wait in ``buf``
        self.closing = False

    # -- asyncio.Protocol ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.closing = True

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.busy:
            self._drain()

    # -- parsing ------------------------------------------------------------------------------------

    def _drain(self) -> None:
        while not self.busy and not self.closing:
            request = self._next_request()
            if request is None:
                return
            self._dispatch(request)

    def _next_request(self) -> _Request | None:
        buf = self.buf
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > _MAX_HEAD:
                    self._fail(b"431 Request Header Fields Too Large", "header too large")
                return None
            if not self._parse_head(bytes(buf[:end])):
                return None
            del buf[: end + 4]
        assert self.head is not None
        method, path, keep_alive, chunked = self.head
        if chunked:
            body = self._take_chunked()
            if body is None:
                return None
        else:
            if len(buf) < self.need:
                return None
            body = bytes(buf[: self.need])
            del buf[: self.need]
        self.head = None
        return _Request(method, path, body, keep_alive)

    def _parse_head(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            self._fail(b"400 Bad Request", "bad request line")
            return False
        method, target, version = parts
        keep_alive = version == b"HTTP/1.1"
        length = 0
        chunked = False
        expect_continue = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if not 0 <= length <= _MAX_BODY:
                    self._fail(b"400 Bad Request", "bad content-length")
                    return False
            elif name == b"connection":
                token = value.strip().lower()
                if token == b"close":
                    keep_alive = False
                elif token == b"keep-alive":
                    keep_alive = True
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"expect":
                expect_continue = value.strip().lower() == b"100-continue"
        path = target.split(b"?", 1)[0]
        self.head = (method, path, keep_alive, chunked)
        self.need = length
        if expect_continue and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def _take_chunked(self) -> bytes | None:
        """Decode a complete chunked body from ``buf``; ``None`` while incomplete (rare path)."""
        buf = self.buf
        pos = 0
        pieces: list[bytes] = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            except ValueError:
                self._fail(b"400 Bad Request", "bad chunk size")
                return None
            pos = eol + 2
            if size == 0:
                # skip trailers up to the empty line
                end = buf.find(b"\r\n\r\n", pos - 2)
                if end < 0:
                    return None
                del buf[: end + 4]
                return b"".join(pieces)
            if len(buf) < pos + size + 2:
                return None
            pieces.append(bytes(buf[pos : pos + size]))
            pos += size + 2

    # -- answering ----------------------------------------------------------------------------------

    def _fail(self, status: bytes, message: str) -> None:
        if self.transport is not None:
            self.transport.write(_error(status, message, False))
            self.transport.close()
        self.closing = True

    def _send(self, data: bytes | list[bytes], keep_alive: bool) -> None:
        transport = self.transport
        if transport is None:
            return
        if isinstance(data, list):
            transport.writelines(data)
        else:
            transport.write(data)
        if not keep_alive:
            transport.close()
            self.closing = True

    def _dispatch(self, req: _Request) -> None:
        Stats.requests += 1
        path = req.path
        if path == b"/v1/chat/completions":
            if req.method != b"POST":
                self._send(_error(b"405 Method Not Allowed", "use POST", req.keep_alive), req.keep_alive)
                return
            if self.delay_s > 0:
                self.busy = True
                self.loop.call_later(self.delay_s, self._delayed_chat, req)
            else:
                self._chat(req)
        elif path == b"/health":
            self._send(_response(b"200 OK", b"", b"text/plain", req.keep_alive), req.keep_alive)
        elif path == b"/v1/models":
            models = _response(b"200 OK", _MODELS_BODY, b"application/json", req.keep_alive)
            self._send(models, req.keep_alive)
        elif path == b"/_stats":
            body = b'{"requests":%d,"cpu_s":%.6f}' % (Stats.requests, time.process_time())
            self._send(_response(b"200 OK", body, b"application/json", req.keep_alive), req.keep_alive)
        else:
            self._send(
                _error(b"404 Not Found", f"no route {path.decode(errors='replace')}", req.keep_alive),
                req.keep_alive,
            )

    def _delayed_chat(self, req: _Request) -> None:
        self.busy = False
        if self.transport is None:
            return
        self._chat(req)
        if self.buf:
            self._drain()

    def _chat(self, req: _Request) -> None:
        body = req.body
        found = _MODEL_RE.search(body)
        if found is None:
            self._send(_error(b"400 Bad Request", "missing model", req.keep_alive), req.keep_alive)
            return
        model = found.group(1)
        seq = Stats.requests
        created = int(time.time())
        prompt_tokens = 16 + len(body) // 1024
        if _STREAM_RE.search(body) is None:
            payload = _CHAT_TEMPLATE % (
                seq,
                created,
                model,
                prompt_tokens,
                _COMPLETION_TOKENS,
                prompt_tokens + _COMPLETION_TOKENS,
            )
            self._send(_response(b"200 OK", payload, b"application/json", req.keep_alive), req.keep_alive)
            return
        events = _sse_events(seq, created, model, prompt_tokens, _USAGE_RE.search(body) is not None)
        out = [
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Transfer-Encoding: chunked\r\n%s\r\n" % (b"" if req.keep_alive else b"Connection: close\r\n")
        ]
        for event in events:
            out.append(b"%x\r\n%s\r\n" % (len(event), event))
        out.append(b"0\r\n\r\n")
        self._send(out, req.keep_alive)


async def serve(port: int, delay_ms: float) -> None:
    FastOpenAIProtocol.delay_s = max(0.0, delay_ms / 1000.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(FastOpenAIProtocol, "127.0.0.1", port, backlog=2048, reuse_address=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    where = f"http://127.0.0.1:{port}"
    print(f"fast_openai listening on {where} delay_ms={delay_ms} loop={type(loop).__module__}", flush=True)
    async with server:
        await stop.wait()
    print(f"fast_openai stopped after {Stats.requests} requests, cpu {time.process_time():.3f}s", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="delay every chat answer (non-blocking)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib loop even if uvloop exists")
    args = parser.parse_args(argv)
    runner = asyncio.run
    if not args.no_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            runner = uvloop.run  # type: ignore[assignment]
    runner(serve(args.port, args.delay_ms))


if __name__ == "__main__":
    main()
