"""The data that crosses the plugin boundary: requests, results, chunks, health.

All classes are frozen and slotted; ``imageworks_core.serialize`` turns them
into JSON and back.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import ImageWorksError, InputError, redact_url

__all__ = [
    "Attempt",
    "BackendInfo",
    "Capabilities",
    "Chunk",
    "KINDS",
    "HealthReport",
    "PreparedImage",
    "Request",
    "Result",
    "Usage",
]


#: The kinds of backend: what a backend may declare in ``Capabilities.kinds``.
KINDS = ("vision", "text", "image_generation")


def _images(value: Iterable[Any]) -> tuple[PreparedImage, ...]:
    # paths and bytes are allowed too: the client prepares them in worker threads
    if isinstance(value, PreparedImage | str | bytes | bytearray | os.PathLike):
        value = (value,)
    items = tuple(value)
    for item in items:
        if not isinstance(item, PreparedImage | str | bytes | bytearray | os.PathLike):
            raise InputError(
                f"Request.images cannot hold a {type(item).__name__}",
                hint="pass image paths, encoded image bytes, or PreparedImage (from aprepare_image)",
            )
    return items  # paths and bytes stay as they are until the client prepares them


def _within(
    low: float, high: float | None = None, *, above: bool = False, whole: bool = False, hint: str
) -> Any:
    """An attrs validator: ``None``, or a finite number from *low* (excluded when *above*) to *high*."""

    def check(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is None:
            return
        kinds = int if whole else (int, float)
        ok = not isinstance(value, bool) and isinstance(value, kinds) and math.isfinite(value)
        ok = ok and (value > low if above else value >= low) and (high is None or value <= high)
        if not ok:
            raise InputError(f"{attribute.name}={value!r} is out of range", hint=hint)

    return check


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _frozen_map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


@attrs.frozen(slots=True)
class PreparedImage:
    """An encoded image ready to send.

    Attributes:
        data: The encoded bytes (JPEG or PNG after preparation).
        mime: Its MIME type, e.g. ``image/jpeg``.
        width: Pixel width of ``data``.
        height: Pixel height of ``data``.
        original_width: Width of the source before resizing (0 when unknown).
        original_height: Height of the source before resizing (0 when unknown).
        source: The path it came from, or ``"<bytes>"``.
    """

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    mime: str
    width: int = 0
    height: int = 0
    original_width: int = 0
    original_height: int = 0
    source: str = "<bytes>"

    @classmethod
    def from_bytes(cls, data: bytes, mime: str | None = None, source: str = "<bytes>") -> PreparedImage:
        """Wrap already-encoded bytes without re-encoding them (the header is read for the size).

        Raises:
            InputError: *data* is empty, or not an image whose header can be read.
        """
        from .images import wrap_encoded

        return wrap_encoded(data, mime, source)

    def data_url(self) -> str:
        """``data:<mime>;base64,...`` — the one image form every OpenAI-style server accepts."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    def b64(self) -> str:
        """Plain base64 of ``data`` (Triton's vLLM-backend convention)."""
        return base64.b64encode(self.data).decode("ascii")


@attrs.frozen(slots=True)
class Usage:
    """Token counts as the server reported them (``None`` when it did not).

    Attributes:
        prompt_tokens: Tokens in the prompt, images included.
        completion_tokens: Tokens generated.
        total_tokens: Their sum.
    """

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


