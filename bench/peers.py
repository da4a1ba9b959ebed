"""Peer clients for the dispatcher benchmark.

Each peer sends *n* chat-completion requests, every one carrying the same
~30 KB photo-like JPEG as a base64 data URL (plus a per-item text part), at
concurrency *c* against an OpenAI-compatible ``base_url`` (the server root,
e.g. ``http://127.0.0.1:8000``; ``/v1`` is appended where a peer needs it).
Concurrency is a fixed pool of *c* worker tasks pulling item numbers from a
shared counter, so no peer holds *n* pending coroutines at once.

Every peer returns ``PeerResult(wall_s, cpu_s, ok, ...)``: wall-clock seconds
and process CPU seconds (``time.process_time``, all threads) over the measured
run only -- client construction, warm-up and teardown are outside it.

Peers: ``openai_default``, ``openai_aiohttp``, ``raw_httpx``, ``raw_aiohttp``,
``litellm_router`` and, when ``bench/ours.py`` exists, ``ours``.

``bench/ours.py`` contract: define ``run_ours(base_url: str, n: int, c: int, *,
warmup: int, deadline_s: float)`` (a coroutine function or a plain function)
returning a ``PeerResult`` or any ``(wall_s, cpu_s, ok)`` tuple; it may use
``image_data_url()``, ``build_messages()`` and ``measure()`` from this module.

CLI (prints one JSON line)::

    python bench/peers.py --base-url http://127.0.0.1:PORT -n 2000 -c 64 --peer raw_aiohttp

LiteLLM pins ``openai<3`` so it lives in ``.venv-bench``; run the
``litellm_router`` peer with ``.venv-bench/bin/python bench/peers.py ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import importlib.util
import inspect
import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple

MODEL = "fake-vlm"
PROMPT = "Describe this image in one sentence."
JPEG_TARGET_BYTES = 30_000
REQUEST_TIMEOUT_S = 60.0
BENCH_DIR = Path(__file__).resolve().parent


class PeerResult(NamedTuple):
    wall_s: float
    cpu_s: float
    ok: int
    errors: int = 0
    first_error: str | None = None


# -- the payload ------------------------------------------------------------------------------------


@functools.cache
def jpeg_bytes(target: int = JPEG_TARGET_BYTES) -> bytes:
    """A deterministic photo-like 640x480 JPEG of about *target* bytes.

    Smooth multi-scale noise (sky/ground gradients, blobs, some texture) rather
    than white noise, so the encoder behaves as it does on a real photo.
    """
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(20240611)
    h, w = 480, 640
    yy = np.linspace(0.0, 1.0, h)[:, None]
    xx = np.linspace(0.0, 1.0, w)[None, :]
    img = np.empty((h, w, 3), dtype=np.float64)
    img[..., 0] = 90 + 110 * yy + 20 * xx
    img[..., 1] = 120 + 60 * yy - 30 * xx
    img[..., 2] = 200 - 120 * yy
    for cells, amplitude in ((4, 60.0), (12, 30.0), (40, 14.0), (160, 6.0)):
        grid = rng.normal(0.0, 1.0, size=(cells * 3 // 4 + 2, cells + 2, 3))
        layer = Image.fromarray(((grid - grid.min()) / np.ptp(grid) * 255).astype(np.uint8))
        smooth = np.asarray(layer.resize((w, h), Image.Resampling.BICUBIC), dtype=np.float64) / 255 - 0.5
        img += amplitude * smooth
    for _ in range(12):  # a few soft objects
        cy, cx, radius = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(20, 90)
        mask = np.exp(-(((yy * h - cy) ** 2 + (xx * w - cx) ** 2) / (2 * radius**2)))
        img += mask[..., None] * rng.uniform(-70, 70, size=3)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")

    def encode(quality: int) -> bytes:
        out = io.BytesIO()
        pil.save(out, format="JPEG", quality=quality)
        return out.getvalue()

    lo, hi = 5, 95
    while lo < hi:  # lowest quality whose size reaches the target
        mid = (lo + hi) // 2
        if len(encode(mid)) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [encode(q) for q in {max(5, lo - 1), lo}]
    return min(candidates, key=lambda data: abs(len(data) - target))


@functools.cache
def image_data_url() -> str:
    return "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes()).decode("ascii")


def build_messages(i: int) -> list[dict[str, Any]]:
    """The chat messages for item *i*: a text part naming the item, then the image."""
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": f"{PROMPT} item={i}"},
                {"type": "image_url", "image_url": {"url": image_data_url()}},
            ],
        }
    ]


def build_body(i: int) -> dict[str, Any]:
    return {"model": MODEL, "messages": build_messages(i), "max_tokens": 64, "temperature": 0.0}


def _good_completion(data: Any) -> bool:
    try:
        return bool(data["choices"][0]["message"]["content"])
    except (KeyError, IndexError, TypeError):
        return False


# -- the measured loop ------------------------------------------------------------------------------

OneRequest = Callable[[int], Awaitable[bool]]


async def _pool(
    n: int, c: int, deadline_s: float, one: OneRequest, start: int = 0
) -> tuple[int, int, str | None]:
    """Run items ``start..start+n-1`` through *c* workers; stop taking items after *deadline_s*."""
    counter = start
    stop_at = start + n
    ok = errors = 0
    first_error: str | None = None
    t_end = time.perf_counter() + deadline_s

    async def worker() -> None:
        nonlocal counter, ok, errors, first_error
        while counter < stop_at and time.perf_counter() < t_end:
            i = counter
            counter += 1
            try:
                good = await one(i)
            except Exception as exc:
                good = False
                if first_error is None:
                    first_error = f"{type(exc).__name__}: {exc}"[:300]
            if good:
                ok += 1
            else:
                errors += 1
                if first_error is None:
                    first_error = "bad or empty completion"

    tasks = [asyncio.ensure_future(worker()) for _ in range(max(1, min(c, n)))]
    try:
        # hard bound: in-flight requests get their own timeout on top of the deadline
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=deadline_s + REQUEST_TIMEOUT_S + 10)
    except TimeoutError:
        if first_error is None:
            first_error = "run timed out"
    return ok, errors, first_error


async def measure(
    one: OneRequest, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0
) -> PeerResult:
    """Warm up with *warmup* unmeasured requests, then time *n* requests at concurrency *c*."""
    if warmup > 0:
        await _pool(warmup, min(c, warmup), deadline_s, one, start=10_000_000)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    ok, errors, first_error = await _pool(n, c, deadline_s, one)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return PeerResult(wall, cpu, ok, errors, first_error)


def _v1(base_url: str) -> str:
    return base_url.rstrip("/") + "/v1"


# -- the peers --------------------------------------------------------------------------------------


async def run_openai_default(
    base_url: str, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0
) -> PeerResult:
    """``openai.AsyncOpenAI`` with its default HTTP client, no retries."""
    return await _measure_openai(base_url, n, c, None, warmup=warmup, deadline_s=deadline_s)


async def run_openai_aiohttp(
    base_url: str, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0
) -> PeerResult:
    """``openai.AsyncOpenAI`` over ``httpx_aiohttp.HttpxAiohttpClient`` (aiohttp transport), pool of *c*."""
    import httpx
    from httpx_aiohttp import HttpxAiohttpClient

    http_client = HttpxAiohttpClient(
        limits=httpx.Limits(max_connections=c, max_keepalive_connections=c),
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
    )
    try:
        return await _measure_openai(base_url, n, c, http_client, warmup=warmup, deadline_s=deadline_s)
    finally:
        await http_client.aclose()


async def _measure_openai(
    base_url: str, n: int, c: int, http_client: Any, *, warmup: int, deadline_s: float
) -> PeerResult:
    """Time ``chat.completions.create`` through an ``openai.AsyncOpenAI`` (its own retries off)."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=_v1(base_url),
        api_key="sk-local",
        max_retries=0,
        timeout=REQUEST_TIMEOUT_S,
        http_client=http_client,
    )

    async def one(i: int) -> bool:
        resp = await client.chat.completions.create(model=MODEL, messages=build_messages(i), max_tokens=64)  # type: ignore[arg-type]
        return bool(resp.choices and resp.choices[0].message.content)

    try:
        return await measure(one, n, c, warmup=warmup, deadline_s=deadline_s)
    finally:
        await client.close()


