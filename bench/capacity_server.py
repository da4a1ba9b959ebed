"""A capacity-modelled OpenAI-compatible server: behaves like a batching GPU server.

Run as its own process on 127.0.0.1::

    python bench/capacity_server.py --port N --batch 16 --kv 48 --service-ms 100 --queue-limit 512

The model (an engine loop of fixed steps, like a continuous-batching server):

* Each request needs ``service_ms / step_ms`` decode steps.  Every step advances
  every request that is admitted, at once; a request that arrives during a
  step joins at the next one.
* Up to ``--batch`` (K) requests a step takes ``step_ms``: throughput grows with
  concurrency, latency stays at ``service_ms``.
* Above K the step is compute-bound and takes ``step_ms * n / K``: throughput
  stays flat, latency grows with n.
* Above ``--kv`` (P > K) the KV cache is full: requests are preempted and
  recomputed, modelled as a step that costs ``1 + preempt_cost * (n - P) / P``
  times more: throughput collapses as n grows.
* At ``--queue-limit`` requests in the server, a new one gets HTTP 503.

Endpoints: ``POST /v1/chat/completions`` (non-streamed), ``GET /v1/models``,
``GET /health``, and ``GET /metrics`` in vLLM's Prometheus names
(``vllm:num_requests_running`` = requests in the batch, at most K;
``vllm:num_requests_waiting`` = the rest; ``vllm:kv_cache_usage_perc`` = n / P,
at most 1).  ``GET /_stats`` gives served requests, 503s and the largest n seen.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time

from aiohttp import web

MODEL = "capacity-model"


class Engine:
    """The simulated GPU: one step loop over the admitted requests."""

    def __init__(self, batch: int, kv: int, service_ms: float, step_ms: float, preempt_cost: float) -> None:
        self.batch = batch
        self.kv = kv
        self.steps = max(1, round(service_ms / step_ms))
        self.step_s = step_ms / 1000
        self.preempt_cost = preempt_cost
        self.active: dict[asyncio.Future[None], int] = {}
        #: Arrived during a step: they join the batch at the next step (as a real scheduler does).
        self.pending: list[asyncio.Future[None]] = []
        self.wake = asyncio.Event()
        self.stepping = False
        self.served = 0
        self.rejected = 0
        self.peak = 0

    def step_seconds(self, n: int) -> float:
        factor = max(1.0, n / self.batch)
        if n > self.kv:
            factor *= 1 + self.preempt_cost * (n - self.kv) / self.kv
        return self.step_s * factor

    async def run(self) -> None:
        while True:
            if not self.active and not self.pending:
                self.wake.clear()
                await self.wake.wait()
            for fut in self.pending:
                if not fut.done():
                    self.active[fut] = self.steps
            self.pending.clear()
            n = len(self.active)
            self.peak = max(self.peak, n)
            self.stepping = True
            await asyncio.sleep(self.step_seconds(n))
            self.stepping = False
            done = []
            for fut in list(self.active):
                left = self.active[fut] - 1
                if left <= 0 or fut.done():
                    done.append(fut)
                else:
                    self.active[fut] = left
            for fut in done:
                del self.active[fut]
                if not fut.done():
                    fut.set_result(None)

    async def serve_one(self) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending.append(fut)
        self.wake.set()
        try:
            await fut
        finally:
            self.active.pop(fut, None)
            if not fut.done():
                fut.cancel()  # a client that hung up: the step loop drops it
        self.served += 1


def build_app(engine: Engine, queue_limit: int) -> web.Application:
    async def chat(request: web.Request) -> web.Response:
        body = await request.json()
        if len(engine.active) + len(engine.pending) >= queue_limit:
            engine.rejected += 1
            return web.json_response(
                {"error": {"message": "server overloaded: queue full", "type": "overloaded"}}, status=503
            )
        await engine.serve_one()
        return web.json_response(
            {
                "id": f"cmpl-{engine.served}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model") or MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "A grey cat on a sofa."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
            }
        )

    async def models(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "object": "list",
                "data": [{"id": MODEL, "object": "model", "owned_by": "bench", "max_model_len": 4096}],
            }
        )

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics(_: web.Request) -> web.Response:
        n = len(engine.active) + len(engine.pending)
        running = min(len(engine.active), engine.batch)
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{engine="0",model_name="{MODEL}"}} {float(running)}\n'
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f'vllm:num_requests_waiting{{engine="0",model_name="{MODEL}"}} {float(n - running)}\n'
            "# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
            "# TYPE vllm:kv_cache_usage_perc gauge\n"
            f'vllm:kv_cache_usage_perc{{engine="0",model_name="{MODEL}"}} {min(1.0, n / engine.kv)}\n'
        )
        return web.Response(text=text, content_type="text/plain")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "served": engine.served,
                "rejected": engine.rejected,
                "peak": engine.peak,
                "active": len(engine.active) + len(engine.pending) + engine.stepping,
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/_stats", stats)
    return app


async def main(args: argparse.Namespace) -> None:
    engine = Engine(args.batch, args.kv, args.service_ms, args.step_ms, args.preempt_cost)
    # a client that hangs up takes its request out of the batch, as vLLM aborts it
    runner = web.AppRunner(build_app(engine, args.queue_limit), access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", args.port, backlog=1024)
    await site.start()
    print(f"capacity server on http://127.0.0.1:{args.port} K={args.batch} P={args.kv}", flush=True)
    loop_task = asyncio.create_task(engine.run())
    try:
        await asyncio.Event().wait()
    finally:
        loop_task.cancel()
        await runner.cleanup()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--batch", type=int, default=16, help="K: requests one step serves at full speed")
    p.add_argument("--kv", type=int, default=48, help="P > K: requests the KV cache holds before preempting")
    p.add_argument("--service-ms", type=float, default=100.0, help="latency of one request at n <= K")
    p.add_argument("--step-ms", type=float, default=10.0, help="one engine step")
    p.add_argument("--preempt-cost", type=float, default=2.0, help="extra step cost per P requests above P")
    p.add_argument("--queue-limit", type=int, default=512, help="requests in the server before 503")
    args = p.parse_args(argv)
    if not 1 <= args.batch < args.kv:
        p.error("need 1 <= --batch < --kv")
    return args


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(parse()))
