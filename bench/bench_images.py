"""Benchmark: imageworks_core.images.prepare_image against the plain Pillow approach.

Generates N photo-like 24-megapixel JPEGs (smooth gradients, shapes and sensor-like
noise, about 5-6 MB each; cached in the temp folder) and, in the same run, times

* plain:   ``Image.open(p).convert("RGB").resize(target, LANCZOS)``, exactly the
           baseline the issue names (pixels only: no encoding), and
* project: ``prepare_image(p)`` with the default ~1 MP budget, the whole pipeline
           up to the JPEG bytes (draft decode + SIMD bicubic + orientation + encode),

both to the same target size, interleaved image by image.  It prints per-image
milliseconds, the speed ratio (goal: project >= 5x plain), the PSNR of the
project's output against the plain resize (the PSNR of plain's pixels after the
same q90 JPEG encoding is shown as the floor that encoding alone sets), and
images/s with 1 and 2 worker threads through ``aprepare_image``.  It also times,
on the first image, the resizers that could follow ``draft()`` (pixels only) and
the draft decode alone, which is the floor of any draft-based pipeline.

Run:  .venv/bin/python bench/bench_images.py [--count 6] [--repeat 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import anyio
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from imageworks_core.images import DEFAULT_MAX_PIXELS, aprepare_image, prepare_image
from imageworks_core.resizing import resize, resizer_name

T = TypeVar("T")
SIZE = (6000, 4000)
QUALITY = 90
CACHE_VERSION = "v1"


def make_photo(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """Gradients + blurred shapes + luminance and chroma noise: compresses like a real photo."""
    rng = np.random.default_rng(seed)
    width, height = size
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :]
    base = np.empty((height, width, 3), np.float32)
    for channel in range(3):
        a, b, c, d = rng.uniform(-1, 1, 4)
        base[..., channel] = 128 + 60 * a * x + 50 * b * y + 30 * np.sin(12.6 * (c * x + d * y) + channel)
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        cx, cy, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(50, 800))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((cx - r, cy - r // 2, cx + r, cy + r), fill=colour)
    pixels = np.asarray(im.filter(ImageFilter.GaussianBlur(3)), np.int16)
    pixels += rng.normal(0, 4.5, (height, width, 1)).astype(np.int16)  # luminance noise
    pixels += rng.normal(0, 2.7, (height, width, 3)).astype(np.int16)  # chroma noise
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def ensure_images(count: int, folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        path = folder / f"photo_{index:02d}.jpg"
        if not path.exists():
            started = time.perf_counter()
            partial = path.with_suffix(".part")
            make_photo(1000 + index).save(partial, "JPEG", quality=92)
            os.replace(partial, path)
            print(f"  generated {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {_since(started):.0f} ms")
        paths.append(path)
    return paths


def plain(path: Path, size: tuple[int, int]) -> Image.Image:
    return Image.open(path).convert("RGB").resize(size, Image.Resampling.LANCZOS)


def encode(im: Image.Image) -> bytes:
    """The project's encoder settings, to show what JPEG alone costs in PSNR."""
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", quality=QUALITY)
    return buffer.getvalue()


def best_of(repeat: int, work: Callable[[], T]) -> tuple[float, T]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(_since(started))
    assert result is not None
    return min(times), result


