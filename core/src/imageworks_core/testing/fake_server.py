"""A local OpenAI-compatible fake server for transport-level tests.

The server runs in its own process on 127.0.0.1 (``python -m
imageworks_core.testing.fake_server --port 0``) and answers like a small
vision-language model server: ``/v1/models``, ``/v1/chat/completions``
(JSON or server-sent events), ``/health``, ``/version`` and the ready
probes of vLLM, LMDeploy and Triton.  A test drives it from Python through
``FakeOpenAIServer``::

    with FakeOpenAIServer() as server:              # or the imageworks_openai_server fixture
        server.push(status(429, headers={"Retry-After": "2"}))    # the next chat request
        server.always(ok(text="A red square."))                   # every later one
        ... point a client at server.base_url ...
        server.requests()                           # what the server received

What a test can script (an *answer*, made by the helpers below) for a
*path*, once, a number of ``times`` or always:

* ``ok(text=..., delay=..., chunk_delay=..., finish_reason=...)`` -- the normal
  answer (for ``/v1/chat/completions`` JSON or SSE as the request asks);
* ``status(code, body=..., headers=..., content_type=...)`` -- any status with
  any body (a dict/list is sent as JSON, a string as it is);
* ``hang()`` -- never answer; the server notices when the client goes away;
* ``stream_error(message, code=500, after=1)`` -- HTTP 200 SSE, ``after`` text
  chunks, then ``data: {"error": {...}}`` and ``[DONE]`` (a request that does
  not stream gets the normal answer);
* ``malformed(body=...)`` -- HTTP 200 ``application/json`` that does not parse;
* ``cut(after=1)`` -- an SSE stream that stops after ``after`` chunks, no finish
  (a request that does not stream gets the normal answer);
* ``drop()`` -- close the connection without answering.

Every answer takes ``delay`` (seconds to wait first); ``ok`` and ``status`` also take
response ``headers``.

Chat requests are checked like a strict server would: a JSON object with a
``messages`` list, images only as well-formed base64 ``data:`` URLs, and
``max_tokens`` present (``require_max_tokens=False`` turns that off).  The
canned reply may use ``{images}``, ``{model}`` and ``{prompt}``.

The control API lives under ``/_imageworks/`` and is never logged:
``POST push`` (a rule), ``POST reset``, ``POST configure``, ``GET requests``,
``GET status`` (``in_flight``: requests being answered right now).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "CHAT_PATH",
    "DEFAULT_MODEL",
    "DEFAULT_REPLY",
    "FakeOpenAIServer",
    "cut",
    "drop",
    "hang",
    "main",
    "malformed",
    "ok",
    "status",
    "stream_error",
]

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
DEFAULT_MODEL = "imageworks-fake-vlm"
DEFAULT_REPLY = "A small test picture: a red square on a white ground."
CONTROL = "/_imageworks/"
READY_LINE = "IMAGEWORKS_FAKE_SERVER_READY"
_KINDS = frozenset({"ok", "status", "hang", "stream_error", "malformed", "cut", "drop"})
_HANG_LIMIT = 600.0


# ---------------------------------------------------------------- answers (plain dicts, JSON-safe)


def _answer(kind: str, delay: float, headers: Mapping[str, str] | None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": kind, "delay": float(delay), "headers": dict(headers or {})}
    out.update({k: v for k, v in fields.items() if v is not None})
    return out


def ok(
    text: str | None = None,
    *,
    delay: float = 0.0,
    chunk_delay: float = 0.0,
    finish_reason: str = "stop",
    model: str | None = None,
    usage: bool = True,
    headers: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The normal answer for the path (*text* replaces the canned chat reply)."""
    return _answer(
        "ok",
        delay,
        headers,
        text=text,
        chunk_delay=float(chunk_delay),
        finish_reason=finish_reason,
        model=model,
        usage=usage,
    )


def status(
    code: int,
    body: Any = None,
    *,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = None,
    delay: float = 0.0,
) -> dict[str, Any]:
    """HTTP *code* with *body* (dict/list: JSON; str: sent verbatim; ``None``: an OpenAI-style error)."""
    return _answer("status", delay, headers, status=int(code), body=body, content_type=content_type)


def hang(*, delay: float = 0.0) -> dict[str, Any]:
    """Never answer; the request ends when the client closes its connection."""
    return _answer("hang", delay, None)


def stream_error(
    message: str = "injected error inside the stream", *, code: int = 500, after: int = 1, delay: float = 0.0
) -> dict[str, Any]:
    """HTTP 200 SSE: *after* text chunks, then an in-band ``{"error": ...}`` event and ``[DONE]``."""
    return _answer("stream_error", delay, None, message=message, code=int(code), after=int(after))


