"""Bring-your-own-key: a caller's upstream key for the requests of one task, one backend.

``imageworks serve`` sets it around one caller's request when that request's
backend has ``byok = true``; ``HttpClient`` then sends it, for that backend
only, instead of the configured key.  It lives in a ``ContextVar``, so it
never outlives the request, never reaches another caller's requests and is
never stored on the client.  The key is a ``Secret``: it prints as ``***``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

from .settings import Secret

__all__ = ["caller_key", "using_caller_key"]

_caller_key: ContextVar[tuple[str, Secret] | None] = ContextVar("imageworks_caller_key", default=None)


def caller_key(backend: str) -> Secret | None:
    """The caller's key for *backend* in this request, or ``None``."""
    held = _caller_key.get()
    if held is None or held[0] != backend:
        return None
    return held[1]


@contextlib.contextmanager
def using_caller_key(backend: str, key: Secret) -> Iterator[None]:
    """Send *key* to *backend* (and to no other backend) inside this block."""
    token = _caller_key.set((backend, key))
    try:
        yield
    finally:
        _caller_key.reset(token)
