"""``imageworks serve``: one local HTTP gateway in front of one shared ``Client``.

Every caller (Python or not) goes through the same dispatcher, so
concurrency limits, outage handling and fallback are the gateway's, not each
program's.  Routes: ``POST /v1/chat/completions`` (OpenAI-compatible),
``GET /v1/models``, ``POST /v1/describe``, ``GET /healthz``, ``GET /livez``,
``GET /metrics``.  Needs the ``serve`` extra: ``pip install 'imageworks-core[serve]'``.
"""

from __future__ import annotations

from typing import Any

from .options import ServeOptions, check_bind, read_tokens

__all__ = ["ServeOptions", "check_bind", "create_app", "read_tokens", "serve"]


def __getattr__(name: str) -> Any:
    # Starlette and uvicorn load only when the gateway runs: `imageworks --help` stays fast and
    # works without the serve extra
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "serve":
        from .runner import serve

        return serve
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
