"""Helpers shared by the output writers: text cleaning, JSON encoding, paths, times.

Two encodings of "difficult" text are decided here, once:

* XML (XMP): XML 1.0 cannot carry most C0 control characters, U+FFFE/U+FFFF or
  lone surrogates at all.  :func:`xml_safe_text` replaces lone surrogates with
  U+FFFD and drops the forbidden characters; TAB, LF and CR are kept.
* JSON: :func:`dumps_json` writes UTF-8 (``ensure_ascii=False``); surrogate
  pairs split in two code points are joined and lone surrogates (broken model
  text, or what non-UTF-8 file names become after :func:`os.fsdecode`, PEP 383)
  become U+FFFD, so strict parsers (``jq``, Go, Rust) accept every file.  The
  results JSONL keeps an undecodable file name recoverable in an extra
  ``path_bytes_b64`` field (see ``jsonl.py``).
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import UTC, datetime
from pathlib import PurePath

from imageworks_core.errors import OutputError

__all__ = [
    "OutputError",
    "dumps_json",
    "finite_or_none",
    "has_surrogates",
    "iso_utc",
    "path_text",
    "to_utc",
    "unicode_safe",
    "xml_safe_text",
]

# Everything outside the XML 1.0 ``Char`` production, surrogates excluded
# (those are handled first, see xml_safe_text).
_XML_FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def xml_safe_text(text: str) -> str:
    """Return *text* reduced to characters that XML 1.0 can carry.

    Surrogate pairs that arrive as two code points are joined, lone surrogates
    become U+FFFD, and C0 controls other than TAB/LF/CR plus U+FFFE/U+FFFF are
    dropped.  Everything else (emoji, C1 controls, markup-like text) is kept;
    escaping is the serialiser's job.
    """
    if _SURROGATE.search(text):
        text = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return _XML_FORBIDDEN.sub("", text)


def unicode_safe(text: str) -> str:
    """*text* with surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if _SURROGATE.search(text):
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


def has_surrogates(text: str) -> bool:
    """Whether *text* holds surrogate code points (e.g. a non-UTF-8 file name after ``os.fsdecode``)."""
    return bool(_SURROGATE.search(text))


def dumps_json(obj: object, *, indent: int | None = None) -> str:
    """Serialise *obj* as JSON text that always encodes to valid UTF-8.

    Non-ASCII characters are written as themselves; lone surrogates (which
    strict JSON parsers reject) become U+FFFD.  Non-finite floats are refused.
    """
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, indent=indent, default=_json_default)
    # A raw surrogate can only sit inside a JSON string literal here.
    return unicode_safe(text)


def _json_default(obj: object) -> object:
    if isinstance(obj, PurePath):
        return path_text(obj)
    if isinstance(obj, datetime):
        return iso_utc(obj)
    if isinstance(obj, tuple | set | frozenset):
        return list(obj)
    if isinstance(obj, bytes):
        return os.fsdecode(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def path_text(path: str | bytes | os.PathLike[str] | os.PathLike[bytes]) -> str:
    """The path as ``str``; undecodable bytes become lone surrogates (PEP 383)."""
    return os.fsdecode(path)


def to_utc(value: datetime) -> datetime:
    """*value* as an aware UTC datetime; a naive value is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def iso_utc(value: datetime | None = None) -> str:
    """ISO 8601 text of *value* (default: now) in UTC, e.g. ``2025-01-31T12:00:00.123456+00:00``."""
    return to_utc(value if value is not None else datetime.now(UTC)).isoformat()


def finite_or_none(value: float | None) -> float | None:
    """``float(value)``, or ``None`` for ``None``, NaN and infinities."""
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None
