"""Backend discovery: entry points in, one pluggy manager per client out.

Each entry point of the group ``imageworks.backends`` is loaded on its own:
one that fails to import, raises while registering or breaks the contract is
recorded as a ``LoadFailure`` and the others keep working.  ``strict`` turns
any failure into a ``PluginError``.  A request reaches exactly one backend:
``BackendRegistry.caller`` returns a cached subset hook caller that leaves
out every other backend (non-backend plugins, e.g. wrappers, stay in).
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs
import pluggy

from . import hookspecs
from .errors import PluginError
from .models import BackendInfo, Capabilities
from .settings import BackendSettings

__all__ = ["ENTRY_POINT_GROUP", "BackendRegistry", "LoadFailure", "LoadedBackend", "installed_backend_names"]

ENTRY_POINT_GROUP = "imageworks.backends"
_REQUIRED = {"backend_info": "sync", "health": "coroutine", "infer": "coroutine", "stream": "asyncgen"}
_OPTIONAL = {"warmup": "coroutine", "generate_image": "coroutine"}


def _env_list(name: str, env: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    value = (os.environ if env is None else env).get(name)
    if value is None:
        return None
    return tuple(x.strip() for x in value.split(",") if x.strip())


def _env_flag(name: str, env: Mapping[str, str] | None = None) -> bool:
    return (os.environ if env is None else env).get(name, "").strip().lower() in ("1", "true", "yes", "on")


def installed_backend_names() -> list[str]:
    """Names of installed backends, from entry-point metadata only (no import)."""
    return sorted({ep.name for ep in md.entry_points(group=ENTRY_POINT_GROUP)})


@attrs.frozen(slots=True)
class LoadedBackend:
    """A backend that loaded and honours the contract.

    Attributes:
        name: Backend name.
        info: Its metadata.
        plugin: The registered module or object.
        distribution: The distribution that ships it (``None`` for in-process plugins).
        version: That distribution's version.
    """

    name: str
    info: BackendInfo
    plugin: Any = attrs.field(repr=False)
    distribution: str | None = None
    version: str | None = None


@attrs.frozen(slots=True)
class LoadFailure:
    """A backend that could not be used, and why.

    Attributes:
        name: Entry-point name.
        error: One line: what went wrong.
        distribution: The distribution that ships it.
        version: That distribution's version.
        value: The entry point's target (``module:attr``).
    """

    name: str
    error: str
    distribution: str | None = None
    version: str | None = None
    value: str | None = None


def _required_for(plugin: Any, impls: Mapping[str, Any]) -> set[str]:
    """The hooks this plugin's declared kinds require (``generate_image`` for image generation;
    ``infer`` / ``stream`` unless it is an image-generation-only backend)."""
    required = {"backend_info", "health"}
    caller = impls.get("backend_info")
    info = None
    if caller is not None:
        fn = next((i.function for i in caller.get_hookimpls() if i.plugin is plugin), None)
        try:
            info = fn() if fn is not None and not inspect.iscoroutinefunction(fn) else None
        except Exception:  # reported below, by the full check
            info = None
    caps = info.capabilities if isinstance(info, BackendInfo) else None
    kinds = caps.kinds if isinstance(caps, Capabilities) else ("vision", "text")
    if "vision" in kinds or "text" in kinds:
        required |= {"infer", "stream"}
    if "image_generation" in kinds:
        required.add("generate_image")
    return required


def _check_contract(name: str, plugin: Any, pm: pluggy.PluginManager) -> BackendInfo:
    """Raise ``PluginError`` unless *plugin* implements every hook correctly."""
    impls = {caller.name: caller for caller in (pm.get_hookcallers(plugin) or [])}
    required = _required_for(plugin, impls)
    for hook, kind in {**_REQUIRED, **_OPTIONAL}.items():
        if hook not in impls:
            if hook not in required:
                continue
            raise PluginError(f"backend {name!r} does not implement the {hook!r} hook", plugin=name)
        fn = next(i.function for i in impls[hook].get_hookimpls() if i.plugin is plugin)
        ok = {
            "sync": not (inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)),
            "coroutine": inspect.iscoroutinefunction(fn),
            "asyncgen": inspect.isasyncgenfunction(fn),
        }[kind]
        if not ok:
            want = {
                "sync": "a plain function",
                "coroutine": "an async def",
                "asyncgen": "an async generator",
            }[kind]
            raise PluginError(f"backend {name!r}: hook {hook!r} must be {want}", plugin=name)
    for hook_name in impls:
        if hook_name not in _REQUIRED and impls[hook_name].spec is None:
            raise PluginError(f"backend {name!r} implements unknown hook {hook_name!r}", plugin=name)
    impl = next(i for i in impls["backend_info"].get_hookimpls() if i.plugin is plugin)
    info = impl.function()
    if not isinstance(info, BackendInfo):
        raise PluginError(f"backend {name!r}: backend_info() returned {type(info).__name__}, not BackendInfo")
    if info.name != name:
        raise PluginError(
            f"backend {name!r}: backend_info().name is {info.name!r}; it must equal the entry-point name",
            plugin=name,
        )
    if not isinstance(info.capabilities, Capabilities):
        raise PluginError(
            f"backend {name!r}: backend_info().capabilities is {type(info.capabilities).__name__},"
            " not imageworks_core.Capabilities",
            plugin=name,
        )
    if not (isinstance(info.settings_cls, type) and issubclass(info.settings_cls, BackendSettings)):
        raise PluginError(f"backend {name!r}: settings_cls must subclass imageworks_core.BackendSettings")
    return info


class BackendRegistry:
    """The backends one client can use, on that client's own plugin manager.

    Args:
        strict: Raise on any load failure (env ``IMAGEWORKS_STRICT_PLUGINS=1``).
        allow: Only these backend names (env ``IMAGEWORKS_BACKENDS_ALLOW=a,b``).
        deny: Never these (env ``IMAGEWORKS_BACKENDS_DENY=a,b``).
        entry_points: Load installed entry points (tests may turn it off).
        env: Where the three variables above are read (default ``os.environ``;
            ``{}`` reads none, as ``Client(trust_env=False)`` does).
    """

    def __init__(
        self,
        *,
        strict: bool | None = None,
        allow: Iterable[str] | None = None,
        deny: Iterable[str] | None = None,
        entry_points: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.strict = _env_flag("IMAGEWORKS_STRICT_PLUGINS", env) if strict is None else strict
        allow_t = tuple(allow) if allow is not None else _env_list("IMAGEWORKS_BACKENDS_ALLOW", env)
        self.allow = frozenset(allow_t) if allow_t else None
        self.deny = frozenset(
            deny if deny is not None else (_env_list("IMAGEWORKS_BACKENDS_DENY", env) or ())
        )
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.backends: dict[str, LoadedBackend] = {}
        self.failures: list[LoadFailure] = []
        self._callers: dict[tuple[str, str], Any] = {}
        if entry_points:
            self.load_entry_points()

    def _wanted(self, name: str) -> bool:
        return name not in self.deny and (self.allow is None or name in self.allow)

    def load_entry_points(self) -> None:
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            if not self._wanted(ep.name) or ep.name in self.backends:
                continue
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            try:
                plugin = ep.load()
                self.register(plugin, name=ep.name, distribution=dist, version=version)
            except Exception as exc:
                self._fail(ep.name, exc, dist, version, ep.value)

    def _fail(
        self, name: str, exc: BaseException, dist: str | None, version: str | None, value: str | None
    ) -> None:
        msg = exc.message if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
        failure = LoadFailure(name=name, error=msg, distribution=dist, version=version, value=value)
        self.failures.append(failure)
        if self.strict:
            raise PluginError(
                f"backend plugin {name!r} ({dist or 'unknown distribution'}) failed to load: {msg}",
                plugin=name,
                distribution=dist,
                hint="fix or uninstall that distribution, or unset IMAGEWORKS_STRICT_PLUGINS to skip it",
            ) from exc

    def register(
        self,
        plugin: Any,
        *,
        name: str | None = None,
        distribution: str | None = None,
        version: str | None = None,
    ) -> LoadedBackend:
        """Register a backend plugin (module or object); its contract is checked first."""
        if name is None:
            info_fn = getattr(plugin, "backend_info", None)
            info = info_fn() if callable(info_fn) else None
            if not isinstance(info, BackendInfo):
                raise PluginError(f"{plugin!r} has no backend_info() returning BackendInfo; pass name=")
            name = info.name
        if name in self.backends:
            raise PluginError(f"a backend named {name!r} is already registered", plugin=name)
        try:
            self.pm.register(plugin, name=f"backend:{name}")
        except ValueError as exc:
            raise PluginError(f"backend {name!r} is already registered: {exc}", plugin=name) from exc
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"backend {name!r} breaks the hook contract: {exc}", plugin=name) from exc
        try:
            info = _check_contract(name, plugin, self.pm)
        except BaseException:
            self.pm.unregister(plugin)
            raise
        loaded = LoadedBackend(
            name=name, info=info, plugin=plugin, distribution=distribution, version=version
        )
        self.backends[name] = loaded
        self._callers.clear()
        return loaded

    def register_wrapper(self, plugin: Any, name: str | None = None) -> None:
        """Register a non-backend plugin (e.g. an observability wrapper) that sees every call."""
        self.pm.register(plugin, name=name)
        self._callers.clear()

    def unregister(self, name: str) -> None:
        loaded = self.backends.pop(name)
        self.pm.unregister(loaded.plugin)
        self._callers.clear()

    def get(self, name: str) -> LoadedBackend:
        try:
            return self.backends[name]
        except KeyError:
            hint = (
                "remove it from the deny list (IMAGEWORKS_BACKENDS_DENY, or Client(deny=...)), "
                "or add it to the allow list"
                if self._excluded(name)
                else self.install_hint(name)
            )
            raise PluginError(self.unknown_message(name), plugin=name, hint=hint) from None

    def _excluded(self, name: str) -> bool:
        return name in self.deny or (self.allow is not None and name not in self.allow)

    def unknown_message(self, name: str) -> str:
        failed = next((f for f in self.failures if f.name == name), None)
        if failed is not None:
            return f"backend {name!r} is installed but failed to load: {failed.error}"
        if self._excluded(name):
            return f"backend {name!r} is excluded by the allow/deny lists (IMAGEWORKS_BACKENDS_ALLOW/DENY)"
        known = ", ".join(sorted(self.backends)) or "none"
        return f"unknown backend {name!r} (installed: {known})"

    @staticmethod
    def install_hint(name: str) -> str:
        return f"pip install imageworks-backend-{name}  (then `imageworks backends` lists it)"

    def caller(self, name: str, hook: str) -> Any:
        """A hook caller that reaches backend *name* only (cached)."""
        key = (name, hook)
        caller = self._callers.get(key)
        if caller is None:
            self.get(name)
            others = [b.plugin for n, b in self.backends.items() if n != name]
            caller = self.pm.subset_hook_caller(hook, remove_plugins=others)
            self._callers[key] = caller
        return caller
