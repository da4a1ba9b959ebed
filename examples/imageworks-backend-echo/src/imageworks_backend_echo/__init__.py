"""ImageWorks backend ``echo``: the worked example of a third-party plugin.

It needs no server: it "describes" an image by echoing the prompt and each
image's MIME type, pixel size and byte count.  Everything a real backend has
is here in small: metadata, a settings class with one option, health,
inference, streaming and an error raised the way the core expects.

Installed, it registers the backend ``echo`` through the entry point in
``pyproject.toml``; ``imageworks backends`` lists it and
``imageworks describe PHOTOS --vlm-backend echo`` uses it.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator

import anyio
import attrs

from imageworks_core import (
    BackendContext,
    BackendInfo,
    BackendRejected,
    BackendSettings,
    Capabilities,
    Chunk,
    HealthReport,
    Request,
    Result,
    Usage,
    hookimpl,
)

__all__ = ["MAX_IMAGES", "EchoBackend", "EchoSettings", "plugin"]

# One version source: pyproject.toml, read from the installed metadata.
__version__ = importlib.metadata.version("imageworks-backend-echo")

#: Images one request may carry (declared in the capabilities, enforced in ``answer``).
MAX_IMAGES = 4
#: The model name the echo backend answers as, unless the request or the config names one.
MODEL = "echo-1"


@attrs.frozen(slots=True)
class EchoSettings(BackendSettings):
    """Settings of the echo backend (section ``[tool.imageworks.backends.echo]``).

    Attributes:
        prefix: Put in front of every answer.
    """

    prefix: str = "echo"


class EchoBackend:
    """The plugin object: its ``@hookimpl`` methods are the four hooks of the contract."""

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name="echo",
            description="Echoes the prompt and each image's type and size (example plugin, no server)",
            default_base_url="http://localhost/echo-needs-no-server",
            capabilities=Capabilities(
                vision=True, streaming=True, max_images=MAX_IMAGES, model_switch=True, structured_output=False
            ),
            settings_cls=EchoSettings,
            launch_hints=(),
            docs_url="docs/plugin-authoring.md",
        )

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        return HealthReport(
            backend=ctx.name,
            url="(in-process)",
            reachable=True,
            ready=True,
            models=(ctx.settings.model or MODEL,),
            version=__version__,
            detail="answers in-process; no server needed",
        )

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        text = answer(ctx, request)
        await anyio.lowlevel.checkpoint()  # a real backend awaits its server here: stay cancellable
        return Result(
            text=text,
            backend=ctx.name,
            model=request.model or ctx.settings.model or MODEL,
            usage=usage(request, text),
            finish_reason="stop",
        )

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
        text = answer(ctx, request)
        model = request.model or ctx.settings.model or MODEL
        for i, word in enumerate(text.split(" ")):
            await anyio.lowlevel.checkpoint()
            yield Chunk(text=word if i == 0 else " " + word, model=model)
        yield Chunk(finish_reason="stop", usage=usage(request, text), model=model)


def answer(ctx: BackendContext, request: Request) -> str:
    """The echo: the prefix, the prompt, then one line per image."""
    if len(request.images) > MAX_IMAGES:
        raise BackendRejected(
            f"{ctx.name} backend: at most {MAX_IMAGES} images per request, got {len(request.images)}",
            backend=ctx.name,
            hint=f"send at most {MAX_IMAGES} images per request",
        )
    parts = [f"{ctx.settings_as(EchoSettings).prefix}: {request.prompt or '(no prompt)'}"]
    for n, image in enumerate(request.images, 1):
        size = f"{image.width}x{image.height}" if image.width else "size unknown"
        parts.append(f"image {n}: {image.mime}, {size}, {len(image.data)} bytes")
    return " | ".join(parts)


def usage(request: Request, text: str) -> Usage:
    """Token counts, counted in words (one per image)."""
    prompt = len((request.prompt or "").split()) + len(request.images)
    completion = len(text.split())
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


#: The entry-point target: one stateless plugin object (per-client state lives in ``ctx.state``).
plugin = EchoBackend()