def malformed(body: str = '{"id": "chatcmpl-x", "choices": [{"mess', *, delay: float = 0.0) -> dict[str, Any]:
    """HTTP 200 ``application/json`` whose body does not parse."""
    return _answer("malformed", delay, None, body=body)


def cut(*, after: int = 1, delay: float = 0.0) -> dict[str, Any]:
    """An SSE stream that stops after *after* text chunks without a finish reason (connection closed)."""
    return _answer("cut", delay, None, after=int(after))


def drop(*, delay: float = 0.0) -> dict[str, Any]:
    """Close the connection without any answer."""
    return _answer("drop", delay, None)


# ---------------------------------------------------------------- the server (runs in its own process)


class _Rule:
    __slots__ = ("answer", "method", "path", "times")

    def __init__(self, path: str, method: str | None, times: int | None, answer: dict[str, Any]) -> None:
        self.path = path
        self.method = method.upper() if method else None
        self.times = times
        self.answer = answer

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method:
            return False
        if self.path == "*":
            return True
        if self.path.endswith("*"):
            return path.startswith(self.path[:-1])
        return path == self.path


class _State:
    def __init__(self, *, model: str, reply: str, require_max_tokens: bool) -> None:
        self.defaults = {"models": [model], "reply": reply, "require_max_tokens": require_max_tokens}
        self.config: dict[str, Any] = {}
        self.rules: list[_Rule] = []
        self.log: list[dict[str, Any]] = []
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.config = dict(self.defaults)
        self.config["max_model_len"] = 4096
        self.rules.clear()
        self.log.clear()

    def take(self, method: str, path: str) -> dict[str, Any] | None:
        for rule in self.rules:
            if rule.matches(method, path):
                if rule.times is not None:
                    rule.times -= 1
                    if rule.times <= 0:
                        self.rules.remove(rule)
                return rule.answer
        return None


