"""A fault-injecting OpenAI-compatible server, scripted at runtime.

Run as its own process (127.0.0.1 only)::

    python tests/servers/faulty_openai.py --port N

One server serves a whole test: the test scripts its behaviour through a
control API, drives the client, then reads the request log to prove that no
item was lost or duplicated.  Correctness over speed (aiohttp.web).

Control API (never logged, never scripted)
------------------------------------------

``POST /_control/script`` -- replace the rules (the log is kept)::

    {"rules": [RULE, ...], "default": "ok" | ACTION}

``GET /_control/script`` -- the current rules with their ``seen``/``fired`` counters.
``GET /_control/log[?path=/v1/chat/completions]`` -- JSON list of LOG ENTRIES, oldest first.
``POST /_control/reset`` -- no rules, default ``"ok"``, empty log, counters at zero.

RULE = ACTION plus::

    "match": {                       # all given keys must hold; {} or absent matches everything
        "path": "/v1/chat/completions",   # exact path
        "path_prefix": "/v1/",
        "method": "POST",
        "model": "fake-vlm",              # the body's "model"
        "stream": true,                   # the body's "stream" (absent counts as false)
        "request_id": "item-3" | ["item-3", "item-4"],
        "body_contains": "some text",     # substring of the raw request body, or of the
                                          # JSON body re-encoded with json.dumps' default
                                          # separators (clients differ in whitespace)
        "headers": {"X-Foo": "bar"},      # exact header values (names case-insensitive)
        "warmup": true                    # match the client's warm-up request (see below)
    },
    "times": 5,      # fire this many times, then fall through to later rules; null/absent = always
    "skip": 0        # let this many matching requests fall through before firing

Rules are tried in order; the first rule that matches, is past its ``skip`` and
has ``times`` left fires.  If none fires, ``default`` applies.

ACTION = {"fault": FAULT, ...parameters}; a bare string is shorthand for ``{"fault": it}``.
Parameters every fault accepts: ``"delay_s"`` (sleep first; for ``delay`` it is
the sleep, default 1.0, alias ``"seconds"``) and ``"headers"`` (extra response
headers).  Streamed ``ok``/``delay``/``finish_reason`` answers also take
``"chunk_delay_s"`` (sleep before each content chunk) and ``"piece_chars"`` (send the
content in chunks of that many characters instead of three pieces).  Faults:

* ``"ok"`` -- normal behaviour: the canned answer on ``/v1/chat/completions``
  (JSON, or SSE when the request has ``"stream": true``), ``/health``,
  ``/v1/models``; 404 elsewhere.  The answer's content is
  ``"[<request_id>] A grey cat on a sofa."`` (``"content"`` overrides it;
  ``{request_id}`` in it is substituted) and the ``X-Request-Id`` response header
  echoes the id.
* ``"ok"`` on ``POST /v1/images/generations`` -- the OpenAI images API (shapes from the API
  reference, https://platform.openai.com/docs/api-reference/images/create, as typed in
  openai-python ``types/image_generate_params.py`` / ``images_response.py``): the body must be a
  JSON object with a non-empty string ``prompt``; ``n`` an integer 1..10 (default 1); ``size``
  ``"WxH"`` or ``"auto"``; ``response_format`` ``"url"`` (the API's default) or ``"b64_json"``;
  anything else is a 400 ``{"error": {"message", "type": "invalid_request_error", "param",
  "code": null}}``.  The answer is ``{"created": <unix s>, "data": [{"b64_json" | "url",
  "revised_prompt"?}, ...]}`` with ``n`` PNGs of the asked size (at most 64x64 pixels here),
  a solid colour that is a function of prompt and index.  ``"revised_prompt"`` in the action adds
  that field; ``"url_base"`` makes the URLs point at another origin (default: this server);
  a URL is served once from ``GET /files/<name>.png`` (then 404, like an expired link).
* ``"status"`` -- ``"status"`` (default 500), ``"body"``: an object/list (sent
  as JSON) or a string (sent verbatim, ``text/plain`` unless ``"content_type"``);
  absent -> ``{"error": {"message": "injected <status>", ...}}``.
* ``"delay"`` -- sleep ``delay_s`` then answer like ``ok``.
* ``"malformed_json"`` -- 200 ``application/json`` with a truncated body
  (``"body"`` overrides it).
* ``"sse_cut"`` -- 200 SSE stream: ``"chunks"`` (default 2) content chunks, then
  the connection is closed without the terminating chunk or ``[DONE]``
  (``"rst": true`` resets it instead of a clean FIN).
* ``"sse_inband_error"`` -- 200 SSE stream: one normal chunk, then
  ``data: {"error": {"message": <"message">, "code": <"code", default 500>}}``,
  then ``data: [DONE]``.
* ``"reset"`` -- abort the TCP connection (RST) without any response.
* ``"echo_auth"`` -- ``"status"`` (default 401) with an OpenAI-style error body
  whose message echoes the request's credentials back, as careless servers do:
  ``Invalid API key: <Authorization header>; api-key <api-key header>; query <query string>``.
  With ``"where": "content"`` it is a 200 answer whose *content* echoes them instead.
* ``"sse_events"`` -- 200 SSE stream of ``"events"`` (a list of objects), each sent
  as one ``data:`` line exactly as given (``"{model}"`` in a string value becomes
  the requested model), then ``data: [DONE]`` unless ``"done": false``.
* ``"finish_reason"`` -- 200 answer (JSON, or SSE if the request streams) with
  ``"finish_reason"`` (default ``"error"``) and ``"content"`` (default ``""``).

LOG ENTRY::

    {"seq": 0, "time": 1700000000.123, "method": "POST", "path": "/v1/chat/completions",
     "request_id": "item-3" | null, "model": "fake-vlm" | null, "stream": false,
     "fault": "ok", "rule": 0 | null, "status": 200 | null, "completed": true, "duration_s": 0.001,
     "query": "key=..." (the raw query string, "" when none)}

``rule`` is the index of the rule that fired (null: the default); ``status`` is
the HTTP status sent (null for ``reset`` and while unanswered); ``completed`` is
false while the answer is pending and when writing it failed (client gone).

Request id, first found of: header ``X-Request-Id``; body ``"request_id"``;
body ``"user"``; body ``"metadata": {"request_id"}``; the first text part of the
first user message (else of any message) -- if that text contains
``request_id=X`` / ``req_id=X`` / ``item_id=X`` / ``item=X`` / ``id=X`` (``:``
works too) the id is ``X``, otherwise the whole stripped text (max 200 chars).

Importable helpers (stdlib only, synchronous): :func:`script`,
:func:`request_log`, :func:`reset`, :func:`current_script`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import re
import socket
import struct
import time
import urllib.parse
import urllib.request
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

SERVED_MODEL = "fake-vlm"
ANSWER = "A grey cat on a sofa."
FAULTS = frozenset(
    {
        "ok",
        "status",
        "delay",
        "malformed_json",
        "sse_cut",
        "sse_inband_error",
        "reset",
        "finish_reason",
        "echo_auth",
        "sse_events",
    }
)
MATCH_KEYS = frozenset(
    {"path", "path_prefix", "method", "model", "stream", "request_id", "body_contains", "headers", "warmup"}
)
#: The one-token request imageworks sends each endpoint before a batch (``Client.warmup``).  Rules
#: target the items: they skip a warm-up unless they say ``"warmup": true`` (then they match only
#: warm-ups); a warm-up gets the default answer otherwise.  The log keeps warm-ups apart
#: (``"warmup": true`` entries, listed only with ``?warmups=1``), so counts are of items.
WARMUP_PROMPT = "Reply with OK. (imageworks warm-up)"
ACTION_KEYS = frozenset(
    {
        "fault",
        "delay_s",
        "seconds",
        "headers",
        "status",
        "body",
        "content_type",
        "content",
        "chunks",
        "rst",
        "chunk_delay_s",
        "message",
        "code",
        "finish_reason",
        "where",
        "piece_chars",
        "events",
        "done",
        "revised_prompt",
        "url_base",
    }
)
RULE_KEYS = ACTION_KEYS | {"match", "times", "skip"}
_ID_IN_TEXT = re.compile(r"\b(?:request[_-]?id|req[_-]?id|item[_-]?id|item|id)\s*[=:]\s*([A-Za-z0-9_.:/\-]+)")
_TRUNCATED_JSON = (
    '{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"index":0,"message":{"role":"assi'
)


# -- helpers for tests (stdlib only) ----------------------------------------------------------------


def _root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def _call(method: str, url: str, payload: Any = None, timeout: float = 10.0) -> Any:
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def script(
    base_url: str,
    rules: Sequence[Mapping[str, Any]],
    default: str | Mapping[str, Any] = "ok",
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Replace the server's rules; returns the installed script.  Raises ``HTTPError`` (400) if invalid."""
    result = _call(
        "POST", _root(base_url) + "/_control/script", {"rules": list(rules), "default": default}, timeout
    )
    return dict(result)


