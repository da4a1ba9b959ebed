"""Hints speak to whoever reads them: library arguments in Python, flags on the command line.

Errors raised by the library name ``Client(...)`` / ``Request(...)`` arguments
and config keys; the command line shows the same hint with its own flags
(``for_cli``).
"""

from __future__ import annotations

__all__ = ["for_cli"]

#: Library phrase -> the command line's flag for it.
_FLAGS = {
    "Client(base_url=...)": "--vlm-base-url URL",
    "Client(model=...)": "--vlm-model NAME",
    "Client(timeout=...)": "--vlm-timeout SECONDS",
    "Client(concurrency=...)": "--concurrency N",
    "Client(backend=...)": "--vlm-backend NAME",
    "Request(max_tokens=...)": "--max-tokens N",
}


def for_cli(hint: str | None) -> str | None:
    """*hint* with library arguments replaced by the command line's flags."""
    if not hint:
        return hint
    for phrase, flag in _FLAGS.items():
        hint = hint.replace(phrase, flag)
    return hint