async def run_raw_httpx(
    base_url: str, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0
) -> PeerResult:
    """One shared ``httpx.AsyncClient`` with a pool of *c* connections; JSON built and parsed per request."""
    import httpx

    url = _v1(base_url) + "/chat/completions"
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=c, max_keepalive_connections=c),
        timeout=httpx.Timeout(REQUEST_TIMEOUT_S),
    )

    async def one(i: int) -> bool:
        resp = await client.post(url, json=build_body(i))
        return resp.status_code == 200 and _good_completion(resp.json())

    try:
        return await measure(one, n, c, warmup=warmup, deadline_s=deadline_s)
    finally:
        await client.aclose()


async def run_raw_aiohttp(
    base_url: str, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0
) -> PeerResult:
    """One ``aiohttp.ClientSession`` with ``TCPConnector(limit=c)``; JSON built and parsed per request."""
    import aiohttp

    url = _v1(base_url) + "/chat/completions"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=c), timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    )

    async def one(i: int) -> bool:
        async with session.post(url, json=build_body(i)) as resp:
            if resp.status != 200:
                await resp.read()
                return False
            return _good_completion(await resp.json())

    try:
        return await measure(one, n, c, warmup=warmup, deadline_s=deadline_s)
    finally:
        await session.close()


async def run_litellm_router(
    base_url: str, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0
) -> PeerResult:
    """``litellm.Router`` with one ``openai/fake-vlm`` deployment at the server, no retries."""
    # Never fetch the remote model-cost map (no internet here) and stay quiet.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    os.environ.setdefault("LITELLM_LOG", "ERROR")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    router = litellm.Router(
        model_list=[
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": _v1(base_url),
                    "api_key": "sk-local",
                    "timeout": REQUEST_TIMEOUT_S,
                },
            }
        ],
        num_retries=0,
    )

    async def one(i: int) -> bool:
        resp = await router.acompletion(model=MODEL, messages=build_messages(i), max_tokens=64)
        return bool(resp.choices and resp.choices[0].message.content)  # type: ignore[union-attr]

    return await measure(one, n, c, warmup=warmup, deadline_s=deadline_s)


