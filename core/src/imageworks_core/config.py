"""Layered configuration with provenance.

Lowest to highest: built-in defaults < user file (``<user config dir>/imageworks/
config.toml``) < the nearest ``pyproject.toml`` with ``[tool.imageworks]`` <
environment ``IMAGEWORKS_*`` < flags (CLI or ``Client(overrides=...)``) <
per-request values (on ``Request``).  Legacy Colour Narrator keys
(``[tool.imageworks.color_narrator]`` ``vlm_*`` and
``IMAGEWORKS_COLOR_NARRATOR__VLM_*``) are read inside their layer, below that
layer's new keys.  Every value remembers where it came from (``config show``).

The sources are read into layers by ``config_layers``; ``config_values`` turns
the winning values into typed settings; this module stacks the layers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .config_layers import Layer, env_layers, file_layers, find_pyproject, read_toml
from .config_values import build_settings
from .errors import ConfigError
from .redact import is_sensitive_header, redact_headers, redact_url, register_secret, scrub, url_secrets
from .settings import BackendSettings, RetrySettings, Secret, Settings, split_base_urls

__all__ = ["Config", "load_config", "tool_sections", "user_config_path"]

log = logging.getLogger("imageworks.config")

_SELECTED_KEYS = {"base_url", "model", "timeout", "api_key", "api_key_env", "concurrency"}


def user_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$IMAGEWORKS_CONFIG_FILE`` (read from *env*, default ``os.environ``) or
    ``<platformdirs user config dir>/imageworks/config.toml``."""
    override = (os.environ if env is None else env).get("IMAGEWORKS_CONFIG_FILE")
    if override:
        return Path(override)
    import platformdirs

    return platformdirs.user_config_path("imageworks") / "config.toml"


@attrs.frozen(slots=True)
class Config:
    """Resolved settings and where each value came from.

    Attributes:
        settings: The resolved ``Settings``.
        sources: Dotted key -> where its value came from (``default``, a file, ``env X``, ``flag``).
        files: The config files that were read.
    """

    settings: Settings
    sources: Mapping[str, str]
    files: tuple[Path, ...] = ()

    def rows(self) -> list[tuple[str, str, str]]:
        """``(key, shown value, source)`` for every setting; secrets shown as ``***``."""
        out: list[tuple[str, str, str]] = []
        s = self.settings
        for f in attrs.fields(Settings):
            if f.name in ("retry", "backends"):
                continue
            out.append((f.name, _show(getattr(s, f.name)), self.sources.get(f.name, "default")))
        for f in attrs.fields(RetrySettings):
            key = f"retry.{f.name}"
            out.append((key, _show(getattr(s.retry, f.name)), self.sources.get(key, "default")))
        for name in sorted(s.backends):
            bs = s.backends[name]
            for f in attrs.fields(type(bs)):
                key = f"backends.{name}.{f.name}"
                value = getattr(bs, f.name)
                if f.name == "api_key_env" and value:
                    value = f"{value} ({'set' if os.environ.get(value) else 'not set'})"
                elif f.name == "base_url" and value:
                    value = redact_url(value)
                elif f.name == "headers" and value:
                    value = redact_headers(value)
                out.append((key, _show(value), self.sources.get(key, "default")))
        return out


def _show(value: Any) -> str:
    return scrub(_shown(value))


def _shown(value: Any) -> str:
    if isinstance(value, Secret):
        return "***"
    if value is None:
        return "(unset)"
    if isinstance(value, tuple):
        return ", ".join(map(str, value)) or "[]"
    if isinstance(value, Mapping):
        return json.dumps(value, default=str) if value else "{}"
    return str(value)


# ------------------------------------------------------------------ load


