"""Request bodies as JSON bytes: orjson where it can, the standard library where it cannot.

A chat request for a 1-MP image is ~1 MB of JSON (the base64 data: URL);
``json.dumps`` spends ~0.2 ms on it, most of our per-request CPU, orjson
~10x less (``bench/bench_json_body.py``).  Both write valid JSON the servers
read the same way (orjson writes UTF-8, the standard library ``\\uXXXX``
escapes).  What orjson refuses (a lone surrogate in a prompt, an integer
beyond 64 bits, a non-string key) is encoded by the standard library as
before.  Output files (results JSONL, sidecars) do not use this: they keep
their own strict encoder.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["encode_body"]

try:
    import orjson
except ImportError:  # a platform without an orjson wheel: the standard library only
    orjson = None  # type: ignore[assignment]


def _stdlib(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def encode_body(obj: Any) -> bytes:
    """*obj* as the UTF-8 JSON body of a request."""
    if orjson is not None:
        try:
            return orjson.dumps(obj)
        except TypeError:  # orjson.JSONEncodeError: see the module docstring
            pass
    return _stdlib(obj)
