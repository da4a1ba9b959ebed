"""The fake server's answers: what to send for a request and the action that fired.

An answer is a ``Plan`` (status, headers, a body or timed stream parts, and
how the connection ends), so the same answers can be rendered by the server
process and checked without I/O.
"""

from __future__ import annotations

import base64
import json
import struct
import time
import zlib
from collections.abc import Mapping
from typing import Any

import attrs

from ._fake_rules import (
    CHAT_PATH,
    IMAGES_PATH,
    MODELS_PATH,
    RequestInfo,
    State,
    bad_image_request,
    inspect_chat,
)

#: Answers refused with HTTP 400 when a strict server finds the chat request malformed.
_CHECKED = frozenset({"ok", "delay", "hang", "stream_error", "cut", "finish_reason"})
_HEALTH_PATHS = frozenset({"/health", "/health/ready", "/v2/health/live", "/v2/health/ready"})
_TRUNCATED_JSON = (
    '{"id":"chatcmpl-broken","object":"chat.completion","choices":[{"index":0,"message":{"role":"assi'
)


@attrs.define
class Plan:
    """What to send.

    ``status`` ``None`` sends no HTTP answer: ``end`` says whether the
    connection is closed (``"close"``), reset (``"rst"``) or held until the
    client leaves (``"hang"``).  ``parts`` (wait before, bytes) make a streamed
    body; after them ``end`` ``"close"``/``"rst"`` cuts the connection instead
    of ending the body.
    """

    status: int | None = 200
    headers: dict[str, str] = attrs.Factory(dict)
    body: bytes = b""
    content_type: str = "application/json"
    parts: list[tuple[float, bytes]] | None = None
    end: str = "eof"


def delay_of(action: Mapping[str, Any]) -> float:
    """Seconds to wait before answering (``delay``'s default is 1 s)."""
    default = 1.0 if action.get("fault") == "delay" else 0.0
    return float(action.get("delay_s", action.get("seconds", default)))


