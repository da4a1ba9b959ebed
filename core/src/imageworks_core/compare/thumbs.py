"""Thumbnails for the report: made once from the prepared image, kept beside the results.

A live run writes ``DIR/thumbs/<name>.jpg`` for each image from the image it
already prepared (a small decode, not a second read of the original); a report
rebuilt with ``--from`` uses those files, so it embeds the same bytes.  For
results without thumbnails (``describe``'s), they are made from the original
files, when those can still be read.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from ..errors import InputError
from ..images import prepare_image
from ..models import PreparedImage

__all__ = ["THUMB_PIXELS", "THUMB_SIDE", "load_thumbnails", "thumb_path", "write_thumbnail"]

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


def write_thumbnail(folder: Path, image: str, prepared: PreparedImage) -> None:
    """Make and store *image*'s thumbnail from its prepared form (blocking; run it in a thread).

    Raises:
        InputError: The prepared image cannot be decoded (it always can, unless it was damaged).
        OSError: The thumbnail cannot be written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        data = _small_jpeg(prepared.data)
    except (OSError, ValueError) as exc:
        raise InputError(f"{image}: cannot make a thumbnail: {exc}", source=image) from None
    thumb_path(folder, image).write_bytes(data)


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
