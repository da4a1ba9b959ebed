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
import os
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, Unpack

import attrs

from . import credentials
from .adaptive import AdaptiveLimit
from .client_args import ClientArgs, code_flags
from .config import Config, load_config
from .connections import Connections
from .context import BackendContext
from .errors import BackendRejected, ConfigError, ImageWorksError, PluginError, redact_url
from .http import HttpClient
from .models import BackendInfo, Chunk, HealthReport, PreparedImage, Request, Result
from .plugins import BackendRegistry, installed_backend_names
from .settings import AUTO, BackendSettings, RetrySettings, Secret, Settings, split_base_urls
from .transport import Timeouts, Transport

if TYPE_CHECKING:
    from .dispatch import Dispatcher
    from .events import OnEvent
    from .image_models import ImageRequest, ImageResult

__all__ = ["WARMUP_PROMPT", "Client", "ClientArgs"]

#: The text of the one-token request that warms a backend without a ``warmup`` hook up.
WARMUP_PROMPT = "Reply with OK. (imageworks warm-up)"


class Client:
    """An ImageWorks client: configuration, backends and connection pools.

    ``Client(...)`` is configured by its arguments and reads no file; with
    ``trust_env=True`` (the default, as httpx and the openai SDK) it also reads
    the ``IMAGEWORKS_*`` variables and the proxy / CA variables.  Values given
    here beat every ambient value, whatever their specificity.
    ``Client.from_config(...)`` adds the files the ``imageworks`` command reads.

    Args:
        backend: Backend for requests that name none.
        base_url: The server of that backend (``backends.<backend>.base_url``).
        model: Its model (``backends.<backend>.model``).
        api_key: Its API key (kept in a ``Secret``, never printed).
        timeout: Longest time one try may take, seconds (``backends.<backend>.timeout``).
        concurrency: Requests in flight to that backend at once.
        fallback: Backends to try in order when the first is down or busy.
        max_tokens: Generation cap for requests that set none.
        temperature: Sampling temperature for requests that set none.
        max_pixels: Pixel budget images are downscaled to.
        wait_for_backend: Longest wait, seconds, for a backend that went down.
        transport: ``auto`` (aiohttp under asyncio, httpx under trio), ``httpx`` or ``aiohttp``;
            or a transport object that serves every endpoint (tests:
            ``imageworks_core.testing.MockTransport``).
        retry: The retry policy (every field of it counts as set here).
        backends: Settings per backend name: a ``BackendSettings`` (every field
            set) or a mapping of the keys to set.
        overrides: Any other values, in the shape of the TOML
            (``{"max_tokens": 300, "backends": {"vllm": {"model": "..."}}}``),
            plus ``selected`` for keys of the effective backend.  Arguments
            above beat the same key here.
        settings: A complete ``Settings``: used as is, nothing else is read.
        trust_env: Read ``IMAGEWORKS_*`` variables (settings, allow/deny/strict
            plugin lists, ``IMAGEWORKS_CONFIG_FILE``) and let the transport use
            ``HTTP(S)_PROXY`` / ``NO_PROXY`` / ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``.
            ``False`` ignores every one of them.
        env: The environment to read instead of ``os.environ`` (settings,
            plugin lists, ``api_key_env``).
        plugins: In-process backend plugins to register (tests, embedding).
        entry_points: Discover installed backends (default ``True``).
        strict_plugins: Fail on any broken plugin (default: env ``IMAGEWORKS_STRICT_PLUGINS``).
        allow: Only these backend names (default: env ``IMAGEWORKS_BACKENDS_ALLOW``).
        deny: Never these backend names (default: env ``IMAGEWORKS_BACKENDS_DENY``).
        user_file: Read a user config file: ``True`` (the default location), a
            path; ``False`` (default) reads none.  Prefer ``from_config``.
        project_file: Read the nearest ``pyproject.toml`` (default ``False``).
        cwd: Where to look upward for ``pyproject.toml``.

    Raises:
        ConfigError: A value given here is out of range or of the wrong type.
    """

    def __init__(
        self,
        *,
        backend: str | None = None,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | Secret | None = None,
        timeout: float | None = None,
        concurrency: int | None = None,
        fallback: Iterable[str] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        max_pixels: int | None = None,
        wait_for_backend: float | None = None,
        transport: Literal["auto", "httpx", "aiohttp"] | Transport | None = None,
        retry: RetrySettings | None = None,
        backends: Mapping[str, BackendSettings | Mapping[str, Any]] | None = None,
        overrides: Mapping[str, Any] | None = None,
        settings: Settings | None = None,
        trust_env: bool = True,
        env: Mapping[str, str] | None = None,
        plugins: Iterable[Any] = (),
        entry_points: bool = True,
        strict_plugins: bool | None = None,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] | None = None,
        user_file: str | os.PathLike[str] | bool = False,
        project_file: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        _flags_source: str = "code",
    ) -> None:
        ambient: Mapping[str, str] = (os.environ if env is None else env) if trust_env else {}
        self.trust_env = trust_env
        given: Transport | None = None  # a transport object (testing.MockTransport) serves every endpoint
        if transport is not None and not isinstance(transport, str):
            given, transport = transport, None
        self._connections = Connections(given=given, trust_env=trust_env)
        self.registry = BackendRegistry(
            strict=strict_plugins, allow=allow, deny=deny, entry_points=entry_points, env=ambient
        )
        for plugin in plugins:
            self.registry.register(plugin)
        flags = code_flags(
            overrides,
            backend=backend,
            fallback=fallback,
            max_tokens=max_tokens,
            temperature=temperature,
            max_pixels=max_pixels,
            wait_for_backend=wait_for_backend,
            transport=transport,
            retry=retry,
            backends=backends,
            selected={
                "base_url": base_url,
                "model": model,
                "api_key": api_key,
                "timeout": timeout,
                "concurrency": concurrency,
            },
            source=_flags_source,
        )
        self._flags = flags
        self._settings_given = settings
        self._load = functools.partial(
            load_config,
            cwd=cwd,
            env=ambient,
            user_file=user_file,
            project_file=project_file,
            flags_source=_flags_source,
        )
        self._env = os.environ if env is None else env  # api_key_env names a variable on purpose
        self._config: Config | None = None
        self._dispatcher: Dispatcher | None = None
        self._closed = False

    @classmethod
    def from_config(
        cls,
        *,
        cwd: str | os.PathLike[str] | None = None,
        user_file: str | os.PathLike[str] | bool = True,
        project_file: bool = True,
        _flags_source: str = "code",
        **kwargs: Unpack[ClientArgs],
    ) -> Client:
        """A client configured as the ``imageworks`` command is.

        Layers, lowest first: defaults < the user file (``IMAGEWORKS_CONFIG_FILE``
        or ``<user config dir>/imageworks/config.toml``) < the nearest
        ``pyproject.toml`` with ``[tool.imageworks]`` (upward from *cwd*) <
        ``IMAGEWORKS_*`` variables < the arguments (the same as ``Client``'s).
        ``client.settings_sources()`` says where each value came from.
        """
        return cls(
            cwd=cwd, user_file=user_file, project_file=project_file, _flags_source=_flags_source, **kwargs
        )

    # ------------------------------------------------------------ configuration

    def register(self, plugin: Any, *, name: str | None = None) -> None:
        """Register an in-process backend plugin (before the first request)."""
        if self._connections.contexts:
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
                excluded = [n for n in installed_backend_names() if self.registry._excluded(n)]
                self._config = self._load(
                    settings_classes=classes, flags=self._flags, unavailable=unavailable, excluded=excluded
                )
        return self._config

    def use_backend(self, name: str, **settings: Any) -> None:
        """Make *name* the backend for requests that name none, and re-resolve the configuration.

        Used by ``--vlm-backend auto`` once it has picked a backend: flags such as
        ``--vlm-model`` then apply to that backend.  *settings* (e.g.
        ``preset="ollama"``) are set on that backend at the highest precedence.
        Contexts made so far are kept for closing and rebuilt on next use.
        """
        self.registry.get(name)
        self._flags["backend"] = name
        if settings:
            backends = {k: dict(v) for k, v in (self._flags.get("backends") or {}).items()}
            backends[name] = {**backends.get(name, {}), **settings}
            self._flags["backends"] = backends
        if self._settings_given is not None:
            given = attrs.evolve(self._settings_given, backend=name)
            if settings:
                current = given.backends.get(name) or self.registry.get(name).info.settings_cls()
                changed = attrs.evolve(current, **settings)
                given = attrs.evolve(given, backends={**given.backends, name: changed})
            self._settings_given = given
        self._reset()

    def _snapshot(self) -> tuple[dict[str, Any], Settings | None]:
        """What ``use_backend`` changes, for ``_restore`` (``auto`` tries a setting, then takes it back)."""
        return dict(self._flags), self._settings_given  # use_backend replaces nested dicts, never edits them

    def _restore(self, snapshot: tuple[dict[str, Any], Settings | None]) -> None:
        self._flags, self._settings_given = dict(snapshot[0]), snapshot[1]
        self._reset()

    def _reset(self) -> None:
        self._config = None
        self._connections.retire()
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

    def settings_sources(self) -> dict[str, str]:
        """Every setting's dotted key -> where its value came from.

        ``default``, a file (``/path/pyproject.toml [tool.imageworks]``),
        ``env IMAGEWORKS_X``, ``code`` (this client's arguments) or ``flag``
        (the command line).  Log it to show where a value came from.
        """
        if self._settings_given is not None:
            return {key: "code" for key, _, _ in self.config.rows()}
        return {key: source for key, _, source in self.config.rows()}

    def backend_order(self, backend: str | None = None) -> list[str]:
        """The primary backend, then the fallbacks, without repeats."""
        s = self.settings
        order = [backend or s.backend, *s.fallback]
        return list(dict.fromkeys(order))

    # ------------------------------------------------------------ backends

    def context(self, name: str) -> BackendContext:
        """The context of backend *name* (its first endpoint; created on first use, inside the event loop)."""
        return self.contexts(name)[0]

    def contexts(self, name: str) -> list[BackendContext]:
        """One context per endpoint of backend *name* (``base_url`` may list several: a pool)."""
        pool = self._connections.contexts.get(name)
        if pool is not None:
            return pool
        if self._closed:
            raise ImageWorksError("this client is closed; create a new one")
        loaded = self.registry.get(name)
        bs = self.settings.backend_settings(name)
        urls = split_base_urls(bs.base_url or loaded.info.default_base_url)
        pool = []
        for url in urls:
            base_url, query, headers = self._endpoint(name, url)
            http = HttpClient(
                self._connections.pool(base_url, kind=self.settings.transport, size=self._pool_size),
                backend=name,
                base_url=base_url,
                headers=headers,
                query=query,
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
            pool.append(ctx)
        self._connections.contexts[name] = pool
        return pool

    def hook(self, name: str, hook: str) -> Any:
        """The caller of backend *name*'s *hook* (``infer``, ``stream``, ``health``).

        Raises:
            ConfigError: *name* does not implement *hook*, a hook of a kind it does not declare.
        """
        caller = self.registry.caller(name, hook)
        if hook not in ("infer", "stream", "generate_image"):
            return caller
        kinds = self.info(name).capabilities.kinds
        wanted = {"image_generation"} if hook == "generate_image" else {"vision", "text"}
        # BackendBase gives every subclass inherited infer/stream hooks; the kinds say
        # whether the backend really answers them
        if not caller.get_hookimpls() or not wanted & set(kinds):
            what = "generate images" if hook == "generate_image" else "answer text or vision requests"
            raise ConfigError(
                f"backend {name!r} cannot {what} (its kinds: {', '.join(kinds)})",
                key="backend",
                hint="send this request to a backend of that kind (imageworks backends lists them)",
            )
        return caller

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
        if self._settings_given is not None:  # one layer: the top-level value overrides
            return self.settings.concurrency or self.settings.backend_settings(name).concurrency
        return self.settings.backend_settings(name).concurrency  # layered by load_config

    def api_key(self, name: str) -> Secret | None:
        """Backend *name*'s API key: ``api_key``, else the variable ``api_key_env`` names."""
        return credentials.api_key(self.settings.backend_settings(name), self._env)

    def _endpoint(self, name: str, url: str) -> tuple[str, str, dict[str, str]]:
        """``(base URL without credentials or query, query, headers)`` for backend *name* at *url*."""
        headers = credentials.request_headers(self.settings.backend_settings(name), self._env)
        key = f"backends.{name}.base_url"
        return credentials.split_endpoint(name, url, headers, source=self.config.sources.get(key))

    def _pool_size(self) -> int:
        """Connections per server: room for the busiest backend's requests, and probes beside them."""
        return max([1, *(self.concurrency(n) for n in self.registry.backends)]) + 4

    # ------------------------------------------------------------ calls

    @property
    def dispatcher(self) -> Dispatcher:
        if self._dispatcher is None:
            from .dispatch import Dispatcher

            self._dispatcher = Dispatcher(self)
        return self._dispatcher

    async def _prepared(self, request: Request) -> Request:
        """*request* with its paths and bytes prepared in worker threads (as ``map`` does)."""
        if all(isinstance(i, PreparedImage) for i in request.images):
            return request
        from .images import aprepare_image

        budget = self.settings.max_pixels
        images = [
            i if isinstance(i, PreparedImage) else await aprepare_image(i, max_pixels=budget)
            for i in request.images
        ]
        return attrs.evolve(request, images=tuple(images))

    async def infer(self, request: Request) -> Result:
        """Answer one request, with retries and fallback; raise the final error.

        The error raised carries ``attempts``: every try made, in order.
        """
        result = await self.dispatcher.run_one(await self._prepared(request))
        if result.error is not None:
            result.error.attempts = tuple(result.attempts)
            raise result.error
        return result

    async def generate_image(self, request: ImageRequest, *, on_event: OnEvent | None = None) -> ImageResult:
        """Generate images on a backend of kind ``image_generation``, with retries and fallback.

        Raises:
            ConfigError: the request's (or every configured) backend cannot generate images.
            ImageWorksError: the final error, carrying ``attempts``.
        """
        from .generation import generate

        return await generate(self, request, on_event=on_event)

    async def stream(self, request: Request) -> AsyncIterator[Chunk]:
        """Stream one answer from the request's (or the configured) backend.

        Connection failures before the first chunk are retried and fall back
        like ``infer``; once text has been yielded, an error is raised as is.
        """
        agen = self.dispatcher.stream_one(await self._prepared(request))
        async with contextlib.aclosing(agen):  # an abandoned stream frees its slot at once
            async for chunk in agen:
                yield chunk

    async def warmup(self, name: str, *, context: BackendContext | None = None) -> None:
        """One tiny request to backend *name* (or one endpoint of it, *context*): its plugin's
        ``warmup`` hook, else a one-token text request.

        Raises:
            ImageWorksError: It failed (the message says why).
        """
        ctx = context or self.context(name)
        hook = self.registry.caller(name, "warmup")
        if hook.get_hookimpls():
            await hook(ctx=ctx)
        elif {"vision", "text"} & set(self.info(name).capabilities.kinds):
            # the prompt names itself, for whoever reads the server's request log
            await self.registry.caller(name, "infer")(
                ctx=ctx, request=Request(prompt=WARMUP_PROMPT, max_tokens=1)
            )

    async def health(self, backend: str | None = None) -> HealthReport:
        """Health of *backend* (default: the configured one); never raises for "down".

        The check is timed here, and an error the plugin raises becomes a
        not-ready report (reachable when the server answered with a status).
        """
        name = backend or self.settings.backend
        return await self.health_of(self.context(name))

    async def health_of(self, ctx: BackendContext) -> HealthReport:
        """Health of one endpoint (``contexts(name)`` lists a backend's endpoints); never raises."""
        name = ctx.name
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
                rejected=isinstance(exc, BackendRejected),
            )
        except Exception as exc:
            bug = PluginError.raised_by(name, exc)
            report = HealthReport(
                backend=name,
                url=redact_url(ctx.base_url),
                reachable=False,
                ready=False,
                detail=bug.message,
                hint=bug.hint,
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
        self._closed = True
        await self._connections.aclose()
        if self._dispatcher is not None:  # its endpoints hold the closed contexts
            self._dispatcher.runner.forget_endpoints()

    def __repr__(self) -> str:
        backends = ", ".join(sorted(self.registry.backends))
        return f"<Client backends=[{backends}]>"