PeerFn = Callable[..., Awaitable[PeerResult]]

PEERS: dict[str, PeerFn] = {
    "openai_default": run_openai_default,
    "openai_aiohttp": run_openai_aiohttp,
    "raw_httpx": run_raw_httpx,
    "raw_aiohttp": run_raw_aiohttp,
    "litellm_router": run_litellm_router,
}


def ours_available() -> bool:
    return (BENCH_DIR / "ours.py").is_file()


def _load_ours() -> Callable[..., Any]:
    spec = importlib.util.spec_from_file_location("imageworks_bench_ours", BENCH_DIR / "ours.py")
    if spec is None or spec.loader is None:
        raise RuntimeError("bench/ours.py not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.run_ours  # type: ignore[no-any-return]


def peer_names() -> list[str]:
    return [*PEERS, *(["ours"] if ours_available() else [])]


def run_peer(
    name: str, base_url: str, n: int, c: int, *, warmup: int = 0, deadline_s: float = 300.0
) -> PeerResult:
    """Run one peer on a fresh asyncio loop (the stdlib loop: no peer gets uvloop)."""
    if name == "ours":
        fn = _load_ours()
        if not inspect.iscoroutinefunction(fn):
            result = fn(base_url, n, c, warmup=warmup, deadline_s=deadline_s)
            return result if isinstance(result, PeerResult) else PeerResult(*result)

        async def call_ours() -> PeerResult:
            result = await fn(base_url, n, c, warmup=warmup, deadline_s=deadline_s)
            return result if isinstance(result, PeerResult) else PeerResult(*result)

        return asyncio.run(call_ours())
    if name not in PEERS:
        raise SystemExit(f"unknown peer {name!r}; known: {', '.join(peer_names())}")
    return asyncio.run(PEERS[name](base_url, n, c, warmup=warmup, deadline_s=deadline_s))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one benchmark peer; prints one JSON line.")
    parser.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("-n", type=int, default=2000, help="measured requests")
    parser.add_argument("-c", type=int, default=64, help="concurrency (worker tasks / pool size)")
    parser.add_argument("--peer", required=True, help="one of: " + ", ".join([*PEERS, "ours"]))
    parser.add_argument("--warmup", type=int, default=16, help="unmeasured requests sent first")
    parser.add_argument("--deadline-s", type=float, default=300.0, help="stop taking new items after this")
    args = parser.parse_args(argv)

    image_data_url()  # build the JPEG before anything is timed
    result = run_peer(
        args.peer, args.base_url, args.n, args.c, warmup=args.warmup, deadline_s=args.deadline_s
    )
    wall = max(result.wall_s, 1e-9)
    record: dict[str, Any] = {
        "peer": args.peer,
        "n": args.n,
        "c": args.c,
        "wall_s": round(result.wall_s, 4),
        "cpu_s": round(result.cpu_s, 4),
        "req_per_s": round(result.ok / wall, 1),
        "cpu_ms_per_req": round(1000 * result.cpu_s / max(result.ok, 1), 3),
        "ok": result.ok,
        "errors": result.errors,
        "jpeg_bytes": len(jpeg_bytes()),
    }
    if result.first_error:
        record["first_error"] = result.first_error
    print(json.dumps(record), flush=True)
    return 0 if result.ok == args.n else 1


if __name__ == "__main__":
    raise SystemExit(main())
