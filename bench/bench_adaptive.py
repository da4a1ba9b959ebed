"""Adaptive concurrency against fixed settings, on the capacity-modelled server.

For each server setting (K, P, service time; see ``bench/capacity_server.py``)
this starts the server, then runs the client for ``--seconds`` at each fixed
concurrency of the sweep and once with the default settings (``concurrency =
"auto"``, no flag), each run with a fresh client.  Throughput is the answers
completed inside the window; p95 is their latency.  The verdict per setting:
auto reaches >= 90 % of the best fixed throughput, with p95 <= 1.5x that
setting's p95.  The old default (8) and a too-high setting (256) are shown.

    python bench/bench_adaptive.py                       # three settings, ~7 minutes
    python bench/bench_adaptive.py --settings 16:48:100 --seconds 6 --sweep 8,16,32,64
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402

SERVER = BENCH_DIR / "capacity_server.py"
DEFAULT_SETTINGS = "8:24:200,16:48:100,48:96:150"
DEFAULT_SWEEP = "1,2,4,8,16,24,32,48,64,96,128,192,256"


def run(
    base_url: str | list[str], concurrency: int | None, seconds: float, backend: str = "openai"
) -> dict[str, Any]:
    """One window of *seconds* against the server (a list: a pool of servers);
    ``concurrency=None``: the defaults (auto)."""
    import anyio

    from imageworks_core import Client, Request

    def items():
        i = 0
        while True:
            yield Request(prompt=f"describe item {i}", max_tokens=16, id=str(i))
            i += 1

    async def main() -> dict[str, Any]:
        urls = [u + "/v1" for u in ([base_url] if isinstance(base_url, str) else base_url)]
        section: dict[str, Any] = {"base_url": urls, "model": "capacity-model"}
        if concurrency is not None:
            section["concurrency"] = concurrency
        overrides = {"backends": {backend: section}}
        async with Client(
            backend=backend, overrides=overrides, user_file=False, project_file=False
        ) as client:
            latencies: list[float] = []
            failed = 0
            t0 = time.perf_counter()
            with anyio.move_on_after(seconds):
                async with client.map(items()) as results:
                    async for r in results:
                        if r.error is None:
                            latencies.append(r.latency)
                        else:
                            failed += 1
            wall = time.perf_counter() - t0
            limits = client.dispatcher.limits()
        latencies.sort()
        p95 = latencies[int(0.95 * (len(latencies) - 1))] if latencies else float("nan")
        return {
            "c": "auto" if concurrency is None else concurrency,
            "req_per_s": len(latencies) / wall,
            "p95_s": p95,
            "p50_s": statistics.median(latencies) if latencies else float("nan"),
            "failed": failed,
            "limit": limits.get(backend),
        }

    return anyio.run(main, backend=os.environ.get("BENCH_LOOP", "asyncio"))


def idle(base_url: str) -> None:
    """Wait until the server has no request left from the previous run."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with urllib.request.urlopen(base_url + "/_stats", timeout=5) as resp:
            if json.loads(resp.read())["active"] == 0:
                return
        time.sleep(0.1)


def line(r: dict[str, Any], note: str = "") -> str:
    return (
        f"  c={r['c']!s:<5} {r['req_per_s']:8.1f} req/s  p50 {r['p50_s'] * 1000:7.0f} ms  "
        f"p95 {r['p95_s'] * 1000:7.0f} ms  failed {r['failed']:<4} limit {r['limit']}{note}"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Adaptive concurrency vs fixed, on the capacity server.")
    p.add_argument("--settings", default=DEFAULT_SETTINGS, help="K:P:service_ms,... server settings")
    p.add_argument("--sweep", default=DEFAULT_SWEEP, help="fixed concurrencies to try")
    p.add_argument("--seconds", type=float, default=10.0, help="length of one measured window")
    p.add_argument("--queue-limit", type=int, default=512)
    p.add_argument(
        "--backend",
        default="openai",
        choices=("openai", "vllm"),
        help="openai: latencies only; vllm: also the server's waiting queue from its /metrics",
    )
    args = p.parse_args(argv)
    sweep = [int(x) for x in args.sweep.split(",") if x]
    verdicts = []
    for setting in args.settings.split(","):
        k, kv, service = setting.split(":")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = python_argv(
            SERVER, "--port", str(port), "--batch", k, "--kv", kv, "--service-ms", service,
            "--queue-limit", str(args.queue_limit),
        )  # fmt: skip
        print(f"\nK={k} P={kv} service={service} ms queue_limit={args.queue_limit} window={args.seconds:g}s")
        with ServerProcess(server, ready_url=base + "/health", name="capacity_server"):
            idle(base)
            auto = run(base, None, args.seconds, args.backend)  # first: no run before it left the server busy
            print(line(auto), flush=True)
            fixed = {}
            for c in sweep:
                idle(base)
                fixed[c] = run(base, c, args.seconds, args.backend)
                print(line(fixed[c]), flush=True)
        # the best fixed setting: the lowest concurrency within 2 % of the top throughput (ties go
        # to the lower latency, which makes the p95 test stricter)
        top = max(r["req_per_s"] for r in fixed.values())
        best = next(fixed[c] for c in sorted(fixed) if fixed[c]["req_per_s"] >= 0.98 * top)
        ratio = auto["req_per_s"] / best["req_per_s"]
        p95_ratio = auto["p95_s"] / best["p95_s"]
        ok = ratio >= 0.9 and p95_ratio <= 1.5
        verdicts.append(ok)
        print(line(best, "   <- best fixed"))
        for c in (8, 256):
            if c in fixed:
                print(line(fixed[c], f"   (fixed {c})"))
        print(line(auto, "   <- default (auto)"))
        print(
            f"  auto/best throughput {ratio:.2f} (need >= 0.90), "
            f"p95 auto/best {p95_ratio:.2f} (need <= 1.50): " + ("PASS" if ok else "FAIL"),
            flush=True,
        )
        print(f"  auto/top throughput {auto['req_per_s'] / top:.2f} (the top fixed, whatever its latency)")
    print(f"\n{sum(verdicts)}/{len(verdicts)} settings pass")
    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    raise SystemExit(main())