def _shorten(value: Any) -> Any:
    """The request body for the log, with data URLs cut short."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > 80:
        return value[:60] + f"...<{len(value)} chars>"
    if isinstance(value, list):
        return [_shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: _shorten(v) for k, v in value.items()}
    return value


class _BadRequest(Exception):
    pass


def _inspect_chat(body: Any, require_max_tokens: bool) -> tuple[list[str], str]:
    """Check a chat request like a strict server; return (image MIME types, first user text)."""
    if not isinstance(body, dict):
        raise _BadRequest("the body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list")
    if require_max_tokens and not isinstance(body.get("max_tokens"), int):
        raise _BadRequest("'max_tokens' is required by this server (send it with every request)")
    mimes: list[str] = []
    prompt = ""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise _BadRequest("each message must be an object with a 'role'")
        content = message.get("content")
        if isinstance(content, str):
            if message["role"] == "user" and not prompt:
                prompt = content
            continue
        if not isinstance(content, list):
            raise _BadRequest("message content must be a string or a list of parts")
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if message["role"] == "user" and not prompt:
                    prompt = str(part.get("text", ""))
            elif kind == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, dict) else ref
                mimes.append(_check_data_url(url))
            else:
                raise _BadRequest(f"unsupported content part type {kind!r}")
    return mimes, prompt


def _check_data_url(url: Any) -> str:
    if not isinstance(url, str) or not url.startswith("data:"):
        raise _BadRequest("images must be sent as base64 data: URLs")
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise _BadRequest("an image data: URL must be base64-encoded")
    mime = head[len("data:") : -len(";base64")]
    if not mime.startswith("image/"):
        raise _BadRequest(f"an image data: URL has MIME type {mime!r}")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise _BadRequest("an image data: URL holds invalid base64") from None
    if not data:
        raise _BadRequest("an image data: URL is empty")
    return mime


def _error_body(message: str, kind: str, code: int) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _usage(prompt_tokens: int, text: str) -> dict[str, int]:
    completion = len(text.split())
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)] if text else []


def make_app(state: _State) -> Any:
    """The aiohttp application (imported lazily: only the server process needs aiohttp.web)."""
    from aiohttp import web

    async def control(request: web.Request) -> web.StreamResponse:
        action = request.path[len(CONTROL) :]
        payload: Any = None
        if request.method == "POST":
            raw = await request.read()
            payload = json.loads(raw) if raw else {}
        if action == "push" and request.method == "POST":
            answer = payload.get("answer")
            if not isinstance(answer, dict) or answer.get("kind") not in _KINDS:
                return web.json_response(
                    {"error": f"answer.kind must be one of {sorted(_KINDS)}"}, status=400
                )
            times = payload.get("times", 1)
            rule = _Rule(str(payload.get("path", CHAT_PATH)), payload.get("method"), times, answer)
            state.rules.append(rule)
            return web.json_response({"rules": len(state.rules)})
        if action == "reset" and request.method == "POST":
            state.reset()
            return web.json_response({"reset": True})
        if action == "configure" and request.method == "POST":
            unknown = set(payload) - {"models", "reply", "require_max_tokens", "max_model_len"}
            if unknown:
                return web.json_response({"error": f"unknown settings {sorted(unknown)}"}, status=400)
            state.config.update(payload)
            return web.json_response(state.config)
        if action == "requests":
            path = request.query.get("path")
            return web.json_response([e for e in state.log if path is None or e["path"] == path])
        if action == "status":
            return web.json_response({"in_flight": state.in_flight, "requests": len(state.log)})
        return web.json_response({"error": f"unknown control action {action!r}"}, status=404)

    def client_gone(request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    async def close_connection(request: web.Request) -> None:
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError  # nothing more may be written; aiohttp ends the handler quietly

    async def answer_chat(
        request: web.Request, body: dict[str, Any], answer: dict[str, Any], entry: dict[str, Any]
    ) -> web.StreamResponse:
        cfg = state.config
        model = answer.get("model") or body.get("model") or cfg["models"][0]
        template = answer.get("text", cfg["reply"])
        text = (
            str(template)
            .replace("{images}", str(entry["images"]))
            .replace("{model}", str(model))
            .replace("{prompt}", entry.get("prompt", ""))
        )
        finish = answer.get("finish_reason", "stop")
        prompt_tokens = 8 + 64 * entry["images"]
        headers = answer.get("headers") or {}
        created = int(time.time())
        rid = f"chatcmpl-fake-{entry['seq']}"
        if not body.get("stream"):
            completion = {
                "id": rid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                ],
            }
            if answer.get("usage", True):
                completion["usage"] = _usage(prompt_tokens, text)
            return web.json_response(completion, headers=headers)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", **headers})
        await resp.prepare(request)
        entry["status"] = 200

        def chunk(delta: dict[str, Any], finish_reason: str | None) -> bytes:
            return _sse(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
                }
            )

        await resp.write(chunk({"role": "assistant", "content": ""}, None))
        pieces = _pieces(text)
        kind = answer["kind"]
        limit = int(answer.get("after", len(pieces))) if kind in ("cut", "stream_error") else len(pieces)
        for piece in pieces[:limit]:
            if answer.get("chunk_delay"):
                await asyncio.sleep(float(answer["chunk_delay"]))
            await resp.write(chunk({"content": piece}, None))
        if kind == "cut":
            await asyncio.sleep(0.05)  # let the chunks reach the client first
            await close_connection(request)
        if kind == "stream_error":
            error = {
                "message": answer.get("message", "error"),
                "type": "server_error",
                "code": answer.get("code"),
            }
            await resp.write(_sse({"error": error}))
        else:
            await resp.write(chunk({}, finish))
            options = body.get("stream_options")
            if answer.get("usage", True) and isinstance(options, dict) and options.get("include_usage"):
                await resp.write(
                    _sse(
                        {
                            "id": rid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": model,
                            "choices": [],
                            "usage": _usage(prompt_tokens, text),
                        }
                    )
                )
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def default_route(
        request: web.Request, body: Any, answer: dict[str, Any], entry: dict[str, Any]
    ) -> web.StreamResponse:
        path, cfg = request.path, state.config
        headers = answer.get("headers") or {}
        if path == CHAT_PATH and request.method == "POST":
            return await answer_chat(request, body, answer, entry)
        if path == MODELS_PATH and request.method == "GET":
            data = [
                {
                    "id": m,
                    "object": "model",
                    "owned_by": "imageworks-fake",
                    "max_model_len": cfg["max_model_len"],
                }
                for m in cfg["models"]
            ]
            return web.json_response({"object": "list", "data": data}, headers=headers)
        if (
            path in ("/health", "/health/ready", "/v2/health/live", "/v2/health/ready")
            and request.method == "GET"
        ):
            return web.Response(status=200, headers=headers)
        if path == "/version" and request.method == "GET":
            return web.json_response({"version": "0.0.0-imageworks-fake"}, headers=headers)
        return web.json_response(
            _error_body(f"no route {request.method} {path}", "not_found", 404), status=404
        )

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return await control(request)
        raw = await request.read()
        body: Any = None
        if raw:
            with contextlib.suppress(ValueError):
                body = json.loads(raw)
        entry: dict[str, Any] = {
            "seq": len(state.log),
            "method": request.method,
            "path": request.path,
            "headers": dict(request.headers),
            "json": _shorten(body),
            "stream": isinstance(body, dict) and body.get("stream") is True,
            "model": body.get("model") if isinstance(body, dict) else None,
            "max_tokens": body.get("max_tokens") if isinstance(body, dict) else None,
            "images": 0,
            "mimes": [],
            "answer": None,
            "status": None,
            "client_gone": False,
        }
        state.log.append(entry)
        state.in_flight += 1
        try:
            answer = state.take(request.method, request.path) or ok()
            entry["answer"] = answer["kind"]
            if request.path == CHAT_PATH and request.method == "POST":
                try:
                    mimes, prompt = _inspect_chat(body, bool(state.config["require_max_tokens"]))
                except _BadRequest as exc:
                    if answer["kind"] in ("ok", "hang", "stream_error", "cut"):
                        entry["status"] = 400
                        return web.json_response(
                            _error_body(str(exc), "invalid_request_error", 400), status=400
                        )
                    mimes, prompt = [], ""
                entry.update(images=len(mimes), mimes=mimes, prompt=prompt)
            if answer.get("delay"):
                await asyncio.sleep(float(answer["delay"]))
            kind = answer["kind"]
            if kind == "hang":
                deadline = time.monotonic() + _HANG_LIMIT
                # aiohttp has no "client left" event to wait on: poll the transport
                while not client_gone(request) and time.monotonic() < deadline:  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
                entry["client_gone"] = client_gone(request)
                if entry["client_gone"]:
                    raise asyncio.CancelledError
                entry["status"] = 504
                return web.json_response(_error_body("hung for too long", "timeout", 504), status=504)
            if kind == "drop":
                await close_connection(request)
            if kind == "status":
                code = int(answer["status"])
                entry["status"] = code
                payload = answer.get("body")
                headers = answer.get("headers") or {}
                if payload is None:
                    payload = _error_body(f"injected HTTP {code}", "injected", code)
                if isinstance(payload, dict | list):
                    resp = web.json_response(payload, status=code, headers=headers)
                    if answer.get("content_type"):
                        resp.content_type = answer["content_type"]
                    return resp
                return web.Response(
                    status=code,
                    body=str(payload).encode(),
                    content_type=answer.get("content_type") or "text/plain",
                    headers=headers,
                )
            if kind == "malformed":
                entry["status"] = 200
                return web.Response(
                    status=200, body=str(answer["body"]).encode(), content_type="application/json"
                )
            answered = await default_route(request, body, answer, entry)
            entry["status"] = answered.status
            return answered
        finally:
            entry["client_gone"] = entry["client_gone"] or client_gone(request)
            state.in_flight -= 1

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    state = _State(model=args.model, reply=args.reply, require_max_tokens=not args.no_require_max_tokens)
    runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"{READY_LINE} http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            if args.parent_pid and os.getppid() != args.parent_pid:
                break  # the test process is gone: stop by ourselves
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server until SIGTERM (or until ``--parent-pid`` exits)."""
    p = argparse.ArgumentParser(
        prog="python -m imageworks_core.testing.fake_server", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed when ready)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the served model id (default: {DEFAULT_MODEL})")
    p.add_argument("--reply", default=DEFAULT_REPLY, help="the canned answer ({images}, {model}, {prompt})")
    p.add_argument(
        "--no-require-max-tokens", action="store_true", help="accept chat requests without max_tokens"
    )
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer our parent")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


