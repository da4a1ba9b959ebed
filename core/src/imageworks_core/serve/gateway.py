"""The gateway's shared state: one ``Client`` for every caller, limits, metrics, caller keys."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator

from ..byok import using_caller_key
from ..client import Client
from ..settings import Secret
from .options import ServeOptions
from .telemetry import Telemetry
from .wire import Disconnected, GatewayError, Scope, Send, header, send_error

__all__ = ["UPSTREAM_KEY_HEADER", "Gateway", "RateLimiter"]

#: The header a caller puts its own upstream key in (for backends with ``byok = true``).
UPSTREAM_KEY_HEADER = b"x-upstream-authorization"


class RateLimiter:
    """Token buckets, one per caller: *rate* requests per second, bursts of as many."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.burst = max(1.0, rate)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, who: str, now: float | None = None) -> float:
        """``0`` when *who* may go now (one request is counted), else seconds until it may."""
        now = time.monotonic() if now is None else now
        level, then = self._buckets.get(who, (self.burst, now))
        level = min(self.burst, level + (now - then) * self.rate)
        if level >= 1.0:
            self._buckets[who] = (level - 1.0, now)
            return 0.0
        self._buckets[who] = (level, now)
        return (1.0 - level) / self.rate


class Gateway:
    """What every route shares.

    Attributes:
        client: The one client (dispatcher, endpoints, limits, fallback) of all callers.
        options: The gateway's own settings.
        telemetry: Its metrics.
        active: Requests admitted and not finished (bounded by ``options.queue``).
    """

    def __init__(self, client: Client, options: ServeOptions) -> None:
        self.client = client
        self.options = options
        self.telemetry = Telemetry(lambda: client.dispatcher)
        self.active = 0
        self.rate = RateLimiter(options.rate_limit) if options.rate_limit else None
        self.started = time.time()

    # ------------------------------------------------------------ admission

    @contextlib.contextmanager
    def admitted(self) -> Iterator[None]:
        """Hold one place in the bounded queue, or raise 429 when it is full."""
        if self.active >= self.options.queue:
            self.telemetry.rejected_one("queue_full")
            raise GatewayError(
                429,
                f"the gateway is at its limit of {self.options.queue} requests at once; retry shortly",
                kind="rate_limit_error",
                retry_after=1.0,
            )
        self.active += 1
        self.telemetry.in_flight.inc()
        try:
            yield
        finally:
            self.active -= 1
            self.telemetry.in_flight.dec()

    async def handle(self, route: str, send: Send, work: Callable[[], Awaitable[int]]) -> None:
        """Run one request of *route*: admitted to the queue, errors answered, its status and time counted.

        *work* answers the request and returns the status it sent; a ``GatewayError``
        becomes its error response, a caller that hung up counts as 499.
        """
        start = time.perf_counter()
        status = 500
        try:
            with self.admitted():
                status = await work()
        except GatewayError as exc:
            status = await send_error(send, exc)
        except Disconnected:
            status = 499
        finally:
            self.telemetry.request_done(route, status, time.perf_counter() - start)

    # ------------------------------------------------------------ backends

    def check_backend(self, name: str, what: str = "backend") -> str:
        if name not in self.client.registry.backends:
            known = ", ".join(sorted(self.client.registry.backends)) or "none"
            raise GatewayError(400, f"unknown {what} {name!r}; installed backends: {known}")
        return name

    def split_model(self, model: str | None) -> tuple[str | None, str | None]:
        """``(backend, model)`` from ``backend/model``, a backend name, or a plain model."""
        if not model:
            return None, None
        head, sep, rest = model.partition("/")
        if head in self.client.registry.backends:
            return head, (rest or None) if sep else None
        return None, model

    def caller_key(self, scope: Scope, backend: str | None) -> contextlib.AbstractContextManager[None]:
        """Use the caller's own upstream key for *backend* in this request (when it sent one).

        Raises:
            GatewayError: A key was sent for a backend without ``byok = true`` (403).
        """
        raw = header(scope, UPSTREAM_KEY_HEADER)
        if raw is None:
            return contextlib.nullcontext()
        name = backend or self.client.settings.backend
        if not self.client.settings.backend_settings(name).byok:
            raise GatewayError(
                403,
                f"backend {name!r} does not take callers' own keys; drop the X-Upstream-Authorization "
                f"header, or set backends.{name}.byok = true in the gateway's configuration",
                kind="permission_error",
            )
        value = raw.strip()
        if value[:7].lower() == "bearer ":
            value = value[7:].strip()
        if not value:
            raise GatewayError(400, "X-Upstream-Authorization is empty")
        return using_caller_key(name, Secret(value))