def current_script(base_url: str, timeout: float = 10.0) -> dict[str, Any]:
    """The installed rules with their ``seen`` and ``fired`` counters."""
    return dict(_call("GET", _root(base_url) + "/_control/script", timeout=timeout))


def request_log(
    base_url: str, path: str | None = None, timeout: float = 10.0, *, warmups: bool = False
) -> list[dict[str, Any]]:
    """Every request received since the last reset (only those for *path* if given), oldest first;
    the client's warm-up requests only with *warmups*."""
    params = {"path": path} if path is not None else {}
    if warmups:
        params["warmups"] = "1"
    query = "?" + urllib.parse.urlencode(params) if params else ""
    return list(_call("GET", _root(base_url) + "/_control/log" + query, timeout=timeout))


def reset(base_url: str, timeout: float = 10.0) -> None:
    """Drop all rules (default ``ok``), clear the log and the counters."""
    _call("POST", _root(base_url) + "/_control/reset", {}, timeout)


# -- the script -------------------------------------------------------------------------------------


class ScriptError(ValueError):
    pass


def _action(spec: str | Mapping[str, Any], where: str, allowed: frozenset[str]) -> dict[str, Any]:
    if isinstance(spec, str):
        spec = {"fault": spec}
    if not isinstance(spec, Mapping):
        raise ScriptError(f"{where}: expected an object or a fault name")
    unknown = set(spec) - allowed
    if unknown:
        raise ScriptError(f"{where}: unknown keys {sorted(unknown)}")
    fault = spec.get("fault")
    if fault not in FAULTS:
        raise ScriptError(f"{where}: fault must be one of {sorted(FAULTS)}, not {fault!r}")
    headers = spec.get("headers", {})
    if not isinstance(headers, Mapping) or not all(isinstance(v, str) for v in headers.values()):
        raise ScriptError(f"{where}: headers must map names to strings")
    status = spec.get("status", 500)
    if not isinstance(status, int) or not 100 <= status <= 599:
        raise ScriptError(f"{where}: status must be an int in 100..599")
    return dict(spec)