def _since(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def psnr(a: Image.Image, b: Image.Image) -> float:
    if a.size != b.size:
        a = a.resize(b.size, Image.Resampling.LANCZOS)
    diff = np.asarray(a.convert("RGB"), np.float64) - np.asarray(b.convert("RGB"), np.float64)
    return 10 * math.log10(255**2 / max(float(np.mean(diff**2)), 1e-12))


def decoded(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


ROW = "{:<14}{:>5}{:>10}{:>12}{:>8}{:>10}{:>12}{:>8}"


def compare(paths: list[Path], repeat: int) -> list[tuple[float, float, float, float]]:
    """Per image: (plain ms, project ms, PSNR of project output, PSNR of plain's own JPEG)."""
    print("\nPSNR is against plain's LANCZOS pixels; 'plain JPEG' is those pixels as a q90 JPEG, the floor.")
    print(ROW.format("image", "MB", "plain ms", "project ms", "ratio", "PSNR dB", "plain JPEG", "out KB"))
    rows = []
    for path in paths:
        prepared = prepare_image(path)  # warm the page cache and the resizer
        size = (prepared.width, prepared.height)
        project_times, plain_times = [], []
        for _ in range(repeat):  # interleaved, so a noisy neighbour hurts both sides alike
            project_ms, prepared = best_of(1, functools.partial(prepare_image, path))
            plain_ms, ideal = best_of(1, functools.partial(plain, path, size))
            project_times.append(project_ms)
            plain_times.append(plain_ms)
        project_ms, plain_ms = min(project_times), min(plain_times)
        quality, floor = psnr(decoded(prepared.data), ideal), psnr(decoded(encode(ideal)), ideal)
        rows.append((plain_ms, project_ms, quality, floor))
        cells = (f"{path.stat().st_size / 1e6:.1f}", f"{plain_ms:.0f}", f"{project_ms:.0f}")
        scores = (f"{plain_ms / project_ms:.2f}x", f"{quality:.1f}", f"{floor:.1f}")
        print(ROW.format(path.name, *cells, *scores, f"{len(prepared.data) / 1e3:.0f}"))
    return rows


async def _run_all(paths: list[Path], workers: int) -> None:
    limiter = anyio.CapacityLimiter(workers)
    async with anyio.create_task_group() as group:
        for path in paths:
            group.start_soon(functools.partial(aprepare_image, path, limiter=limiter))


def images_per_second(paths: list[Path], workers: int, rounds: int) -> float:
    batch = paths * rounds
    started = time.perf_counter()
    anyio.run(_run_all, batch, workers)
    return len(batch) / (_since(started) / 1000)


def explore(path: Path) -> dict[str, float]:
    """Time draft() followed by each resizer; return each one's PSNR vs plain's full-size LANCZOS."""
    prepared = prepare_image(path)
    size = (prepared.width, prepared.height)
    ideal = Image.open(path).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    print(f"\nafter draft() ({path.name}, pixels before encoding, best of 3):")
    resizers: dict[str, Callable[[Image.Image, tuple[float, float, float, float] | None], Image.Image]] = {
        f"project: {resizer_name()}": lambda im, box: resize(im, size, box)
    }
    for name in ("LANCZOS", "BICUBIC", "BILINEAR"):
        method = Image.Resampling[name]
        resizers[f"Pillow {name}"] = lambda im, box, method=method: im.resize(size, method, box=box)
    scores = {}
    for name, resizer in resizers.items():

        def work(resizer: Callable[..., Image.Image] = resizer) -> Image.Image:
            im = Image.open(path)
            box = im.draft("RGB", size)
            return resizer(im, box[1] if box else None)

        ms, out = best_of(3, work)
        scores[name] = psnr(out, ideal)
        print(f"  draft + {name:<42}{ms:6.0f} ms  PSNR {scores[name]:5.1f} dB")
    ms, _ = best_of(3, lambda: _decode_only(path, size))
    print(f"  draft decode alone {ms:4.0f} ms (the floor: entropy decoding is not scaled)")
    ms, _ = best_of(3, lambda: _decode_only(path, (size[0] // 2, size[1] // 2)))
    print(f"  1/8 decode alone   {ms:4.0f} ms (about the entropy decoding itself)")
    return scores


def _decode_only(path: Path, size: tuple[int, int]) -> Image.Image:
    im = Image.open(path)
    im.draft("RGB", size)
    im.load()
    return im


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=6, help="number of 24 MP images (default 6)")
    parser.add_argument("--repeat", type=int, default=3, help="timings are the best of this many runs")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images for images/s")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / f"imageworks-bench-{CACHE_VERSION}"
    )
    args = parser.parse_args(argv)

    print(f"images: {args.count} x {SIZE[0]}x{SIZE[1]} JPEG in {args.cache}; budget {DEFAULT_MAX_PIXELS} px")
    print(f"resizer: {resizer_name()}")
    paths = ensure_images(args.count, args.cache)
    rows = compare(paths, args.repeat)
    resample_psnr = next(iter(explore(paths[0]).values()))
    one = images_per_second(paths, 1, args.rounds)
    two = images_per_second(paths, 2, args.rounds)
    print(
        f"\nthreads (aprepare_image, {os.cpu_count()} CPUs): "
        f"1 worker {one:.1f} img/s, 2 workers {two:.1f} img/s"
    )
    plain_ms = statistics.median(r[0] for r in rows)
    project_ms = statistics.median(r[1] for r in rows)
    quality = statistics.median(r[2] for r in rows)
    excess = statistics.median(r[3] - r[2] for r in rows)
    print(
        f"\nSUMMARY plain {plain_ms:.0f} ms/img, project {project_ms:.0f} ms/img: "
        f"{plain_ms / project_ms:.2f}x faster (goal >= 5x); "
        f"PSNR vs plain: resampling {resample_psnr:.1f} dB, "
        f"end to end {quality:.1f} dB ({excess:.2f} dB below plain's pixels as a q{QUALITY} JPEG); "
        f"2 threads vs 1: {two / one:.2f}x"
    )


if __name__ == "__main__":
    main()