def error_body(message: str, kind: str, code: int | None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Plan:
    return Plan(status, dict(headers or {}), json.dumps(data).encode())


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def refusal(state: State, info: RequestInfo, entry: dict[str, Any]) -> Plan | None:
    """A strict server's HTTP 400 for a malformed chat request (the entry gets images and prompt)."""
    if not info.is_chat:
        return None
    mimes, prompt, problem = inspect_chat(info.body, bool(state.config.get("require_max_tokens")))
    entry.update(images=len(mimes), mimes=mimes, prompt=prompt)
    if problem and state.config.get("strict", True) and entry["fault"] in _CHECKED:
        return _json(error_body(problem, "invalid_request_error", 400), 400)
    return None


def plan(state: State, info: RequestInfo, action: Mapping[str, Any], seq: int, origin: str) -> Plan:
    """The answer *action* gives *info* (the *seq*-th request; *origin* is the server's root URL)."""
    fault = str(action["fault"])
    headers = {str(k): str(v) for k, v in dict(action.get("headers", {})).items()}
    chat = _Chat(state, info, action, seq, headers)
    streams = info.is_chat and info.stream
    if fault in ("reset", "drop", "hang"):
        return Plan(None, end={"reset": "rst", "drop": "close"}.get(fault, "hang"))
    if fault == "status":
        code = int(action.get("status", 500))
        body = action.get("body", error_body(f"injected {code}", "server_error", code))
        if isinstance(body, dict | list):
            return Plan(
                code, headers, json.dumps(body).encode(), str(action.get("content_type", "application/json"))
            )
        text = "" if body is None else str(body)
        return Plan(code, headers, text.encode(), str(action.get("content_type", "text/plain")))
    if fault == "echo_auth":
        echoed = (
            f"Invalid API key: {info.headers.get('authorization', '(none)')}; "
            f"api-key {info.headers.get('api-key', '(none)')}; query {info.query or '(none)'}"
        )
        if action.get("where") == "content":
            return _Chat(state, info, {**action, "content": echoed}, seq, headers).answer(echo_id=False)
        code = int(action.get("status", 401))
        return _json(
            {"error": {"message": echoed, "type": "invalid_request_error", "code": code}}, code, headers
        )
    if fault in ("malformed", "malformed_json"):
        return Plan(200, headers, str(action.get("body", _TRUNCATED_JSON)).encode())
    if fault == "sse_cut" or (fault == "cut" and streams):
        pieces = chat.pieces() or [""]
        count = int(action.get("chunks", 2 if fault == "sse_cut" else 1))
        parts = [(0.0, chat.chunk({"role": "assistant", "content": ""}, None))]
        parts += [(0.0, chat.chunk({"content": pieces[i % len(pieces)]}, None)) for i in range(count)]
        parts.append((0.05, b""))  # let the chunks reach the client before the cut
        return chat.stream(parts, end="rst" if action.get("rst") else "close")
    if fault == "sse_inband_error":
        error = {
            "message": str(action.get("message", "injected in-band error")),
            "code": action.get("code", 500),
        }
        parts = [
            (0.0, chat.chunk({"role": "assistant", "content": "A grey"}, None)),
            (0.0, _sse({"error": error})),
        ]
        return chat.stream([*parts, (0.0, b"data: [DONE]\n\n")])
    if fault == "stream_error" and streams:
        pieces = chat.pieces()[: int(action.get("chunks", 1))]
        error = {
            "message": str(action.get("message", "error")),
            "type": "server_error",
            "code": action.get("code"),
        }
        parts = [(0.0, chat.chunk({"role": "assistant", "content": ""}, None))]
        parts += [(0.0, chat.chunk({"content": p}, None)) for p in pieces]
        return chat.stream([*parts, (0.0, _sse({"error": error})), (0.0, b"data: [DONE]\n\n")])
    if fault == "sse_events":
        model = chat.model
        parts = [
            (0.0, b"data: " + json.dumps(e).replace("{model}", model).encode() + b"\n\n")
            for e in action.get("events", [])
        ]
        if action.get("done", True):
            parts.append((0.0, b"data: [DONE]\n\n"))
        return chat.stream(parts)
    if fault == "finish_reason":
        finishing = {"finish_reason": "error", "content": "", **action}
        return _Chat(state, info, finishing, seq, headers).answer(echo_id=False)
    return _route(state, info, action, seq, headers, origin)


def _route(
    state: State, info: RequestInfo, action: Mapping[str, Any], seq: int, headers: dict[str, str], origin: str
) -> Plan:
    """The normal answer for the path."""
    path, method = info.path, info.method
    if path in _HEALTH_PATHS and method == "GET":
        return Plan(200, headers, b"", "text/plain")
    if path == "/version" and method == "GET":
        return _json({"version": "0.0.0-imageworks-fake"}, headers=headers)
    if path == MODELS_PATH and method == "GET":
        cfg = state.config
        data = [
            {"id": m, "object": "model", "owned_by": "imageworks-fake", "max_model_len": cfg["max_model_len"]}
            for m in cfg["models"]
        ]
        return _json({"object": "list", "data": data}, headers=headers)
    if path == IMAGES_PATH and method == "POST":
        return _images(state, info, action, seq, headers, origin)
    if path.startswith("/files/") and method == "GET":
        png = state.files.pop(path[len("/files/") :], None)
        if png is None:
            return _json(error_body("no such file", "not_found", 404), 404, headers)
        return Plan(200, headers, png, "image/png")
    if path != CHAT_PATH:
        return _json(error_body(f"no route {method} {path}", "not_found", 404), 404, headers)
    if method != "POST" or not isinstance(info.body, dict):
        return _json(error_body("expected a JSON object body", "invalid_request_error", 400), 400, headers)
    return _Chat(state, info, action, seq, headers).answer()


class _Chat:
    """Chat completion answers (JSON or SSE) for one request."""

    def __init__(
        self, state: State, info: RequestInfo, action: Mapping[str, Any], seq: int, headers: dict[str, str]
    ) -> None:
        self.state, self.info, self.action, self.headers = state, info, action, headers
        self.id = f"chatcmpl-fake-{seq}"
        self.created = int(time.time())
        self.model = str(action.get("model") or info.model or state.config["models"][0])
        self.mimes, self.prompt, _ = inspect_chat(info.body, False) if info.is_chat else ([], "", None)

    def content(self, echo_id: bool = True) -> str:
        """The reply (the action's ``content`` or the server's ``reply``, with its fields filled in)."""
        info, cfg, template = self.info, self.state.config, self.action.get("content")
        echo = echo_id and template is None and bool(cfg.get("echo_request_id")) and bool(info.request_id)
        text = str(cfg["reply"] if template is None else template)
        fields = {"images": len(self.mimes), "model": self.model, "prompt": self.prompt}
        for name, value in {**fields, "request_id": info.request_id or ""}.items():
            text = text.replace("{" + name + "}", str(value))
        return f"[{info.request_id}] {text}" if echo else text

    def pieces(self, text: str | None = None) -> list[str]:
        text = self.content() if text is None else text
        size = int(self.action.get("piece_chars", 0))
        if size > 0:
            return [text[i : i + size] for i in range(0, len(text), size)]
        words = text.split(" ")
        if len(words) < 3:
            return [text] if text else []
        third = len(words) // 3
        return [
            " ".join(words[:third]),
            " " + " ".join(words[third : 2 * third]),
            " " + " ".join(words[2 * third :]),
        ]

    def usage(self, text: str) -> dict[str, int]:
        prompt = 8 + 64 * len(self.mimes)
        completion = len(text.split())
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def chunk(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return _sse(self._event("chat.completion.chunk", choices=[choice]))

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, **fields}

    def stream(self, parts: list[tuple[float, bytes]], end: str = "eof") -> Plan:
        headers = {"Cache-Control": "no-cache", **self.headers}
        return Plan(200, headers, b"", "text/event-stream", parts, end)

    def answer(self, *, echo_id: bool = True) -> Plan:
        info, action = self.info, self.action
        text = self.content(echo_id)
        finish = str(action.get("finish_reason", "stop"))
        with_usage = bool(action.get("usage", True))
        if info.request_id and self.state.config.get("echo_request_id"):
            self.headers.setdefault("X-Request-Id", info.request_id)
        if not info.stream:
            message = {"role": "assistant", "content": text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
            completion = self._event("chat.completion", choices=[choice])
            if with_usage:
                completion["usage"] = self.usage(text)
            return _json(completion, headers=self.headers)
        gap = float(action.get("chunk_delay_s", 0.0))
        parts = [(0.0, self.chunk({"role": "assistant", "content": ""}, None))]
        parts += [(gap, self.chunk({"content": piece}, None)) for piece in self.pieces(text)]
        parts.append((0.0, self.chunk({}, finish)))
        if with_usage and info.include_usage:
            parts.append(
                (0.0, _sse(self._event("chat.completion.chunk", choices=[], usage=self.usage(text))))
            )
        return self.stream([*parts, (0.0, b"data: [DONE]\n\n")])


def _png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour RGB PNG, stdlib only."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + bytes(rgb) * width) * height)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _images(
    state: State, info: RequestInfo, action: Mapping[str, Any], seq: int, headers: dict[str, str], origin: str
) -> Plan:
    """The OpenAI images API: ``n`` PNGs (at most 64x64), a colour that is a function of prompt and index.

    A URL answer is served once from ``GET /files/<name>.png`` (then 404, like an expired link);
    ``"url_base"`` points the URLs at another origin, ``"revised_prompt"`` adds that field.
    """
    bad = bad_image_request(info.body if info.json_ok else None)
    if bad is not None:
        return _json(error_body(bad[0], "invalid_request_error", None, bad[1]), 400, headers)
    body = info.body
    size = body.get("size", "auto")
    width, height = (32, 32) if size == "auto" else (int(x) for x in size.split("x"))
    width, height = min(width, 64), min(height, 64)
    base = str(action.get("url_base") or origin)
    data = []
    for i in range(int(body.get("n", 1))):
        digest = zlib.crc32(f"{body['prompt']}#{i}".encode())
        png = _png(width, height, (digest & 255, (digest >> 8) & 255, (digest >> 16) & 255))
        item: dict[str, Any] = {}
        if body.get("response_format", "url") == "b64_json":
            item["b64_json"] = base64.b64encode(png).decode()
        else:
            name = f"img-{seq}-{i}.png"
            state.files[name] = png
            item["url"] = f"{base}/files/{name}"
        if "revised_prompt" in action:
            item["revised_prompt"] = str(action["revised_prompt"])
        data.append(item)
    return _json({"created": int(time.time()), "data": data}, headers=headers)
