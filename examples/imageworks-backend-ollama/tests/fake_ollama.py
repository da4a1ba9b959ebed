"""Ollama's native API, in-process: a ``MockTransport`` handler that answers as ``ollama serve`` does.

Shapes from Ollama's API reference (docs/api.md in github.com/ollama/ollama):
``GET /api/tags`` lists the pulled models; ``POST /api/chat`` streams
newline-delimited JSON objects, the last with ``"done": true``, its
``done_reason`` and the token counts; errors are ``{"error": "..."}``: 404 for
a model that is not pulled, 400 for a request it cannot read (bad base64 in
``images``), 503 when its queue is full, or one line inside a stream.
Unknown paths get Gin's plain ``404 page not found``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import urlsplit

import anyio

from imageworks_core.testing import MockRequest, MockResponse, MockTransport
from imageworks_core.testing.conformance import (
    HANG,
    MALFORMED,
    NOT_READY,
    REJECT_MESSAGE,
    REJECTED,
    STREAM_ERROR,
    STREAM_ERROR_MESSAGE,
)

HOST = "ollama.test"
MODELS = ("qwen2.5vl:3b", "llava:7b")
BUSY = "server busy, please try again.  maximum pending requests exceeded"


def tagged(model: str) -> str:
    return model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"


class FakeOllama:
    """One fake server: ``transport`` for the client, ``base_url`` to point it at, ``chats`` it got."""

    def __init__(
        self, models: tuple[str, ...] = MODELS, reply: str = "A red square on a white ground."
    ) -> None:
        self.models = list(models)
        self.reply = reply
        self.fault: str | None = None
        self.busy_for = 0  # answer this many chat requests with Ollama's 503 first
        self.chats: list[dict[str, Any]] = []
        self.in_flight = 0
        self.base_url = f"http://{HOST}:11434"
        self.transport = MockTransport(self.handle)

    async def handle(self, request: MockRequest) -> MockResponse:
        if urlsplit(request.url).hostname != HOST:
            raise ConnectionRefusedError(f"nothing listens at {urlsplit(request.url).netloc}")
        self.in_flight += 1
        try:
            return await self._answer(request)
        finally:
            self.in_flight -= 1

    async def _answer(self, request: MockRequest) -> MockResponse:
        if request.method == "GET" and request.path == "/api/tags":
            pulled = [] if self.fault == NOT_READY else self.models
            return MockResponse.json({"models": [_tag(m) for m in pulled]})
        if request.method == "GET" and request.path == "/api/version":
            return MockResponse.json({"version": "0.13.1"})
        if request.method != "POST" or request.path != "/api/chat":
            return MockResponse.text("404 page not found", status=404)
        body = request.json()
        self.chats.append(body)
        problem = _bad_request(body)
        if problem:
            return MockResponse.json({"error": problem}, status=400)
        if tagged(str(body["model"])) not in {tagged(m) for m in self.models}:
            message = f'model "{body["model"]}" not found, try pulling it first'
            return MockResponse.json({"error": message}, status=404)
        if self.busy_for > 0:
            self.busy_for -= 1
            return MockResponse.json({"error": BUSY}, status=503)
        if self.fault == REJECTED:
            return MockResponse.json({"error": REJECT_MESSAGE}, status=400)
        if self.fault == HANG:
            await anyio.sleep_forever()
        lines = self._lines(body)
        if self.fault == MALFORMED:
            lines = [lines[0][:-7]]
        elif self.fault == STREAM_ERROR:
            lines = [lines[0], json.dumps({"error": STREAM_ERROR_MESSAGE})]
        elif self.fault == "cut":
            lines = lines[:-1]
        if body.get("stream", True) is False:
            return MockResponse.json(
                json.loads(lines[-1]) | {"message": {"role": "assistant", "content": self.reply}}
            )
        return MockResponse(
            200, {"content-type": "application/x-ndjson"}, "".join(line + "\n" for line in lines).encode()
        )

    def _lines(self, body: dict[str, Any]) -> list[str]:
        words = self.reply.split(" ")
        cap = (body.get("options") or {}).get("num_predict", -1)
        if isinstance(cap, int) and cap >= 0:
            words = words[:cap]
        stamp = "2026-12-07T10:00:00.000000Z"
        out = [
            {
                "model": body["model"],
                "created_at": stamp,
                "message": {"role": "assistant", "content": w if i == 0 else " " + w},
                "done": False,
            }
            for i, w in enumerate(words)
        ]
        images = sum(len(m.get("images") or []) for m in body["messages"])
        out.append(
            {
                "model": body["model"],
                "created_at": stamp,
                "message": {"role": "assistant", "content": ""},
                "done": True,
                "done_reason": "length" if len(words) < len(self.reply.split(" ")) else "stop",
                "total_duration": 1_000_000,
                "load_duration": 10_000,
                "prompt_eval_count": 12 + 256 * images,
                "prompt_eval_duration": 500_000,
                "eval_count": len(words),
                "eval_duration": 400_000,
            }
        )
        return [json.dumps(o) for o in out]


def _tag(model: str) -> dict[str, Any]:
    return {
        "name": model,
        "model": model,
        "modified_at": "2026-11-30T10:00:00.000000Z",
        "size": 3_200_000_000,
        "digest": "4d1a5a4d4e1a",
        "details": {
            "format": "gguf",
            "family": "qwen25vl",
            "parameter_size": "3.8B",
            "quantization_level": "Q4_K_M",
        },
    }


def _bad_request(body: Any) -> str | None:
    """What ``ollama serve`` refuses with HTTP 400 (a model name, messages, base64 images)."""
    if not isinstance(body, dict) or not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    for message in body.get("messages") or []:
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            return f"invalid role: {message.get('role')!r}"
        for image in message.get("images") or []:
            try:
                base64.b64decode(image, validate=True)
            except (binascii.Error, ValueError, TypeError):
                return "illegal base64 data at input byte 0"
    return None


class OllamaFaults:
    """The conformance suite's ``FaultInjector`` over a ``FakeOllama``."""

    def __init__(self, fake: FakeOllama) -> None:
        self.fake = fake

    def inject(self, fault: str) -> bool:
        if fault in (NOT_READY, REJECTED, MALFORMED, STREAM_ERROR, HANG):
            self.fake.fault = fault
            return True
        return False  # OVERLOADED: Ollama's 503 carries no Retry-After (tested in test_ollama.py)

    def clear(self) -> None:
        self.fake.fault = None

    def in_flight(self) -> int:
        return self.fake.in_flight

    def images_received(self) -> int | None:
        if not self.fake.chats:
            return None
        return sum(len(m.get("images") or []) for m in self.fake.chats[-1]["messages"])
