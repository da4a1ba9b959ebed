"""Size and render time of the ``imageworks compare`` report for 500 images x 3 candidates.

Makes 500 small distinct JPEG thumbnails (as a run leaves in ``DIR/thumbs``)
and a results file with 500 images x 3 candidates x 1 repeat of realistic
records (answers of 40-90 words that differ between candidates, one candidate
failing 5 % of the images), then times:

* build: reading the results, the statistics and writing ``report.html`` +
  ``summary.json`` (what ``imageworks compare --from`` does);
* browser: headless Chromium (Debian's ``chromium``) loading the page and
  dumping its DOM, and rendering a full 1280 px screenshot, against an empty
  page as the peer (Chromium's own start-up).

It prints the page size (and the share taken by thumbnails) and the times.

Run:  .venv/bin/python bench/bench_report.py [--images 500] [--candidates 3]
"""

from __future__ import annotations

import argparse
import io
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

from imageworks_core.compare.records import load_results
from imageworks_core.compare.report import Comparison, write_report
from imageworks_core.compare.thumbs import thumb_path

TEXT = (
    "a grey cat sits on a red sofa beside the window while soft evening light falls across "
    "the room and the shadows deepen toward the corner where an old lamp stands quietly"
)
WORDS = TEXT.split(" ")


def thumbnail(i: int) -> bytes:
    im = Image.new("RGB", (160, 107), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
    draw = ImageDraw.Draw(im)
    for k in range(6):
        draw.ellipse((k * 25, (i + k * 13) % 80, k * 25 + 40, (i + k * 13) % 80 + 30), fill=(k * 40, 200, 90))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=70)
    return buf.getvalue()


def make_results(folder: Path, images: int, candidates: int) -> Path:
    rng = random.Random(7)
    thumbs = folder / "thumbs"
    thumbs.mkdir(parents=True)
    results = folder / "results.jsonl"
    with results.open("w") as fh:
        for c in range(candidates):
            for i in range(images):
                key = f"photos/entry_{i:04d}.jpg"
                if c == 0:
                    thumb_path(thumbs, key).write_bytes(thumbnail(i))
                failed = c == candidates - 1 and i % 20 == 0
                words = rng.sample(WORDS, k=min(len(WORDS), rng.randint(20, 30))) * 3
                text = " ".join(words[: rng.randint(40, 90)])
                latency = rng.lognormvariate(0.3 + 0.4 * c, 0.3)
                tokens = len(text.split()) * 4 // 3
                record = {
                    "image": key,
                    "prompt": "Describe this photograph in two or three sentences.",
                    "template": "describe",
                    "backend": ["vllm", "lmdeploy", "triton"][c % 3],
                    "model": f"model-{c}",
                    "base_url": f"http://gpu{c}:8000/v1",
                    "description": None if failed else text,
                    "processing_time": round(latency, 4),
                    "usage": None if failed else {"prompt_tokens": 900, "completion_tokens": tokens},
                    "attempts": [{"backend": "vllm", "latency": latency, "error": None}],
                    "error": "HTTP 500 from the server" if failed else None,
                    "candidate": f"stack-{c}",
                    "repeat": 0,
                    "ttft": None if failed else round(latency * 0.2, 4),
                    "queue_time": 0.0,
                    "elapsed": round(i * 0.4 * (1 + c), 4),
                    "error_type": "BackendServerError" if failed else None,
                    "timestamp": "2026-01-01T00:00:00+00:00",
                }
                fh.write(json.dumps(record) + "\n")
    return results


def chromium_seconds(page: Path, tmp: Path, *args: str, repeats: int = 3) -> float:
    exe = shutil.which("chromium")
    assert exe
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                f"--user-data-dir={tmp / 'profile'}",
                *args,
                page.as_uri(),
            ],
            capture_output=True,
            check=True,
            timeout=300,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--candidates", type=int, default=3)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="imageworks-bench-report-"))
    results = make_results(work / "run", args.images, args.candidates)
    builds = []
    for _ in range(3):
        started = time.perf_counter()
        comparison = Comparison(load_results([str(results)]))
        html, _ = write_report(
            comparison, work / "out", generated="now", title="bench", thumb_dirs=[results.parent / "thumbs"]
        )
        builds.append(time.perf_counter() - started)
    size = html.stat().st_size
    thumbs = sum(len(thumbnail(i)) for i in range(args.images)) * 4 / 3
    print(f"{args.images} images x {args.candidates} candidates")
    print(f"report.html: {size / 1e6:.2f} MB ({thumbs / size:.0%} thumbnails as data: URLs)")
    print(f"build (read results + stats + write report): {statistics.median(builds) * 1000:.0f} ms")
    if shutil.which("chromium"):
        empty = work / "empty.html"
        empty.write_text("<!DOCTYPE html><title>x</title>")
        base = chromium_seconds(empty, work, "--dump-dom")
        dom = chromium_seconds(html, work, "--dump-dom")
        shot_args = ("--screenshot=" + str(work / "s.png"), "--window-size=1280,4000")
        shot = chromium_seconds(html, work, *shot_args)
        print(
            f"chromium --dump-dom: {dom:.2f}s (empty page {base:.2f}s: +{dom - base:.2f}s for the report); "
            f"screenshot 1280x4000: {shot:.2f}s"
        )
    else:
        print("chromium not installed: browser times skipped", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