def _rule(spec: Any, index: int) -> dict[str, Any]:
    where = f"rules[{index}]"
    if not isinstance(spec, Mapping):
        raise ScriptError(f"{where}: expected an object")
    rule = _action(spec, where, RULE_KEYS)
    match = rule.get("match") or {}
    if not isinstance(match, Mapping) or set(match) - MATCH_KEYS:
        raise ScriptError(f"{where}.match: an object with keys among {sorted(MATCH_KEYS)}")
    times = rule.get("times")
    if times is not None and (not isinstance(times, int) or times < 0):
        raise ScriptError(f"{where}.times: a non-negative int or null")
    skip = rule.get("skip", 0)
    if not isinstance(skip, int) or skip < 0:
        raise ScriptError(f"{where}.skip: a non-negative int")
    rule.update(match=dict(match), times=times, skip=skip, seen=0, fired=0)
    return rule


class State:
    def __init__(self) -> None:
        self.rules: list[dict[str, Any]] = []
        self.default: dict[str, Any] = {"fault": "ok"}
        self.log: list[dict[str, Any]] = []
        self.seq = 0

    def install(self, payload: Any) -> None:
        if not isinstance(payload, Mapping):
            raise ScriptError("expected {'rules': [...], 'default': ...}")
        if set(payload) - {"rules", "default"}:
            raise ScriptError(f"unknown keys {sorted(set(payload) - {'rules', 'default'})}")
        raw_rules = payload.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ScriptError("rules must be a list")
        rules = [_rule(spec, i) for i, spec in enumerate(raw_rules)]
        default = _action(payload.get("default", "ok"), "default", ACTION_KEYS)
        self.rules, self.default = rules, default

    def describe(self) -> dict[str, Any]:
        return {"rules": self.rules, "default": self.default}

    def choose(self, info: RequestInfo) -> tuple[int | None, dict[str, Any]]:
        for index, rule in enumerate(self.rules):
            if rule["times"] is not None and rule["fired"] >= rule["times"]:
                continue
            if not _matches(rule["match"], info):
                continue
            rule["seen"] += 1
            if rule["seen"] <= rule["skip"]:
                continue
            rule["fired"] += 1
            return index, rule
        return None, self.default


