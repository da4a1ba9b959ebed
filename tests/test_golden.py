"""The formats users depend on, pinned by checked-in files (``tests/golden/``).

Results JSONL, the Colour Narrator XMP sidecar and ``<image>.cn_metadata.json``
as ImageWorks' Colour Narrator reads them today (namespace
``http://imageworks.ai/color-narrator/1.0/``, ``metadata_version "1.0"``; see
PROTOCOLS.md).  What the code writes is compared with these files, never with
constants imported from the code, so a renamed key, a reordered field or a
changed namespace fails here.  Values that differ on every run (timestamps,
durations, the server's port) are replaced by placeholders before comparing.

To change a format on purpose: regenerate with ``IMAGEWORKS_WRITE_GOLDEN=1``,
then review the diff of ``tests/golden/`` as a format change users will see.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli, show

from imageworks_core.outputs import NarrationRecord, write_json_sidecar, write_xmp_sidecar

GOLDEN = Path(__file__).parent / "golden"
SAMPLE = Path(__file__).resolve().parents[1] / "samples" / "mono_neutral.jpg"
WRITE = os.environ.get("IMAGEWORKS_WRITE_GOLDEN") == "1"

_PLACEHOLDERS = [
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00"), "<TIMESTAMP>"),
    (re.compile(r"127\.0\.0\.1:\d+"), "127.0.0.1:<PORT>"),
    (
        re.compile(r'("(?:processing_time|queue_time|latency|vlm_processing_time)": )[0-9.e-]+'),
        r"\1<SECONDS>",
    ),
    (re.compile(r'("resolved_path": ")[^"]*(/photos/[^"]*")'), r"\1<TMP>\2"),
    (re.compile(r"(<cn:vlmProcessingTime>)[0-9.e-]+(</cn:vlmProcessingTime>)"), r"\1<SECONDS>\2"),
]


def normalise(text: str) -> str:
    for pattern, repl in _PLACEHOLDERS:
        text = pattern.sub(repl, text)
    return text


def check_golden(written: Path, name: str, *, volatile: bool = True) -> None:
    text = written.read_text(encoding="utf-8")
    if volatile:
        text = normalise(text)
    golden = GOLDEN / name
    if WRITE:
        golden.write_text(text, encoding="utf-8", newline="")
    assert golden.is_file(), f"no golden file {golden} (IMAGEWORKS_WRITE_GOLDEN=1 writes it)"
    expected = golden.read_text(encoding="utf-8")
    assert text == expected, f"{written.name} differs from {golden}:\n{text}"


def test_describe_writes_the_golden_files(tmp_path: Path, faulty: Any) -> None:
    """A real ``imageworks describe`` run: the three files it writes, byte for byte (placeholders aside)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    photo = Path(shutil.copy2(SAMPLE, photos / SAMPLE.name))
    faulty.script([], default={"fault": "ok", "content": "A quiet grey street & a <lit> window."})
    argv = ["--vlm-backend", "openai", "--vlm-base-url", faulty.v1, "--vlm-model", "fake-vlm"]
    proc = run_cli(tmp_path, "describe", "photos", *argv, "--output", "results.jsonl")
    assert proc.returncode == 0, show(proc)
    check_golden(tmp_path / "results.jsonl", "describe-results.jsonl")
    check_golden(photo.with_suffix(".xmp"), "describe-mono_neutral.xmp")
    check_golden(
        photo.with_name(photo.name + ".cn_metadata.json"), "describe-mono_neutral.jpg.cn_metadata.json"
    )


def test_every_colour_narrator_field_is_written_as_golden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """All optional Colour Narrator fields set (confidence, mono level, analyses, colour regions)."""
    record = NarrationRecord(
        description="A red barn & a <blue> sky",
        vlm_model="qwen2.5-vl-7b",
        vlm_processing_time=2.25,
        processing_timestamp=datetime(2025, 3, 4, 5, 6, 7, 123456, tzinfo=UTC),
        confidence_score=0.87,
        mono_contamination_level=0.125,
        hue_analysis="warm reds",
        chroma_analysis="high chroma",
        validation_status="passed",
        color_regions=("red barn", "blue & green <sky>"),
    )
    image = tmp_path / "barn.jpg"
    shutil.copy2(SAMPLE, image)
    monkeypatch.chdir(tmp_path)  # source_file is written as given: keep it relative
    xmp = write_xmp_sidecar(Path("barn.jpg"), record)
    sidecar = write_json_sidecar(Path("barn.jpg"), record)
    check_golden(tmp_path / xmp, "full-barn.xmp", volatile=False)
    check_golden(tmp_path / sidecar, "full-barn.jpg.cn_metadata.json", volatile=False)


@pytest.mark.skipif(sys.platform == "win32", reason="golden files use LF line ends")
def test_golden_files_are_the_colour_narrator_format() -> None:
    """A reader's sanity check of the checked-in files themselves (not of the code)."""
    xmp = (GOLDEN / "full-barn.xmp").read_text(encoding="utf-8")
    assert 'xmlns:cn="http://imageworks.ai/color-narrator/1.0/"' in xmp
    for prop in (
        "description",
        "confidenceScore",
        "processingTimestamp",
        "monoContaminationLevel",
        "vlmModel",
        "vlmProcessingTime",
        "hueAnalysis",
        "chromaAnalysis",
        "validationStatus",
        "colorRegions",
    ):
        assert f"<cn:{prop}>" in xmp, prop
    assert "<rdf:Bag>" in xmp
    meta = (GOLDEN / "full-barn.jpg.cn_metadata.json").read_text(encoding="utf-8")
    assert '"metadata_version": "1.0"' in meta and '"source_file": "barn.jpg"' in meta
    # the results JSONL a Colour Narrator run writes: image, prompt, model, base URL, description,
    # processing time and error, under these names, whatever else a record carries
    for line in (GOLDEN / "describe-results.jsonl").read_text(encoding="utf-8").splitlines():
        for key in ("image", "prompt", "model", "base_url", "description", "processing_time", "error"):
            assert f'"{key}": ' in line, key