@attrs.frozen(slots=True)
class Request:
    """One inference request.

    Attributes:
        prompt: The user text.  Ignored when ``messages`` is given.
        images: Images to send with the prompt: ``PreparedImage``s, or paths and
            encoded bytes, which the client prepares in a worker thread
            (``max_pixels``) before the request is sent.  Anything else is an
            ``InputError`` here.
        messages: Full OpenAI-style chat messages (advanced); images in them
            must already be ``data:`` URLs.
        system: An optional system prompt.
        model: Per-request model override (else the backend's configured model).
        backend: Per-request backend choice (else the configured one).
        max_tokens: Generation cap (always sent; default from config).
        temperature: Sampling temperature (default from config).
        top_p: Nucleus sampling, when set.
        stop: Stop strings.
        extra: Backend-specific extras merged into the request body
            (e.g. ``{"top_k": 20}`` or ``{"mm_processor_kwargs": {...}}``).
        timeout: This request's limit for one try, in seconds (each try gets it whole).
        id: The caller's identity for this request (kept on its result).
        fallback: This request's fallback backends, in order, instead of the
            configured ones (``()``: none; ``None``: the configured ones).
    """

    prompt: str | None = None
    images: tuple[PreparedImage, ...] = attrs.field(default=(), converter=_images)
    messages: tuple[Mapping[str, Any], ...] | None = None
    system: str | None = None
    model: str | None = None
    backend: str | None = None
    max_tokens: int | None = attrs.field(
        default=None, validator=_within(1, whole=True, hint="a whole number of tokens, 1 or more, e.g. 300")
    )
    temperature: float | None = attrs.field(
        default=None, validator=_within(0, hint="0 (greedy) or more, e.g. 0.2")
    )
    top_p: float | None = attrs.field(
        default=None, validator=_within(0, 1, above=True, hint="above 0, at most 1, e.g. 0.9")
    )
    stop: tuple[str, ...] = attrs.field(default=(), converter=_strings)
    extra: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_map)
    timeout: float | None = attrs.field(
        default=None, validator=_within(0, above=True, hint="seconds, above 0, e.g. 120")
    )
    id: str | None = None
    fallback: tuple[str, ...] | None = attrs.field(
        default=None, converter=lambda v: None if v is None else _strings(v)
    )


@attrs.frozen(slots=True)
class Attempt:
    """One try of one request on one backend.

    Attributes:
        backend: The backend tried.
        latency: Seconds the try took.
        error: The one-line error, or ``None`` for the try that succeeded.
        error_type: The error's class name.
        status: HTTP status, when there was one.
    """

    backend: str
    latency: float
    error: str | None = None
    error_type: str | None = None
    status: int | None = None


@attrs.frozen(slots=True)
class Result:
    """The outcome of one request.

    ``Client.infer`` raises on failure; ``Client.map`` yields results with
    ``error`` set instead, so one bad item never stops a batch.

    Attributes:
        text: The generated text ("" on failure).
        backend: The backend that answered (or was last tried).
        model: The model that answered, as the server named it.
        usage: Token counts.
        latency: Seconds the answering try took (the server's time for this
            request, from the moment it had a slot); on failure, the last try's.
        finish_reason: ``stop``, ``length`` ... as the server said.
        attempts: Every try, in order (outages the request waited out included).
        id: The request's ``id`` (or the item's identity in ``map``).
        error: The error that ended the request, or ``None``.
        item: The input item of ``Client.map`` (not serialised).
        queue_time: Seconds spent waiting for a free slot, or for a backend to
            come back from an outage (not part of ``latency``).
        base_url: The endpoint that answered (or was last tried), credentials removed.
    """

    text: str = ""
    backend: str = ""
    model: str = ""
    usage: Usage = Usage()
    latency: float = 0.0
    finish_reason: str | None = None
    attempts: tuple[Attempt, ...] = ()
    id: str | None = None
    error: ImageWorksError | None = None
    item: Any = attrs.field(default=None, eq=False, repr=False)
    queue_time: float = 0.0
    base_url: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@attrs.frozen(slots=True)
class Chunk:
    """A piece of a streamed answer.

    Attributes:
        text: Newly generated text (may be empty, e.g. on the usage chunk).
        finish_reason: Set on the last content chunk.
        usage: Set on the final chunk when the server reports usage.
        model: The model named by the server, when given.
    """

    text: str = ""
    finish_reason: str | None = None
    usage: Usage | None = None
    model: str | None = None


