"""Layered configuration with provenance.

Lowest to highest: built-in defaults < user file (``<user config dir>/imageworks/
config.toml``) < the nearest ``pyproject.toml`` with ``[tool.imageworks]`` <
environment ``IMAGEWORKS_*`` < flags (CLI or ``Client(overrides=...)``) <
per-request values (on ``Request``).  Legacy Colour Narrator keys
(``[tool.imageworks.color_narrator]`` ``vlm_*`` and
``IMAGEWORKS_COLOR_NARRATOR__VLM_*``) are read inside their layer, below that
layer's new keys.  Every value remembers where it came from (``config show``).
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import tomllib
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import ConfigError
from .redact import is_sensitive_header, redact_headers, redact_url, register_secret, scrub, url_secrets
from .settings import BackendSettings, RetrySettings, Secret, Settings, split_base_urls

__all__ = ["Config", "check_values", "load_config", "tool_sections", "user_config_path"]

log = logging.getLogger("imageworks.config")

_PLUGIN_ENV = {"IMAGEWORKS_STRICT_PLUGINS", "IMAGEWORKS_BACKENDS_ALLOW", "IMAGEWORKS_BACKENDS_DENY"}
_OTHER_ENV = {"IMAGEWORKS_CONFIG_FILE", "IMAGEWORKS_LOG_LEVEL"}
_LEGACY_GLOBAL = {"vlm_backend": "backend", "vlm_max_tokens": "max_tokens", "vlm_temperature": "temperature"}
_LEGACY_SELECTED = {
    "vlm_base_url": "base_url",
    "vlm_model": "model",
    "vlm_timeout": "timeout",
    "vlm_api_key": "api_key",
}
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


# ------------------------------------------------------------------ layers


@attrs.define
class _Layer:
    source: str
    values: dict[str, Any]  # top-level keys, "retry" and "backends" as dicts
    selected: dict[str, Any] = attrs.Factory(dict)  # keys for "the selected backend"
    legacy_backend: str | None = None
    from_env: bool = False


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"malformed TOML: {exc}",
            source=str(path),
            hint="fix the syntax error at the line and column named",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source=str(path)) from None


def _find_pyproject(start: Path) -> tuple[Path, dict[str, Any]] | None:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            data = _read_toml(candidate)
            section = data.get("tool", {}).get("imageworks")
            if section is not None:
                if not isinstance(section, dict):
                    raise ConfigError("[tool.imageworks] must be a table", source=str(candidate))
                return candidate, section
    return None


def _split_legacy(
    section: dict[str, Any], source: str, backend_names: Iterable[str], from_env: bool
) -> _Layer:
    """Translate legacy Colour Narrator ``vlm_*`` keys into a layer."""
    layer = _Layer(source=f"{source} (legacy color_narrator)", values={}, from_env=from_env)
    names = sorted(backend_names, key=len, reverse=True)
    for key, value in section.items():
        k = key.lower()
        if not k.startswith("vlm_"):
            continue  # Colour Narrator's own settings, not ours
        if k in _LEGACY_GLOBAL:
            layer.values[_LEGACY_GLOBAL[k]] = value
            if k == "vlm_backend":
                layer.legacy_backend = str(value)
        elif k in _LEGACY_SELECTED:
            layer.selected[_LEGACY_SELECTED[k]] = value
        else:
            rest = k[4:]
            for name in names:
                prefix = name.replace("-", "_") + "_"
                if rest.startswith(prefix):
                    layer.values.setdefault("backends", {}).setdefault(name, {})[rest[len(prefix) :]] = value
                    break
            else:
                log.warning("ignoring legacy key %s in %s: no installed backend matches it", key, source)
    return layer


def _file_layers(
    path: Path, section: dict[str, Any], label: str, backend_names: Iterable[str]
) -> list[_Layer]:
    section = dict(section)
    legacy = section.pop("color_narrator", None)
    layers = []
    if isinstance(legacy, dict):
        layers.append(_split_legacy(legacy, label, backend_names, from_env=False))
    layers.append(_Layer(source=label, values=section))
    return layers


def _env_layers(env: Mapping[str, str], backend_names: Iterable[str]) -> list[_Layer]:
    names = {n.replace("-", "_").upper(): n for n in backend_names}
    new = _Layer(source="env", values={}, from_env=True)
    legacy_section: dict[str, str] = {}
    top = {f.name.upper(): f.name for f in attrs.fields(Settings) if f.name not in ("retry", "backends")}
    retry = {f.name.upper(): f.name for f in attrs.fields(RetrySettings)}
    for var in sorted(env):
        if not var.startswith("IMAGEWORKS_") or var in _PLUGIN_ENV or var in _OTHER_ENV:
            continue
        value = env[var]
        rest = var[len("IMAGEWORKS_") :]
        parts = rest.split("__")
        if parts[0] == "COLOR_NARRATOR" and len(parts) == 2:
            legacy_section[parts[1].lower()] = value
        elif len(parts) == 1 and rest in top:
            new.values[top[rest]] = (value, var)
        elif parts[0] == "RETRY" and len(parts) == 2 and parts[1] in retry:
            new.values.setdefault("retry", {})[retry[parts[1]]] = (value, var)
        elif parts[0] == "BACKENDS" and len(parts) == 3:
            name = names.get(parts[1], parts[1].lower())
            new.values.setdefault("backends", {}).setdefault(name, {})[parts[2].lower()] = (value, var)
        elif len(parts) > 1:
            continue  # another ImageWorks tool's namespace
        else:
            known = [f"IMAGEWORKS_{k}" for k in top]
            close = difflib.get_close_matches(var, known, n=1, cutoff=0.85)
            if not close:
                log.debug("ignoring %s: not an imageworks backends setting", var)
                continue  # other ImageWorks tools share the prefix
            raise ConfigError(
                f"unknown environment variable {var}; did you mean {close[0]}?",
                source=f"env {var}",
                hint="known: "
                + ", ".join(sorted(known))
                + ", IMAGEWORKS_BACKENDS__<NAME>__<KEY>, IMAGEWORKS_RETRY__<KEY>",
            )
    layers = []
    if legacy_section:
        legacy = _split_legacy(
            legacy_section, "env IMAGEWORKS_COLOR_NARRATOR__*", names.values(), from_env=True
        )
        layers.append(legacy)
    layers.append(new)
    return layers


# ------------------------------------------------------------------ coercion


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return "a list of strings"
    if origin in (Mapping, dict) or tp in (dict,):
        return "a table"
    if tp is Secret:
        return "a string"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, *, key: str, source: str, from_env: bool) -> Any:
    def bad(extra: str = "") -> ConfigError:
        shown = "***" if "api_key" in key else repr(value)
        return ConfigError(f"expected {_type_name(tp)} for {key}, got {shown}{extra}", source=source, key=key)

    if key.endswith("base_url") and isinstance(value, list | tuple):  # a pool: base_url = ["u1", "u2"]
        if not value or not all(isinstance(v, str) for v in value):
            raise bad(" (a URL, or a list of URLs)")
        value = ",".join(value)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (from_env and value == ""):
            return None
        for arg in args[:-1]:  # the first type that takes it (``int | str``: "8" is 8, "auto" stays)
            try:
                return _coerce(value, arg, key=key, source=source, from_env=from_env)
            except ConfigError:
                continue
        return _coerce(value, args[-1], key=key, source=source, from_env=from_env)
    if tp is Secret:
        if isinstance(value, Secret):
            return value
        if not isinstance(value, str):
            raise bad()
        return Secret(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            v = value.strip().lower()
            if v in ("1", "true", "yes", "on"):
                return True
            if v in ("0", "false", "no", "off", ""):
                return False
        raise bad()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                raise bad() from None
        raise bad()
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad()
    if origin is tuple:
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise bad()
    if origin in (Mapping, dict) or tp is dict:
        if from_env and isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise bad(" (environment values for tables are JSON objects)") from None
        if isinstance(value, Mapping):
            return dict(value)
        raise bad()
    return value  # pragma: no cover - a field type this module does not know


def _build(cls: type, values: Mapping[str, tuple[Any, str, bool]], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}
    kwargs = {}
    for k, (value, source, from_env) in values.items():
        key = f"{prefix}{k}"
        if k not in fields:
            known = ", ".join(sorted(fields))
            raise ConfigError(
                f"unknown key {key!r}", source=source, key=key, hint=f"known keys here: {known}"
            )
        kwargs[k] = _coerce(value, hints[k], key=key, source=source, from_env=from_env)
        check = fields[k].validator
        what = getattr(check, "what", None)
        if what is not None and check is not None:
            try:
                check(None, fields[k], kwargs[k])
            except (TypeError, ValueError):
                raise ConfigError(f"{key} must be {what}, got {value!r}", source=source, key=key) from None
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid settings for {prefix.rstrip('.') or 'imageworks'}: {exc}") from None


def check_values(cls: type, values: Mapping[str, Any], source: str, prefix: str = "") -> None:
    """Raise ``ConfigError`` now for a value given in code that *cls* would refuse."""
    _build(cls, {k: (v, source, False) for k, v in values.items()}, prefix)
    transport = values.get("transport") if cls is Settings else None
    if transport is not None and transport not in ("auto", "httpx", "aiohttp"):
        raise ConfigError(
            f"transport must be auto, httpx or aiohttp, got {transport!r}", source=source, key="transport"
        )


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
    layers: list[_Layer] = []
    files: list[Path] = []
    if user_file:
        path = user_config_path(env) if user_file is True else Path(user_file)
        if path.is_file():
            files.append(path)
            layers += _file_layers(path, _read_toml(path), str(path), names)
    if project_file:
        found = _find_pyproject(Path(cwd or os.getcwd()).resolve())
        if found is not None:
            files.append(found[0])
            layers += _file_layers(found[0], found[1], f"{found[0]} [tool.imageworks]", names)
    layers += _env_layers(env, names)
    if flags:
        f = dict(flags)
        layers.append(_Layer(source=flags_source, values=f, selected=dict(f.pop("selected", None) or {})))
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
            found.append((str(path), _read_toml(path)))
    if project_file:
        project = _find_pyproject(Path(cwd or os.getcwd()).resolve())
        if project is not None:
            found.append((f"{project[0]} [tool.imageworks]", project[1]))
    return found


def _resolve(
    layers: list[_Layer],
    classes: Mapping[str, type[BackendSettings]],
    unavailable: set[str],
    files: tuple[Path, ...],
    excluded: set[str] = frozenset(),  # type: ignore[assignment]
) -> Config:
    top: dict[str, tuple[Any, str, bool]] = {}
    retry: dict[str, tuple[Any, str, bool]] = {}
    backends: dict[str, dict[str, tuple[Any, str, bool]]] = {}

    def put(target: dict, key: str, raw: Any, layer: _Layer) -> None:
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
    settings = _build(Settings, top, "")
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
        built[name] = _build(cls, values, f"backends.{name}.")
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
    settings = attrs.evolve(settings, retry=_build(RetrySettings, retry, "retry."), backends=built)
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
