"""The fake server's script: what a request is, which rule answers it, what a strict server refuses.

Pure Python (no I/O): the server process (``fake_server``) feeds it each
request and renders the answer it picks (``_fake_answers``).

A *rule* is an *action* plus ``match``, ``times`` and ``skip``::

    {"match": {...}, "times": 2, "skip": 0, "fault": "status", "status": 503}

``match`` keys (all given must hold; none matches everything):

* ``path`` (exact), ``path_prefix``, ``method``;
* ``model`` and ``stream`` (the body's; an absent ``stream`` is false);
* ``request_id``: an id or a list of ids (see ``_request_id``);
* ``body_contains``: a substring of the raw body, or of the JSON body
  re-encoded with ``json.dumps``' default separators (clients differ in spaces);
* ``headers``: exact header values (names in any case);
* ``warmup``: ``false`` (absent: the default) matches only the items,
  ``true`` only imageworks' one-token warm-up request, ``null`` both.

Rules are tried in order; the first that matches, is past its ``skip`` and has
``times`` left (``null``: always) answers.  If none does, the script's default
action answers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

CHAT_PATH = "/v1/chat/completions"
MODELS_PATH = "/v1/models"
IMAGES_PATH = "/v1/images/generations"
DEFAULT_MODEL = "imageworks-fake-vlm"
DEFAULT_REPLY = "A small test picture: a red square on a white ground."
#: The one-token request imageworks sends each endpoint before a batch (``Client.warmup``).
WARMUP_PROMPT = "Reply with OK. (imageworks warm-up)"

FAULTS = frozenset(
    {
        "ok",
        "delay",
        "status",
        "hang",
        "stream_error",
        "sse_inband_error",
        "malformed",
        "malformed_json",
        "cut",
        "sse_cut",
        "drop",
        "reset",
        "finish_reason",
        "echo_auth",
        "sse_events",
    }
)
MATCH_KEYS = frozenset(
    {"path", "path_prefix", "method", "model", "stream", "request_id", "body_contains", "headers", "warmup"}
)
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
        "model",
        "usage",
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
SETTINGS = frozenset({"models", "reply", "require_max_tokens", "max_model_len", "strict", "echo_request_id"})
_ID_IN_TEXT = re.compile(r"\b(?:request[_-]?id|req[_-]?id|item[_-]?id|item|id)\s*[=:]\s*([A-Za-z0-9_.:/\-]+)")


def server_settings(
    *, model: str, reply: str, require_max_tokens: bool, strict: bool, echo_request_id: bool
) -> dict[str, Any]:
    """A server's settings at start (``configure`` changes them until ``reset``)."""
    return {
        "models": [model],
        "reply": reply,
        "require_max_tokens": require_max_tokens,
        "strict": strict,
        "echo_request_id": echo_request_id,
        "max_model_len": 4096,
    }


class ScriptError(ValueError):
    """A rule, an action or a setting the server cannot follow."""


def action(
    spec: str | Mapping[str, Any], where: str, allowed: frozenset[str] = ACTION_KEYS
) -> dict[str, Any]:
    """*spec* checked as an action (a bare string is ``{"fault": it}``)."""
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


def rule(spec: Any, where: str) -> dict[str, Any]:
    """*spec* checked as a rule, with its ``seen``/``fired`` counters at zero."""
    if not isinstance(spec, Mapping):
        raise ScriptError(f"{where}: expected an object")
    checked = action(spec, where, RULE_KEYS)
    match = checked.get("match") or {}
    if not isinstance(match, Mapping) or set(match) - MATCH_KEYS:
        raise ScriptError(f"{where}.match: an object with keys among {sorted(MATCH_KEYS)}")
    times = checked.get("times")
    if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 0):
        raise ScriptError(f"{where}.times: a non-negative int or null")
    skip = checked.get("skip", 0)
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise ScriptError(f"{where}.skip: a non-negative int")
    checked.update(match=dict(match), times=times, skip=skip, seen=0, fired=0)
    return checked


class RequestInfo:
    """One request as the rules see it."""

    def __init__(self, method: str, path: str, query: str, headers: Mapping[str, str], raw: bytes) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = {k.lower(): v for k, v in headers.items()}  # names in lower case
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
        self.request_id = _request_id(self.headers, body)
        self.warmup = body.get("max_tokens") == 1 and _first_text(body.get("messages")) == WARMUP_PROMPT
        self.is_chat = method == "POST" and path == CHAT_PATH


