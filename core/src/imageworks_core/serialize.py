"""One cattrs converter for the data classes: to JSON-ready dicts and back.

Errors travel as ``{"type": "BackendRejected", "message": ..., "hint": ...,
"backend": ..., "status": ..., "retryable": ...}`` and come back as the same
class; image bytes travel as base64; ``Result.item`` is not serialised.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from . import errors
from .models import Result
from .settings import Secret

__all__ = ["converter", "to_json_dict", "from_json_dict"]


def _error_classes() -> dict[str, type[errors.ImageWorksError]]:
    out: dict[str, type[errors.ImageWorksError]] = {}
    stack: list[type[errors.ImageWorksError]] = [errors.ImageWorksError]
    while stack:
        cls = stack.pop()
        out[cls.__name__] = cls
        stack.extend(cls.__subclasses__())
    return out


def _unstructure_error(exc: errors.ImageWorksError) -> dict[str, Any]:
    data: dict[str, Any] = {"type": type(exc).__name__, "message": exc.message, "hint": exc.hint}
    for key in ("backend", "url", "status", "retry_after", "source", "key", "plugin"):
        if hasattr(exc, key) and getattr(exc, key) is not None:
            data[key] = getattr(exc, key)
    data["retryable"] = bool(getattr(exc, "retryable", False))
    return data


def _structure_error(data: Mapping[str, Any], _: Any) -> errors.ImageWorksError:
    cls = _error_classes().get(str(data.get("type")), errors.ImageWorksError)
    exc = cls(str(data.get("message", "")), hint=data.get("hint"))
    for key in ("backend", "url", "status", "retry_after", "source", "key", "plugin"):
        if key in data:
            setattr(exc, key, data[key])
    if "retryable" in data and isinstance(exc, errors.BackendProtocolError):
        exc.retryable = bool(data["retryable"])
    return exc


def _make() -> cattrs.Converter:
    c = cattrs.Converter()
    c.register_unstructure_hook(bytes, lambda b: base64.b64encode(b).decode("ascii"))
    c.register_structure_hook(bytes, lambda v, _: base64.b64decode(v))
    c.register_unstructure_hook(Secret, lambda s: "***")
    c.register_unstructure_hook_func(
        lambda t: isinstance(t, type) and issubclass(t, errors.ImageWorksError), _unstructure_error
    )
    c.register_structure_hook_func(
        lambda t: t is errors.ImageWorksError or t == (errors.ImageWorksError | None),
        lambda v, t: None if v is None else _structure_error(v, t),
    )
    c.register_unstructure_hook(
        Result, make_dict_unstructure_fn(Result, c, item=override(omit=True), error=override(omit=False))
    )
    c.register_unstructure_hook(Mapping, lambda m: dict(m))
    return c


converter = _make()


def to_json_dict(obj: Any) -> Any:
    """A JSON-ready structure for any of the data classes."""
    if attrs.has(type(obj)) or isinstance(obj, list | tuple):
        return converter.unstructure(obj)
    if isinstance(obj, errors.ImageWorksError):
        return _unstructure_error(obj)
    return obj


def from_json_dict(data: Any, cls: type) -> Any:
    """The inverse of ``to_json_dict`` for class *cls*."""
    return converter.structure(data, cls)
