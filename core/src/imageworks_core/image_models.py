"""The data of image generation: what is asked (``ImageRequest``) and what comes back.

Frozen and slotted like ``models.py``; a backend's ``generate_image`` hook
receives an ``ImageRequest`` and returns an ``ImageResult``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .errors import ImageWorksError, InputError
from .models import Attempt, PreparedImage, _within

__all__ = ["GeneratedImage", "ImageRequest", "ImageResult", "parse_size"]

_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX]\s*(\d{1,5})\s*$")
#: Largest side accepted (no server generates more; a typo like 10240 fails early).
MAX_SIDE = 8192
#: Most images per request accepted here (OpenAI allows 10; larger batches are several requests).
MAX_N = 16


def parse_size(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """``"512x768"`` or ``(512, 768)`` as ``(width, height)``; ``None`` stays ``None``.

    Raises:
        InputError: not ``WIDTHxHEIGHT`` with sides from 1 to 8192.
    """
    if value is None:
        return None
    if isinstance(value, str):
        m = _SIZE.match(value)
        if m is None:
            raise InputError(f"size {value!r} is not WIDTHxHEIGHT", hint="e.g. --size 512x512")
        size = (int(m.group(1)), int(m.group(2)))
    else:
        try:
            w, h = value
            size = (int(w), int(h))
        except (TypeError, ValueError):
            raise InputError(f"size {value!r} is not (width, height)", hint="e.g. size=(512, 512)") from None
    if not all(1 <= side <= MAX_SIDE for side in size):
        raise InputError(f"size {size[0]}x{size[1]} is out of range", hint=f"each side from 1 to {MAX_SIDE}")
    return size


def _prompt(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InputError("the image prompt is empty", hint='say what to draw, e.g. "a lighthouse at dusk"')


def _n(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_N:
        raise InputError(f"n={value!r}: ask for 1 to {MAX_N} images per request")


_seed = _within(0, 2**64 - 1, whole=True, hint="a whole number from 0 to 2**64-1")
_steps = _within(1, whole=True, hint="a whole number of steps, 1 or more, e.g. 30")
_guidance = _within(0, hint="0 or more, e.g. 7.5")
_strength = _within(
    0, 1, above=True, hint="from just above 0 (keep the image) to 1 (replace it entirely), e.g. 0.6"
)


def _image(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is not None and not isinstance(value, PreparedImage):
        raise InputError(
            f"init_image must be a PreparedImage, got {type(value).__name__}",
            hint="imageworks_core.prepare_image(path, max_pixels=None), or PreparedImage.from_bytes(data)",
        )


def _map(value: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return dict(value) if value else {}


def _names(value: Iterable[str] | str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return (value,) if isinstance(value, str) else tuple(value)


@attrs.frozen(slots=True)
class ImageRequest:
    """One image-generation request.

    Attributes:
        prompt: What to draw.
        negative_prompt: What to keep out (servers without one ignore it).
        size: ``(width, height)``; ``"WxH"`` is accepted.  ``None``: the server's default.
        n: Images to generate from this prompt (1 to 16).
        seed: The seed; ``None`` lets the backend pick one (and report it, when it can).
        steps: Denoising steps (diffusion backends).
        guidance: Classifier-free guidance scale (``cfg_scale``).
        model: Per-request model (else the backend's configured one).
        backend: Per-request backend (else the configured one).
        extras: Backend-specific fields merged into the request (e.g.
            ``{"quality": "hd"}`` for OpenAI, ``{"sampler_name": "Euler a"}`` for the WebUI).
        timeout: Per-request read timeout in seconds.
        id: The caller's identity for this request (kept on its result).
        fallback: This request's fallback backends instead of the configured ones.
        init_image: An image to start from (img2img): only backends whose capabilities
            declare ``init_image`` take the request.  ``size``, when given, is the
            output size; else the image's own.
        strength: With ``init_image``: how much to change it, from just above 0 (keep
            it) to 1 (replace it entirely); ``None``: the backend's default.
    """

    prompt: str = attrs.field(validator=_prompt)
    negative_prompt: str | None = None
    size: tuple[int, int] | None = attrs.field(default=None, converter=parse_size)
    n: int = attrs.field(default=1, validator=_n)
    seed: int | None = attrs.field(default=None, validator=_seed)
    steps: int | None = attrs.field(default=None, validator=_steps)
    guidance: float | None = attrs.field(default=None, validator=_guidance)
    model: str | None = None
    backend: str | None = None
    extras: Mapping[str, Any] = attrs.field(factory=dict, converter=_map)
    timeout: float | None = None
    id: str | None = None
    fallback: tuple[str, ...] | None = attrs.field(default=None, converter=_names)
    init_image: PreparedImage | None = attrs.field(default=None, validator=_image, repr=False)
    strength: float | None = attrs.field(default=None, validator=_strength)


@attrs.frozen(slots=True)
class GeneratedImage:
    """One generated image.

    Attributes:
        data: The encoded bytes (PNG, JPEG or WebP as the server sent them).
        mime: Their MIME type.
        width: Pixel width (0 when unknown).
        height: Pixel height (0 when unknown).
        seed: This image's seed, when the backend knows it.
    """

    data: bytes = attrs.field(repr=lambda d: f"<{len(d)} bytes>")
    mime: str = "image/png"
    width: int = 0
    height: int = 0
    seed: int | None = None


@attrs.frozen(slots=True)
class ImageResult:
    """The outcome of one image-generation request.

    Attributes:
        images: The images, in order.
        backend: The backend that answered (or was last tried).
        model: The model that generated them, as the backend named it.
        seed: The seed actually used (of the first image), when known.
        parameters: The parameters actually used (size, steps, guidance,
            sampler ...), as far as the backend reports them.
        revised_prompt: The prompt the server actually used, when it rewrote it.
        timings: Seconds per phase, as the backend measured them
            (e.g. ``generate``, ``download``, ``encode``).
        latency: Seconds the answering try took.
        queue_time: Seconds waiting for a slot or for a backend to come back.
        attempts: Every try, in order.
        id: The request's ``id``.
        error: The error that ended the request, or ``None``.
        item: Not serialised (the dispatcher's input item).
        base_url: The endpoint that answered, credentials removed.
    """

    images: tuple[GeneratedImage, ...] = ()
    backend: str = ""
    model: str = ""
    seed: int | None = None
    parameters: Mapping[str, Any] = attrs.field(factory=dict, converter=_map)
    revised_prompt: str | None = None
    timings: Mapping[str, float] = attrs.field(factory=dict, converter=_map)
    latency: float = 0.0
    queue_time: float = 0.0
    attempts: tuple[Attempt, ...] = ()
    id: str | None = None
    error: ImageWorksError | None = None
    item: Any = attrs.field(default=None, eq=False, repr=False)
    base_url: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None
