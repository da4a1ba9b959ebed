"""Thumbnails for the report: made once from the prepared image, kept beside the results.

A live run writes ``DIR/thumbs/<name>.jpg`` for each image from the image it
already prepared (a small decode, not a second read of the original); a report
rebuilt with ``--from`` uses those files, so it embeds the same bytes.  For
results without thumbnails (``describe``'s), they are made from the original
files, when those can still be read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError
from ..images import prepare_image
from ..models import PreparedImage

__all__ = ["THUMB_PIXELS", "load_thumbnails", "thumb_path", "write_thumbnail"]

THUMB_PIXELS = 160 * 160


def thumb_path(folder: Path, image: str) -> Path:
    """Where the thumbnail of *image* (its key in the records) lives in *folder*."""
    digest = hashlib.sha256(image.encode("utf-8", "surrogatepass")).hexdigest()[:20]
    return folder / f"{digest}.jpg"


def write_thumbnail(folder: Path, image: str, prepared: PreparedImage) -> None:
    """Make and store *image*'s thumbnail from its prepared form (blocking; run it in a thread)."""
    folder.mkdir(parents=True, exist_ok=True)
    small = prepare_image(prepared.data, max_pixels=THUMB_PIXELS, quality=70)
    thumb_path(folder, image).write_bytes(small.data)


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