# ---------------------------------------------------------------- the handle a test holds


class FakeOpenAIServer:
    """Start, script and stop the fake server process.

    Args:
        model: The model id ``/v1/models`` lists (and answers name by default).
        reply: The canned chat answer (may use ``{images}``, ``{model}``, ``{prompt}``).
        require_max_tokens: Reject chat requests without ``max_tokens`` (HTTP 400).
        startup_timeout: Seconds to wait for the process to listen.

    Attributes:
        base_url: The server root, e.g. ``http://127.0.0.1:40123`` (set by ``start``).
    """

    _running: ClassVar[dict[str, FakeOpenAIServer]] = {}

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        reply: str = DEFAULT_REPLY,
        require_max_tokens: bool = True,
        startup_timeout: float = 30.0,
    ) -> None:
        self.model = model
        self.reply = reply
        self.require_max_tokens = require_max_tokens
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="imageworks-fake-server-", suffix=".log", delete=False
        )

    # ------------------------------------------------------------ lifecycle

    @property
    def v1(self) -> str:
        """The OpenAI API base, ``<base_url>/v1``."""
        return self.base_url + "/v1"

    @classmethod
    def running(cls, url: str | None) -> FakeOpenAIServer | None:
        """The started server whose root or ``/v1`` base is *url*, if any."""
        if not url:
            return None
        url = url.rstrip("/")
        return cls._running.get(url[: -len("/v1")] if url.endswith("/v1") else url)

    def start(self) -> FakeOpenAIServer:
        if self._proc is not None:
            return self
        argv = [
            sys.executable,
            "-m",
            "imageworks_core.testing.fake_server",
            "--port",
            "0",
            "--model",
            self.model,
            "--reply",
            self.reply,
            "--parent-pid",
            str(os.getpid()),
        ]
        if not self.require_max_tokens:
            argv.append("--no-require-max-tokens")
        self._proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=self._log,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self._proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while time.monotonic() < deadline and not line.endswith(b"\n"):
            ready, _, _ = select.select([self._proc.stdout], [], [], 0.1)
            if ready:
                byte = os.read(self._proc.stdout.fileno(), 1)
                if not byte:
                    break
                line += byte
            elif self._proc.poll() is not None:
                break
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY_LINE):
            self.stop()
            raise RuntimeError(f"the imageworks fake server did not start:\n{self.log()}")
        self.base_url = text.split()[1]
        FakeOpenAIServer._running[self.base_url] = self
        return self

    def stop(self) -> None:
        """Terminate the process (and anything it started); idempotent."""
        FakeOpenAIServer._running.pop(self.base_url, None)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        self._log.close()

    def log(self) -> str:
        """What the server process printed (for failure messages)."""
        try:
            return Path(self._log.name).read_text(errors="replace")[-8000:]
        except OSError:
            return ""

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<FakeOpenAIServer {self.base_url or '(not started)'}>"

    # ------------------------------------------------------------ control

    def _call(self, method: str, action: str, payload: Any = None, query: str = "") -> Any:
        if not self.base_url:
            raise RuntimeError("the fake server is not started")
        data = None if payload is None else json.dumps(payload).encode()
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            f"{self.base_url}{CONTROL}{action}{query}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback only
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:  # it holds the connection
                detail = exc.read().decode(errors="replace")
            raise ValueError(f"fake server refused {action}: {detail}") from None

    def push(
        self,
        answer: Mapping[str, Any],
        *,
        path: str = CHAT_PATH,
        method: str | None = None,
        times: int | None = 1,
    ) -> None:
        """Answer the next *times* requests to *path* (``"*"``: any; ``"/v1/*"``: a prefix) with *answer*.

        Rules are tried in the order pushed; ``times=None`` keeps the rule forever.
        """
        self._call("POST", "push", {"answer": dict(answer), "path": path, "method": method, "times": times})

    def always(self, answer: Mapping[str, Any], *, path: str = CHAT_PATH, method: str | None = None) -> None:
        """Answer every later request to *path* with *answer* (until ``reset``)."""
        self.push(answer, path=path, method=method, times=None)

    def configure(
        self,
        *,
        models: Sequence[str] | None = None,
        reply: str | None = None,
        require_max_tokens: bool | None = None,
        max_model_len: int | None = None,
    ) -> None:
        """Change what the normal answers say (until ``reset``)."""
        values = {
            "models": list(models) if models is not None else None,
            "reply": reply,
            "require_max_tokens": require_max_tokens,
            "max_model_len": max_model_len,
        }
        self._call("POST", "configure", {k: v for k, v in values.items() if v is not None})

    def reset(self) -> None:
        """Drop every rule and the request log; back to the constructor's settings."""
        self._call("POST", "reset", {})

    def requests(self, path: str | None = None) -> list[dict[str, Any]]:
        """Every request received since the last reset (only *path*'s when given), oldest first.

        Each entry: ``method``, ``path``, ``headers``, ``json`` (data URLs cut
        short), ``stream``, ``model``, ``max_tokens``, ``images``, ``mimes``,
        ``prompt``, ``answer`` (the kind), ``status`` and ``client_gone``.
        """
        query = "" if path is None else "?" + urllib.parse.urlencode({"path": path})
        return list(self._call("GET", "requests", query=query))

    def in_flight(self) -> int:
        """Requests the server is answering right now (a hung one counts until its client leaves)."""
        return int(self._call("GET", "status")["in_flight"])


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
