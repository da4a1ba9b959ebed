"""What a backend's hooks receive: its settings, its HTTP client, its state."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .errors import PluginError, redact_url
from .models import BackendInfo
from .settings import BackendSettings, Settings

__all__ = ["BackendContext"]

S = TypeVar("S", bound=BackendSettings)


class BackendContext:
    """One backend inside one client.

    Attributes:
        name: The backend name.
        info: Its metadata.
        settings: Its resolved settings (an instance of ``info.settings_cls``).
        client_settings: The client-wide settings (max_tokens, temperature ...).
        base_url: The resolved base URL (the backend's default when unset).
        http: An ``HttpClient`` bound to ``base_url``, sharing the endpoint's pool.
        state: Free space for the plugin, kept for the client's lifetime
            (discovered model id, a loaded in-process model ...).
        log: The backend's logger.
    """

    __slots__ = (
        "_closers",
        "base_url",
        "client_settings",
        "http",
        "info",
        "log",
        "name",
        "settings",
        "state",
    )

    def __init__(
        self,
        *,
        name: str,
        info: BackendInfo,
        settings: BackendSettings,
        client_settings: Settings,
        base_url: str,
        http: Any,
    ) -> None:
        self.name = name
        self.info = info
        self.settings = settings
        self.client_settings = client_settings
        self.base_url = base_url
        self.http = http
        self.state: dict[str, Any] = {}
        self.log = logging.getLogger(f"imageworks.backend.{name}")
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @property
    def hint(self) -> str:
        """How to start this backend's server (for "cannot connect" messages)."""
        lines = [f"start the {self.name} server at {redact_url(self.base_url)}, e.g.:"]
        lines += [f"    {h}" for h in self.info.launch_hints]
        lines.append(f"  or point imageworks elsewhere: Client(base_url=...) / backends.{self.name}.base_url")
        return "\n".join(lines) if self.info.launch_hints else lines[-1].strip()

    def settings_as(self, cls: type[S]) -> S:
        """``settings`` as the backend's own settings class *cls*, typed for checkers.

        Raises:
            PluginError: the settings are not a *cls* (the plugin's ``settings_cls`` is another class).
        """
        if not isinstance(self.settings, cls):
            raise PluginError(
                f"backend {self.name!r}: its settings are {type(self.settings).__name__}, not {cls.__name__}",
                plugin=self.name,
                hint="the plugin's backend_info must return settings_cls=" + cls.__name__,
            )
        return self.settings

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run *callback* when the client closes (unload a model, close a session)."""
        self._closers.append(callback)

    async def aclose(self) -> None:
        while self._closers:
            await self._closers.pop()()

    def __repr__(self) -> str:
        return f"<BackendContext {self.name} {self.base_url}>"
