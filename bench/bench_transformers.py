"""Benchmark: the in-process transformers backend through ``Client.map`` vs ``model.generate`` by hand.

Builds the tiny random-weight LLaVA of the test suite (``tests/servers/tiny_vlm.py``,
offline, ~0.8 MB) and describes the same N Pillow-made JPEGs (320x240) two ways,
each in its own fresh process so that its peak RSS is its own:

* direct:     a plain loop: ``Image.open`` -> ``processor.apply_chat_template`` ->
              ``processor(...)`` -> ``model.generate(max_new_tokens=T)`` -> decode;
* imageworks: ``Client(backend="transformers")`` + ``client.map(jpeg_bytes, prompt=...)``
              (image preparation in worker threads, dispatcher, the plugin's lock,
              generation in a worker thread);
* prepared:   the same, with the JPEGs handed over as ``PreparedImage``s (no resize and
              re-encode): what the framework costs apart from image preparation.

Both load the model first (not timed) and run one warm-up request, then time N
greedy generations of at most T new tokens.  It prints images/s, generated
tokens/s, peak RSS and RSS after loading per mode, and the overhead ratio
(imageworks seconds / direct seconds; 1.00 = no overhead).  Modes alternate for
``--repeat`` rounds; the best round of each is reported (this machine is shared).
torch gets ``--threads`` threads in both (default 1: steadier on 2 shared cores).

Run:  .venv/bin/python bench/bench_transformers.py [--count 32] [--max-tokens 24] [--repeat 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Describe this image."
MODES = ("direct", "imageworks", "prepared")


def rss_now() -> int:
    with open("/proc/self/statm", "rb") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def model_folder() -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from servers.tiny_vlm import tiny_llava_info

    cache = Path(os.environ.get("IMAGEWORKS_TEST_CACHE", Path(tempfile.gettempdir()) / "imageworks-tests"))
    return tiny_llava_info(cache / "hf-home").snapshot


def images(count: int) -> list[bytes]:
    from PIL import Image, ImageDraw

    out = []
    for i in range(count):
        im = Image.new("RGB", (320, 240), ((37 * i) % 256, (91 * i) % 256, (53 * i + 80) % 256))
        draw = ImageDraw.Draw(im)
        draw.rectangle((20 + i % 50, 30, 160, 200), fill=((200 + 13 * i) % 256, 40, (17 * i) % 256))
        draw.ellipse((150, 60 + i % 40, 300, 220), fill=(30, (120 + 29 * i) % 256, 200))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# ------------------------------------------------------------------ the two modes (child processes)


def run_direct(folder: Path, data: list[bytes], max_tokens: int) -> dict[str, Any]:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, local_files_only=True)
    model = model.eval()
    loaded_rss = rss_now()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]

    def one(jpeg: bytes) -> int:
        image = Image.open(io.BytesIO(jpeg)).convert("RGB")
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=prompt, images=[image], return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_tokens)
        new = out[0, inputs["input_ids"].shape[1] :]
        processor.decode(new, skip_special_tokens=True)
        return int(new.shape[0])

    one(data[0])  # warm-up
    start = time.perf_counter()
    tokens = sum(one(jpeg) for jpeg in data)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "tokens": tokens, "loaded_rss": loaded_rss, "peak_rss": peak_rss()}


def run_imageworks(
    folder: Path, data: list[bytes], max_tokens: int, prepared: bool = False
) -> dict[str, Any]:
    import anyio

    from imageworks_backend_transformers import TransformersBackend
    from imageworks_core import Client, PreparedImage, Request

    async def main() -> dict[str, Any]:
        client = Client(
            plugins=[TransformersBackend()],
            entry_points=False,
            backend="transformers",
            overrides={"backends": {"transformers": {"model": str(folder)}}, "max_tokens": max_tokens},
            user_file=False,
            project_file=False,
        )
        async with client:
            warm = Request(prompt=PROMPT, images=(PreparedImage.from_bytes(data[0]),), max_tokens=max_tokens)
            await client.infer(warm)  # loads the model, warms up
            report = await client.health()
            start = time.perf_counter()
            tokens = 0
            failed = 0
            items = [PreparedImage.from_bytes(d) for d in data] if prepared else data
            async with client.map(items, prompt=PROMPT) as results:
                async for result in results:
                    if result.ok:
                        tokens += result.usage.completion_tokens or 0
                    else:
                        failed += 1
            seconds = time.perf_counter() - start
        return {
            "seconds": seconds,
            "tokens": tokens,
            "failed": failed,
            "loaded_rss": int(report.metrics.get("rss_bytes", 0)),
            "peak_rss": peak_rss(),
        }

    return anyio.run(main)


def child(mode: str, count: int, max_tokens: int) -> None:
    folder = model_folder()
    data = images(count)
    if mode == "direct":
        result = run_direct(folder, data, max_tokens)
    else:
        result = run_imageworks(folder, data, max_tokens, prepared=mode == "prepared")
    print(json.dumps(result))


# ------------------------------------------------------------------ the parent


def spawn(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS=str(args.threads),
        MKL_NUM_THREADS=str(args.threads),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    argv = [sys.executable, __file__, "--child", mode, "--count", str(args.count)]
    argv += ["--max-tokens", str(args.max_tokens)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=32, help="images per run (default 32)")
    parser.add_argument("--max-tokens", type=int, default=24, help="new tokens per image (default 24)")
    parser.add_argument("--repeat", type=int, default=2, help="alternating rounds; best kept (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in both modes (default 1)")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.count, args.max_tokens)
        return
    model_folder()  # build once, outside the timed children
    best: dict[str, dict[str, Any]] = {}
    wall = time.perf_counter()
    for _ in range(args.repeat):
        for mode in MODES:
            r = spawn(mode, args)
            if mode not in best or r["seconds"] < best[mode]["seconds"]:
                best[mode] = r
    print(
        f"tiny LLaVA (random weights, 0.75 MB), CPU, {args.threads} torch thread(s); "
        f"{args.count} JPEGs 320x240, greedy, <= {args.max_tokens} new tokens each; best of {args.repeat}"
    )
    print(f"{'mode':<11} {'images/s':>9} {'tokens/s':>9} {'ms/image':>9} {'RSS loaded':>11} {'peak RSS':>9}")
    for mode in MODES:
        r = best[mode]
        print(
            f"{mode:<11} {args.count / r['seconds']:>9.1f} {r['tokens'] / r['seconds']:>9.0f} "
            f"{1000 * r['seconds'] / args.count:>9.1f} {r['loaded_rss'] / 2**20:>8.0f} MB "
            f"{r['peak_rss'] / 2**20:>6.0f} MB"
        )
    d = best["direct"]
    for mode in MODES[1:]:
        i = best[mode]
        if i.get("failed"):
            print(f"warning: {i['failed']} {mode} request(s) failed")
        per_token = (i["seconds"] / max(1, i["tokens"])) / (d["seconds"] / max(1, d["tokens"]))
        extra_ms = 1000 * (i["seconds"] - d["seconds"]) / args.count
        print(
            f"overhead ratio {mode} / direct: {i['seconds'] / d['seconds']:.2f} "
            f"({extra_ms:+.1f} ms/image; per token {per_token:.2f}); "
            f"peak RSS {(i['peak_rss'] - d['peak_rss']) / 2**20:+.0f} MB"
        )
    print(f"(wall time of the benchmark: {time.perf_counter() - wall:.0f} s)")


if __name__ == "__main__":
    main()
