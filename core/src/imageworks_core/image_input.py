"""An image source read, and every way it can be bad input, said clearly.

``read_source`` reads a file (or takes bytes) without following a FIFO or a
device into a hang; the ``*_error`` functions turn what went wrong (a missing
file, a broken link, a directory, a decompression bomb, truncated or corrupt
data, text or an unsupported format) into one ``InputError`` that names the
file, the cause and, where there is one, the fix.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from typing import Final

from PIL import Image, UnidentifiedImageError

from imageworks_core.errors import InputError

__all__ = [
    "decode_error",
    "link_error",
    "printable_path",
    "read_source",
    "sniff_format",
    "unknown_format_error",
]

_FORMAT_NAMES: Final = "JPEG, PNG, WebP and TIFF"
_MAGIC: Final = {  # first bytes -> format (RIFF/WebP and ISO-BMFF are checked in sniff_format)
    b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF",
    b"GIF8": "GIF", b"BM": "BMP", b"%PDF": "PDF", b"8BPS": "Photoshop", b"\x00\x00\x01\x00": "ICO",
    b"\xff\x0a": "JPEG XL", b"\x00\x00\x00\x0cJXL ": "JPEG XL", b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
}  # fmt: skip


def printable_path(path: str) -> str:
    """Return *path* fit for a message: undecodable bytes as ``\\xNN``, control characters escaped."""
    if path.startswith("<") and path.endswith(">"):
        return path
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def read_source(source: str | os.PathLike[str] | bytes) -> tuple[str, bytes]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise InputError("<bytes>: image data is empty (0 bytes)", source="<bytes>")
        return "<bytes>", data
    path = os.fsdecode(os.fspath(source))
    return path, _read_file(path)


def _read_file(path: str) -> bytes:
    shown = printable_path(path)
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)  # a FIFO must not block
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _open_error(path, exc) from exc
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise _directory_error(path)
        if not stat.S_ISREG(mode):
            raise InputError(f"{shown}: not a regular file (a FIFO, socket or device)", source=path)
        with open(fd, "rb", closefd=False) as fh:
            data = fh.read()
    except OSError as exc:
        raise InputError(f"{shown}: cannot read the file: {exc.strerror or exc}", source=path) from exc
    finally:
        os.close(fd)
    if not data:
        raise InputError(
            f"{shown}: file is empty (0 bytes)", source=path, hint="re-copy or re-export the image"
        )
    return data


def link_error(path: str, exc: OSError | None = None) -> InputError | None:
    """A symbolic link that leads nowhere (a loop, a missing target, a path too long), or ``None``.

    *exc*: the error opening or stat-ing *path* gave, when already known.
    """
    if exc is None:
        try:
            os.stat(path)
        except OSError as err:
            exc = err
        else:
            return None
    shown = printable_path(path)
    if exc.errno == errno.ELOOP:
        return InputError(
            f"{shown}: symbolic link loop (the link leads back to itself)",
            source=path,
            hint="fix or remove the link",
        )
    if exc.errno == errno.ENAMETOOLONG:
        return InputError(
            f"{shown}: path too long ({exc.strerror})", source=path, hint="move the image to a shorter path"
        )
    if isinstance(exc, FileNotFoundError) and os.path.islink(path):
        target = printable_path(os.path.realpath(path))
        return InputError(
            f"{shown}: broken symbolic link (its target {target} does not exist)",
            source=path,
            hint="fix or remove the link",
        )
    return None


def _open_error(path: str, exc: OSError) -> InputError:
    shown = printable_path(path)
    link = link_error(path, exc)
    if link is not None:
        return link
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return InputError(f"{shown}: no such file", source=path, hint="check the path and its spelling")
    if isinstance(exc, IsADirectoryError) or os.path.isdir(path):
        return _directory_error(path)
    if isinstance(exc, PermissionError):
        return InputError(
            f"{shown}: permission denied", source=path, hint="make the file readable (e.g. chmod +r)"
        )
    return InputError(f"{shown}: cannot open the file: {exc.strerror or exc}", source=path)


def _directory_error(path: str) -> InputError:
    return InputError(
        f"{printable_path(path)}: is a directory, not an image file",
        source=path,
        hint="pass the files, or expand folders with imageworks_core.discovery.iter_image_paths",
    )


def _bomb_error(name: str, exc: Exception) -> InputError:
    found = re.search(r"\((\d+) pixels\)", str(exc))
    needed = int(found.group(1)) if found else 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return InputError(
        f"{printable_path(name)}: refusing to decode a possible decompression bomb ({exc})",
        source=name,
        hint=(
            "if the file is trusted, raise Pillow's limit before preparing it, e.g. "
            f"PIL.Image.MAX_IMAGE_PIXELS = {needed}; never disable it for untrusted input"
        ),
    )


def decode_error(name: str, data: bytes, exc: Exception) -> InputError:
    shown = printable_path(name)
    if isinstance(exc, Image.DecompressionBombError):
        return _bomb_error(name, exc)
    if isinstance(exc, UnidentifiedImageError):
        return unknown_format_error(name, data)
    if isinstance(exc, EOFError) or "truncated" in str(exc).lower():
        return InputError(
            f"{shown}: image data is truncated (the file ends before the image does)",
            source=name,
            hint="re-copy or re-download the file; the copy you have is incomplete",
        )
    detail = str(exc) or type(exc).__name__
    return InputError(f"{shown}: image data is corrupt and cannot be decoded ({detail})", source=name)


def unknown_format_error(name: str, data: bytes) -> InputError:
    shown = printable_path(name)
    if _looks_like_text(data[:512]):
        return InputError(f"{shown}: not an image, the file contains text", source=name)
    found = sniff_format(data)
    if found in ("JPEG", "PNG", "TIFF", "WebP"):
        return InputError(f"{shown}: looks like {found} but its header is damaged or cut short", source=name)
    what = f"{found} image" if found else "unrecognised data"
    return InputError(
        f"{shown}: unsupported image format ({what}); supported formats are {_FORMAT_NAMES}",
        source=name,
        hint="convert it to JPEG or PNG first",
    )


def _looks_like_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # only a character cut at the end of the sample is forgiven
            return False
        text = head[: exc.start].decode("utf-8")
    return bool(text) and all(ch.isprintable() or ch in "\t\r\n\f" for ch in text)


def sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if data[4:8] == b"ftyp":
        return "AVIF" if data[8:12] in (b"avif", b"avis") else "HEIF/HEIC"
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)