class RequestInfo:
    def __init__(self, method: str, path: str, headers: Mapping[str, str], raw: bytes) -> None:
        self.method = method
        self.path = path
        self.headers = headers
        self.raw = raw
        self.body: Any = None
        self.json_ok = False
        self.canonical = b""
        if raw:
            try:
                self.body = json.loads(raw)
                self.json_ok = True
                self.canonical = json.dumps(self.body).encode()
            except ValueError:
                pass
        body = self.body if isinstance(self.body, dict) else {}
        self.model = body.get("model") if isinstance(body.get("model"), str) else None
        self.stream = body.get("stream") is True
        options = body.get("stream_options")
        self.include_usage = isinstance(options, dict) and options.get("include_usage") is True
        self.request_id = _request_id(headers, body)
        self.warmup = body.get("max_tokens") == 1 and _first_text(body.get("messages")) == WARMUP_PROMPT


def _first_text(messages: Any) -> str | None:
    if not isinstance(messages, list):
        return None
    ordered = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    ordered += [m for m in messages if isinstance(m, dict) and m.get("role") != "user"]
    for message in ordered:
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return content
        if isinstance(content, list):
            for part in content:
                if (
                    isinstance(part, dict)
                    and part.get("type") == "text"
                    and isinstance(part.get("text"), str)
                ):
                    return str(part["text"])
    return None


def _request_id(headers: Mapping[str, str], body: Mapping[str, Any]) -> str | None:
    header = headers.get("X-Request-Id")
    if header:
        return header
    for key in ("request_id", "user"):
        value = body.get(key)
        if isinstance(value, str | int) and not isinstance(value, bool):
            return str(value)
    metadata = body.get("metadata")
    if isinstance(metadata, dict) and isinstance(metadata.get("request_id"), str | int):
        return str(metadata["request_id"])
    text = _first_text(body.get("messages"))
    if text is None and isinstance(body.get("prompt"), str):  # the images API
        text = body["prompt"]
    if text is None:
        return None
    found = _ID_IN_TEXT.search(text)
    return found.group(1) if found else text.strip()[:200]


def _matches(match: Mapping[str, Any], info: RequestInfo) -> bool:
    if bool(match.get("warmup", False)) != info.warmup:
        return False
    if "path" in match and info.path != match["path"]:
        return False
    if "path_prefix" in match and not info.path.startswith(str(match["path_prefix"])):
        return False
    if "method" in match and info.method.upper() != str(match["method"]).upper():
        return False
    if "model" in match and info.model != match["model"]:
        return False
    if "stream" in match and info.stream != bool(match["stream"]):
        return False
    if "request_id" in match:
        wanted = match["request_id"]
        wanted_ids = [str(x) for x in wanted] if isinstance(wanted, list) else [str(wanted)]
        if info.request_id not in wanted_ids:
            return False
    if "body_contains" in match:
        needle = str(match["body_contains"]).encode()
        if needle not in info.raw and needle not in info.canonical:
            return False
    if "headers" in match:
        for name, value in dict(match["headers"]).items():
            if info.headers.get(name) != value:
                return False
    return True


# -- answers ----------------------------------------------------------------------------------------


