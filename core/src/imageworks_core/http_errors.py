"""Error answers onto the error tree: any body shape the servers send (PROTOCOLS.md), in one line.

``error_from_response`` maps an HTTP error answer by status and message;
``extract_error_message`` finds the message in a JSON body of any known shape,
an SSE error event, an HTML error page (its title and heading) or plain text;
``parse_retry_after`` reads ``Retry-After`` as seconds or an HTTP date.
"""

from __future__ import annotations

import email.utils
import json
import math
import re
import time
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any

from .errors import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    BackendUnavailable,
    redact_url,
)

__all__ = ["error_from_response", "extract_error_message", "parse_retry_after", "redirect_error"]

_MAX_MESSAGE = 500


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:  # "inf" / "nan" / "1e400" would mean sleeping forever (or not at all)
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def _message_from_obj(obj: Any) -> str | None:
    if isinstance(obj, str):
        return obj
    if not isinstance(obj, Mapping):
        return None
    err = obj.get("error")
    if isinstance(err, Mapping) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(obj.get("message"), str):
        return obj["message"]
    if "detail" in obj:
        detail = obj["detail"]
        if isinstance(detail, str):
            return detail
        if isinstance(detail, Mapping):
            return _message_from_obj(detail) or json.dumps(detail)[:_MAX_MESSAGE]
        if isinstance(detail, list) and detail:  # FastAPI validation errors
            parts = []
            for d in detail[:3]:
                if isinstance(d, Mapping):
                    loc = ".".join(str(x) for x in d.get("loc", ()) if x != "body")
                    parts.append(f"{loc}: {d.get('msg', d)}" if loc else str(d.get("msg", d)))
            return "; ".join(parts) or json.dumps(detail)[:_MAX_MESSAGE]
    if isinstance(err, str):
        return err
    return None


def extract_error_message(body: bytes | str | Any) -> str:
    """The message from an error body: ``error.message``, ``message``, ``detail``, ``error`` — or the text."""
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        if text.lstrip().startswith("data:"):  # an error sent as one SSE event
            text = text.lstrip()[5:].strip()
        try:
            obj = json.loads(text)
        except ValueError:
            text = _html_text(text) or text.strip()
            return (text[:_MAX_MESSAGE] + "…") if len(text) > _MAX_MESSAGE else (text or "(empty body)")
    else:
        obj = body
    msg = _message_from_obj(obj)
    if msg is None:
        msg = json.dumps(obj)[:_MAX_MESSAGE] if not isinstance(obj, str) else obj
    msg = msg.strip()
    return (msg[:_MAX_MESSAGE] + "…") if len(msg) > _MAX_MESSAGE else (msg or "(empty message)")


_HTML_START = re.compile(r"\s*(<!doctype html|<html|<head|<body|<title|<h1)", re.I)
#: Only the start of an HTML error page is read: its title and heading say what happened.
_HTML_READ = 64 * 1024


class _PageText(HTMLParser):
    """The visible text of an HTML page (scripts and styles left out), in linear time."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.words: list[str] = []
        self._hidden = 0

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag in ("script", "style"):
            self._hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self._hidden:
            self.words += data.split()


def _html_text(text: str) -> str | None:
    """An HTML error page (a web server or proxy, not the API, answered) as one line of its text."""
    if not _HTML_START.match(text):
        return None
    page = _PageText()
    page.feed(text[:_HTML_READ])
    page.close()
    return "an HTML page, not an API answer: " + (" ".join(page.words) or "(no text)")


def _looks_busy(message: str) -> bool:
    m = message.lower()
    return any(
        s in m for s in ("exceeds maximum queue size", "server is busy", "too many requests", "overloaded")
    )


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes | str | Any,
    *,
    backend: str | None,
    url: str,
    hint: str | None = None,
) -> BackendError:
    """Map an HTTP error response (any body shape) onto the error tree."""
    message = extract_error_message(body)
    where = f"{backend or 'backend'} at {redact_url(url)}"
    text = f"{where} answered HTTP {status}: {message}"
    kw: dict[str, Any] = {"backend": backend, "url": url, "status": status}
    if status == 429 or status == 503 or _looks_busy(message):
        return BackendOverloaded(
            text,
            retry_after=parse_retry_after(headers.get("retry-after")),
            hint="the server is busy; lower Client(concurrency=...) or raise the server's queue/batch size",
            **kw,
        )
    if status in (401, 403):
        return BackendRejected(
            text, hint="check the API key: set the backend's api_key_env to a variable holding it", **kw
        )
    if (
        status in (404, 400, 422)
        and "model" in message.lower()
        and ("not found" in message.lower() or "does not exist" in message.lower() or status == 404)
    ):
        return BackendRejected(
            text, hint="run `imageworks health` to list the served models, then set the model", **kw
        )
    if 400 <= status < 500:
        return BackendRejected(text, **kw)
    if status in (502, 504):
        return BackendUnavailable(text, hint=hint, **kw)
    if status >= 500:
        return BackendServerError(text, **kw)
    return BackendProtocolError(text, **kw)


def redirect_error(status: int, headers: Mapping[str, str], *, backend: str, url: str) -> BackendRejected:
    """A 3xx answer: reported as a redirect, never followed (the API key must not go elsewhere)."""
    target = headers.get("location")
    to = f" to {redact_url(target)}" if target else ""
    return BackendRejected(
        f"{backend} at {redact_url(url)} answered with a redirect (HTTP {status}){to}; "
        "redirects are not followed, so that the API key is never sent to another address",
        backend=backend,
        url=url,
        status=status,
        hint="set the backend's base_url to the address the server redirects to",
    )
