"""The gateway's ASGI app: routes, the access guard, the client's lifetime.

``create_app`` builds a Starlette app around one ``Client``; the client is
opened in the app's lifespan and closed after the last request drained.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..client import Client
from ..endpoint import Endpoint
from ..errors import ImageWorksError
from ..models import HealthReport
from .chat import ChatRoute
from .describing import DescribeRoute
from .gateway import Gateway
from .options import ServeOptions
from .telemetry import CONTENT_TYPE
from .wire import GatewayError, Receive, Scope, Send, header, send_error

__all__ = ["create_app"]

log = logging.getLogger("imageworks.serve")

#: Seconds a health or model listing is reused (callers poll /healthz).
_HEALTH_TTL = 1.0


class _Guard:
    """Every route but ``GET /livez`` needs a configured token (constant-time compare); rate limits."""

    def __init__(self, app: Any, gw: Gateway, chat: Any = None) -> None:
        self.app = app
        self.gw = gw
        self.chat = chat  # the hot route, called without Starlette's routing and middleware layers
        self.tokens = [("Bearer " + t.reveal()).encode() for t in gw.options.tokens]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/livez":
            await self.app(scope, receive, send)
            return
        who = "-"
        if self.tokens:
            got = (header(scope, b"authorization") or "").encode("latin-1")
            matched = -1
            for i, token in enumerate(self.tokens):  # compare with each: no early exit on a match
                if hmac.compare_digest(got, token):
                    matched = i
            if matched < 0:
                self.gw.telemetry.rejected_one("unauthorized")
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                body = (
                    b'{"error":{"message":"missing or wrong access token: send Authorization: Bearer TOKEN",'
                )
                body += b'"type":"authentication_error","code":401}}'
                await send({"type": "http.response.body", "body": body})
                return
            who = f"token{matched}"
        elif scope.get("client"):
            who = str(scope["client"][0])
        if self.gw.rate is not None:
            wait = self.gw.rate.take(who)
            if wait > 0:
                self.gw.telemetry.rejected_one("rate_limit")
                await send_error(
                    send,
                    GatewayError(
                        429,
                        f"rate limit of {self.gw.options.rate_limit:g} requests/s reached; retry shortly",
                        kind="rate_limit_error",
                        retry_after=math.ceil(wait),
                    ),
                )
                return
        if self.chat is not None and scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            await self.chat(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Health:
    """Health of every backend in the order, checked concurrently and reused for ``_HEALTH_TTL``."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self._at = -math.inf
        self._reports: list[HealthReport] = []
        self._lock = anyio.Lock()

    def names(self) -> list[str]:
        """The backends in the order, then every other one given a ``base_url`` (callers may name it)."""
        client = self.gw.client
        order = client.backend_order()
        others = [
            n
            for n in sorted(client.registry.backends)
            if n not in order and client.settings.backend_settings(n).base_url
        ]
        return order + others

    async def reports(self) -> list[HealthReport]:
        async with self._lock:
            if time.monotonic() - self._at > _HEALTH_TTL:
                client = self.gw.client
                runner = client.dispatcher.runner
                eps = [ep for name in self.names() for ep in runner.pool(name)]
                found: list[HealthReport | None] = [None] * len(eps)

                async def check(i: int, ep: Endpoint) -> None:
                    if ep.probe_due():
                        await ep.probe()  # an endpoint that is out comes back here, not only on a request
                    found[i] = await client.health_of(ep.context)

                async with anyio.create_task_group() as tg:
                    for i, ep in enumerate(eps):
                        tg.start_soon(check, i, ep)
                self._reports = [r for r in found if r is not None]
                self._at = time.monotonic()
            return self._reports


def _timed(gw: Gateway, route: str, fn: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    async def endpoint(request: HttpRequest) -> Response:
        start = time.perf_counter()
        response: Response = await fn(request)
        gw.telemetry.request_done(route, response.status_code, time.perf_counter() - start)
        return response

    return endpoint


def create_app(client: Client, options: ServeOptions | None = None) -> _Guard:
    """The gateway's ASGI app for *client* (opened on startup, closed on shutdown); ``.gw`` is its state."""
    options = options or ServeOptions()
    gw = Gateway(client, options)
    health = _Health(gw)

    async def livez(request: HttpRequest) -> Response:
        return JSONResponse({"live": True})

    async def healthz(request: HttpRequest) -> Response:
        reports = await health.reports()
        dispatcher = client.dispatcher
        backends = []
        by_url = {(ep.backend, ep.url): ep for ep in dispatcher.runner.endpoints}
        for r in reports:
            ep = by_url.get((r.backend, r.url))
            state = "up"
            if ep is not None:
                ep.accepting()  # a pause that is over ends here
                state = ep.state.value
            backends.append(
                {
                    "backend": r.backend,
                    "endpoint": r.url,
                    "ready": r.ready and state in ("up", "paused"),
                    "reachable": r.reachable,
                    "state": state,
                    "in_flight": ep.in_flight if ep is not None else 0,
                    "limit": ep.limit if ep is not None else client.concurrency(r.backend),
                    "models": list(r.models),
                    "detail": r.detail,
                    "latency_s": round(r.latency, 4),
                }
            )
        order = client.backend_order()
        ready = any(b["ready"] for b in backends if b["backend"] in order)
        body = {"ready": ready, "in_flight": gw.active, "queue_limit": options.queue, "backends": backends}
        return JSONResponse(body, status_code=200 if ready else 503)

    async def models(request: HttpRequest) -> Response:
        data = [
            {"id": f"{r.backend}/{m}", "object": "model", "created": int(gw.started), "owned_by": r.backend}
            for r in await health.reports()
            if r.ready
            for m in r.models
        ]
        return JSONResponse({"object": "list", "data": data})

    async def metrics(request: HttpRequest) -> Response:
        return Response(gw.telemetry.render(), media_type=CONTENT_TYPE)

    async def preflight() -> None:
        # as before a batch: a backend seen ready has its later failures treated as outages, and a
        # dead one beside a live one is taken out (probed) so that requests go to the live one
        try:
            await client.dispatcher.preflight()
        except ImageWorksError as exc:
            log.warning("no backend is ready yet (/healthz says so): %s", exc.message.splitlines()[0])

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with client, anyio.create_task_group() as tg:
            tg.start_soon(preflight)  # in the background: serving starts at once
            yield
            tg.cancel_scope.cancel()

    chat = ChatRoute(gw)
    routes = [
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/describe", DescribeRoute(gw), methods=["POST"]),
        Route("/v1/models", _timed(gw, "models", models), methods=["GET"]),
        Route("/healthz", _timed(gw, "healthz", healthz), methods=["GET"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    # the guard wraps the app from outside: one ASGI layer, not Starlette's middleware stack
    return _Guard(Starlette(routes=routes, lifespan=lifespan), gw, chat)
