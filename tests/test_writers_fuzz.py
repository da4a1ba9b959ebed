"""Fuzzing the output writers with hostile Unicode (issue 13.6): every file parses strictly.

Hypothesis draws model answers and file names from all of Unicode, weighted
towards what breaks writers: lone surrogates, C0/C1 controls, U+FFFE/U+FFFF,
``]]>``, the XMP packet's own end tag, entities and quotes.  For each, the XMP
sidecar, the JSON sidecar and a results-JSONL line are written; every JSON
file must be valid UTF-8 JSON without lone surrogates (what ``jq`` and other
strict parsers demand), the XMP must parse as XML, and exiftool must read the
description back (once for all examples, to keep the test fast).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from imageworks_core.outputs import (
    JsonlWriter,
    NarrationRecord,
    write_json_sidecar,
    write_xmp_sidecar,
)

NASTY_PIECES = [
    "]]>",
    "<![CDATA[",
    "</x:xmpmeta>",
    '<?xpacket end="w"?>',
    "&amp;",
    "&#0;",
    '"',
    "'",
    "\\",
    "\x00",
    "\x1b[2J",
    "\x7f",
    "\x85",
    "\x9b",
    "\r\n",
    "\r",
    "\ufffe",
    "\uffff",
    "\ud800",
    "\udfff",
    "\udcff",
    "\ud83d\ude00",  # a pair split in two code points
    "\U0001f308",
    "\u202e",
    "\u2028",
]

any_char = st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF)
texts = st.lists(st.one_of(st.sampled_from(NASTY_PIECES), st.text(any_char, max_size=8)), max_size=12).map(
    "".join
)
name_bytes = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\x00" not in b)


def _unicode_safe(text: str) -> str:
    """What a strict JSON file can hold of *text*: pairs joined, lone surrogates as U+FFFD."""
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _xml_expected(text: str) -> str:
    """What XML 1.0 can carry of *text*: U+FFFD for lone surrogates, forbidden controls dropped."""
    return re.sub("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]", "", _unicode_safe(text))


def _strict(obj: Any) -> None:
    if isinstance(obj, str):
        obj.encode("utf-8")  # raises on a lone surrogate
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _strict(k)
            _strict(v)
    elif isinstance(obj, list):
        for v in obj:
            _strict(v)


def _read_json(path: Path) -> Any:
    data = json.loads(path.read_bytes().decode("utf-8"))  # strict UTF-8
    _strict(data)
    return data


def test_writers_survive_hostile_unicode(tmp_path: Path) -> None:
    base = tmp_path / "fuzz"
    base.mkdir()
    written: list[tuple[Path, str]] = []
    counter = iter(range(10**6))

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(text=texts, raw_name=name_bytes)
    def one(text: str, raw_name: bytes) -> None:
        folder = base / str(next(counter))
        folder.mkdir()
        name = os.fsdecode(raw_name.replace(b".", b"_") + b".jpg")
        image = folder / name
        try:
            Image.new("RGB", (8, 8)).save(image, "JPEG")
        except (OSError, UnicodeEncodeError):
            return  # a name this file system refuses is not the writers' problem
        description = "d:" + text  # never blank, never number-like for exiftool's JSON
        record = NarrationRecord(description=description, vlm_model=text or "m", vlm_processing_time=1.0)

        meta_path = write_json_sidecar(image, record)
        meta = _read_json(meta_path)
        assert meta["description"] == _unicode_safe(description)
        assert meta["vlm_model"] == _unicode_safe(text or "m")

        results = folder / "r.jsonl"
        with JsonlWriter(results) as writer:
            writer.write({"image": image, "description": description, "error": None})
        [line] = results.read_bytes().splitlines()
        row = json.loads(line.decode("utf-8"))
        _strict(row)
        assert row["description"] == _unicode_safe(description)
        if "image_bytes_b64" in row:
            assert base64.b64decode(row["image_bytes_b64"]) == os.fsencode(image)
        else:
            assert row["image"] == os.fsdecode(image)

        xmp = write_xmp_sidecar(image, record)
        ET.fromstring(xmp.read_bytes())  # strict XML 1.0
        written.append((xmp, description))

    one()
    assert written
    exe = shutil.which("exiftool")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("exiftool is required in CI")
        pytest.skip("exiftool not installed")
    proc = subprocess.run(
        [exe, "-j", "-XMP-dc:Description", *(os.fspath(p) for p, _ in written)],
        capture_output=True,
        timeout=300,
    )
    tags = json.loads(proc.stdout.decode("utf-8"))
    # keyed by the example's folder (exiftool rewrites non-UTF-8 file names in its output)
    by_file = {os.path.basename(os.path.dirname(t["SourceFile"])): t for t in tags}
    assert len(by_file) == len(written), proc.stderr
    for path, description in written:
        got = by_file[path.parent.name].get("Description")
        assert got == _xml_expected(description), (path, description, got)