def load_config(
    *,
    settings_classes: Mapping[str, type[BackendSettings]],
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    user_file: str | os.PathLike[str] | bool | None = True,
    project_file: bool = True,
    unavailable: Iterable[str] = (),
    excluded: Iterable[str] = (),
    flags_source: str = "flag",
) -> Config:
    """Resolve the configuration.

    Args:
        settings_classes: Backend name -> settings class (from the plugin registry).
        cwd: Where to look upward for ``pyproject.toml`` (default: the working directory).
        env: The environment (default ``os.environ``).
        flags: Highest-precedence values: top-level keys, ``retry``/``backends``
            dicts, and ``selected`` (keys for the effective backend, like
            ``--vlm-base-url``).
        user_file: ``True`` for the default user file, a path, or ``False``/``None`` for none.
        project_file: Read the nearest ``pyproject.toml``.
        unavailable: Backends installed but broken: their sections are kept, not validated.
        excluded: Backends left out by the allow/deny lists (named as such in errors).
        flags_source: How the *flags* layer is named in ``sources`` (``flag``
            for the CLI, ``code`` for ``Client`` arguments).

    A value in a higher layer always wins, whatever its specificity: the
    top-level ``concurrency`` of a layer applies to every backend, after that
    layer's own ``[backends.*]`` keys, so a per-backend ``concurrency`` set in
    a higher layer (code, say) still beats it.
    """
    env = os.environ if env is None else env
    names = set(settings_classes)
    layers: list[Layer] = []
    files: list[Path] = []
    if user_file:
        path = user_config_path(env) if user_file is True else Path(user_file)
        if path.is_file():
            files.append(path)
            layers += file_layers(path, read_toml(path), str(path), names)
    if project_file:
        found = find_pyproject(Path(cwd or os.getcwd()).resolve())
        if found is not None:
            files.append(found[0])
            layers += file_layers(found[0], found[1], f"{found[0]} [tool.imageworks]", names)
    layers += env_layers(env, names)
    if flags:
        f = dict(flags)
        layers.append(Layer(source=flags_source, values=f, selected=dict(f.pop("selected", None) or {})))
    return _resolve(layers, settings_classes, set(unavailable), tuple(files), set(excluded))


def tool_sections(
    *,
    cwd: str | os.PathLike[str] | None = None,
    user_file: str | os.PathLike[str] | bool | None = True,
    project_file: bool = True,
) -> list[tuple[str, dict[str, Any]]]:
    """``(source label, section)`` of each config file, lowest precedence first, read as is.

    The user file's top level and the nearest ``pyproject.toml``'s
    ``[tool.imageworks]``, for tables that ``load_config`` leaves to other
    commands (``imageworks compare`` reads ``candidates`` here).
    """
    found: list[tuple[str, dict[str, Any]]] = []
    if user_file:
        path = user_config_path() if user_file is True else Path(user_file)
        if path.is_file():
            found.append((str(path), read_toml(path)))
    if project_file:
        project = find_pyproject(Path(cwd or os.getcwd()).resolve())
        if project is not None:
            found.append((f"{project[0]} [tool.imageworks]", project[1]))
    return found