@attrs.frozen(slots=True)
class HealthReport:
    """What a backend's health check found.

    Attributes:
        backend: Backend name.
        url: The base URL checked (credentials removed).
        reachable: Something answered.
        ready: It can serve requests now.
        models: Model ids served.
        version: Server version, when it says.
        latency: Seconds the check took.
        hint: What to do when not ready (a launch command, a config key).
        detail: One line on what was seen (e.g. "HTTP 503 from /health").
        rejected: The server refused the check itself (401, 403, 404): it is
            up but misconfigured for us, so waiting for it will not help.
        max_model_len: Context length, when the server says.
        metrics: Load figures when available: ``running``, ``waiting``,
            ``kv_cache_usage`` ...
    """

    backend: str
    url: str
    reachable: bool
    ready: bool
    models: tuple[str, ...] = ()
    version: str | None = None
    latency: float = 0.0
    hint: str | None = None
    detail: str | None = None
    max_model_len: int | None = None
    metrics: Mapping[str, float] = attrs.field(factory=dict, converter=_frozen_map)
    rejected: bool = False

    @classmethod
    def up(cls, ctx: Any, models: Iterable[str] = (), **fields: Any) -> HealthReport:
        """A ready report for the backend of *ctx* (its name, its base URL without credentials)."""
        return cls(
            backend=ctx.name,
            url=redact_url(ctx.base_url),
            reachable=True,
            ready=True,
            models=tuple(models),
            **fields,
        )

    @classmethod
    def not_ready(cls, ctx: Any, detail: str, hint: str | None = None, **fields: Any) -> HealthReport:
        """The server answered but cannot serve: *detail* says what was seen, *hint* what to do."""
        return cls(
            backend=ctx.name,
            url=redact_url(ctx.base_url),
            reachable=True,
            ready=False,
            detail=detail,
            hint=hint,
            **fields,
        )

    @classmethod
    def down(cls, ctx: Any, detail: str, hint: str | None = None) -> HealthReport:
        """Nothing usable answered: *detail* says what was seen; *hint* defaults to ``ctx.hint``."""
        return cls(
            backend=ctx.name,
            url=redact_url(ctx.base_url),
            reachable=False,
            ready=False,
            detail=detail,
            hint=ctx.hint if hint is None else hint,
        )


@attrs.frozen(slots=True)
class Capabilities:
    """What a backend can do, declared without calling it.

    Attributes:
        vision: Accepts images.
        streaming: Implements ``stream`` with real incremental output.
        max_images: Images per request it accepts, ``None`` for no fixed cap.
        model_switch: A request may name another model than the configured one.
        structured_output: Supports JSON-schema constrained output.
        kinds: The kinds of work it does, from ``KINDS``: ``vision`` (images
            in, text out), ``text`` (text in, text out), ``image_generation``
            (text in, images out, through the ``generate_image`` hook).  Not
            given: ``("vision", "text")``, or ``("text",)`` with
            ``vision=False``.  Given, it decides ``vision``.
        init_image: An ``image_generation`` backend that can start from an image
            (``ImageRequest.init_image``: img2img); requests that carry one go
            only to such backends.
    """

    vision: bool = True
    streaming: bool = True
    max_images: int | None = None
    model_switch: bool = True
    structured_output: bool = False
    kinds: tuple[str, ...] = attrs.field(default=None, converter=lambda v: None if v is None else _strings(v))
    init_image: bool = False

    def __attrs_post_init__(self) -> None:
        if self.kinds is None:  # not declared: what ``vision`` says (text always)
            object.__setattr__(self, "kinds", ("vision", "text") if self.vision else ("text",))
            return
        unknown = [k for k in self.kinds if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown backend kind(s) {unknown}; known kinds: {', '.join(KINDS)}")
        if not self.kinds:
            raise ValueError("a backend declares at least one kind")
        object.__setattr__(self, "vision", "vision" in self.kinds)


@attrs.frozen(slots=True)
class BackendInfo:
    """A backend's metadata, returned by its ``backend_info`` hook.

    Attributes:
        name: The backend name (must equal the entry-point name).
        description: One line for ``imageworks backends``.
        default_base_url: Where its server listens by default.
        capabilities: What it can do.
        settings_cls: Its settings class (a subclass of ``BackendSettings``).
        launch_hints: Commands that start its server, shown when it is down
            (e.g. one line for a 16 GB GPU and one for a 96 GB GPU).
        docs_url: Where its setup page lives.
    """

    name: str
    description: str
    default_base_url: str
    capabilities: Capabilities = Capabilities()
    settings_cls: type = attrs.field(default=None)
    launch_hints: tuple[str, ...] = ()
    docs_url: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.settings_cls is None:
            from .settings import BackendSettings

            object.__setattr__(self, "settings_cls", BackendSettings)
