"""Secrets the process has sent, and scrubbing them out of every text it shows or stores.

The client knows each secret it sends: API keys (config file, flag, the
variable named by ``api_key_env``), the password of a base URL, the values of
configured credential headers and the ``?key=`` style query values of a base
URL.  Each is registered here once (``Secret`` registers itself), and
:func:`scrub` replaces every registered value in a text with ``***``.  Error
messages (``ImageWorksError``), log lines, the summary and every output file
go through it, so a server that echoes the key back ("Invalid API key: Bearer
sk-...") cannot get it printed or written.

The registry is process-wide on purpose: a secret is a secret for every client
in the process, and a log handler or an exception created far from the client
must still be able to scrub it.  Values shorter than ``MIN_SECRET_LENGTH``
characters are not registered: replacing every ``a`` in every message would
make errors unreadable, and such keys cannot be secret anyway.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit, urlunsplit

__all__ = [
    "MASK",
    "StreamScrubber",
    "MIN_SECRET_LENGTH",
    "is_sensitive_header",
    "redact_headers",
    "redact_url",
    "register_secret",
    "scrub",
    "scrub_data",
    "url_secrets",
]

MASK = "***"
MIN_SECRET_LENGTH = 4
#: Keys that local servers take as "no key" (vLLM's docs use EMPTY; LM Studio's, Ollama's and
#: llama.cpp's clients send their names): scrubbing them would mangle every answer with the word.
PLACEHOLDER_KEYS = frozenset(
    {
        "empty",
        "none",
        "null",
        "dummy",
        "no-key",
        "nokey",
        "not-needed",
        "lm-studio",
        "ollama",
        "sk-no-key-required",
        "token-abc123",
    }
)

_lock = threading.Lock()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None

_SENSITIVE_HEADER = re.compile(r"auth|key|token|secret|passw|cookie|session|credential", re.IGNORECASE)
_SENSITIVE_QUERY = re.compile(r"auth|key|token|secret|passw|session|credential|sig|code|jwt", re.IGNORECASE)
_AUTH_SCHEME = re.compile(r"^\s*(bearer|basic|token|apikey|api-key|digest)\s+(\S.*)$", re.IGNORECASE)


def register_secret(*values: str | None) -> None:
    """Remember *values* (and their URL-quoted and Basic-decoded forms) as secrets to scrub."""
    global _pattern
    found: set[str] = set()
    for value in values:
        if not value:
            continue
        value = str(value)
        forms = {value, value.strip(), quote(value, safe=""), unquote(value)}
        scheme = _AUTH_SCHEME.match(value)
        if scheme:  # "Bearer sk-..." -> also "sk-..."; "Basic dXNlcjpw..." -> also "user:pw", "pw"
            token = scheme.group(2).strip()
            forms.add(token)
            if scheme.group(1).lower() == "basic":
                try:
                    decoded = base64.b64decode(token, validate=True).decode("utf-8")
                except ValueError:
                    decoded = ""
                if decoded:
                    forms.update({decoded, decoded.partition(":")[2]})
        found.update(f for f in forms if len(f) >= MIN_SECRET_LENGTH and f.lower() not in PLACEHOLDER_KEYS)
    if not found:
        return
    with _lock:
        if found <= _secrets:
            return
        _secrets.update(found)
        # longest first, so a secret that contains another is replaced whole
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def scrub(text: str) -> str:
    """*text* with every registered secret replaced by ``***``."""
    pattern = _pattern
    if pattern is None or not isinstance(text, str):
        return text
    return pattern.sub(MASK, text)


def scrub_data(obj: Any) -> Any:
    """*obj* (JSON-like: dicts, lists, strings) with every string scrubbed; other values as they are."""
    if _pattern is None:
        return obj
    if isinstance(obj, str):
        return scrub(obj)
    if isinstance(obj, Mapping):
        return {scrub(k) if isinstance(k, str) else k: scrub_data(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [scrub_data(v) for v in obj]
    return obj


def is_sensitive_header(name: str) -> bool:
    """Whether a header's value is a credential (``Authorization``, ``api-key``, ``X-Auth-Token`` ...)."""
    return bool(_SENSITIVE_HEADER.search(name))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """*headers* with credential values shown as ``***``."""
    return {k: (MASK if is_sensitive_header(k) else scrub(str(v))) for k, v in headers.items()}


def url_secrets(url: str) -> Iterable[str]:
    """The password and the credential-like query values of *url* (each URL of a pool list).

    ``?key=``, ``?api_key=``, ``?token=``, ``?sig=`` ... are secrets; ``?api-version=2024-06-01``
    is not: scrubbing it would turn every "2024" in an answer into ``***``.  ``redact_url`` still
    shows every query value as ``***``.
    """
    if "," in url and url.count("://") > 1:
        return [found for part in url.split(",") for found in url_secrets(part.strip())]
    try:
        parts = urlsplit(url)
    except ValueError:
        return ()
    found = [unquote(parts.password)] if parts.password else []
    found += [value for name, value in parse_qsl(parts.query) if _SENSITIVE_QUERY.search(name)]
    return found


def redact_url(url: str) -> str:
    """*url* fit to show: no ``user:password@``, every query value shown as ``***``.

    ``http://u:pw@h:8000/v1?key=abc`` -> ``http://h:8000/v1?key=***``.  A pool's
    comma-separated list is redacted URL by URL.
    """
    if "," in url and url.count("://") > 1:
        return ",".join(redact_url(part.strip()) for part in url.split(","))
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "<unparseable URL>"
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if port:
        netloc = f"{netloc}:{port}"
    query = "&".join(f"{name}={MASK}" for name, _ in parse_qsl(parts.query, keep_blank_values=True))
    if parts.query and not query:
        query = MASK
    return scrub(urlunsplit((parts.scheme, netloc, parts.path, query, "")))


class StreamScrubber:
    """Scrub text that arrives in pieces (a streamed answer printed live).

    A secret may be split across chunks, so the end of what has arrived is held
    back while it could still be the start of a secret; :meth:`flush` gives the
    rest once the stream ends.
    """

    def __init__(self) -> None:
        self._pending = ""

    def feed(self, text: str) -> str:
        """What of ``pending + text`` can be shown now (scrubbed)."""
        data = self._pending + text
        keep = 0
        with _lock:
            secrets = list(_secrets)
        for secret in secrets:  # the longest tail of data that is a proper prefix of a secret
            for n in range(min(len(secret) - 1, len(data)), keep, -1):
                if data.endswith(secret[:n]):
                    keep = n
                    break
        cut = len(data) - keep
        shown, self._pending = scrub(data[:cut]), data[cut:]
        # a secret that straddles the cut is whole in data: scrub the joined text instead
        if scrub(data) != scrub(data[:cut]) + scrub(data[cut:]):
            self._pending = ""
            return scrub(data)
        return shown

    def flush(self) -> str:
        """The held-back rest (scrubbed)."""
        rest, self._pending = self._pending, ""
        return scrub(rest)
