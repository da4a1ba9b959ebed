"""``ours`` for bench/bench_dispatch.py: ``Client.map`` over the same requests as the peers.

Each request carries the peers' ~30 KB JPEG as a data URL and a text part
naming the item.  The generic ``openai`` backend is pointed at the server with
the pool and the backend's concurrency set to *c*; the items come from a lazy
generator.  ``BENCH_LOOP=trio`` runs it under trio (httpx2 transport).
``BENCH_CONCURRENCY=auto`` gives the backend the adaptive limit instead
(``concurrency = "auto"``, ``max_concurrency`` = *c*): the limiter's cost.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import PROMPT, PeerResult, jpeg_bytes


def run_ours(base_url: str, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0) -> PeerResult:
    import anyio

    from imageworks_core import Client, PreparedImage, Request

    image = PreparedImage.from_bytes(jpeg_bytes())
    api = base_url.rstrip("/")
    if not api.endswith("/v1"):
        api += "/v1"

    def items(count: int, start: int):
        for i in range(start, start + count):
            yield Request(prompt=f"{PROMPT} item={i}", images=(image,), max_tokens=64, id=str(i))

    async def main() -> PeerResult:
        backend: dict[str, object] = {"base_url": api, "model": "fake-vlm"}
        overrides: dict[str, object] = {"concurrency": c, "backends": {"openai": backend}}
        if os.environ.get("BENCH_CONCURRENCY") == "auto":
            overrides = {"backends": {"openai": {**backend, "concurrency": "auto", "max_concurrency": c}}}
        async with Client(
            backend="openai", overrides=overrides, user_file=False, project_file=False
        ) as client:
            if warmup:
                async with client.map(items(warmup, 10_000_000), concurrency=c) as results:
                    async for _ in results:
                        pass
            ok = errors = 0
            first_error = None
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            with anyio.move_on_after(deadline_s):
                async with client.map(items(n, 0), concurrency=c) as results:
                    async for r in results:
                        if r.error is None:
                            ok += 1
                        else:
                            errors += 1
                            first_error = first_error or str(r.error)
            wall = time.perf_counter() - t0
            cpu = time.process_time() - cpu0
            return PeerResult(wall, cpu, ok, errors, first_error)

    return anyio.run(main, backend=os.environ.get("BENCH_LOOP", "asyncio"))
