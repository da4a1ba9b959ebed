"""Text fit for a terminal: control characters and escape sequences shown, not obeyed.

Model answers, server error bodies and file names can carry ``ESC [ 2 J``
(clear screen), ``ESC ] 0 ; title BEL`` (window title), colours, carriage
returns that overwrite a line, or bidi overrides that reorder it.  Everything
this program writes to a terminal goes through :func:`terminal_safe`, which
writes each such character as a visible escape (``\\x1b``, ``\\u202e``).  The
raw text is kept where it is data (the results JSONL, the sidecars).
"""

from __future__ import annotations

import re

__all__ = ["terminal_safe"]

# C0 controls but TAB and LF, DEL, C1 controls, and the bidi embedding / override / isolate controls.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_UNSAFE_ONE_LINE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal_safe(text: str, *, one_line: bool = False) -> str:
    """*text* with control characters written as visible escapes (TAB and LF kept unless *one_line*).

    Lone surrogates (undecodable file-name bytes, broken model text) are
    escaped too, so printing never fails with ``UnicodeEncodeError``.
    """
    text = (_UNSAFE_ONE_LINE if one_line else _UNSAFE).sub(_escape, text)
    return _SURROGATE.sub(_escape, text)
