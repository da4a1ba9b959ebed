"""Logging for the command line: readable lines, or JSON lines with ``--json``."""

from __future__ import annotations

import json
import logging
import os
import sys
import time

from .outputs._common import unicode_safe
from .redact import scrub, scrub_data
from .terminal import terminal_safe

__all__ = ["LEVELS", "setup_logging"]

#: Values of ``IMAGEWORKS_LOG_LEVEL`` (case-insensitive); ``-v`` / ``-vv`` raise the level further.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


class TextFormatter(logging.Formatter):
    """``imageworks: LEVEL message``, scrubbed of secrets, with control characters made visible."""

    def format(self, record: logging.LogRecord) -> str:
        return terminal_safe(scrub(super().format(record)))


class JsonFormatter(logging.Formatter):
    """One JSON object per record; structured fields from ``extra={"imageworks": {...}}``."""

    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "imageworks", None)
        if isinstance(fields, dict):
            data.update(fields)
        if record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        # json.dumps escapes control characters; lone surrogates become U+FFFD (strict JSON)
        return unicode_safe(json.dumps(scrub_data(data), ensure_ascii=False, default=str))


def env_level() -> int | None:
    """The level ``IMAGEWORKS_LOG_LEVEL`` asks for (``None``: unset or not a level name)."""
    name = os.environ.get("IMAGEWORKS_LOG_LEVEL", "").strip().lower()
    return LEVELS.get(name)


def setup_logging(verbose: int = 0, *, json_logs: bool = False) -> None:
    """Log ``imageworks.*`` to stderr: ``IMAGEWORKS_LOG_LEVEL`` (default warning; info with
    ``--json``), lowered by ``-v`` (info) and ``-vv`` (debug)."""
    base = env_level()
    if base is None:
        base = logging.INFO if json_logs else logging.WARNING
    level = min(base, logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if json_logs else TextFormatter("imageworks: %(levelname)s %(message)s")
    )
    root = logging.getLogger("imageworks")
    root.handlers[:] = [h for h in root.handlers if isinstance(h, logging.NullHandler)] + [handler]
    root.setLevel(level)
    root.propagate = False
