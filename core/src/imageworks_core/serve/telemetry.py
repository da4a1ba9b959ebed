"""The gateway's Prometheus metrics (``GET /metrics``), one registry per gateway.

Counted as requests finish: gateway requests by route and status, their
latency, each backend try (``Result.attempts``) by backend, endpoint and
outcome, fallbacks, tokens.  Read at scrape time from the shared dispatcher's
endpoints: requests in flight and waiting, the current (adaptive) limit, the
state, outages and pauses so far.  No label ever holds a key or a caller's text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..dispatch import Dispatcher
from ..models import Result

__all__ = ["CONTENT_TYPE", "Telemetry"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_STATES = ("up", "paused", "out", "down")
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class _Endpoints(Collector):
    """Endpoint figures read from the dispatcher when scraped."""

    def __init__(self, dispatcher: Any) -> None:
        self._dispatcher = dispatcher

    def collect(self) -> Iterator[Any]:
        labels = ["backend", "endpoint"]
        in_flight = GaugeMetricFamily(
            "imageworks_backend_in_flight", "Requests in flight to the endpoint", labels=labels
        )
        waiting = GaugeMetricFamily(
            "imageworks_backend_waiting", "Requests waiting for a slot", labels=labels
        )
        limit = GaugeMetricFamily(
            "imageworks_backend_concurrency_limit", "Current (adaptive) concurrency limit", labels=labels
        )
        max_limit = GaugeMetricFamily(
            "imageworks_backend_concurrency_max", "Configured concurrency", labels=labels
        )
        state = GaugeMetricFamily(
            "imageworks_backend_state", "1 for the endpoint's state", labels=[*labels, "state"]
        )
        outages = CounterMetricFamily("imageworks_backend_outages", "Outages seen", labels=labels)
        pauses = CounterMetricFamily("imageworks_backend_pauses", "Pauses asked for (429/503)", labels=labels)
        for ep in list(self._dispatcher().runner.endpoints):
            values = [ep.backend, ep.url]
            ep.accepting()  # a pause that is over ends here
            in_flight.add_metric(values, ep.in_flight)
            waiting.add_metric(values, ep.waiting)
            limit.add_metric(values, ep.limit)
            max_limit.add_metric(values, ep.max_limit)
            for name in _STATES:
                state.add_metric([*values, name], 1.0 if ep.state.value == name else 0.0)
            outages.add_metric(values, len(ep.outages))
            pauses.add_metric(values, ep.pauses)
        yield from (in_flight, waiting, limit, max_limit, state, outages, pauses)


class Telemetry:
    """The gateway's metrics.

    Args:
        dispatcher: Returns the shared dispatcher.
    """

    def __init__(self, dispatcher: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "imageworks_gateway_requests",
            "Gateway requests by route and HTTP status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "imageworks_gateway_request_seconds",
            "Gateway request latency (to the last byte)",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("imageworks_gateway_in_flight", "Gateway requests being answered", registry=r)
        self.rejected = Counter(
            "imageworks_gateway_rejected", "Requests turned away by the gateway", ["reason"], registry=r
        )
        self.attempts = Counter(
            "imageworks_attempts",
            "Backend tries by outcome (ok or the error class)",
            ["backend", "endpoint", "outcome"],
            registry=r,
        )
        self.attempt_latency = Histogram(
            "imageworks_attempt_seconds",
            "Latency of successful backend tries",
            ["backend", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "imageworks_fallbacks",
            "Requests answered by a later backend than the first tried",
            ["backend"],
            registry=r,
        )
        self.tokens = Counter(
            "imageworks_tokens", "Tokens as the backends reported them", ["backend", "kind"], registry=r
        )
        r.register(_Endpoints(dispatcher))
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def rejected_one(self, reason: str) -> None:
        self._child(self.rejected, reason).inc()

    def request_done(self, route: str, status: int, seconds: float) -> None:
        self._child(self.requests, route, str(status)).inc()
        self._child(self.latency, route).observe(seconds)

    def result(self, result: Result, dispatcher: Dispatcher) -> None:
        """Count *result*'s tries, fallback and tokens."""
        for attempt in result.attempts:
            url = _url(dispatcher, attempt.backend)
            outcome = "ok" if attempt.error is None else (attempt.error_type or "error")
            self._child(self.attempts, attempt.backend, url, outcome).inc()
            if attempt.error is None:
                self._child(self.attempt_latency, attempt.backend, url).observe(attempt.latency)
        if result.attempts and result.error is None and result.attempts[0].backend != result.backend:
            self._child(self.fallbacks, result.backend).inc()
        usage = result.usage
        if result.error is None and usage.prompt_tokens:
            self._child(self.tokens, result.backend, "prompt").inc(usage.prompt_tokens)
        if result.error is None and usage.completion_tokens:
            self._child(self.tokens, result.backend, "completion").inc(usage.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _url(dispatcher: Dispatcher, backend: str) -> str:
    urls = [ep.url for ep in dispatcher.runner.endpoints if ep.backend == backend]
    return ",".join(urls)
