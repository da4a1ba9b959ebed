"""Settings classes: the shape of the configuration once it is resolved.

``config.py`` decides where each value comes from; this module only says what
the values are.  Backends subclass ``BackendSettings`` to add their own keys;
those keys live in the backend's own section and never leak into another.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import attrs

from .redact import register_secret

__all__ = [
    "BackendSettings",
    "RetrySettings",
    "Secret",
    "Settings",
    "normalise_base_url",
    "split_base_urls",
    "split_api_base",
]


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and format print ``***``.

    Use ``reveal()`` at the one place the value is needed (the HTTP header).
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value
        register_secret(value)  # scrubbed from every message, log line and output from now on

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


def _number_check(what: str, ok: Callable[[float], bool]) -> Callable[[Any, Any, Any], None]:
    """An attrs validator: numbers must be finite and satisfy *ok* (``None`` passes)."""

    def check(_inst: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{attribute.name} must be a number, not {value!r}")
        if not math.isfinite(value) or not ok(value):
            raise ValueError(f"{attribute.name} must be {what}, not {value!r}")

    check.what = what  # type: ignore[attr-defined]  # config.py names the rule in its errors
    return check


#: Validators shared by the settings classes (config.py reports them with the key and its source).
AT_LEAST_ONE = _number_check("a whole number >= 1", lambda v: v >= 1 and v == int(v))
POSITIVE = _number_check("a finite number of seconds > 0", lambda v: v > 0)
NOT_NEGATIVE = _number_check("a finite number >= 0", lambda v: v >= 0)


def _concurrency_check(_inst: Any, attribute: Any, value: Any) -> None:
    """``"auto"`` or a whole number >= 1 (``None`` passes)."""
    if value is None or value == AUTO:
        return
    if isinstance(value, str):
        raise ValueError(f"{attribute.name} must be {CONCURRENCY.what}, not {value!r}")  # type: ignore[attr-defined]
    AT_LEAST_ONE(_inst, attribute, value)


#: ``concurrency = "auto"``: each endpoint's limit is found from its latencies (see ``adaptive``).
AUTO = "auto"
CONCURRENCY = _concurrency_check
CONCURRENCY.what = '"auto" or a whole number >= 1'  # type: ignore[attr-defined]


def _to_secret(value: str | Secret | None) -> Secret | None:
    if value is None or isinstance(value, Secret):
        return value
    return Secret(str(value))


def normalise_base_url(url: str) -> str:
    """Add a missing ``http://``, drop a trailing slash; keep the path as given."""
    given = re.sub(r"//[^/?#@]*@", "//", url.strip())  # shown in errors without user:password@
    url = url.strip()
    if "://" not in url:
        scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):(?!\d)", url)  # javascript:..., mailto:...
        if scheme:
            raise ValueError(f"not an http(s) URL: {given!r} (scheme {scheme.group(1)!r})")
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {given!r}")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 0 < port < 65536:
        shown = parts.netloc.rpartition("@")[2].rpartition(":")[2]
        raise ValueError(f"not an http(s) URL: {given!r} (port {shown!r} is not a number from 1 to 65535)")
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), parts.query, ""))


