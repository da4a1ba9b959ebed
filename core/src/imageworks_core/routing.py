"""Where an item's next try goes: each backend's endpoints (a pool), breakers, the backend order.

``Routing`` owns one client's endpoints (created on first use, one per ``base_url``) and circuit
breakers. ``_pick`` sends a try to the first backend in the item's order with an endpoint that
accepts requests (its least loaded one), probing in passing an endpoint that is out and due a
probe, so that the primary gets the work back once it recovers; ``_patience`` bounds how long an
item waits in a queue while a preferred endpoint may come back. ``ItemRunner`` (``attempts``)
runs the tries on top of it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import attrs

from .adaptive import AdaptiveLimit
from .endpoint import Endpoint, State
from .errors import BackendRejected, redact_url
from .events import Listeners
from .models import BackendInfo, HealthReport, Request
from .retry import Breaker
from .settings import Settings

__all__ = ["Backends", "Routing"]

log = logging.getLogger("imageworks.dispatch")


class Backends(Protocol):
    """What the dispatcher needs from its client: settings, backend contexts, hooks, health."""

    @property
    def settings(self) -> Settings: ...

    def backend_order(self, backend: str | None = None) -> list[str]: ...

    def context(self, name: str) -> Any: ...

    def contexts(self, name: str) -> list[Any]: ...

    def hook(self, name: str, hook: str) -> Any: ...

    def info(self, name: str) -> BackendInfo: ...

    def concurrency(self, name: str) -> int: ...

    def adaptive(self, name: str) -> AdaptiveLimit | None: ...

    async def health(self, backend: str | None = None) -> HealthReport: ...

    async def health_of(self, ctx: Any) -> HealthReport: ...
    async def warmup(self, name: str, *, context: Any = None) -> None: ...


class Routing:
    """The endpoints and breakers of one client's backends, and the choice among them."""

    def __init__(self, backends: Backends, listeners: Listeners) -> None:
        self.backends = backends
        self.listeners = listeners
        self._endpoints: dict[str, list[Endpoint]] = {}
        self._breakers: dict[str, Breaker] = {}
        self._warned_model: set[str] = set()

    # ------------------------------------------------------------ per backend

    def pool(self, name: str) -> list[Endpoint]:
        """Backend *name*'s endpoints (one per ``base_url``), created on first use."""
        pool = self._endpoints.get(name)
        if pool is None:
            settings = self.backends.settings
            pool = []
            for ctx in self.backends.contexts(name):

                async def probe(ctx: Any = ctx) -> HealthReport:
                    return await self.backends.health_of(ctx)

                pool.append(
                    Endpoint(
                        name,
                        redact_url(ctx.base_url),
                        limit=self.backends.concurrency(name),
                        adaptive=self.backends.adaptive(name),
                        wait=settings.wait_for_backend,
                        probe=probe,
                        listeners=self.listeners,
                        hint=ctx.hint,
                        probe_timeout=ctx.settings.connect_timeout + 5.0,
                        context=ctx,
                    )
                )
            self._endpoints[name] = pool
        return pool

    def forget_endpoints(self) -> None:
        """Drop the endpoints (their client closed its contexts); outage history goes with them."""
        self._endpoints.clear()

    def endpoint(self, name: str) -> Endpoint:
        """Backend *name*'s first endpoint (its only one unless it is a pool)."""
        return self.pool(name)[0]

    @property
    def endpoints(self) -> list[Endpoint]:
        """Every endpoint made so far."""
        return [ep for pool in self._endpoints.values() for ep in pool]

    def breaker(self, name: str) -> Breaker:
        b = self._breakers.get(name)
        if b is None:
            r = self.backends.settings.retry
            b = self._breakers[name] = Breaker(threshold=r.cooldown_after, cooldown=r.cooldown)
        return b

    def order(self, request: Request) -> list[str]:
        names = self.backends.backend_order(request.backend)
        if request.fallback is not None:  # the request's own fallback order replaces the configured one
            names = list(dict.fromkeys([names[0], *request.fallback]))
        live = [n for n in names if self.breaker(n).available()]
        return live or names  # all cooling down: still try rather than fail blind

    def apply_model_policy(self, name: str, request: Request) -> Request:
        if request.model is None:
            return request
        if self.backends.info(name).capabilities.model_switch:
            return request
        if self.backends.settings.strict_model:
            raise BackendRejected(
                f"{name} backend cannot switch models per request (asked for {request.model!r})",
                backend=name,
                hint="drop the per-request model, or unset strict_model to let it use its own model",
            )
        if name not in self._warned_model:
            self._warned_model.add(name)
            log.warning(
                "%s cannot switch models per request; using its configured model instead of %r",
                name,
                request.model,
            )
        return attrs.evolve(request, model=None)

    async def _pick(self, names: list[str], failed: set[str]) -> tuple[str, Endpoint] | None:
        """Where the next try goes: the first backend with an endpoint that accepts requests
        (its least loaded one), else the first endpoint to wait for."""
        candidates = [n for n in names if n not in failed]
        if not candidates:
            return None
        for name in candidates:
            pool = self.pool(name)
            for ep in pool:
                # nobody waits on an endpoint that is out while another is up: look in passing
                # (one item at a time, at the prober's backoff), so it rejoins when it is back
                if ep.probe_due() and await ep.probe():
                    return name, ep
            up = [ep for ep in pool if ep.accepting()]
            if up:
                return name, _least_loaded(up)
        for name in candidates:
            alive = [ep for ep in self.pool(name) if not ep.is_down()]
            if alive:
                return name, _least_loaded(alive)
        return candidates[0], self.pool(candidates[0])[0]

    def _patience(self, names: list[str], name: str, ep: Endpoint) -> float | None:
        """How long an item waits in *ep*'s queue before it looks again (``None``: as long as it takes).

        A second when *ep* stopped accepting and there is somewhere else to go. And, while a
        preferred endpoint (of an earlier backend, or another of this pool) is out or paused, until
        its next probe or the end of its pause: the item then comes back through ``_pick``, which
        probes it, so the preferred one gets the waiting items back as soon as it is up again, even
        when every item of the batch is already queued here.
        """
        now = time.monotonic()
        waits: list[float] = []
        pool = self.pool(name)
        if (len(names) > 1 or len(pool) > 1) and not ep.accepting():
            waits.append(1.0)
        preferred = [e for n in names[: names.index(name)] for e in self.pool(n)]
        for other in [*preferred, *(e for e in pool if e is not ep)]:
            if other.state is State.OUT:  # back now to probe it; a second while someone probes it
                due = other.next_probe - now
                waits.append(0.0 if other.probe_due() else max(0.05, due) if due > 0 else 1.0)
            elif other.state is State.PAUSED and other in preferred:
                waits.append(max(0.05, other.paused_until - now))
        return min(waits) if waits else None


def _least_loaded(eps: list[Endpoint]) -> Endpoint:
    """The endpoint with the fewest requests in flight and waiting for its current limit."""
    if len(eps) == 1:
        return eps[0]
    return min(eps, key=lambda ep: (ep.in_flight + ep.waiting + 1) / max(1, ep.limit))
