"""``Client``: the public async entry point.

    async with Client() as client:
        result = await client.infer(Request(prompt="Describe", images=[img]))
        async for chunk in client.stream(request): ...
        report = await client.health()
        async with client.map(paths, prompt="Describe") as results:
            async for r in results: ...

Each client owns its plugin manager, its configuration, one connection pool
per endpoint and one context per backend; nothing is shared between clients.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from .adaptive import AdaptiveLimit
from .config import Config, load_config
from .context import BackendContext
from .errors import ImageWorksError, PluginError, redact_url
from .http import HttpClient
from .models import BackendInfo, Chunk, HealthReport, Request, Result
from .plugins import BackendRegistry
from .settings import AUTO, Secret, Settings
from .transport import Timeouts, Transport, open_transport

if TYPE_CHECKING:
    from .dispatch import Dispatcher

__all__ = ["Client"]

log = logging.getLogger("imageworks.client")


class Client:
    """An ImageWorks client: configuration, backends and connection pools.

    Args:
        backend: Backend for requests that name none (overrides config).
        fallback: Backends to try in order when the first is down.
        overrides: Highest-precedence config values, same shape as the TOML
            (``{"max_tokens": 300, "backends": {"vllm": {"model": "..."}}}``),
            plus ``selected`` for keys of the effective backend.
        settings: A complete ``Settings``; skips every config file and env var.
        cwd: Where to look upward for ``pyproject.toml``.
        env: Environment to read (default ``os.environ``).
        user_file: ``True`` (default location), a path, or ``False``.
        project_file: Read the nearest ``pyproject.toml``.
        plugins: In-process backend plugins to register (tests, embedding).
        entry_points: Discover installed backends (default ``True``).
        strict_plugins: Fail on any broken plugin (default: env ``IMAGEWORKS_STRICT_PLUGINS``).
        allow: Only these backend names (default: env ``IMAGEWORKS_BACKENDS_ALLOW``).
        deny: Never these backend names (default: env ``IMAGEWORKS_BACKENDS_DENY``).
    """

    def __init__(
        self,
        *,
        backend: str | None = None,
        fallback: Iterable[str] | None = None,
        overrides: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        user_file: str | os.PathLike[str] | bool = True,
        project_file: bool = True,
        plugins: Iterable[Any] = (),
        entry_points: bool = True,
        strict_plugins: bool | None = None,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] | None = None,
    ) -> None:
        self.registry = BackendRegistry(
            strict=strict_plugins, allow=allow, deny=deny, entry_points=entry_points
        )
        for plugin in plugins:
            self.registry.register(plugin)
        flags = dict(overrides or {})
        if backend is not None:
            flags["backend"] = backend
        if fallback is not None:
            flags["fallback"] = tuple(fallback)
        self._flags = flags
        self._settings_given = settings
        self._load = functools.partial(
            load_config, cwd=cwd, env=env, user_file=user_file, project_file=project_file
        )
        self._env = os.environ if env is None else env
        self._config: Config | None = None
        self._contexts: dict[str, BackendContext] = {}
        self._retired: list[BackendContext] = []
        self._pools: dict[tuple[str, str, int], Transport] = {}
        self._dispatcher: Dispatcher | None = None
        self._closed = False

    # ------------------------------------------------------------ configuration

    def register(self, plugin: Any, *, name: str | None = None) -> None:
        """Register an in-process backend plugin (before the first request)."""
        if self._contexts:
            raise PluginError("register plugins before the client sends its first request")
        self.registry.register(plugin, name=name)
        self._config = None

    @property
    def config(self) -> Config:
        """The resolved configuration with the source of each value (loaded on first use)."""
        if self._config is None:
            classes = {n: b.info.settings_cls for n, b in self.registry.backends.items()}
            unavailable = [f.name for f in self.registry.failures]
            if self._settings_given is not None:
                self._config = Config(settings=self._complete(self._settings_given, classes), sources={})
            else:
                self._config = self._load(
                    settings_classes=classes, flags=self._flags, unavailable=unavailable
                )
        return self._config

    def use_backend(self, name: str) -> None:
        """Make *name* the backend for requests that name none, and re-resolve the configuration.

        Used by ``--vlm-backend auto`` once it has picked a backend: flags such as
        ``--vlm-model`` then apply to that backend.  Contexts made so far are kept
        for closing and rebuilt on next use.
        """
        self.registry.get(name)
        self._flags["backend"] = name
        if self._settings_given is not None:
            self._settings_given = attrs.evolve(self._settings_given, backend=name)
        self._config = None
        self._retired.extend(self._contexts.values())
        self._contexts.clear()
        self._dispatcher = None

    @staticmethod
    def _complete(settings: Settings, classes: Mapping[str, type]) -> Settings:
        backends = dict(settings.backends)
        for name, cls in classes.items():
            backends.setdefault(name, cls())
        return attrs.evolve(settings, backends=backends)

    @property
    def settings(self) -> Settings:
        return self.config.settings

    def backend_order(self, backend: str | None = None) -> list[str]:
        """The primary backend, then the fallbacks, without repeats."""
        s = self.settings
        order = [backend or s.backend, *s.fallback]
        return list(dict.fromkeys(order))

    # ------------------------------------------------------------ backends

    def context(self, name: str) -> BackendContext:
        """The context of backend *name* (created on first use, inside the event loop)."""
        ctx = self._contexts.get(name)
        if ctx is not None:
            return ctx
        if self._closed:
            raise ImageWorksError("this client is closed; create a new one")
        loaded = self.registry.get(name)
        bs = self.settings.backend_settings(name)
        base_url = bs.base_url or loaded.info.default_base_url
        concurrency = self.concurrency(name)
        http = HttpClient(
            self._pool(base_url, concurrency),
            backend=name,
            base_url=base_url,
            headers=self._headers(name),
            timeouts=Timeouts(connect=bs.connect_timeout, read=bs.timeout, idle=bs.stream_idle_timeout),
        )
        ctx = BackendContext(
            name=name,
            info=loaded.info,
            settings=bs,
            client_settings=self.settings,
            base_url=base_url,
            http=http,
        )
        http.hint = ctx.hint
        self._contexts[name] = ctx
        return ctx

    def hook(self, name: str, hook: str) -> Any:
        """The caller of backend *name*'s *hook* (``infer``, ``stream``, ``health``)."""
        return self.registry.caller(name, hook)

    def info(self, name: str) -> BackendInfo:
        """Backend *name*'s metadata."""
        return self.registry.get(name).info

    def concurrency(self, name: str) -> int:
        """Requests in flight to backend *name* at most (``"auto"``: its hard maximum)."""
        value = self._concurrency_setting(name)
        return self.settings.backend_settings(name).max_concurrency if value == AUTO else int(value)

    def adaptive(self, name: str) -> AdaptiveLimit | None:
        """A fresh adaptive limit for one endpoint of *name* (``None``: its concurrency is fixed)."""
        if self._concurrency_setting(name) != AUTO:
            return None
        return AdaptiveLimit(self.settings.backend_settings(name).max_concurrency)

    def _concurrency_setting(self, name: str) -> int | str:
        return self.settings.concurrency or self.settings.backend_settings(name).concurrency

    def api_key(self, name: str) -> Secret | None:
        bs = self.settings.backend_settings(name)
        if bs.api_key:
            return bs.api_key
        if bs.api_key_env:
            value = self._env.get(bs.api_key_env)
            if value:
                return Secret(value)
        return None

    def _headers(self, name: str) -> dict[str, str]:
        headers = dict(self.settings.backend_settings(name).headers)
        key = self.api_key(name)
        if key:
            headers["Authorization"] = f"Bearer {key.reveal()}"
        return headers

    def _pool(self, base_url: str, concurrency: int) -> Transport:
        parts = urlsplit(base_url)
        key = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        pool = self._pools.get(key)
        if pool is None:
            size = max(concurrency, *(self.concurrency(n) for n in self.registry.backends), 1) + 4
            pool = self._pools[key] = open_transport(self.settings.transport, max_connections=size)
        return pool

    # ------------------------------------------------------------ calls

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            from .dispatch import Dispatcher

            self._dispatcher = Dispatcher(self)
        return self._dispatcher

    async def infer(self, request: Request) -> Result:
        """Answer one request, with retries and fallback; raise the final error."""
        result = await self.dispatcher.run_one(request)
        if result.error is not None:
            raise result.error
        return result

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        """Stream one answer from the request's (or the configured) backend.

        Connection failures before the first chunk are retried and fall back
        like ``infer``; once text has been yielded, an error is raised as is.
        """
        agen = self.dispatcher.stream_one(request)
        async with contextlib.aclosing(agen):  # an abandoned stream frees its slot at once
            async for chunk in agen:
                yield chunk

    async def warmup(self, name: str) -> None:
        """One tiny request to backend *name*: its plugin's ``warmup`` hook, else a one-token text request.

        Raises:
            ImageWorksError: It failed (the message says why).
        """
        ctx = self.context(name)
        hook = self.registry.caller(name, "warmup")
        if hook.get_hookimpls():
            await hook(ctx=ctx)
        else:
            await self.registry.caller(name, "infer")(
                ctx=ctx, request=Request(prompt="Say OK.", max_tokens=1)
            )

    async def health(self, backend: str | None = None) -> HealthReport:
        """Health of *backend* (default: the configured one); never raises for "down".

        The check is timed here, and an error the plugin raises becomes a
        not-ready report (reachable when the server answered with a status).
        """
        name = backend or self.settings.backend
        ctx = self.context(name)
        start = time.perf_counter()
        try:
            report = await self.registry.caller(name, "health")(ctx=ctx)
        except ImageWorksError as exc:
            report = HealthReport(
                backend=name,
                url=redact_url(ctx.base_url),
                reachable=getattr(exc, "status", None) is not None,
                ready=False,
                detail=exc.message,
                hint=exc.hint or ctx.hint,
            )
        except Exception as exc:
            report = HealthReport(
                backend=name,
                url=redact_url(ctx.base_url),
                reachable=False,
                ready=False,
                detail=f"the {name} plugin raised {type(exc).__name__}: {exc}",
                hint="this is a bug in the plugin; report it to its authors",
            )
        if not report.latency:
            report = attrs.evolve(report, latency=time.perf_counter() - start)
        return report

    def map(self, items: Any, **kwargs: Any) -> Any:
        """Fan *items* out with bounded concurrency; see ``Dispatcher.map``.

        Use as ``async with client.map(items, prompt=...) as results: async for r in results``.
        """
        return self.dispatcher.map(items, **kwargs)

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Client:
        self.config  # noqa: B018 - resolve (and validate) configuration now
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close every backend context and connection pool."""
        import anyio

        self._closed = True
        with anyio.CancelScope(shield=True):
            for ctx in [*self._retired, *self._contexts.values()]:
                try:
                    await ctx.aclose()
                except Exception:
                    log.exception("closing backend %s failed", ctx.name)
            for pool in self._pools.values():
                await pool.aclose()
        self._contexts.clear()
        self._retired.clear()
        self._pools.clear()

    def __repr__(self) -> str:
        backends = ", ".join(sorted(self.registry.backends))
        return f"<Client backends=[{backends}]>"
