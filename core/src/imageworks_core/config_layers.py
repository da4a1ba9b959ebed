"""The configuration's layers: the config files and the environment, read into values with their source.

A layer is what one source says (a file, ``pyproject.toml``'s ``[tool.imageworks]``, the
``IMAGEWORKS_*`` environment, the flags), before any value is checked; legacy
Colour Narrator keys become a layer of their own, below their source's new keys.
``config.load_config`` stacks them.
"""

from __future__ import annotations

import difflib
import logging
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import ConfigError
from .settings import RetrySettings, Settings

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


@attrs.define
class Layer:
    source: str
    values: dict[str, Any]  # top-level keys, "retry" and "backends" as dicts
    selected: dict[str, Any] = attrs.Factory(dict)  # keys for "the selected backend"
    legacy_backend: str | None = None
    from_env: bool = False


def read_toml(path: Path) -> dict[str, Any]:
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


def find_pyproject(start: Path) -> tuple[Path, dict[str, Any]] | None:
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            data = read_toml(candidate)
            section = data.get("tool", {}).get("imageworks")
            if section is not None:
                if not isinstance(section, dict):
                    raise ConfigError("[tool.imageworks] must be a table", source=str(candidate))
                return candidate, section
    return None


def _split_legacy(
    section: dict[str, Any], source: str, backend_names: Iterable[str], from_env: bool
) -> Layer:
    """Translate legacy Colour Narrator ``vlm_*`` keys into a layer."""
    layer = Layer(source=f"{source} (legacy color_narrator)", values={}, from_env=from_env)
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


def file_layers(path: Path, section: dict[str, Any], label: str, backend_names: Iterable[str]) -> list[Layer]:
    section = dict(section)
    legacy = section.pop("color_narrator", None)
    layers = []
    if isinstance(legacy, dict):
        layers.append(_split_legacy(legacy, label, backend_names, from_env=False))
    layers.append(Layer(source=label, values=section))
    return layers


def env_layers(env: Mapping[str, str], backend_names: Iterable[str]) -> list[Layer]:
    names = {n.replace("-", "_").upper(): n for n in backend_names}
    new = Layer(source="env", values={}, from_env=True)
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
