"""Memory and first-result benchmark of ``Client.map`` against a canned server.

Starts ``tests/servers/fast_openai.py`` (answers at once, ~0.03 ms CPU per
request), then runs each measurement in its own fresh subprocess so that peaks
are independent:

1. **Peak RSS** of a process that pushes N items from a lazy generator through
   ``client.map`` (concurrency 64), for N = 10,000 and N = 100,000.  Each item
   is a fresh ~30 KB JPEG (the bytes are copied per item, as if read from disk),
   so a dispatcher that held on to finished items would grow by ~3 GB at 100k.
   Goal: under 150 MB, and flat (the 100k peak about equal to the 10k peak).
2. **Latency to the first result** of a 10,000-item batch, against the median
   latency of single ``client.infer`` calls measured in the same process just
   before.  Goal: about one request's latency (the batch must not queue,
   prepare or send everything before yielding anything).  Measured twice: with
   the server answering at once (the client's own overhead, in a ratio of two
   sub-millisecond numbers) and answering after ``--model-ms`` (default 20 ms,
   a stand-in for a model's latency).

    python bench/bench_memory.py                    # 10k vs 100k, first result of 10k
    python bench/bench_memory.py --large 30000      # quicker
    python bench/bench_memory.py --loop trio        # the httpx transport under trio
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402

FAST_SERVER = ROOT / "tests" / "servers" / "fast_openai.py"
PROMPT = "Describe this image in one sentence."
CONCURRENCY = 64
GOAL_MB = 150.0


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _vm_rss_mb() -> float:
    """Current resident set size in MiB (``VmRSS``)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def _hwm_mb() -> float:
    """Peak RSS in MiB (``VmHWM``): since exec, or since the last ``_reset_hwm``.

    Not ``ru_maxrss``: getrusage keeps it across execve, so a child would report
    the parent's peak at fork time.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")  # pragma: no cover - not Linux


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0); ``False`` when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------------------- children


def _client(api: str) -> Any:
    from imageworks_core import Client

    overrides = {
        "concurrency": CONCURRENCY,
        "backends": {"openai": {"base_url": api, "model": "fake-vlm"}},
    }
    return Client(backend="openai", overrides=overrides, user_file=False, project_file=False)


def _items(jpeg: bytes, n: int, produced: list[int]) -> Iterator[Any]:
    """N fresh items, each with its own copy of the image bytes; counts how many were made."""
    from imageworks_core import PreparedImage, Request

    template = PreparedImage.from_bytes(jpeg)
    for i in range(n):
        produced[0] += 1
        data = bytes(bytearray(jpeg))  # a new 30 KB object per item
        image = PreparedImage(
            data=data,
            mime=template.mime,
            width=template.width,
            height=template.height,
            original_width=template.original_width,
            original_height=template.original_height,
            source=f"img-{i}.jpg",
        )
        yield Request(prompt=f"{PROMPT} item={i}", images=(image,), max_tokens=64, id=str(i))


async def _child_rss(api: str, jpeg: bytes, n: int) -> dict[str, Any]:
    import anyio

    samples: list[tuple[int, float]] = []
    produced = [0]
    ok = errors = 0
    first_error = None
    async with _client(api) as client:
        await client.infer(next(_items(jpeg, 1, [0])))  # pool and imports warm
        baseline = _vm_rss_mb()
        peak_before = _hwm_mb()
        reset = _reset_hwm()
        t0 = time.perf_counter()
        async with client.map(_items(jpeg, n, produced), concurrency=2 * CONCURRENCY) as results:
            async for r in results:
                if r.error is None:
                    ok += 1
                else:
                    errors += 1
                    first_error = first_error or str(r.error)
                done = ok + errors
                if done % max(1, n // 10) == 0:
                    samples.append((done, round(_vm_rss_mb(), 1)))
        wall = time.perf_counter() - t0
        map_peak = _hwm_mb() if reset else float("nan")
        await anyio.lowlevel.checkpoint()
    return {
        "mode": "rss",
        "n": n,
        "ok": ok,
        "errors": errors,
        "first_error": first_error,
        "produced": produced[0],
        "wall_s": wall,
        "rate": ok / wall if wall else 0.0,
        "baseline_mb": baseline,
        "peak_before_mb": peak_before,
        "peak_mb": max(peak_before, _hwm_mb()),
        "map_peak_mb": map_peak,
        "rss_samples": samples,
    }


async def _child_first(api: str, jpeg: bytes, n: int, singles: int) -> dict[str, Any]:
    produced = [0]
    async with _client(api) as client:
        for r in _items(jpeg, 5, [0]):  # warm-up: imports, pool, first connection
            await client.infer(r)
        single: list[float] = []
        for r in _items(jpeg, singles, [0]):
            t = time.perf_counter()
            result = await client.infer(r)
            single.append(time.perf_counter() - t)
            assert result.error is None
        t0 = time.perf_counter()
        async with client.map(_items(jpeg, n, produced), concurrency=2 * CONCURRENCY) as results:
            first = await results.__anext__()
            first_s = time.perf_counter() - t0
            produced_at_first = produced[0]
            rest = 1
            async for _ in results:  # a few more, to report the steady rate
                rest += 1
                if rest == 2000:
                    break
            rate = rest / (time.perf_counter() - t0)
    return {
        "mode": "first",
        "n": n,
        "first_ok": first.error is None,
        "first_s": first_s,
        "single_median_s": statistics.median(single),
        "single_p90_s": statistics.quantiles(single, n=10)[-1],
        "produced_at_first": produced_at_first,
        "rate_first_2000": rate,
    }


def child_main(args: argparse.Namespace) -> None:
    import anyio

    jpeg = Path(args.jpeg).read_bytes()
    api = args.base_url.rstrip("/") + "/v1"
    if args.child == "rss":
        out = anyio.run(_child_rss, api, jpeg, args.n, backend=args.loop)
    else:
        out = anyio.run(_child_first, api, jpeg, args.n, args.singles, backend=args.loop)
    out["loop"] = args.loop
    print(json.dumps(out), flush=True)


# ---------------------------------------------------------------------------- parent


def run_child(
    mode: str, n: int, base_url: str, jpeg_path: str, loop: str, timeout_s: float, singles: int = 200
) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "-n", str(n)]
    argv += ["--base-url", base_url, "--jpeg", jpeg_path, "--loop", loop, "--singles", str(singles)]
    _log(f"  {mode} n={n:,} ({loop}) ...")
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"child {mode} n={n} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def parent_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(BENCH_DIR))
    from peers import jpeg_bytes  # numpy lives in the parent only, not in the measured children

    jpeg = jpeg_bytes()
    with tempfile.NamedTemporaryFile(prefix="bench-memory-", suffix=".jpg", delete=False) as f:
        f.write(jpeg)
        jpeg_path = f.name
    t_start = time.monotonic()
    firsts: list[dict[str, Any]] = []
    try:
        for delay_ms in (0.0, args.model_ms):
            port = free_port()
            base_url = f"http://127.0.0.1:{port}"
            argv = python_argv(FAST_SERVER, "--port", str(port), "--delay-ms", str(delay_ms))
            with ServerProcess(argv, ready_url=base_url + "/health", name="fast-openai"):
                _log(f"fast_openai on {base_url} (answers after {delay_ms:g} ms); image {len(jpeg)} bytes")
                singles = 200 if delay_ms == 0 else 50
                first = run_child(
                    "first", args.first_n, base_url, jpeg_path, args.loop, args.child_timeout, singles
                )
                first["server_delay_ms"] = delay_ms
                firsts.append(first)
                if delay_ms == 0:
                    small = run_child("rss", args.small, base_url, jpeg_path, args.loop, args.child_timeout)
                    large = run_child("rss", args.large, base_url, jpeg_path, args.loop, args.child_timeout)
    finally:
        os.unlink(jpeg_path)
    total = time.monotonic() - t_start

    kib = len(jpeg) / 1024
    print(f"\n== bench_memory ({args.loop}, concurrency {CONCURRENCY}, a fresh {kib:.0f} KiB JPEG per item)")
    print(
        f"{'items':>9} {'ok':>9} {'err':>5} {'req/s':>7} {'start MB':>9} {'map peak':>9} {'peak MB':>8}"
        "  RSS at each 10% (MB)"
    )
    for m in (small, large):
        trace = " ".join(f"{mb:.0f}" for _, mb in m["rss_samples"])
        print(
            f"{m['n']:>9,} {m['ok']:>9,} {m['errors']:>5} {m['rate']:>7.0f} "
            f"{m['baseline_mb']:>9.1f} {m['map_peak_mb']:>9.1f} {m['peak_mb']:>8.1f}  {trace}"
        )
        if m["errors"]:
            print(f"          first error: {m['first_error']}")
    ratio = large["peak_mb"] / small["peak_mb"]
    growth = large["map_peak_mb"] - small["map_peak_mb"]
    flat = large["peak_mb"] - small["peak_mb"] < 16.0  # 90k more items may not add a batch's worth
    verdict = "OK" if large["peak_mb"] < GOAL_MB and flat else "OVER GOAL"
    print(
        f"peak RSS ratio {large['n']:,} / {small['n']:,} items: {ratio:.2f}x "
        f"({small['peak_mb']:.1f} -> {large['peak_mb']:.1f} MB; map phase {growth:+.1f} MB for "
        f"{large['n'] - small['n']:,} more items; goal < {GOAL_MB:.0f} MB and flat) [{verdict}]"
    )
    for first in firsts:
        fr = first["first_s"] / first["single_median_s"]
        print(
            f"first result of a {first['n']:,}-item batch, server answering after "
            f"{first['server_delay_ms']:g} ms: {first['first_s'] * 1000:.2f} ms vs median single request "
            f"{first['single_median_s'] * 1000:.2f} ms (p90 {first['single_p90_s'] * 1000:.2f} ms) "
            f"-> ratio {fr:.2f}x; items pulled by then: {first['produced_at_first']} "
            f"(window {2 * CONCURRENCY})"
        )
    print(f"total {total:.0f} s")
    return 0 if not (small["errors"] or large["errors"]) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--small", type=int, default=10_000, help="items in the small RSS run")
    parser.add_argument("--large", type=int, default=100_000, help="items in the large RSS run")
    parser.add_argument("--first-n", type=int, default=10_000, help="batch size for the first-result run")
    parser.add_argument(
        "--model-ms", type=float, default=20.0, help="server delay for the second first-result run"
    )
    parser.add_argument("--loop", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--child-timeout", type=float, default=300.0)
    # internal: one measurement in this (fresh) process
    parser.add_argument("--child", choices=("rss", "first"), help=argparse.SUPPRESS)
    parser.add_argument("-n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    parser.add_argument("--jpeg", help=argparse.SUPPRESS)
    parser.add_argument("--singles", type=int, default=200, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
