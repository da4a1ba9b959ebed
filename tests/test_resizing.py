"""Tests of imageworks_core.resizing: the SIMD resizer agrees with Pillow's, in every mode and thread."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from imageworks_core import resizing
from tests.conftest import require


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return 10 * math.log10(255**2 / max(float((diff**2).mean()), 1e-12))


def textured(size: tuple[int, int], mode: str = "RGB", seed: int = 0) -> Image.Image:
    """Gradients plus detail at several scales, so that a wrong filter or offset shows in the PSNR."""
    width, height = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [
        128 + 60 * np.sin(x / 17 + c) * np.cos(y / 23 - c) + 30 * np.sin((x + 2 * y) / 5 + c)
        for c in range(4)
    ]
    pixels = np.stack(planes, axis=-1) + rng.normal(0, 4, (height, width, 1))
    rgba = Image.fromarray(pixels.clip(0, 255).astype(np.uint8), "RGBA")
    return rgba if mode == "RGBA" else rgba.convert(mode)


@pytest.fixture
def pillow_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(resizing, "_fast_module", lambda: None)
    yield


def fast_available() -> bool:
    return resizing._fast_module() is not None


def test_the_fast_resizer_is_installed_where_wheels_exist() -> None:
    # core's dependency marker installs it on x86-64 Linux; a silent fallback would hide a 5x loss
    import platform
    import sys

    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert fast_available()
        assert resizing.resizer_name().startswith("cykooz-resizer ")


def test_pillow_fallback_is_named(pillow_only: None) -> None:
    assert resizing.resizer_name().startswith("Pillow")


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA"])
@pytest.mark.parametrize(("source", "target"), [((1500, 1000), (1224, 816)), ((3000, 2000), (300, 200))])
def test_fast_and_pillow_agree(mode: str, source: tuple[int, int], target: tuple[int, int]) -> None:
    require(fast_available(), "cykooz-resizer is not installed on this platform")
    frame = textured(source, mode)
    fast = resizing.resize(frame, target)
    reference = frame.resize(target, Image.Resampling.BICUBIC)  # the same Catmull-Rom filter, exact
    assert fast.mode == mode and fast.size == target
    assert psnr(fast, reference) > 45, (mode, source, target)


def test_pillow_fallback_is_used_without_the_fast_module(pillow_only: None) -> None:
    frame = textured((900, 600))
    out = resizing.resize(frame, (300, 200))
    assert psnr(out, frame.resize((300, 200), Image.Resampling.BICUBIC)) > 45  # reducing_gap: near-exact


def test_crop_box_matches_pillow() -> None:
    frame = textured((1500, 1000))
    box = (10.0, 20.5, 1490.0, 990.25)  # what draft() returns when sizes do not divide evenly
    out = resizing.resize(frame, (740, 485), box)
    reference = frame.resize((740, 485), Image.Resampling.BICUBIC, box=box)
    assert psnr(out, reference) > 45
    whole = resizing.resize(frame, (740, 485), (0, 0, 1500, 1000))  # the full box is no box
    assert psnr(whole, frame.resize((740, 485), Image.Resampling.BICUBIC)) > 45


def test_transparent_pixels_do_not_bleed_their_colour() -> None:
    # left half opaque green, right half fully transparent *red*: premultiplied resizing keeps
    # the edge green; a naive per-channel resize would blend red into it
    frame = Image.new("RGBA", (400, 100), (255, 0, 0, 0))
    frame.paste((0, 255, 0, 255), (0, 0, 200, 100))
    out = resizing.resize(frame, (100, 25))
    for x in range(45, 55):
        red, green, _, alpha = out.getpixel((x, 12))
        if alpha > 16:
            assert red <= 8 and green >= 240, (x, red, green, alpha)


@pytest.mark.parametrize(
    ("source", "target"), [((1, 1), (1, 1)), ((3, 2), (1, 1)), ((10000, 1), (1000, 1)), ((1, 9000), (1, 900))]
)
def test_degenerate_shapes(source: tuple[int, int], target: tuple[int, int]) -> None:
    frame = Image.new("RGB", source, (10, 200, 30))
    out = resizing.resize(frame, target)
    assert out.size == target
    assert out.getpixel((0, 0)) == (10, 200, 30)


def test_concurrent_threads_each_get_their_own_resizer() -> None:
    frames = [textured((800, 600), seed=seed) for seed in range(4)]
    expected = [resizing.resize(frame, (400, 300)).tobytes() for frame in frames]
    results: dict[tuple[int, int], bytes] = {}
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for round_ in range(10):
                index = (worker + round_) % len(frames)
                results[worker, round_] = resizing.resize(frames[index], (400, 300)).tobytes()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert all(data == expected[(worker + round_) % 4] for (worker, round_), data in results.items())
    assert len(results) == 40
