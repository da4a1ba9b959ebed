"""Settings classes: the shape of the configuration once it is resolved.

``config.py`` decides where each value comes from; this module only says what
the values are.  Backends subclass ``BackendSettings`` to add their own keys;
those keys live in the backend's own section and never leak into another.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

__all__ = ["BackendSettings", "RetrySettings", "Secret", "Settings", "normalise_base_url", "split_api_base"]


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and format print ``***``.

    Use ``reveal()`` at the one place the value is needed (the HTTP header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __format__(self, spec: str) -> str:
        return "***"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # pickling is allowed (multiprocessing), printing is not
        return (Secret, (self._value,))


def _to_secret(value: str | Secret | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(str(value))


def normalise_base_url(url: str) -> str:
    """Add a missing ``http://``, drop a trailing slash; keep the path as given."""
    url = url.strip()
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))


def split_api_base(url: str, *, force_v1: bool = False) -> tuple[str, str]:
    """``(server_root, api_base)`` for an OpenAI-compatible server.

    ``http://h:8000``, ``http://h:8000/`` and ``http://h:8000/v1`` all give
    ``("http://h:8000", "http://h:8000/v1")``.  A URL with another path
    (OpenRouter's ``/api/v1``, Gemini's ``/v1beta/openai``) is kept as the API
    base, unless *force_v1* (servers known to serve ``/v1``).
    """
    url = normalise_base_url(url)
    parts = urlsplit(url)
    path = parts.path
    if path.endswith("/v1"):
        root_path = path[: -len("/v1")]
        api_path = path
    elif path == "" or force_v1:
        root_path = path
        api_path = path + "/v1"
    else:
        root_path = path
        api_path = path
    root = urlunsplit((parts.scheme, parts.netloc, root_path, "", ""))
    api = urlunsplit((parts.scheme, parts.netloc, api_path, "", ""))
    return root, api


@attrs.frozen(slots=True)
class BackendSettings:
    """Settings every backend has; plugins subclass to add their own.

    Attributes:
        base_url: Where the server listens (``None``: the backend's default).
        model: Model to ask for (``None``: the only model the server serves).
        api_key: The key itself (prefer ``api_key_env``); never printed.
        api_key_env: Name of the environment variable holding the key.
        timeout: Read timeout per request, seconds.
        connect_timeout: Connect timeout, seconds.
        stream_idle_timeout: Longest silence inside a stream, seconds.
        concurrency: Requests in flight to this backend at once.
        headers: Extra HTTP headers sent with every request.
        extra_body: Extra fields merged into every request body.
    """

    base_url: str | None = None
    model: str | None = None
    api_key: Secret | None = attrs.field(default=None, converter=_to_secret)
    api_key_env: str | None = None
    timeout: float = 120.0
    connect_timeout: float = 5.0
    stream_idle_timeout: float = 60.0
    concurrency: int = 8
    headers: Mapping[str, str] = attrs.field(factory=dict)
    extra_body: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen(slots=True)
class RetrySettings:
    """How the dispatcher retries, falls back and cools a backend down.

    Attributes:
        max_attempts: Tries per backend for one item (1 = no retry).
        backoff_base: First backoff ceiling, seconds (full jitter below it).
        backoff_max: Largest backoff, seconds.
        deadline: Total seconds one item may take across tries and backends.
        cooldown_after: Consecutive failures that put a backend in cooldown.
        cooldown: Seconds a backend is skipped before it is probed again.
    """

    max_attempts: int = 4
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    deadline: float = 600.0
    cooldown_after: int = 5
    cooldown: float = 30.0


@attrs.frozen(slots=True)
class Settings:
    """The resolved configuration of a client.

    Attributes:
        backend: The backend requests go to (default ``vllm``).
        fallback: Backends to try, in order, when the first is down.
        max_tokens: Generation cap sent with every request.
        temperature: Sampling temperature (``None``: the server's default).
        max_pixels: Pixel budget images are downscaled to before sending.
        concurrency: Overrides every backend's own concurrency when set.
        strict_model: Fail items whose model override a backend cannot honour.
        transport: ``auto`` (aiohttp under asyncio, httpx under trio), ``httpx`` or ``aiohttp``.
        retry: Retry, fallback and cooldown policy.
        backends: Settings per backend name.
    """

    backend: str = "vllm"
    fallback: tuple[str, ...] = ()
    max_tokens: int = 512
    temperature: float | None = None
    max_pixels: int = 1_000_000
    concurrency: int | None = None
    strict_model: bool = False
    transport: str = "auto"
    retry: RetrySettings = RetrySettings()
    backends: Mapping[str, BackendSettings] = attrs.field(factory=dict)

    def backend_settings(self, name: str) -> BackendSettings:
        return self.backends.get(name) or BackendSettings()