def _completion(seq: int, model: str, content: str, finish_reason: str) -> dict[str, Any]:
    completion_tokens = max(1, len(content.split())) if content else 0
    return {
        "id": f"chatcmpl-faulty-{seq}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": 16,
            "completion_tokens": completion_tokens,
            "total_tokens": 16 + completion_tokens,
        },
    }


def _chunk(seq: int, model: str, delta: dict[str, Any], finish_reason: str | None) -> bytes:
    event = {
        "id": f"chatcmpl-faulty-{seq}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _usage_chunk(seq: int, model: str, completion_tokens: int) -> bytes:
    event = {
        "id": f"chatcmpl-faulty-{seq}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": 16,
            "completion_tokens": completion_tokens,
            "total_tokens": 16 + completion_tokens,
        },
    }
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def _pieces(content: str) -> list[str]:
    words = content.split(" ")
    if len(words) < 3:
        return [content] if content else []
    third = len(words) // 3
    return [
        " ".join(words[:third]),
        " " + " ".join(words[third : 2 * third]),
        " " + " ".join(words[2 * third :]),
    ]


# -- the app ----------------------------------------------------------------------------------------


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour RGB PNG, stdlib only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def _bad_image_request(body: Any) -> tuple[str, str] | None:
    """(message, param) when *body* breaks the images API's request shape, else ``None``."""
    if not isinstance(body, dict):
        return "expected a JSON object body", "body"
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        return "'prompt' is a required non-empty string", "prompt"
    n = body.get("n", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 10:
        return f"Invalid 'n': {n!r}; expected an integer from 1 to 10", "n"
    size = body.get("size", "auto")
    if not isinstance(size, str) or not (size == "auto" or re.fullmatch(r"[1-9]\d*x[1-9]\d*", size)):
        return f"Invalid 'size': {size!r}", "size"
    if body.get("response_format", "url") not in ("url", "b64_json"):
        return f"Invalid 'response_format': {body.get('response_format')!r}", "response_format"
    return None


def make_app() -> Any:
    from aiohttp import web

    state = State()
    files: dict[str, bytes] = {}

    def answer_images(
        request: web.Request, info: RequestInfo, action: Mapping[str, Any], headers: dict[str, str]
    ) -> web.StreamResponse:
        bad = _bad_image_request(info.body if info.json_ok else None)
        if bad is not None:
            error = {"message": bad[0], "type": "invalid_request_error", "param": bad[1], "code": None}
            return web.json_response({"error": error}, status=400, headers=headers)
        body = info.body
        size = body.get("size", "auto")
        width, height = (32, 32) if size == "auto" else (int(x) for x in size.split("x"))
        width, height = min(width, 64), min(height, 64)
        base = str(action.get("url_base") or f"{request.scheme}://{request.host}")
        data = []
        for i in range(int(body.get("n", 1))):
            digest = zlib.crc32(f"{body['prompt']}#{i}".encode())
            png = _png(width, height, (digest & 255, (digest >> 8) & 255, (digest >> 16) & 255))
            entry: dict[str, Any] = {}
            if body.get("response_format", "url") == "b64_json":
                entry["b64_json"] = base64.b64encode(png).decode()
            else:
                name = f"img-{state.seq}-{i}.png"
                files[name] = png
                entry["url"] = f"{base}/files/{name}"
            if "revised_prompt" in action:
                entry["revised_prompt"] = str(action["revised_prompt"])
            data.append(entry)
        return web.json_response({"created": int(time.time()), "data": data}, headers=headers)

    async def control_script(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.json_response(state.describe())
        try:
            state.install(await request.json())
        except (ScriptError, ValueError) as exc:
            return web.json_response({"error": {"message": str(exc)}}, status=400)
        return web.json_response(state.describe())

    async def control_log(request: web.Request) -> web.Response:
        path = request.query.get("path")
        warmups = request.query.get("warmups") == "1"
        entries = [
            e for e in state.log if (path is None or e["path"] == path) and (warmups or not e["warmup"])
        ]
        return web.json_response(entries)

    async def control_reset(request: web.Request) -> web.Response:
        await request.read()
        state.rules, state.default, state.log, state.seq = [], {"fault": "ok"}, [], 0
        return web.json_response({"reset": True})

    def content_for(action: Mapping[str, Any], info: RequestInfo, default: str, echo_id: bool = True) -> str:
        template = action.get("content")
        if template is None:
            return f"[{info.request_id}] {default}" if info.request_id and echo_id else default
        return str(template).replace("{request_id}", info.request_id or "")

    async def sse_response(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        resp.headers.update(headers)
        await resp.prepare(request)
        return resp

    def kill_connection(request: web.Request, rst: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()

    async def answer_ok(
        request: web.Request,
        info: RequestInfo,
        action: Mapping[str, Any],
        seq: int,
        headers: dict[str, str],
        finish_reason: str = "stop",
        default_content: str = ANSWER,
        echo_id: bool = True,
    ) -> web.StreamResponse:
        if info.path == "/health":
            return web.Response(status=200, text="ok", headers=headers)
        if info.path == "/v1/models":
            models = {
                "object": "list",
                "data": [
                    {
                        "id": SERVED_MODEL,
                        "object": "model",
                        "owned_by": "imageworks-test",
                        "max_model_len": 4096,
                    }
                ],
            }
            return web.json_response(models, headers=headers)
        if info.path == "/v1/images/generations" and request.method == "POST":
            return answer_images(request, info, action, headers)
        if info.path.startswith("/files/") and request.method == "GET":
            png = files.pop(info.path[len("/files/") :], None)
            if png is None:
                return web.json_response({"error": {"message": "no such file"}}, status=404, headers=headers)
            return web.Response(body=png, content_type="image/png", headers=headers)
        if info.path != "/v1/chat/completions":
            return web.json_response(
                {"error": {"message": f"no route {info.path}"}}, status=404, headers=headers
            )
        if request.method != "POST" or not info.json_ok or not isinstance(info.body, dict):
            return web.json_response(
                {"error": {"message": "expected a JSON object body", "type": "invalid_request_error"}},
                status=400,
                headers=headers,
            )
        model = info.model or SERVED_MODEL
        content = content_for(action, info, default_content, echo_id)
        if info.request_id:
            headers.setdefault("X-Request-Id", info.request_id)
        if not info.stream:
            return web.json_response(_completion(seq, model, content, finish_reason), headers=headers)
        resp = await sse_response(request, headers)
        gap = float(action.get("chunk_delay_s", 0.0))
        await resp.write(_chunk(seq, model, {"role": "assistant", "content": ""}, None))
        size = int(action.get("piece_chars", 0))
        pieces = [content[i : i + size] for i in range(0, len(content), size)] if size > 0 else None
        for piece in pieces or _pieces(content):
            if gap > 0:
                await asyncio.sleep(gap)
            await resp.write(_chunk(seq, model, {"content": piece}, None))
        await resp.write(_chunk(seq, model, {}, finish_reason))
        if info.include_usage:
            await resp.write(_usage_chunk(seq, model, max(1, len(content.split())) if content else 0))
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        info = RequestInfo(request.method, request.path, request.headers, raw)
        index, action = state.choose(info)
        fault = str(action["fault"])
        seq = state.seq
        state.seq += 1
        started = time.monotonic()
        entry: dict[str, Any] = {
            "seq": seq,
            "time": time.time(),
            "method": request.method,
            "path": request.path,
            "request_id": info.request_id,
            "model": info.model,
            "stream": info.stream,
            "fault": fault,
            "rule": index,
            "status": None,
            "completed": False,
            "duration_s": None,
            "query": request.query_string,
            "warmup": info.warmup,
        }
        state.log.append(entry)
        headers = {str(k): str(v) for k, v in dict(action.get("headers", {})).items()}
        delay = float(action.get("delay_s", action.get("seconds", 1.0 if fault == "delay" else 0.0)))
        if delay > 0:
            await asyncio.sleep(delay)
        model = info.model or SERVED_MODEL

        try:
            if fault == "reset":
                kill_connection(request, rst=True)
                entry.update(completed=True, duration_s=time.monotonic() - started)
                raise asyncio.CancelledError  # nothing may be written; aiohttp drops the handler quietly
            if fault == "status":
                status = int(action.get("status", 500))
                body = action.get(
                    "body",
                    {"error": {"message": f"injected {status}", "type": "server_error", "code": status}},
                )
                if isinstance(body, dict | list):
                    resp: web.StreamResponse = web.json_response(body, status=status, headers=headers)
                    if "content_type" in action:
                        resp.content_type = str(action["content_type"])
                else:
                    resp = web.Response(
                        status=status,
                        body=("" if body is None else str(body)).encode(),
                        content_type=str(action.get("content_type", "text/plain")),
                        headers=headers,
                    )
            elif fault == "echo_auth":
                echoed = (
                    f"Invalid API key: {request.headers.get('Authorization', '(none)')}; "
                    f"api-key {request.headers.get('api-key', '(none)')}; "
                    f"query {request.query_string or '(none)'}"
                )
                if action.get("where") == "content":
                    resp = await answer_ok(
                        request, info, {**action, "content": echoed}, seq, headers, echo_id=False
                    )
                else:
                    status = int(action.get("status", 401))
                    body = {"error": {"message": echoed, "type": "invalid_request_error", "code": status}}
                    resp = web.json_response(body, status=status, headers=headers)
            elif fault == "malformed_json":
                resp = web.Response(
                    status=200,
                    body=str(action.get("body", _TRUNCATED_JSON)).encode(),
                    content_type="application/json",
                    headers=headers,
                )
            elif fault == "sse_cut":
                resp = await sse_response(request, headers)
                await resp.write(_chunk(seq, model, {"role": "assistant", "content": ""}, None))
                pieces = _pieces(content_for(action, info, ANSWER)) or [""]
                for i in range(int(action.get("chunks", 2))):
                    await resp.write(_chunk(seq, model, {"content": pieces[i % len(pieces)]}, None))
                await asyncio.sleep(0.05)  # let the chunks reach the client before the cut
                kill_connection(request, rst=bool(action.get("rst", False)))
                entry.update(status=200, completed=True, duration_s=time.monotonic() - started)
                raise asyncio.CancelledError
            elif fault == "sse_inband_error":
                resp = await sse_response(request, headers)
                await resp.write(_chunk(seq, model, {"role": "assistant", "content": "A grey"}, None))
                error = {
                    "message": str(action.get("message", "injected in-band error")),
                    "code": action.get("code", 500),
                }
                await resp.write(b"data: " + json.dumps({"error": error}).encode() + b"\n\n")
                await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
            elif fault == "sse_events":
                resp = await sse_response(request, headers)
                for event in action.get("events", []):
                    text = json.dumps(event).replace("{model}", model)
                    await resp.write(b"data: " + text.encode() + b"\n\n")
                if action.get("done", True):
                    await resp.write(b"data: [DONE]\n\n")
                await resp.write_eof()
            elif fault == "finish_reason":
                resp = await answer_ok(
                    request,
                    info,
                    action,
                    seq,
                    headers,
                    finish_reason=str(action.get("finish_reason", "error")),
                    default_content="",
                    echo_id=False,
                )
            else:  # ok, delay
                resp = await answer_ok(request, info, action, seq, headers)
        except (ConnectionError, RuntimeError):  # the client went away mid-answer
            entry["duration_s"] = time.monotonic() - started
            raise
        entry["status"] = resp.status
        transport = request.transport
        entry["completed"] = transport is not None and not transport.is_closing()
        entry["duration_s"] = time.monotonic() - started
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_route("*", "/_control/script", control_script)
    app.router.add_get("/_control/log", control_log)
    app.router.add_post("/_control/reset", control_reset)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main(argv: list[str] | None = None) -> None:
    from aiohttp import web

    parser = argparse.ArgumentParser(description="Fault-injecting OpenAI-compatible test server.")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    web.run_app(
        make_app(),
        host="127.0.0.1",
        port=args.port,
        access_log=None,
        shutdown_timeout=1.0,
        print=lambda *_: print(f"faulty_openai listening on http://127.0.0.1:{args.port}", flush=True),
    )


if __name__ == "__main__":
    main()
