"""An endpoint pool against the sum of its servers, on two capacity-modelled servers.

Two servers of different capacity (``bench/capacity_server.py``; by default
K=16 and K=48, same service time) are measured alone and then together as one
backend whose ``base_url`` lists both, each run with the default settings
(``concurrency = "auto"``, per endpoint).  The verdict: the pool reaches
>= 90 % of the sum of the two alone.  Then a finite batch runs on the pool and
one server is killed a third of the way in: every item must be answered once.

    python bench/bench_pool.py                      # ~1 minute
    python bench/bench_pool.py --a 8:24:200 --b 32:96:200 --seconds 10
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for path in (ROOT, BENCH_DIR):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from bench_adaptive import SERVER, idle, line, run  # noqa: E402

from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402


def start(setting: str, name: str) -> tuple[ServerProcess, str]:
    k, kv, service = setting.split(":")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = python_argv(SERVER, "--port", str(port), "--batch", k, "--kv", kv, "--service-ms", service)
    proc = ServerProcess(argv, ready_url=base + "/health", name=name).start()
    return proc, base


def kill_midway(bases: list[str], victim: ServerProcess, items: int) -> dict[str, Any]:
    """A batch of *items* on the pool; *victim* is killed after a third of the answers."""
    import anyio

    from imageworks_core import Client, Request

    async def main() -> dict[str, Any]:
        section = {"base_url": [b + "/v1" for b in bases], "model": "capacity-model"}
        ids: collections.Counter[str] = collections.Counter()
        failed = 0
        async with Client(backend="openai", overrides={"backends": {"openai": section}}) as client:
            reqs = [Request(prompt=f"item {i}", max_tokens=16, id=str(i)) for i in range(items)]
            async with client.map(reqs) as results:
                async for r in results:
                    ids[str(r.id)] += 1
                    failed += r.error is not None
                    if sum(ids.values()) == items // 3:
                        threading.Thread(target=victim.kill).start()
        return {"answered": len(ids), "twice": sum(1 for n in ids.values() if n > 1), "failed": failed}

    return anyio.run(main, backend=os.environ.get("BENCH_LOOP", "asyncio"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="An endpoint pool vs the sum of its servers alone.")
    p.add_argument("--a", default="16:48:100", help="K:P:service_ms of the first server")
    p.add_argument("--b", default="48:144:100", help="K:P:service_ms of the second server")
    p.add_argument("--seconds", type=float, default=10.0, help="length of one measured window")
    p.add_argument("--items", type=int, default=1500, help="batch size of the kill run")
    args = p.parse_args(argv)
    a_proc, a = start(args.a, "capacity-a")
    b_proc, b = start(args.b, "capacity-b")
    try:
        print(f"server A K:P:service={args.a}  server B K:P:service={args.b}  window {args.seconds:g}s")
        idle(a)
        alone_a = run(a, None, args.seconds)
        print(line(alone_a, "   A alone"), flush=True)
        idle(b)
        alone_b = run(b, None, args.seconds)
        print(line(alone_b, "   B alone"), flush=True)
        idle(a)
        idle(b)
        pool = run([a, b], None, args.seconds)
        print(line(pool, "   pool A+B"), flush=True)
        total = alone_a["req_per_s"] + alone_b["req_per_s"]
        ratio = pool["req_per_s"] / total
        ok = ratio >= 0.9
        print(f"  pool / (A + B) = {ratio:.2f} (need >= 0.90): " + ("PASS" if ok else "FAIL"))
        idle(a)
        idle(b)
        t0 = time.monotonic()
        killed = kill_midway([a, b], a_proc, args.items)
        print(
            f"kill A a third into {args.items} items: {killed['answered']} answered, "
            f"{killed['twice']} twice, {killed['failed']} failed ({time.monotonic() - t0:.1f}s)"
        )
        ok = ok and killed["answered"] == args.items and killed["twice"] == 0 and killed["failed"] == 0
    finally:
        a_proc.stop()
        b_proc.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
