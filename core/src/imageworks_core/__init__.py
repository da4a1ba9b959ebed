"""ImageWorks backends: send images to vision-language model servers through pluggable backends.

The public API is re-exported here and imported lazily, so ``import
imageworks_core`` (and ``imageworks --help``) stays fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

# A library logs to its own logger and lets the application decide where it goes.
logging.getLogger("imageworks").addHandler(logging.NullHandler())

__all__ = [
    "Attempt",
    "BackendBase",
    "BackendContext",
    "BackendDown",
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
    "Client",
    "Config",
    "ConfigError",
    "Event",
    "GeneratedImage",
    "HealthReport",
    "ImageRequest",
    "ImageResult",
    "ImageWorksError",
    "InputError",
    "KINDS",
    "OpenAICompatBackend",
    "OutputError",
    "PluginError",
    "PreparedImage",
    "Request",
    "Result",
    "RetrySettings",
    "Secret",
    "Settings",
    "Usage",
    "aprepare_image",
    "converter",
    "hookimpl",
    "iter_image_paths",
    "load_metrics",
    "prepare_image",
    "prometheus_samples",
    "set_testing",
]

_WHERE = {
    "Attempt": "models",
    "BackendBase": "base",
    "BackendContext": "context",
    "BackendDown": "errors",
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
    "Client": "client",
    "Config": "config",
    "ConfigError": "errors",
    "Event": "events",
    "GeneratedImage": "image_models",
    "HealthReport": "models",
    "ImageRequest": "image_models",
    "ImageResult": "image_models",
    "ImageWorksError": "errors",
    "InputError": "errors",
    "KINDS": "models",
    "OpenAICompatBackend": "openai_compat",
    "OutputError": "errors",
    "PluginError": "errors",
    "PreparedImage": "models",
    "Request": "models",
    "Result": "models",
    "RetrySettings": "settings",
    "Secret": "settings",
    "Settings": "settings",
    "Usage": "models",
    "aprepare_image": "images",
    "converter": "serialize",
    "hookimpl": "hookspecs",
    "iter_image_paths": "discovery",
    "load_metrics": "metrics",
    "prepare_image": "images",
    "prometheus_samples": "metrics",
    "set_testing": "retry",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'imageworks_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from .base import BackendBase
    from .client import Client
    from .config import Config
    from .context import BackendContext
    from .discovery import iter_image_paths
    from .errors import (
        BackendDown,
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
        OutputError,
        PluginError,
    )
    from .events import Event
    from .hookspecs import hookimpl
    from .image_models import GeneratedImage, ImageRequest, ImageResult
    from .images import aprepare_image, prepare_image
    from .metrics import load_metrics, prometheus_samples
    from .models import (
        KINDS,
        Attempt,
        BackendInfo,
        Capabilities,
        Chunk,
        HealthReport,
        PreparedImage,
        Request,
        Result,
        Usage,
    )
    from .openai_compat import OpenAICompatBackend
    from .retry import set_testing
    from .serialize import converter
    from .settings import BackendSettings, RetrySettings, Secret, Settings