def _resolve(
    layers: list[Layer],
    classes: Mapping[str, type[BackendSettings]],
    unavailable: set[str],
    files: tuple[Path, ...],
    excluded: set[str] = frozenset(),  # type: ignore[assignment]
) -> Config:
    top: dict[str, tuple[Any, str, bool]] = {}
    retry: dict[str, tuple[Any, str, bool]] = {}
    backends: dict[str, dict[str, tuple[Any, str, bool]]] = {}

    def put(target: dict, key: str, raw: Any, layer: Layer) -> None:
        if layer.from_env and isinstance(raw, tuple) and len(raw) == 2 and isinstance(raw[1], str):
            target[key] = (raw[0], f"env {raw[1]}", True)
        else:
            target[key] = (raw, layer.source, layer.from_env)

    fields = {f.name for f in attrs.fields(Settings)}
    for layer in layers:  # pass 1: top-level and retry keys decide the effective backend
        for key, raw in layer.values.items():
            if key == "retry":
                if not isinstance(raw, Mapping):
                    raise ConfigError("[retry] must be a table", source=layer.source, key="retry")
                for k, v in raw.items():
                    put(retry, k, v, layer)
            elif key == "backends":
                if not isinstance(raw, Mapping):
                    raise ConfigError(
                        "[backends] must be a table of tables", source=layer.source, key="backends"
                    )
            elif isinstance(raw, Mapping) and key not in fields:
                log.debug("ignoring [%s] in %s: another tool's section", key, layer.source)
            else:
                put(top, key, raw, layer)
    settings = build_settings(Settings, top, "")
    chosen = settings.backend
    for layer in layers:  # pass 2, in layer order: "selected" keys, then the layer's own backend keys
        target = layer.legacy_backend or chosen
        # with backend "auto" these wait for the backend auto picks (Client.use_backend re-resolves)
        selected = {} if target == "auto" else layer.selected
        for k, v in selected.items():
            if k not in _SELECTED_KEYS:
                raise ConfigError(f"unknown key {k!r}", source=layer.source, key=k)
            put(backends.setdefault(target, {}), k, v, layer)
        for name, section in (layer.values.get("backends") or {}).items():
            if not isinstance(section, Mapping):
                raise ConfigError(
                    f"backends.{name} must be a table", source=layer.source, key=f"backends.{name}"
                )
            for k, v in section.items():
                put(backends.setdefault(name, {}), k, v, layer)
        # the layer's top-level concurrency covers every backend, so a higher layer's
        # per-backend value still beats it (code > env > files, whatever the specificity)
        every = layer.values.get("concurrency")
        if every is not None and not (layer.from_env and isinstance(every, tuple) and every[0] == ""):
            for name in classes:
                put(backends.setdefault(name, {}), "concurrency", every, layer)

    sources = {k: v[1] for k, v in top.items()}
    sources.update({f"retry.{k}": v[1] for k, v in retry.items()})
    built: dict[str, BackendSettings] = {}
    for name, values in backends.items():
        if name in unavailable:
            continue
        cls = classes.get(name)
        if cls is None:
            src = next(iter(values.values()))[1]
            raise ConfigError(
                f"settings for unknown backend {name!r}",
                source=src,
                key=f"backends.{name}",
                hint=f"installed backends: {', '.join(sorted(classes)) or 'none'}; "
                f"pip install imageworks-backend-{name}, or remove the section",
            )
        built[name] = build_settings(cls, values, f"backends.{name}.")
        sources.update({f"backends.{name}.{k}": v[1] for k, v in values.items()})
    for name, cls in classes.items():
        built.setdefault(name, cls())
    for name, bs in built.items():
        register_secret(*(v for h, v in bs.headers.items() if is_sensitive_header(h)))
        if bs.base_url:
            register_secret(*url_secrets(bs.base_url))
            try:
                urls = split_base_urls(bs.base_url)
                if not urls:
                    raise ValueError("no URL given")
                if len(set(urls)) != len(urls):
                    raise ValueError(f"the same URL is listed twice: {bs.base_url!r}")
                built[name] = attrs.evolve(bs, base_url=",".join(urls))
            except ValueError as exc:
                raise ConfigError(
                    str(exc), source=sources.get(f"backends.{name}.base_url"), key=f"backends.{name}.base_url"
                ) from None
    settings = attrs.evolve(settings, retry=build_settings(RetrySettings, retry, "retry."), backends=built)
    _check_names(settings, classes, unavailable, sources, excluded)
    return Config(settings=settings, sources=sources, files=files)


def _check_names(
    settings: Settings,
    classes: Mapping[str, Any],
    unavailable: set[str],
    sources: Mapping[str, str],
    excluded: set[str] = frozenset(),  # type: ignore[assignment]
) -> None:
    installed = ", ".join(sorted(classes)) or "none"
    for key, names in (("backend", (settings.backend,)), ("fallback", settings.fallback)):
        for name in names:
            if name in classes or name == "auto" or key not in sources:
                continue  # the built-in default may be absent: that fails when used, not here
            if name in excluded:
                raise ConfigError(
                    f"backend {name!r} is excluded by the allow/deny lists",
                    source=sources.get(key, "default"),
                    key=key,
                    hint="remove it from IMAGEWORKS_BACKENDS_DENY (or Client(deny=...)), "
                    "add it to the allow list, or choose another backend",
                )
            why = (
                "is installed but failed to load (see `imageworks backends`)"
                if name in unavailable
                else "unknown"
            )
            raise ConfigError(
                f"backend {name!r} {why}; installed backends: {installed}",
                source=sources.get(key, "default"),
                key=key,
                hint=f"pip install imageworks-backend-{name}, or choose one of: {installed}",
            )
    if settings.transport not in ("auto", "httpx", "aiohttp"):
        raise ConfigError(
            f"transport must be auto, httpx or aiohttp, got {settings.transport!r}",
            source=sources.get("transport"),
            key="transport",
        )
