"""``BackendBase``: a plugin class whose metadata are class attributes.

Subclass it, set the attributes, and implement ``health``, ``infer`` and
``stream`` as ``@hookimpl`` methods; ``backend_info`` is built from the
attributes.  ``OpenAICompatBackend`` is one such subclass.
"""

from __future__ import annotations

from typing import ClassVar

from .hookspecs import hookimpl
from .models import BackendInfo, Capabilities
from .settings import BackendSettings

__all__ = ["BackendBase"]


class BackendBase:
    """Metadata as class attributes; ``backend_info`` built from them.

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
