"""Gateway benchmark: what ``imageworks serve`` adds to a call, against calling the server directly.

Starts ``tests/servers/fast_openai.py`` (answers at once: the client side is what is measured),
``imageworks serve`` in front of it and, when ``.venv-bench`` has LiteLLM, LiteLLM's proxy in
front of it too.  One client (raw aiohttp, the cheapest there is, so that the gateway's own cost
shows) sends the same chat request with a ~30 KB JPEG data URL to each target:

* latency: one request at a time (*lat_n* of them), p50 and p90 per target; the gateway's
  overhead is its p50 minus the direct p50;
* throughput: *n* requests at concurrency *c*, requests/s per target.

Rounds rotate the order of the targets; medians over the rounds are printed, one JSON line
each, then a summary.  The gateway runs with its defaults except ``--concurrency`` (set to *c*,
so that the dispatcher's per-backend limit of 8 is not what throughput measures).

    python bench/bench_serve.py                      # 3 rounds, lat_n=400, n=2000, c=64
    python bench/bench_serve.py --rounds 1 -n 500    # quick
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for p in (str(ROOT), str(BENCH_DIR), str(ROOT / "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from peers import build_body  # noqa: E402

from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402

FAST_SERVER = ROOT / "tests" / "servers" / "fast_openai.py"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
LITELLM_KEY = "sk-bench-master-key"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


async def _latencies(session: Any, url: str, headers: dict[str, str], count: int, model: str) -> list[float]:
    out = []
    for i in range(count):
        body = json.dumps({**build_body(i), "model": model}).encode()
        t0 = time.perf_counter()
        async with session.post(url, data=body, headers=headers) as resp:
            data = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"{url}: HTTP {resp.status}: {data[:300]!r}")
        out.append(time.perf_counter() - t0)
    return out


async def _throughput(session: Any, url: str, headers: dict[str, str], n: int, c: int, model: str) -> float:
    bodies = [json.dumps({**build_body(i), "model": model}).encode() for i in range(n)]
    todo = iter(bodies)
    failures: list[str] = []

    async def worker() -> None:
        for body in todo:
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
                if resp.status != 200:
                    failures.append(f"HTTP {resp.status}: {data[:200]!r}")

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    took = time.perf_counter() - t0
    if failures:
        raise RuntimeError(f"{url}: {len(failures)} failures, first: {failures[0]}")
    return n / took


async def measure(
    targets: dict[str, tuple[str, dict[str, str], str]], args: argparse.Namespace
) -> dict[str, Any]:
    import aiohttp

    rounds: dict[str, dict[str, list[float]]] = {t: {"p50": [], "p90": [], "rps": []} for t in targets}
    names = list(targets)
    connector = aiohttp.TCPConnector(limit=args.c + 8)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=120)
    ) as session:
        for url, headers, model in targets.values():  # warm every path (pools, imports, caches)
            await _latencies(session, url, headers, 30, model)
            await _throughput(session, url, headers, min(200, args.n), args.c, model)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                url, headers, model = targets[name]
                lat = sorted(await _latencies(session, url, headers, args.lat_n, model))
                rps = await _throughput(session, url, headers, args.n, args.c, model)
                p50, p90 = lat[len(lat) // 2], lat[int(len(lat) * 0.9)]
                rounds[name]["p50"].append(p50)
                rounds[name]["p90"].append(p90)
                rounds[name]["rps"].append(rps)
                _log(f"round {r + 1} {name}: p50 {p50 * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms, {rps:.0f} req/s")
    return {name: {k: statistics.median(v) for k, v in m.items()} for name, m in rounds.items()}


def _litellm(fast: str, workdir: Path) -> ServerProcess | None:
    if not BENCH_PYTHON.exists():
        _log(f"no LiteLLM peer: {BENCH_PYTHON} does not exist (see constraints/serve-bench.txt)")
        return None
    config = workdir / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        "  - model_name: fake-vlm\n"
        "    litellm_params:\n"
        "      model: openai/fake-vlm\n"
        f"      api_base: {fast}/v1\n"
        "      api_key: unused\n"
        "general_settings:\n"
        f"  master_key: {LITELLM_KEY}\n"
        "litellm_settings:\n"
        "  num_retries: 0\n"
    )
    port = free_port()
    litellm_bin = BENCH_PYTHON.parent / "litellm"
    return ServerProcess(
        [str(litellm_bin), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
        ready_url=f"http://127.0.0.1:{port}/health/liveliness",
        env={"LITELLM_LOG": "ERROR", "DISABLE_SCHEMA_UPDATE": "true"},
        cwd=workdir,
        ready_timeout=180,
        name="litellm",
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--lat-n", type=int, default=400, help="sequential requests per latency measurement")
    ap.add_argument("-n", type=int, default=2000, help="requests per throughput measurement")
    ap.add_argument("-c", type=int, default=64, help="concurrency of the throughput measurement")
    ap.add_argument("--no-litellm", action="store_true")
    args = ap.parse_args()

    from serve_helpers import running_gateway

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        work = Path(tmp)
        port = free_port()
        fast = f"http://127.0.0.1:{port}"
        with ServerProcess(
            python_argv(FAST_SERVER, "--port", str(port)), ready_url=fast + "/health", name="fast"
        ) as server:
            settings = {"backend": "openai", "backends": {"openai": {"base_url": fast + "/v1"}}}
            with running_gateway(work / "gw", settings, "--concurrency", str(args.c)) as gw:
                targets: dict[str, tuple[str, dict[str, str], str]] = {
                    "direct": (
                        fast + "/v1/chat/completions",
                        {"Content-Type": "application/json"},
                        "fake-vlm",
                    ),
                    "imageworks_serve": (
                        gw.v1 + "/chat/completions",
                        {"Content-Type": "application/json"},
                        "openai/fake-vlm",
                    ),
                }
                lite = None if args.no_litellm else _litellm(fast, work)
                try:
                    if lite is not None:
                        t0 = time.monotonic()
                        lite.start()
                        _log(f"LiteLLM proxy ready after {time.monotonic() - t0:.1f}s")
                        targets["litellm_proxy"] = (
                            lite.ready_url.rsplit("/health", 1)[0] + "/v1/chat/completions",
                            {"Content-Type": "application/json", "Authorization": f"Bearer {LITELLM_KEY}"},
                            "fake-vlm",
                        )
                    results = asyncio.run(measure(targets, args))
                finally:
                    if lite is not None:
                        lite.stop()
        del server
    direct = results["direct"]
    for name, m in results.items():
        line = {
            "target": name,
            "p50_ms": round(m["p50"] * 1e3, 3),
            "p90_ms": round(m["p90"] * 1e3, 3),
            "added_p50_ms": round((m["p50"] - direct["p50"]) * 1e3, 3),
            "req_per_s": round(m["rps"], 1),
            "throughput_vs_direct": round(m["rps"] / direct["rps"], 3),
        }
        print(json.dumps(line), flush=True)
    gw_m = results["imageworks_serve"]
    print(
        f"imageworks serve adds {(gw_m['p50'] - direct['p50']) * 1e3:.2f} ms p50 "
        f"(goal < 1 ms); throughput {gw_m['rps'] / direct['rps']:.2f}x of direct "
        f"(c={args.c}, {os.cpu_count()} CPUs)"
    )
    if "litellm_proxy" in results:
        lm = results["litellm_proxy"]
        print(
            f"LiteLLM proxy adds {(lm['p50'] - direct['p50']) * 1e3:.2f} ms p50: "
            f"{(lm['p50'] - direct['p50']) / max(1e-9, gw_m['p50'] - direct['p50']):.1f}x ours; "
            f"throughput: ours {gw_m['rps'] / lm['rps']:.2f}x LiteLLM's"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
