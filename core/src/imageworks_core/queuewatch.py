"""While a batch runs, read each adaptive endpoint's waiting queue from its server's metrics.

The backend's own ``health`` hook reads the server's metrics (vLLM
``vllm:num_requests_waiting``, LMDeploy's and Triton's equivalents) into
``HealthReport.metrics["waiting"]``; every ``EVERY`` seconds the figure goes to
the endpoint's adaptive limit (``AdaptiveLimit.server_queue``), which backs off
when the queue grows past what a full batch needs, whether the load is ours or
another program's.  A server whose ready report has no such figure (Ollama, a
hosted API, a server without metrics) is not asked again: its limit follows the
latencies alone.  Only endpoints with an adaptive limit (``concurrency =
"auto"``, the default) are watched; an endpoint that is out or down is left to
the outage logic until it is back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import anyio

from .endpoint import Endpoint

__all__ = ["EVERY", "watch_queues"]

#: Seconds between two readings of one endpoint (a few small GETs: nothing next to a GPU's work).
EVERY = 2.0


async def watch_queues(backends: Any, endpoints: Iterable[Endpoint]) -> None:
    """Feed each adaptive endpoint's server queue to its limit until cancelled (at the batch's end)."""
    watched = [ep for ep in endpoints if ep.adaptive is not None]
    if not watched:
        return
    async with anyio.create_task_group() as tg:
        for ep in watched:
            tg.start_soon(_watch, backends, ep)


async def _watch(backends: Any, ep: Endpoint) -> None:
    while True:
        await anyio.sleep(EVERY)
        if not ep.accepting():
            continue
        report = await backends.health_of(ep.context)  # never raises: a failure is a report
        if not report.ready:
            continue
        waiting = (report.metrics or {}).get("waiting")
        if waiting is None:
            return
        ep.server_queue(float(waiting))
