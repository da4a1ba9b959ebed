"""``BackendBase``: a plugin class whose metadata are class attributes.

Subclass it, set the attributes, and implement ``health`` and one of
``stream`` / ``infer`` as ``@hookimpl`` methods: ``backend_info`` is built
from the attributes, and the other of ``infer`` / ``stream`` from the one you
wrote.  ``OpenAICompatBackend`` is one such subclass.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, ClassVar

from .errors import PluginError
from .hookspecs import hookimpl
from .models import BackendInfo, Capabilities, Chunk, Request, Result, Usage
from .settings import BackendSettings

__all__ = ["BackendBase"]


class BackendBase:
    """Metadata as class attributes; ``backend_info`` built from them.

    Write ``stream`` and the default ``infer`` collects its chunks into one
    ``Result``; write ``infer`` and the default ``stream`` yields its answer as
    one chunk (then declare ``Capabilities(streaming=False)``).  Writing
    neither is a ``PluginError`` at the first request.

    Attributes:
        name: The backend name (equal to the entry-point name).
        description: One line for ``imageworks backends``.
        default_base_url: Where its server listens by default.
        capabilities: What it can do.
        settings_cls: Its settings class.
        launch_hints: Commands that start its server (shown when it is down).
        docs_url: Its setup page.
    """

    name: ClassVar[str]
    description: ClassVar[str] = ""
    default_base_url: ClassVar[str]
    capabilities: ClassVar[Capabilities] = Capabilities()
    settings_cls: ClassVar[type[BackendSettings]] = BackendSettings
    launch_hints: ClassVar[tuple[str, ...]] = ()
    docs_url: ClassVar[str | None] = None

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            description=self.description,
            default_base_url=self.default_base_url,
            capabilities=self.capabilities,
            settings_cls=self.settings_cls,
            launch_hints=self.launch_hints,
            docs_url=self.docs_url,
        )

    @hookimpl
    async def infer(self, ctx: Any, request: Request) -> Result:
        """Default: the chunks of ``stream`` joined into one ``Result``."""
        if type(self).stream is BackendBase.stream:
            raise _neither(self)
        parts: list[str] = []
        model, finish, usage = "", None, None
        chunks = self.stream(ctx, request)
        try:
            async for chunk in chunks:
                parts.append(chunk.text)
                model = chunk.model or model
                finish = chunk.finish_reason if chunk.finish_reason is not None else finish
                usage = chunk.usage if chunk.usage is not None else usage
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        return Result(
            text="".join(parts),
            backend=ctx.name,
            model=model or request.model or ctx.settings.model or "",
            usage=usage or Usage(),
            finish_reason=finish,
        )

    @hookimpl
    async def stream(self, ctx: Any, request: Request) -> AsyncIterator[Chunk]:
        """Default: the answer of ``infer`` as one chunk (text, finish reason, usage)."""
        if type(self).infer is BackendBase.infer:
            raise _neither(self)
        result = await self.infer(ctx, request)
        yield Chunk(
            text=result.text, finish_reason=result.finish_reason, usage=result.usage, model=result.model
        )


def _neither(plugin: BackendBase) -> PluginError:
    name = getattr(plugin, "name", type(plugin).__name__)
    return PluginError(
        f"backend {name!r} implements neither 'infer' nor 'stream'",
        plugin=str(name),
        hint="a BackendBase subclass writes at least one of them as an @hookimpl method",
    )
