"""Routing image-generation requests: only to backends of kind ``image_generation``.

The request then goes through the same dispatcher as text and vision
requests (``ItemRunner.run`` with ``hook="generate_image"``): the same
retries, outage waits, fallback order, pools and events.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, cast

import attrs

from .errors import ConfigError
from .image_models import ImageRequest, ImageResult

if TYPE_CHECKING:
    from .client import Client
    from .events import OnEvent
    from .models import Request

__all__ = ["IMAGE_GENERATION", "generate", "image_backends", "route"]

log = logging.getLogger("imageworks.dispatch")

IMAGE_GENERATION = "image_generation"


def image_backends(client: Client) -> list[str]:
    """The loaded backends that declare the ``image_generation`` kind, by name."""
    return sorted(
        name for name, b in client.registry.backends.items() if IMAGE_GENERATION in b.info.capabilities.kinds
    )


def _can(client: Client, name: str, request: ImageRequest | None = None) -> bool:
    caps = client.info(name).capabilities
    if request is not None and request.init_image is not None and not caps.init_image:
        return False
    return IMAGE_GENERATION in caps.kinds


def _img2img(client: Client) -> list[str]:
    return [n for n in image_backends(client) if client.info(n).capabilities.init_image]


def route(client: Client, request: ImageRequest) -> ImageRequest:
    """*request* with its backend and fallbacks set to image-generation backends only.

    A backend the request names must declare the kind.  Without one, the first
    backend of the configured order (backend, then fallbacks) that declares it
    is used.  Fallbacks that do not declare it are left out.

    Raises:
        ConfigError: the named backend cannot generate images, or none configured can.
        PluginError: a named backend is not installed.
    """
    have = image_backends(client)
    hint = (
        f"use a backend that generates images: {', '.join(have)} (e.g. --backend {have[0]})"
        if have
        else "install one: the openai backend (in imageworks-core) speaks /v1/images/generations"
    )
    if request.init_image is not None:
        able = _img2img(client)
        if request.backend is not None and _can(client, request.backend) and request.backend not in able:
            raise ConfigError(
                f"backend {request.backend!r} cannot start from an image (img2img)",
                key="backend",
                hint=f"use one that can: {', '.join(able)}"
                if able
                else "none installed can: e.g. pip install imageworks-backend-sdwebui (or -diffusers)",
            )
        if request.backend is None and not any(
            _can(client, n, request) for n in client.backend_order() if n in client.registry.backends
        ):
            raise ConfigError(
                "no configured backend can start from an image (img2img)",
                key="backend",
                hint=f"use one that can: {', '.join(able)} (e.g. --backend {able[0]})"
                if able
                else "none installed can: e.g. pip install imageworks-backend-sdwebui (or -diffusers)",
            )
    if request.backend is not None:
        if not _can(client, request.backend):
            raise ConfigError(
                f"backend {request.backend!r} does not generate images (its kinds: "
                f"{', '.join(client.info(request.backend).capabilities.kinds)})",
                key="backend",
                hint=hint,
            )
        order = client.backend_order(request.backend)
    else:
        configured = client.backend_order()
        order = [n for n in configured if n in client.registry.backends and _can(client, n, request)]
        if not order:
            raise ConfigError(
                f"no configured backend generates images (configured: {', '.join(configured)})",
                key="backend",
                hint=hint,
            )
    if request.fallback is not None:
        order = [order[0], *request.fallback]
    kept = [n for n in dict.fromkeys(order) if n in client.registry.backends and _can(client, n, request)]
    left = [n for n in order if n not in kept]
    if left:
        log.debug("image generation: fallbacks %s cannot take this request; left out", ", ".join(left))
    return attrs.evolve(request, backend=kept[0], fallback=tuple(kept[1:]))


async def generate(client: Client, request: ImageRequest, *, on_event: OnEvent | None = None) -> ImageResult:
    """Generate images for *request* through the dispatcher; raise the final error.

    The error raised carries ``attempts``: every try made, in order.
    """
    routed = route(client, request)
    # the runner reads backend, model, fallback, timeout and id: an ImageRequest has them all
    result: Any = await client.dispatcher.run_one(
        cast("Request", routed), item_id=request.id, on_event=on_event, hook="generate_image"
    )
    if result.error is not None:
        result.error.attempts = tuple(result.attempts)
        raise result.error
    if not isinstance(result, ImageResult):
        from .errors import PluginError

        raise PluginError(
            f"the {result.backend} plugin's generate_image returned {type(result).__name__}, not ImageResult",
            plugin=result.backend,
        )
    return result
