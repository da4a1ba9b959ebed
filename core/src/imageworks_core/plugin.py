"""Everything a backend plugin imports, in one place: ``from imageworks_core.plugin import ...``.

A plugin (first-party or third-party) imports only the names listed in
``__all__`` here or in ``imageworks_core.__all__``; the modules behind them are
private and may move.  ``tests/test_public_api.py`` checks every plugin and
example in this repository against that rule.  Names are imported lazily, so
a plugin importing this module at its top stays cheap to load.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "BackendBase",
    "BackendContext",
    "BackendError",
    "BackendInfo",
    "BackendOverloaded",
    "BackendProtocolError",
    "BackendRejected",
    "BackendServerError",
    "BackendSettings",
    "BackendTimeout",
    "BackendUnavailable",
    "Capabilities",
    "Chunk",
    "ConfigError",
    "HealthReport",
    "HttpClient",
    "HttpResponse",
    "ImageWorksError",
    "InputError",
    "OpenAICompatBackend",
    "PluginError",
    "PreparedImage",
    "Request",
    "Result",
    "Sampling",
    "Settings",
    "StreamResponse",
    "Usage",
    "drop_fields",
    "encode_body",
    "error_from_response",
    "extract_error_message",
    "first_time",
    "hookimpl",
    "iter_message_parts",
    "iter_ndjson",
    "iter_sse_data",
    "load_metrics",
    "max_model_len",
    "parse_retry_after",
    "probe_metrics",
    "prometheus_samples",
    "redact_url",
    "resolve_model",
    "sampling",
    "set_fields",
    "usage_from",
]

_WHERE = {
    "BackendBase": "base",
    "BackendContext": "context",
    "BackendError": "errors",
    "BackendInfo": "models",
    "BackendOverloaded": "errors",
    "BackendProtocolError": "errors",
    "BackendRejected": "errors",
    "BackendServerError": "errors",
    "BackendSettings": "settings",
    "BackendTimeout": "errors",
    "BackendUnavailable": "errors",
    "Capabilities": "models",
    "Chunk": "models",
    "ConfigError": "errors",
    "HealthReport": "models",
    "HttpClient": "http",
    "HttpResponse": "transport",
    "ImageWorksError": "errors",
    "InputError": "errors",
    "OpenAICompatBackend": "openai_compat",
    "PluginError": "errors",
    "PreparedImage": "models",
    "Request": "models",
    "Result": "models",
    "Sampling": "helpers",
    "Settings": "settings",
    "StreamResponse": "transport",
    "Usage": "models",
    "drop_fields": "helpers",
    "encode_body": "jsonbody",
    "error_from_response": "http_errors",
    "extract_error_message": "http_errors",
    "first_time": "helpers",
    "hookimpl": "hookspecs",
    "iter_message_parts": "helpers",
    "iter_ndjson": "ndjson",
    "iter_sse_data": "sse",
    "load_metrics": "metrics",
    "max_model_len": "helpers",
    "parse_retry_after": "http_errors",
    "probe_metrics": "helpers",
    "prometheus_samples": "metrics",
    "redact_url": "errors",
    "resolve_model": "helpers",
    "sampling": "helpers",
    "set_fields": "helpers",
    "usage_from": "openai_compat",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'imageworks_core.plugin' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"imageworks_core.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .base import BackendBase
    from .context import BackendContext
    from .errors import (
        BackendError,
        BackendOverloaded,
        BackendProtocolError,
        BackendRejected,
        BackendServerError,
        BackendTimeout,
        BackendUnavailable,
        ConfigError,
        ImageWorksError,
        InputError,
        PluginError,
        redact_url,
    )
    from .helpers import (
        Sampling,
        drop_fields,
        first_time,
        iter_message_parts,
        max_model_len,
        probe_metrics,
        resolve_model,
        sampling,
        set_fields,
    )
    from .hookspecs import hookimpl
    from .http import HttpClient
    from .http_errors import error_from_response, extract_error_message, parse_retry_after
    from .jsonbody import encode_body
    from .metrics import load_metrics, prometheus_samples
    from .models import BackendInfo, Capabilities, Chunk, HealthReport, PreparedImage, Request, Result, Usage
    from .ndjson import iter_ndjson
    from .openai_compat import OpenAICompatBackend, usage_from
    from .settings import BackendSettings, Settings
    from .sse import iter_sse_data
    from .transport import HttpResponse, StreamResponse