class State:
    """The server's rules, default action, settings and request log."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.startup = dict(settings)
        self.config: dict[str, Any] = {}
        self.rules: list[dict[str, Any]] = []
        self.default: dict[str, Any] = {}
        self.log: list[dict[str, Any]] = []
        self.files: dict[str, bytes] = {}
        self.in_flight = 0
        self.reset()

    def reset(self) -> None:
        self.config = dict(self.startup)
        self.rules, self.default, self.log = [], {"fault": "ok"}, []
        self.files.clear()

    def install(self, payload: Any) -> None:
        """Replace the rules and the default (``{"rules": [...], "default": ...}``); the log is kept."""
        if not isinstance(payload, Mapping):
            raise ScriptError("expected {'rules': [...], 'default': ...}")
        if set(payload) - {"rules", "default"}:
            raise ScriptError(f"unknown keys {sorted(set(payload) - {'rules', 'default'})}")
        raw_rules = payload.get("rules", [])
        if not isinstance(raw_rules, list):
            raise ScriptError("rules must be a list")
        rules = [rule(spec, f"rules[{i}]") for i, spec in enumerate(raw_rules)]
        self.rules, self.default = rules, action(payload.get("default", "ok"), "default")

    def add(self, spec: Any) -> int:
        """Append one rule; returns how many there are."""
        self.rules.append(rule(spec, f"rules[{len(self.rules)}]"))
        return len(self.rules)

    def configure(self, payload: Any) -> dict[str, Any]:
        if not isinstance(payload, Mapping) or set(payload) - SETTINGS:
            raise ScriptError(f"settings are among {sorted(SETTINGS)}")
        self.config.update(payload)
        return self.config

    def describe(self) -> dict[str, Any]:
        return {"rules": self.rules, "default": self.default}

    def choose(self, info: RequestInfo) -> tuple[int | None, dict[str, Any]]:
        for index, candidate in enumerate(self.rules):
            if candidate["times"] is not None and candidate["fired"] >= candidate["times"]:
                continue
            if not _matches(candidate["match"], info):
                continue
            candidate["seen"] += 1
            if candidate["seen"] <= candidate["skip"]:
                continue
            candidate["fired"] += 1
            return index, candidate
        return None, self.default


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
    """The first found of: header ``X-Request-Id``; the body's ``request_id``, ``user``,
    ``metadata.request_id``; the first user text (``request_id=X``, ``item=X``, ``id=X`` ... in it
    give ``X``, else the whole text, at most 200 characters); the images API's ``prompt``."""
    header = headers.get("x-request-id")
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
    warmup = match.get("warmup", False)
    if warmup is not None and bool(warmup) != info.warmup:
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
        ids = [str(x) for x in wanted] if isinstance(wanted, list) else [str(wanted)]
        if info.request_id not in ids:
            return False
    if "body_contains" in match:
        needle = str(match["body_contains"]).encode()
        if needle not in info.raw and needle not in info.canonical:
            return False
    return all(info.headers.get(k.lower()) == v for k, v in dict(match.get("headers", {})).items())


# ---------------------------------------------------------------- what a strict server refuses


def inspect_chat(body: Any, require_max_tokens: bool) -> tuple[list[str], str, str | None]:
    """(image MIME types, first user text, why a strict server refuses it or ``None``)."""
    if not isinstance(body, dict):
        return [], "", "the body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return [], "", "'messages' must be a non-empty list"
    if require_max_tokens and not isinstance(body.get("max_tokens"), int):
        return [], "", "'max_tokens' is required by this server (send it with every request)"
    mimes: list[str] = []
    prompt = ""
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            return [], "", "each message must be an object with a 'role'"
        content = message.get("content")
        if isinstance(content, str):
            if message["role"] == "user" and not prompt:
                prompt = content
            continue
        if not isinstance(content, list):
            return [], "", "message content must be a string or a list of parts"
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if message["role"] == "user" and not prompt:
                    prompt = str(part.get("text", ""))
            elif kind == "image_url":
                ref = part.get("image_url")
                mime, problem = _check_data_url(ref.get("url") if isinstance(ref, dict) else ref)
                if problem:
                    return [], "", problem
                mimes.append(mime)
            else:
                return [], "", f"unsupported content part type {kind!r}"
    return mimes, prompt, None


def _check_data_url(url: Any) -> tuple[str, str | None]:
    if not isinstance(url, str) or not url.startswith("data:"):
        return "", "images must be sent as base64 data: URLs"
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return "", "an image data: URL must be base64-encoded"
    mime = head[len("data:") : -len(";base64")]
    if not mime.startswith("image/"):
        return "", f"an image data: URL has MIME type {mime!r}"
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        return "", "an image data: URL holds invalid base64"
    return (mime, None) if data else ("", "an image data: URL is empty")


def bad_image_request(body: Any) -> tuple[str, str] | None:
    """(message, param) when *body* breaks the images API's request shape, else ``None``.

    Shapes from the API reference (https://platform.openai.com/docs/api-reference/images/create),
    as typed in openai-python ``types/image_generate_params.py``.
    """
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


def shorten(value: Any) -> Any:
    """A request body for the log, with data URLs cut short."""
    if isinstance(value, str) and value.startswith("data:") and len(value) > 80:
        return value[:60] + f"...<{len(value)} chars>"
    if isinstance(value, list):
        return [shorten(v) for v in value]
    if isinstance(value, dict):
        return {k: shorten(v) for k, v in value.items()}
    return value
