"""The plugin contract: what a backend plugin implements.

A backend is a module (or object) registered under the entry-point group
``imageworks.backends``; the entry-point name is the backend name.  It marks
its functions with ``imageworks_core.hookimpl``.  Every backend implements the
four hooks ``backend_info``, ``health``, ``infer`` and ``stream``; ``infer``,
``health`` are ``async def``, ``stream`` is an ``async def`` generator.  The
``warmup`` hook is optional (``async def``; without it the core sends a
one-token text request through ``infer``).  ``generate_image`` is required of a
backend whose ``Capabilities.kinds`` holds ``image_generation`` (and only of it);
one that declares neither ``vision`` nor ``text`` may leave ``infer`` and
``stream`` out.  The core calls exactly one backend's implementation
per request, so a backend never sees another backend's traffic.

Hooks may accept fewer arguments than the spec (pluggy passes only the names
an implementation asks for); new optional arguments are added over time.
Other plugins may wrap calls with ``@hookimpl(wrapper=True)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .context import BackendContext
    from .image_models import ImageRequest, ImageResult
    from .models import BackendInfo, Chunk, HealthReport, Request, Result

PROJECT = "imageworks"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def backend_info() -> BackendInfo:
    """Return this backend's metadata (name, default URL, capabilities, settings class).

    Synchronous and cheap: no I/O, no heavy imports.
    """
    raise NotImplementedError  # a specification: backends implement it


@hookspec(firstresult=True)
def health(ctx: BackendContext) -> Awaitable[HealthReport]:
    """Check the server at ``ctx.settings`` and report (not ready, with a hint, when it is not).

    A ``BackendError`` raised here (e.g. "cannot connect") is turned into a
    not-ready report by the core, which also times the check.
    """
    raise NotImplementedError  # a specification: backends implement it


@hookspec(firstresult=True)
def infer(ctx: BackendContext, request: Request) -> Awaitable[Result]:
    """Answer *request*.

    Raise a ``BackendError`` subclass (or ``InputError``) on failure; never return an error as text.
    """
    raise NotImplementedError  # a specification: backends implement it


@hookspec(firstresult=True)
def warmup(ctx: BackendContext) -> Awaitable[None]:
    """Optional: make the server ready for real work, the cheapest way it allows (load the model,
    compile, fill caches), so the first items of a batch do not pay the cold start.

    Called once per endpoint before a batch, after its health check said ready
    (``--no-warmup`` / ``warmup = false`` skip it).  Raise a ``BackendError``
    when it fails: the batch then treats the endpoint like a failed health
    check, with the error's message.
    """
    raise NotImplementedError  # a specification: backends may implement it


@hookspec(firstresult=True)
def stream(ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
    """Yield the answer as ``Chunk``s, the last with ``finish_reason`` (and ``usage`` when known).

    Raise like ``infer``, also for errors the server reports inside the stream.
    """
    raise NotImplementedError  # a specification: backends implement it


@hookspec(firstresult=True)
def generate_image(ctx: BackendContext, request: ImageRequest) -> Awaitable[ImageResult]:
    """Generate ``request.n`` images for *request* (backends of kind ``image_generation``).

    Return an ``ImageResult`` with the encoded images and, as far as the
    server reports them, the seed and parameters actually used, a revised
    prompt and timings.  Raise like ``infer`` (``BackendRejected`` for a
    refused prompt, ``BackendUnavailable`` when the server is down ...); the
    core retries, falls back to another image backend and waits out outages.
    """
    raise NotImplementedError  # a specification: image-generation backends implement it
