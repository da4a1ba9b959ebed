"""Thumbnails for the report: made once while the image is prepared, kept beside the results.

A live run writes ``DIR/thumbs/<name>.jpg`` for each image from the frame it
prepares anyway (upright, sRGB, already at about 1 MP: a cheap reduce, no
second decode); a report rebuilt with ``--from`` uses those files, so it embeds
the same bytes.  For results without thumbnails (``describe``'s), they are made
from the original files, when those can still be read.
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ..errors import InputError
from ..images import prepare_image, prepare_image_seen
from ..models import PreparedImage

__all__ = ["THUMB_PIXELS", "THUMB_SIDE", "load_thumbnails", "prepare_with_thumbnail", "thumb_path"]

log = logging.getLogger("imageworks.compare")

THUMB_SIDE = 150
THUMB_PIXELS = 160 * 160  # thumbnails made from original files (results without thumbs/)


def thumb_path(folder: Path, image: str) -> Path:
    """Where the thumbnail of *image* (its key in the records) lives in *folder*."""
    digest = hashlib.sha256(image.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return folder / f"{digest}.jpg"


def _small_jpeg(data: bytes) -> bytes:
    """A thumbnail of an already prepared (oriented, sRGB) image.

    A JPEG is decoded straight at the smallest DCT scale (1/2 .. 1/8) that still
    covers the thumbnail: a 1 MP image at 1/8 gives 153 x 102, enough for a
    150 px thumbnail (the entropy decoding is most of what is left).
    """
    with Image.open(io.BytesIO(data)) as im:
        scale = min(1.0, THUMB_SIDE / max(im.width, im.height, 1))
        im.draft("RGB", (max(1, round(im.width * scale)), max(1, round(im.height * scale))))
        small = im.convert("RGB")
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def _thumb_of_frame(frame: Image.Image) -> bytes:
    """A thumbnail of a decoded frame: a box reduce by a whole factor, then a small bilinear fit."""
    factor = max(1, max(frame.width, frame.height) // THUMB_SIDE)
    small = frame.reduce(factor) if factor > 1 else frame.copy()
    small.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    if small.mode != "RGB":
        small = small.convert("RGB")
    buffer = io.BytesIO()
    small.save(buffer, "JPEG", quality=70)
    return buffer.getvalue()


def prepare_with_thumbnail(path: str | Path, max_pixels: int, folder: Path, image: str) -> PreparedImage:
    """Prepare *path* for sending and store its report thumbnail in *folder* (blocking; run it in a thread).

    The thumbnail comes from the frame being prepared; a JPEG passed through
    untouched is decoded once more at its smallest DCT scale.  A thumbnail that
    cannot be made or written is logged, never the image's failure: the report
    shows "no thumbnail" and the run goes on.

    Raises:
        InputError: The image itself cannot be prepared.
    """
    made: list[bytes] = []

    def keep(frame: Image.Image) -> None:
        try:
            made.append(_thumb_of_frame(frame))
        except (OSError, ValueError) as exc:  # never the image's failure: fall back below
            log.debug("%s: thumbnail from the frame failed: %s", image, exc)

    prepared = prepare_image_seen(path, max_pixels=max_pixels, seen=keep)
    try:
        data = made[0] if made else _small_jpeg(prepared.data)
        folder.mkdir(parents=True, exist_ok=True)
        thumb_path(folder, image).write_bytes(data)
    except (OSError, ValueError) as exc:
        log.warning("%s: no thumbnail for the report: %s", image, exc)
    return prepared


def load_thumbnails(images: Iterable[str], folders: Iterable[Path]) -> dict[str, str | None]:
    """A JPEG ``data:`` URL per image: its thumbnail in *folders*, else made from the file, else ``None``."""
    places = list(folders)
    out: dict[str, str | None] = {}
    for image in images:
        data = None
        for folder in places:
            try:
                data = thumb_path(folder, image).read_bytes()
                break
            except OSError:
                continue
        if data is None:
            try:
                data = prepare_image(image, max_pixels=THUMB_PIXELS, quality=70).data
            except (InputError, OSError, ValueError):
                data = None
        out[image] = None if data is None else PreparedImage(data=data, mime="image/jpeg").data_url()
    return out
