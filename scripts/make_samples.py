"""Generate the sample images in samples/ (deterministic: fixed seeds, no downloads).

Five 640x480 photo-like JPEGs of one synthetic landscape (sky, sun, two hill
ranges, trees, film grain): four monochrome renderings, three of them with a
deliberate colour cast, and one colour rendering.

Run:  .venv/bin/python scripts/make_samples.py [--out samples]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SIZE = (640, 480)
SEED = 20240601
QUALITY = 88

Toner = Callable[[np.ndarray], np.ndarray]


def landscape(seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """Luminance (0..1, float) and a region map (0 sky, 1 far hills, 2 near hills, 3 trees, 4 sun)."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    luma = 0.92 - 0.35 * (y / height)  # bright sky fading down
    region = np.zeros((height, width), np.uint8)
    sun = np.hypot(x - 470, y - 120)
    luma = np.where(sun < 38, 1.0, luma + 0.25 * np.exp(-(((sun - 38) / 60) ** 2)) * (sun >= 38))
    region[sun < 38] = 4
    for index, (base, amp, tone) in enumerate(((270, 45, 0.55), (350, 60, 0.3))):
        ridge = base + amp * np.sin(x / (90 + 40 * index) + rng.uniform(0, 6))
        ridge += 12 * np.sin(x / 23 + rng.uniform(0, 6)) + 5 * np.sin(x / 7 + rng.uniform(0, 6))
        below = y > ridge
        depth = np.clip((y - ridge) / height, 0, 1)
        texture = 0.025 * np.sin(x / 11 + y / 5) + 0.03 * np.sin(x / 37 - y / 19)
        luma = np.where(below, tone - 0.25 * depth + texture, luma)
        region[below] = 1 + index
    luma = _trees(luma, region, rng)
    soft = Image.fromarray((luma * 255).clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1.2))
    grain = rng.normal(0, 0.022, luma.shape)
    return np.clip(np.asarray(soft) / 255 + grain, 0, 1), region


def _trees(luma: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    mask = Image.new("L", SIZE, 0)
    draw = ImageDraw.Draw(mask)
    for _ in range(14):
        cx = int(rng.integers(20, SIZE[0] - 20))
        ground = int(np.argmax(region[:, cx] == 2)) or SIZE[1] - 60
        tall, wide = int(rng.integers(40, 90)), int(rng.integers(14, 30))
        draw.polygon([(cx, ground - tall), (cx - wide, ground + 6), (cx + wide, ground + 6)], fill=255)
    trees = np.asarray(mask) > 0
    region[trees] = 3
    return np.where(trees, 0.12 + 0.04 * luma, luma)


def neutral(luma: np.ndarray) -> np.ndarray:
    return np.stack([luma] * 3, axis=-1)


def split_sepia_blue(luma: np.ndarray) -> np.ndarray:
    """Blue shadows, sepia highlights (about +/- 10 levels of cast at the ends)."""
    high = np.clip((luma - 0.5) * 2, 0, 1)[..., None]
    low = np.clip((0.5 - luma) * 2, 0, 1)[..., None]
    sepia, blue = np.array([0.045, 0.012, -0.04]), np.array([-0.03, -0.005, 0.045])
    return luma[..., None] + high * sepia + low * blue


def green_shadows(luma: np.ndarray) -> np.ndarray:
    """A residual green cast that fades out above mid-grey (about +6 levels of G in deep shadow)."""
    low = np.clip((0.55 - luma) / 0.55, 0, 1)[..., None]
    return luma[..., None] + low * np.array([-0.012, 0.024, -0.012])


def sepia(luma: np.ndarray) -> np.ndarray:
    """Classic warm toning over the whole tonal range."""
    return luma[..., None] * np.array([1.07, 0.96, 0.78]) + np.array([0.02, 0.01, 0.0])


def colour(luma: np.ndarray, region: np.ndarray) -> np.ndarray:
    tints = {
        0: (0.72, 0.85, 1.12),  # sky
        1: (0.75, 0.95, 0.85),  # far hills
        2: (0.8, 1.15, 0.55),  # near hills
        3: (0.55, 0.85, 0.45),  # trees
        4: (1.05, 1.0, 0.75),  # sun
    }
    tint = np.zeros((*luma.shape, 3))
    for key, value in tints.items():
        tint[region == key] = value
    return luma[..., None] * tint


def save(rgb: np.ndarray, path: Path) -> None:
    Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
        path, "JPEG", quality=QUALITY, optimize=True
    )
    print(f"{path}  {path.stat().st_size / 1024:.0f} KB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Generate the sample images.")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "samples")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    luma, region = landscape()
    toners: dict[str, Toner] = {
        "mono_neutral.jpg": neutral,
        "mono_split_sepia_blue.jpg": split_sepia_blue,
        "mono_green_shadows.jpg": green_shadows,
        "mono_sepia.jpg": sepia,
    }
    for name, toner in toners.items():
        save(toner(luma), args.out / name)
    save(colour(luma, region), args.out / "colour_landscape.jpg")


if __name__ == "__main__":
    main()
