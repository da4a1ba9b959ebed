"""``--xmp embed`` cost per image: one exiftool process per image (the old way, the peer)
vs a long-lived ``-stay_open`` exiftool (ours), in the same run.

    .venv/bin/python bench/bench_xmp_embed.py [--images 40]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image

from imageworks_core.outputs import NarrationRecord, find_exiftool
from imageworks_core.outputs.embed import _embed_once, _embed_stay_open
from imageworks_core.outputs.exiftool import close_default_pools


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=40)
    args = parser.parse_args()
    exe = find_exiftool()
    record = NarrationRecord("A red barn & a <blue> sky", "bench-model", 1.5, confidence_score=0.9)
    with tempfile.TemporaryDirectory() as tmp:
        images = []
        for i in range(args.images):
            path = Path(tmp, f"img{i}.jpg")
            Image.new("RGB", (1024, 1024), (i % 255, 90, 30)).save(path, "JPEG")
            images.append(path)
        # Warm-up: start the -stay_open process (once per worker, not per image).
        _embed_stay_open(exe, bytes(images[0].absolute()), record, False, "warm-up")
        rows = []
        for name, embed in (
            ("one process per image (old)", _embed_once),
            ("-stay_open (ours)", _embed_stay_open),
        ):
            start = time.perf_counter()
            for image in images:
                status, _, err = embed(exe, bytes(image.absolute()), record, False, str(image))
                assert status == 0, err
            rows.append((name, (time.perf_counter() - start) * 1000 / len(images)))
        close_default_pools()
    for name, ms in rows:
        print(f"{name:30s} {ms:8.2f} ms/image")
    print(f"speed-up: {rows[0][1] / rows[1][1]:.1f}x ({args.images} 1-MP JPEGs, no backup)")


if __name__ == "__main__":
    main()
