"""Config values to typed settings: coercion from TOML and environment text, with clear errors.

Each value arrives with its source (a file, an environment variable, code); a
value of the wrong type or out of range is a ``ConfigError`` naming the key, the
source and what was expected (a secret's value is never shown).
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs

from .errors import ConfigError
from .settings import Secret, Settings


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


def build_settings(cls: type, values: Mapping[str, tuple[Any, str, bool]], prefix: str) -> Any:
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
    build_settings(cls, {k: (v, source, False) for k, v in values.items()}, prefix)
    transport = values.get("transport") if cls is Settings else None
    if transport is not None and transport not in ("auto", "httpx", "aiohttp"):
        raise ConfigError(
            f"transport must be auto, httpx or aiohttp, got {transport!r}", source=source, key="transport"
        )
