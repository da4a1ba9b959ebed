"""A client's connections: one connection pool per server, one context per endpoint.

Every endpoint of every backend on one server (scheme, host, port) shares one
transport, so a batch fanned out to a pool of backends on one machine keeps
one set of keep-alive connections.  A transport given in code
(``testing.MockTransport``) serves every server.  Contexts replaced when the
configuration changes are kept ("retired") until the client closes, since a
request in flight may still hold one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio

from .context import BackendContext
from .transport import Transport, open_transport

__all__ = ["Connections"]

log = logging.getLogger("imageworks.client")


class Connections:
    """The connection pools and backend contexts of one ``Client``."""

    def __init__(self, *, given: Transport | None, trust_env: bool) -> None:
        self.given = given
        self.trust_env = trust_env
        #: backend name -> one context per endpoint (its ``base_url`` list)
        self.contexts: dict[str, list[BackendContext]] = {}
        self._retired: list[BackendContext] = []
        self._pools: dict[tuple[str, str, int], Transport] = {}

    def pool(self, base_url: str, *, kind: str, size: Callable[[], int]) -> Transport:
        """The transport for *base_url*'s server, opened (``kind``, *size()* connections) on first use."""
        parts = urlsplit(base_url)
        key = (parts.scheme, parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))
        pool = self._pools.get(key)
        if pool is None:
            if self.given is not None:
                pool = self.given
            else:
                pool = open_transport(kind, max_connections=size(), trust_env=self.trust_env)
            self._pools[key] = pool
        return pool

    def retire(self) -> None:
        """Forget the contexts (the configuration changed); they are closed with the client."""
        self._retired.extend(ctx for pool in self.contexts.values() for ctx in pool)
        self.contexts.clear()

    async def aclose(self) -> None:
        """Close every context, then every transport (each once), shielded from cancellation."""
        with anyio.CancelScope(shield=True):
            for ctx in [*self._retired, *(c for pool in self.contexts.values() for c in pool)]:
                try:
                    await ctx.aclose()
                except Exception:
                    log.exception("closing backend %s failed", ctx.name)
            for pool in {id(p): p for p in self._pools.values()}.values():  # a given one is shared
                await pool.aclose()
        self.contexts.clear()
        self._retired.clear()
        self._pools.clear()
