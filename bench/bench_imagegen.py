"""Image generation through the client vs the diffusers pipeline called directly.

Builds the tiny random-weight Stable Diffusion pipeline (``tests/servers/tiny_sd.py``,
nothing downloaded), then in one process:

* peer: ``pipe(...)`` called directly N times (the pipeline's own time, PNG-encoded
  like the backend does), and
* ours: ``Client.generate_image`` N times on the ``diffusers`` backend (routing,
  dispatcher, worker thread, PNG encoding, result objects),

and prints the per-image wall time of each, the client's overhead per image
(ours minus the pipeline time the backend itself measured), and the process RSS
after the warm-up and after every 25 generations (flat = no leak).

    python bench/bench_imagegen.py            # 100 generations each, 1 step, 32x32
    python bench/bench_imagegen.py -n 200 --steps 2 --size 64
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100, help="generations per side")
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--size", type=int, default=32)
    args = ap.parse_args()

    import anyio
    import torch
    from diffusers import AutoPipelineForText2Image
    from servers import tiny_sd

    from imageworks_core import Client, ImageRequest

    folder = tiny_sd.build(Path(tempfile.mkdtemp(prefix="bench-tiny-sd-")))
    pipe = AutoPipelineForText2Image.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)

    def direct(seed: int) -> bytes:
        g = [torch.Generator(device="cpu").manual_seed(seed)]
        out = pipe(
            prompt=["a test chart"],
            num_inference_steps=args.steps,
            guidance_scale=7.5,
            height=args.size,
            width=args.size,
            generator=g,
        )
        buf = io.BytesIO()
        out.images[0].save(buf, "PNG")
        return buf.getvalue()

    def peer_run() -> float:
        t0 = time.perf_counter()
        for i in range(args.n):
            direct(i)
        return (time.perf_counter() - t0) / args.n

    def in_thread(fn: Any) -> Any:
        # torch runs in a worker thread on both sides, as in the backend: once the main thread
        # has used torch's OpenMP pool, other threads' torch work was ~2x slower here
        box: list[Any] = []
        t = threading.Thread(target=lambda: box.append(fn()))
        t.start()
        t.join()
        return box[0]

    in_thread(lambda: direct(0))  # warm-up
    peer_before = in_thread(peer_run)

    async def ours() -> tuple[float, float, list[tuple[int, float]]]:
        settings = {"model": str(folder), "device": "cpu", "local_files_only": True}
        client = Client(
            backend="diffusers",
            overrides={"backends": {"diffusers": settings}},
            user_file=False,
            project_file=False,
            allow=["diffusers"],
        )
        marks: list[tuple[int, float]] = []
        pipeline_s: list[float] = []
        async with client:
            req = {"steps": args.steps, "size": (args.size, args.size), "guidance": 7.5}
            await client.generate_image(ImageRequest("a test chart", seed=0, **req))  # load + warm-up
            marks.append((0, rss_mb()))
            t0 = time.perf_counter()
            for i in range(args.n):
                r = await client.generate_image(ImageRequest("a test chart", seed=i, **req))
                pipeline_s.append(r.timings["generate"] + r.timings["encode"])
                if (i + 1) % 25 == 0:
                    marks.append((i + 1, rss_mb()))
            wall = (time.perf_counter() - t0) / args.n
        return wall, statistics.fmean(pipeline_s), marks

    wall, own, marks = anyio.run(ours)
    peer_after = in_thread(peer_run)  # again, after ours: the machine's load changes (shared cores)
    peer = min(peer_before, peer_after)
    print(f"tiny SD, {args.steps} step(s), {args.size}x{args.size}, {args.n} generations each, CPU")
    print(
        f"peer  pipe() directly + PNG encode : {peer * 1000:8.2f} ms/image "
        f"(before {peer_before * 1000:.2f}, after {peer_after * 1000:.2f})"
    )
    print(f"ours  Client.generate_image        : {wall * 1000:8.2f} ms/image  (ratio {wall / peer:.3f})")
    print(f"      of which pipeline + encode   : {own * 1000:8.2f} ms/image (measured inside the backend)")
    print(f"      client overhead              : {(wall - own) * 1000:8.2f} ms/image")
    print("RSS MB after generations: " + ", ".join(f"{n}: {mb:.0f}" for n, mb in marks))


if __name__ == "__main__":
    main()
