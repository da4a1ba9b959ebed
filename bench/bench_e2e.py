"""End-to-end benchmark of the main job: describing big photos vs sending pre-encoded images.

Starts ``tests/servers/fast_openai.py`` (a canned OpenAI-compatible server that
costs almost no CPU; ``--delay-ms`` makes every answer take that long, without
blocking, as a real VLM would), then, for each delay, times through the Python
API with the backend at concurrency 16:

* paths:    ``Client.map(paths)`` over N real 24-megapixel JPEGs (~6 MB each,
            photo-like, generated once and cached by ``bench/bench_images.py``):
            each is read, draft-decoded, resized to ~1 MP and re-encoded in worker
            threads, then sent;
* prepared: ``Client.map(PreparedImage.from_bytes(jpeg))`` over N copies of a
            ~1 MP JPEG: the same requests with no preparation at all;
* pipeline: ``run_describe`` (what ``imageworks describe --concurrency 16`` runs)
            over the same N photos: paths + results JSONL + XMP and JSON sidecars.

It prints images/s for each, the ratio paths / prepared (goal >= 0.8: preparing
images must not be what limits a run) and the preparation-only rate (all the
photos through ``aprepare_image`` with the dispatcher's thread cap, no server).
With a 0 ms server the ratio only measures preparation against a server that
answers instantly, so it is shown for reference; a VLM answer takes seconds.
With N photos at concurrency c the prepared run needs about ceil(N/c) answer
times, the paths run about N/P + one answer time (P = preparation rate), so the
ratio rises with the server's answer time; it also prints the break-even time
c/P beyond which preparation no longer limits a long run.

Run:  .venv/bin/python bench/bench_e2e.py [--count 24] [--delay-ms 0,500,1000,2000] [--repeats 2]
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for extra in (str(ROOT), str(BENCH_DIR)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

from bench_images import CACHE_VERSION, ensure_images  # noqa: E402

from imageworks_core import Client  # noqa: E402
from imageworks_core.describe import DescribeOptions, run_describe  # noqa: E402
from imageworks_core.images import DEFAULT_MAX_PIXELS, PreparedImage, aprepare_image, prepare_image  # noqa: E402
from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402

FAST_SERVER = ROOT / "tests" / "servers" / "fast_openai.py"
PROMPT = "Describe this photograph in two or three sentences."


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def make_client(base_url: str, concurrency: int) -> Client:
    """The generic backend at *base_url*, isolated from every config file and IMAGEWORKS_* variable."""
    return Client(
        backend="openai",
        overrides={
            "concurrency": concurrency,
            "backends": {"openai": {"base_url": base_url, "model": "fake-vlm"}},
        },
        env={},
        user_file=False,
        project_file=False,
    )


async def _map_all(client: Client, items: Sequence[Any]) -> int:
    ok = 0
    async with client.map(items, prompt=PROMPT) as results:
        async for result in results:
            if result.error is not None:
                raise RuntimeError(f"{result.id}: {result.error}")
            ok += 1
    return ok


async def _timed(work: Callable[[], Awaitable[int]], expected: int) -> float:
    started = time.perf_counter()
    done = await work()
    elapsed = time.perf_counter() - started
    if done != expected:
        raise RuntimeError(f"expected {expected} results, got {done}")
    return elapsed


async def measure(
    base_url: str,
    paths: list[Path],
    prepared: list[PreparedImage],
    concurrency: int,
    repeats: int,
    scratch: Path,
) -> dict[str, float]:
    """Best-of-*repeats* wall seconds of each variant, alternating their order."""
    n = len(paths)
    best = {"paths": float("inf"), "prepared": float("inf"), "pipeline": float("inf")}
    folder = scratch / "pipeline"
    folder.mkdir(exist_ok=True)
    for path in paths:  # sidecars land beside the links, never in the image cache
        link = folder / path.name
        if not link.exists():
            link.symlink_to(path)
    async with make_client(base_url, concurrency) as client:
        await _map_all(client, prepared[:1])  # warm up: plugin, pools, connection
        for round_ in range(repeats):
            order = ["paths", "prepared", "pipeline"]
            if round_ % 2:
                order.reverse()
            for kind in order:
                if kind == "paths":
                    work = functools.partial(_map_all, client, paths)
                elif kind == "prepared":
                    work = functools.partial(_map_all, client, prepared)
                else:
                    work = functools.partial(_pipeline, client, folder, scratch / f"results-{round_}.jsonl")
                best[kind] = min(best[kind], await _timed(work, n))
    return best


async def _pipeline(client: Client, folder: Path, output: Path) -> int:
    opts = DescribeOptions(paths=(str(folder),), output=output, overwrite=True, preflight=True)
    summary = await run_describe(client, opts)
    if summary.failed:
        raise RuntimeError(f"pipeline failures: {summary.failed[:3]}")
    return len(summary.ok)


def prep_only_rate(paths: list[Path]) -> float:
    """Images/s of preparation alone, with the dispatcher's thread cap (min(4, CPUs))."""
    threads = max(1, min(4, os.cpu_count() or 1))

    async def run() -> None:
        limiter = anyio.CapacityLimiter(threads)
        async with anyio.create_task_group() as group:
            for path in paths:
                group.start_soon(functools.partial(aprepare_image, path, limiter=limiter))

    started = time.perf_counter()
    anyio.run(run)
    return len(paths) / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=24, help="number of 24 MP photos (default 24)")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    parser.add_argument(
        "--delay-ms",
        default="0,500,1000,2000",
        help="server answer times to measure, comma-separated (default 0,500,1000,2000); the last is the "
        "headline",
    )
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs (default 2)")
    parser.add_argument("--loop", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / f"imageworks-bench-{CACHE_VERSION}"
    )
    args = parser.parse_args(argv)
    delays = [int(x) for x in args.delay_ms.split(",") if x.strip()]

    _log(f"photos: {args.count} x 24 MP JPEG in {args.cache} (generated on first use)")
    paths = ensure_images(args.count, args.cache)
    mb = statistics.mean(p.stat().st_size for p in paths) / 1e6
    one_mp = prepare_image(paths[0], max_pixels=DEFAULT_MAX_PIXELS)
    prepared = [PreparedImage.from_bytes(one_mp.data, source=f"prepared-{i:03d}") for i in range(len(paths))]
    prep_rate = prep_only_rate(paths)
    print(
        f"{len(paths)} photos of {mb:.1f} MB; prepared stand-in {one_mp.width}x{one_mp.height} "
        f"({len(one_mp.data) / 1e3:.0f} KB); concurrency {args.concurrency}; {args.loop}; "
        f"{os.cpu_count()} CPUs; best of {args.repeats}"
    )
    threads = max(1, min(4, os.cpu_count() or 1))
    print(f"preparation only (aprepare_image, {threads} threads): {prep_rate:.1f} img/s")
    header = ("server delay", "paths img/s", "prepared img/s", "ratio", "pipeline img/s")
    print("\n{:>12} {:>12} {:>15} {:>6} {:>15}".format(*header))
    rows = []
    with tempfile.TemporaryDirectory(prefix="imageworks-bench-e2e-") as tmp:
        for delay in delays:
            port = free_port()
            argv_server = python_argv(FAST_SERVER, "--port", str(port), "--delay-ms", str(delay))
            with ServerProcess(argv_server, ready_url=f"http://127.0.0.1:{port}/health", name="fast_openai"):
                scratch = Path(tmp) / f"d{delay}"
                scratch.mkdir()
                best = anyio.run(
                    measure,
                    f"http://127.0.0.1:{port}/v1",
                    paths,
                    prepared,
                    args.concurrency,
                    args.repeats,
                    scratch,
                    backend=args.loop,
                )
            rate = {k: len(paths) / v for k, v in best.items()}
            ratio = rate["paths"] / rate["prepared"]
            rows.append((delay, ratio))
            print(
                f"{delay:>9} ms {rate['paths']:>12.1f} {rate['prepared']:>15.1f} "
                f"{ratio:>6.2f} {rate['pipeline']:>15.1f}"
            )
    # Preparation keeps up with the server once it prepares `concurrency` images per answer time.
    break_even_ms = 1000 * args.concurrency / prep_rate
    print(
        f"\npreparation keeps {args.concurrency} requests busy when answers take >= {break_even_ms:.0f} ms "
        f"(concurrency / preparation rate); below that, preparing is the limit"
    )
    ratios = ", ".join(f"{r:.2f} at {d} ms" for d, r in rows)
    delay, ratio = rows[-1]
    print(
        f"SUMMARY paths/prepared throughput ratio {ratio:.2f} at a {delay} ms server (goal >= 0.8; "
        f"all: {ratios}); preparation alone {prep_rate:.1f} img/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