def split_base_urls(value: str) -> tuple[str, ...]:
    """The endpoints of a pool: ``"http://gpu1:8000, http://gpu2:8000"`` -> both, normalised."""
    return tuple(normalise_base_url(u) for u in value.replace(" ", ",").split(",") if u.strip())


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
            Several comma-separated URLs (a TOML list in a config file) make a
            pool of endpoints serving the same model: each request goes to the
            least loaded one that is up.
        model: Model to ask for (``None``: the only model the server serves).
        api_key: The key itself (prefer ``api_key_env``); never printed.
        api_key_env: Name of the environment variable holding the key.
        timeout: Longest time one non-streamed try may take in total (connect,
            send, wait, read), and the longest wait for a streamed answer's
            headers; seconds.
        connect_timeout: Connect timeout, seconds.
        stream_idle_timeout: Longest silence inside a stream, seconds (a stream
            has no total limit).
        concurrency: Requests in flight to this backend at once: ``"auto"``
            (default: found per endpoint from its latencies, see ``adaptive``)
            or a fixed number.
        max_concurrency: Hard maximum of ``"auto"``.
        headers: Extra HTTP headers sent with every request.
        extra_body: Extra fields merged into every request body.
        byok: Let a gateway caller's own key (``imageworks serve``, header
            ``X-Upstream-Authorization``) replace ``api_key`` for that caller's
            requests to this backend only.
    """

    base_url: str | None = None
    model: str | None = None
    api_key: Secret | None = attrs.field(default=None, converter=_to_secret)
    api_key_env: str | None = None
    timeout: float = attrs.field(default=120.0, validator=POSITIVE)
    connect_timeout: float = attrs.field(default=5.0, validator=POSITIVE)
    stream_idle_timeout: float = attrs.field(default=60.0, validator=POSITIVE)
    concurrency: int | str = attrs.field(default=AUTO, validator=CONCURRENCY)
    max_concurrency: int = attrs.field(default=128, validator=AT_LEAST_ONE)
    headers: Mapping[str, str] = attrs.field(factory=dict)
    extra_body: Mapping[str, Any] = attrs.field(factory=dict)
    byok: bool = False


@attrs.frozen(slots=True)
class RetrySettings:
    """How the dispatcher retries, falls back and cools a backend down.

    Attributes:
        max_attempts: Tries per backend for one item (1 = no retry).  Only
            failures caused by the item count (see ``errors.py``); a backend's
            outage does not use them up.
        backoff_base: First backoff ceiling, seconds (full jitter below it).
        backoff_max: Largest backoff, seconds.
        deadline: Seconds one item may spend trying (its tries and the backoff
            between them), across backends; time spent waiting for a free slot
            or for a backend to come back is not counted.
        cooldown_after: Consecutive failures that put a backend in cooldown.
        cooldown: Seconds a backend is skipped before it is probed again.
    """

    max_attempts: int = attrs.field(default=4, validator=AT_LEAST_ONE)
    backoff_base: float = attrs.field(default=0.5, validator=NOT_NEGATIVE)
    backoff_max: float = attrs.field(default=30.0, validator=NOT_NEGATIVE)
    deadline: float = attrs.field(default=600.0, validator=POSITIVE)
    cooldown_after: int = attrs.field(default=5, validator=AT_LEAST_ONE)
    cooldown: float = attrs.field(default=30.0, validator=NOT_NEGATIVE)


@attrs.frozen(slots=True)
class Settings:
    """The resolved configuration of a client.

    Attributes:
        backend: The backend requests go to (default ``vllm``).
        fallback: Backends to try, in order, when the first is down.
        max_tokens: Generation cap sent with every request.
        temperature: Sampling temperature (``None``: the server's default).
        max_pixels: Pixel budget images are downscaled to before sending.
        concurrency: Overrides every backend's own concurrency when set
            (``"auto"`` or a number).
        wait_for_backend: Longest time, in seconds, a batch waits for a backend
            that went down (or is still loading its model) to come back before
            its remaining items fail; ``0`` fails fast (outage errors then use
            up the items' attempts like any other retryable error).
        strict_model: Fail items whose model override a backend cannot honour.
        warmup: Before a batch of ``imageworks describe``, send each endpoint
            one tiny request (its plugin's ``warmup`` hook, else a one-token
            text request), right after its preflight health check
            (``Dispatcher.preflight(warmup=True)`` for library callers).
        transport: ``auto`` (aiohttp under asyncio, httpx under trio), ``httpx`` or ``aiohttp``.
        retry: Retry, fallback and cooldown policy.
        backends: Settings per backend name.
    """

    backend: str = "vllm"
    fallback: tuple[str, ...] = ()
    max_tokens: int = attrs.field(default=512, validator=AT_LEAST_ONE)
    temperature: float | None = attrs.field(default=None, validator=NOT_NEGATIVE)
    max_pixels: int = attrs.field(default=1_000_000, validator=AT_LEAST_ONE)
    concurrency: int | str | None = attrs.field(default=None, validator=CONCURRENCY)
    wait_for_backend: float = attrs.field(default=600.0, validator=NOT_NEGATIVE)
    strict_model: bool = False
    warmup: bool = True
    transport: str = "auto"
    retry: RetrySettings = RetrySettings()
    backends: Mapping[str, BackendSettings] = attrs.field(factory=dict)

    def backend_settings(self, name: str) -> BackendSettings:
        return self.backends.get(name) or BackendSettings()
