"""``Client``'s keyword arguments: their types (``ClientArgs``) and the config layer they make.

``code_flags`` turns the arguments a program passes to ``Client(...)`` into the highest layer of
the configuration (above flags, environment and files), checking each value at once, so that a
bad value fails at construction with the argument's name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict

import attrs

from .config_values import check_values
from .errors import ConfigError
from .settings import BackendSettings, RetrySettings, Secret, Settings
from .transport import Transport

__all__ = ["ClientArgs", "code_flags"]


class ClientArgs(TypedDict, total=False):
    """The keyword arguments ``Client`` and ``Client.from_config`` share (for type checkers)."""

    backend: str | None
    base_url: str | None
    model: str | None
    api_key: str | Secret | None
    timeout: float | None
    concurrency: int | None
    fallback: Iterable[str] | None
    max_tokens: int | None
    temperature: float | None
    max_pixels: int | None
    wait_for_backend: float | None
    transport: Literal["auto", "httpx", "aiohttp"] | Transport | None
    retry: RetrySettings | None
    backends: Mapping[str, BackendSettings | Mapping[str, Any]] | None
    overrides: Mapping[str, Any] | None
    settings: Settings | None
    trust_env: bool
    env: Mapping[str, str] | None
    plugins: Iterable[Any]
    entry_points: bool
    strict_plugins: bool | None
    allow: Iterable[str] | None
    deny: Iterable[str] | None


def code_flags(
    overrides: Mapping[str, Any] | None,
    *,
    selected: Mapping[str, Any],
    backends: Mapping[str, BackendSettings | Mapping[str, Any]] | None,
    retry: RetrySettings | None,
    fallback: Iterable[str] | None,
    source: str,
    **top: Any,
) -> dict[str, Any]:
    """The highest config layer from ``Client``'s arguments, each value checked now."""
    flags: dict[str, Any] = {
        k: (dict(v) if isinstance(v, Mapping) else v) for k, v in (overrides or {}).items()
    }
    where = f"Client(...) ({source})"
    given = {k: v for k, v in top.items() if v is not None}
    if fallback is not None:
        given["fallback"] = (fallback,) if isinstance(fallback, str) else tuple(fallback)
    check_values(Settings, given, where)
    flags.update(given)
    if retry is not None:
        if not isinstance(retry, RetrySettings):
            raise ConfigError(f"retry must be a RetrySettings, not {type(retry).__name__}", source=where)
        flags["retry"] = {**(flags.get("retry") or {}), **attrs.asdict(retry)}
    chosen = {k: v for k, v in selected.items() if v is not None}
    if chosen:
        check_values(BackendSettings, chosen, where, prefix="backends.<backend>.")
        flags["selected"] = {**(flags.get("selected") or {}), **chosen}
    if backends:
        merged = {k: dict(v) for k, v in (flags.get("backends") or {}).items()}
        for name, value in backends.items():
            if isinstance(value, BackendSettings):
                fields = {f.name: getattr(value, f.name) for f in attrs.fields(type(value))}
            elif isinstance(value, Mapping):
                fields = dict(value)
            else:
                raise ConfigError(
                    f"backends[{name!r}] must be a BackendSettings or a mapping, not {type(value).__name__}",
                    source=where,
                )
            merged[name] = {**merged.get(name, {}), **fields}
        flags["backends"] = merged
    return flags
