"""A local OpenAI-compatible fake server for transport-level and fault tests.

The server runs in its own process on 127.0.0.1 (``python -m
imageworks_core.testing.fake_server --port 0``) and answers like a small
vision-language model server: ``/v1/models``, ``/v1/chat/completions`` (JSON
or server-sent events), the images API, ``/health``, ``/version`` and the
ready probes of vLLM, LMDeploy and Triton.  A test drives it from Python
through ``FakeOpenAIServer``::

    with FakeOpenAIServer() as server:              # or the imageworks_openai_server fixture
        server.push(status(429, headers={"Retry-After": "2"}))    # the next chat request
        server.always(ok(text="A red square."))                   # every later one
        ... point a client at server.v1 ...
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

``script(rules, default)`` installs a whole script in the rule language of
``_fake_rules`` (match on path, method, model, stream, request id, body text,
headers; ``times`` and ``skip``) with these faults besides the ones above:
``delay``, ``reset`` (a TCP reset, no answer), ``sse_cut`` (a stream cut after
``chunks``; ``rst`` resets it), ``sse_inband_error``, ``malformed_json``,
``finish_reason``, ``echo_auth`` (an error, or with ``"where": "content"`` an
answer, that echoes the request's credentials, as careless servers do) and
``sse_events`` (the given events, each one ``data:`` line).

Chat requests are checked like a strict server would: a JSON object with a
``messages`` list, images only as well-formed base64 ``data:`` URLs, and
``max_tokens`` present (``require_max_tokens=False`` turns that off,
``strict=False`` all of it).  The canned reply may use ``{images}``,
``{model}``, ``{prompt}`` and ``{request_id}``; ``echo_request_id=True``
puts ``[<request id>]`` before it and echoes ``X-Request-Id``.

The control API lives under ``/_imageworks/`` and is never logged:
``POST push`` (a rule), ``GET``/``POST script``, ``POST reset``, ``POST configure``,
``GET requests`` (``?path=``, ``?warmups=1``), ``GET status`` (``in_flight``:
requests being answered right now).
"""

from __future__ import annotations

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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from ._fake_app import CONTROL, READY_LINE, main
from ._fake_control import ScriptControl, root_of
from ._fake_rules import CHAT_PATH, DEFAULT_MODEL, DEFAULT_REPLY, WARMUP_PROMPT

__all__ = [
    "CHAT_PATH",
    "DEFAULT_MODEL",
    "DEFAULT_REPLY",
    "WARMUP_PROMPT",
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

# ---------------------------------------------------------------- answers (plain dicts, JSON-safe)


def _answer(fault: str, delay: float, headers: Mapping[str, str] | None, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"fault": fault, "delay_s": float(delay)}
    if headers:
        out["headers"] = dict(headers)
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
        content=text,
        chunk_delay_s=float(chunk_delay),
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
    return _answer("stream_error", delay, None, message=message, code=int(code), chunks=int(after))


def malformed(body: str = '{"id": "chatcmpl-x", "choices": [{"mess', *, delay: float = 0.0) -> dict[str, Any]:
    """HTTP 200 ``application/json`` whose body does not parse."""
    return _answer("malformed", delay, None, body=body)


def cut(*, after: int = 1, delay: float = 0.0) -> dict[str, Any]:
    """An SSE stream that stops after *after* text chunks without a finish reason (connection closed)."""
    return _answer("cut", delay, None, chunks=int(after))


def drop(*, delay: float = 0.0) -> dict[str, Any]:
    """Close the connection without any answer."""
    return _answer("drop", delay, None)


# ---------------------------------------------------------------- the handle a test holds


class FakeOpenAIServer(ScriptControl):
    """Start, script and stop the fake server process.

    Args:
        model: The model id ``/v1/models`` lists (and answers name by default).
        reply: The canned chat answer (may use ``{images}``, ``{model}``, ``{prompt}``, ``{request_id}``).
        require_max_tokens: Reject chat requests without ``max_tokens`` (HTTP 400).
        strict: Reject malformed chat requests (HTTP 400); ``False`` answers them.
        echo_request_id: Start each reply with ``[<request id>] `` and echo ``X-Request-Id``.
        startup_timeout: Seconds to wait for the process to listen.

    Attributes:
        base_url: The server root, e.g. ``http://127.0.0.1:40123`` (set by ``start``).
    """

    _running: ClassVar[dict[str, FakeOpenAIServer]] = {}

    def __init__(self, *, startup_timeout: float = 30.0, **settings: Any) -> None:
        super().__init__(**settings)
        self.startup_timeout = startup_timeout
        self.base_url = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @classmethod
    def connect(cls, base_url: str) -> FakeOpenAIServer:
        """A handle on a fake server started some other way (``python -m ... --port N``): control only."""
        handle = cls()
        handle.base_url = root_of(base_url)
        return handle

    # ------------------------------------------------------------ lifecycle

    def command(self, port: int = 0) -> list[str]:
        """The command line that runs this server on *port* (0: a free one)."""
        argv = [sys.executable, "-m", "imageworks_core.testing.fake_server", "--port", str(port)]
        argv += ["--model", self.model, "--reply", self.reply]
        if not self.require_max_tokens:
            argv.append("--no-require-max-tokens")
        if not self.strict:
            argv.append("--lenient")
        if self.echo_request_id:
            argv.append("--echo-request-id")
        return argv

    def start(self) -> FakeOpenAIServer:
        if self._proc is not None:
            return self
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - closed in stop()
            prefix="imageworks-fake-server-", suffix=".log", delete=False
        )
        self._proc = subprocess.Popen(
            [*self.command(), "--parent-pid", str(os.getpid())],
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
        if self._log is not None:
            self._log.close()

    def log(self) -> str:
        """What the server process printed (for failure messages)."""
        try:
            return Path(self._log.name).read_text(errors="replace")[-8000:] if self._log else ""
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
