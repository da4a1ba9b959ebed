"""An image's size from the first bytes of its base64, without decoding the whole image.

The gateway refuses images over its pixel limit before they reach a backend.
Decoding every data URL in full and opening it with Pillow costs more than the
rest of a request's trip through the gateway, so the common formats' headers
(JPEG, PNG, WebP, GIF) are read from a prefix here; anything else falls back to
decoding the whole image and reading its header with Pillow.
"""

from __future__ import annotations

import base64
import binascii
import struct

from ..errors import InputError
from ..images import wrap_encoded

__all__ = ["image_size"]

#: base64 characters decoded first (a multiple of 4): most JPEG headers end within 3 KB.
_FIRST = 4096
#: then this many (EXIF and ICC blocks may push a JPEG's frame header to ~64 KB).
_SECOND = 96 * 1024
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})


def _header_size(data: bytes) -> tuple[int, int] | None:
    """``(width, height)`` from the header of a JPEG / PNG / WebP / GIF prefix; ``None`` if not there."""
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 4 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            (length,) = struct.unpack(">H", data[i + 2 : i + 4])
            if marker in _SOF:
                if i + 9 > len(data):
                    return None
                height, width = struct.unpack(">HH", data[i + 5 : i + 9])
                return width, height
            i += 2 + length
        return None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8X":
            width = 1 + int.from_bytes(data[24:27], "little")
            height = 1 + int.from_bytes(data[27:30], "little")
            return width, height
        if kind == b"VP8L" and data[20] == 0x2F:
            bits = int.from_bytes(data[21:25], "little")
            return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
    return None


def image_size(b64: str, source: str) -> tuple[int, int]:
    """The pixel size of the image in base64 text *b64* (a data URL's payload).

    Raises:
        InputError: Not base64, or not an image whose size can be read.
    """
    for end in (_FIRST, _SECOND):
        if len(b64) <= end:
            break
        try:
            found = _header_size(base64.b64decode(b64[:end]))
        except (binascii.Error, ValueError):  # e.g. line breaks in the base64: decode it all below
            break
        if found is not None:
            return found
    try:
        data = base64.b64decode(b64)
    except (binascii.Error, ValueError):
        raise InputError(f"{source} is not valid base64", source=source) from None
    found = _header_size(data)
    if found is not None:
        return found
    img = wrap_encoded(data, source=source)  # other formats: Pillow reads the header
    return img.width, img.height
