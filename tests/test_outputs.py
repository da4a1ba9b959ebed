"""Output writers: XMP / JSON sidecars, XMP embedded through exiftool, results JSONL."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import attrs
import pytest
from PIL import Image

from imageworks_core.errors import ImageWorksError, InputError
from imageworks_core.outputs import (
    CN_NAMESPACE,
    JsonlWriter,
    NarrationRecord,
    OutputError,
    atomic_write_bytes,
    completed_images,
    embed_xmp,
    iter_results,
    json_sidecar_path,
    render_xmp,
    write_json_sidecar,
    write_xmp_sidecar,
    xmp_sidecar_path,
)
from imageworks_core.outputs import atomic as atomic_module
from imageworks_core.outputs import json_sidecar as json_sidecar_module

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
DC = "http://purl.org/dc/elements/1.1/"
XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
CN = CN_NAMESPACE

# A model answer that tries everything: markup, the packet's own end tag, entities,
# quotes, CDATA end, forbidden C0 controls, TAB/LF/CR, a lone surrogate, emoji, U+FFFE.
NASTY = (
    "Sky </x:xmpmeta> & <b>bold</b> &amp; \"double\" 'single' ]]> <![CDATA[x]]> "
    "ctl\x00\x01\x08\x0b\x0c\x1b\x1f|del\x7f tab\there\nnew line\r\nCRLF lone CR\r! "
    "\ud800 lone surrogate, \U0001f308 rainbow \U0001f468\u200d\U0001f469 family \ufffe end"
)
# What must come back: forbidden characters dropped, the lone surrogate as U+FFFD.
NASTY_CLEAN = (
    "Sky </x:xmpmeta> & <b>bold</b> &amp; \"double\" 'single' ]]> <![CDATA[x]]> "
    "ctl|del\x7f tab\there\nnew line\r\nCRLF lone CR\r! "
    "\ufffd lone surrogate, \U0001f308 rainbow \U0001f468\u200d\U0001f469 family  end"
)


def make_jpeg(path: Path) -> Path:
    Image.new("RGB", (32, 24), (180, 40, 30)).save(path, "JPEG")
    return path


def full_record(**changes: object) -> NarrationRecord:
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
    return attrs.evolve(record, **changes)


def temp_leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def exiftool() -> str:
    """Path of exiftool; skips without it, except in CI (CI=true), where it fails."""
    exe = shutil.which("exiftool")
    if exe is None:
        if os.environ.get("CI") == "true":
            pytest.fail("exiftool is required in CI: apt-get install -y libimage-exiftool-perl")
        pytest.skip("exiftool not installed (apt-get install libimage-exiftool-perl)")
    return exe


def exif_read(exe: str, path: Path) -> dict[str, object]:
    """Tags exiftool reads from *path*: XMP-dc:Description and every XMP-cn property."""
    out = subprocess.run(
        [exe, "-j", "-n", "-G1", "-a", "-XMP-dc:Description", "-XMP-cn:all", "-XMP-xmp:all", os.fspath(path)],
        capture_output=True,
        check=True,
    )
    [tags] = json.loads(out.stdout.decode("utf-8"))
    return tags


# --------------------------------------------------------------- record & names


def test_record_defaults_and_conversions() -> None:
    before = datetime.now(UTC)
    record = NarrationRecord(description="d", vlm_model="m", vlm_processing_time=1, color_regions=["a", "b"])
    assert before <= record.processing_timestamp <= datetime.now(UTC)
    assert record.processing_timestamp.tzinfo is not None
    assert record.color_regions == ("a", "b")
    assert isinstance(record.vlm_processing_time, float)
    assert record.confidence_score is None and record.hue_analysis is None
    naive = NarrationRecord("d", "m", 1.0, processing_timestamp=datetime(2025, 1, 1, 12))
    assert naive.processing_timestamp == datetime(2025, 1, 1, 12, tzinfo=UTC)
    plus2 = timezone(timedelta(hours=2))
    local = NarrationRecord("d", "m", 1.0, processing_timestamp=datetime(2025, 1, 1, 14, tzinfo=plus2))
    assert local.processing_timestamp.utcoffset() == timedelta(0)
    assert local.processing_timestamp.hour == 12
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.description = "x"  # type: ignore[misc]


def test_sidecar_names() -> None:
    assert xmp_sidecar_path(Path("/p/photo.jpg")) == Path("/p/photo.xmp")
    assert xmp_sidecar_path(Path("/p/IMG_1.CR2")) == Path("/p/IMG_1.xmp")
    assert xmp_sidecar_path(Path("/p/a.b.jpeg")) == Path("/p/a.b.xmp")
    assert json_sidecar_path(Path("/p/photo.jpg")) == Path("/p/photo.jpg.cn_metadata.json")
    assert json_sidecar_path(Path("photo.JPG")) == Path("photo.JPG.cn_metadata.json")


# --------------------------------------------------------------- XMP rendering


def parse_packet(data: bytes) -> ET.Element:
    root = ET.fromstring(data)
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    return root


def cn_text(root: ET.Element, name: str) -> str | None:
    found = root.findall(f".//{{{CN}}}{name}")
    assert len(found) <= 1
    return found[0].text if found else None


def dc_default(root: ET.Element) -> str | None:
    items = root.findall(f".//{{{DC}}}description/{{{RDF}}}Alt/{{{RDF}}}li")
    defaults = [li.text or "" for li in items if li.get(XML_LANG) == "x-default"]
    assert len(defaults) <= 1
    return defaults[0] if defaults else None


def test_render_xmp_all_fields() -> None:
    data = render_xmp(full_record())
    assert data.startswith('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>'.encode())
    assert data.rstrip().endswith(b'<?xpacket end="w"?>')
    assert (
        b'xmlns:x="adobe:ns:meta/"' in data and b'xmlns:cn="http://imageworks.ai/color-narrator/1.0/"' in data
    )
    root = parse_packet(data)
    assert cn_text(root, "description") == "A red barn & a <blue> sky"
    assert cn_text(root, "confidenceScore") == "0.87"
    assert cn_text(root, "processingTimestamp") == "2025-03-04T05:06:07.123456+00:00"
    assert cn_text(root, "monoContaminationLevel") == "0.125"
    assert cn_text(root, "vlmModel") == "qwen2.5-vl-7b"
    assert cn_text(root, "vlmProcessingTime") == "2.25"
    assert cn_text(root, "hueAnalysis") == "warm reds"
    assert cn_text(root, "chromaAnalysis") == "high chroma"
    assert cn_text(root, "validationStatus") == "passed"
    bag = root.findall(f".//{{{CN}}}colorRegions/{{{RDF}}}Bag/{{{RDF}}}li")
    assert [li.text for li in bag] == ["red barn", "blue & green <sky>"]
    assert dc_default(root) == "A red barn & a <blue> sky"


def test_render_xmp_omits_unset_optionals() -> None:
    record = NarrationRecord("only this", "m", 0.5, confidence_score=float("nan"))
    root = parse_packet(render_xmp(record))
    for name in ("confidenceScore", "monoContaminationLevel", "hueAnalysis", "chromaAnalysis"):
        assert cn_text(root, name) is None
    assert cn_text(root, "validationStatus") is None
    assert root.findall(f".//{{{CN}}}colorRegions") == []
    assert cn_text(root, "description") == "only this"


def test_render_xmp_nasty_answer_is_valid_xml() -> None:
    data = render_xmp(full_record(description=NASTY, color_regions=(NASTY,), hue_analysis="\x00"))
    data.decode("utf-8")  # strict UTF-8
    assert data.count(b"</x:xmpmeta>") == 1  # the model's copy is escaped
    root = parse_packet(data)
    assert cn_text(root, "description") == NASTY_CLEAN
    assert dc_default(root) == NASTY_CLEAN
    assert [li.text for li in root.findall(f".//{{{CN}}}colorRegions//{{{RDF}}}li")] == [NASTY_CLEAN]
    assert cn_text(root, "hueAnalysis") is None or cn_text(root, "hueAnalysis") == ""


def test_xmp_sidecar_read_back_by_exiftool(tmp_path: Path, exiftool: str) -> None:
    image = make_jpeg(tmp_path / "photo.jpg")
    sidecar = write_xmp_sidecar(image, full_record(description=NASTY))
    assert sidecar == tmp_path / "photo.xmp"
    tags = exif_read(exiftool, sidecar)
    assert tags["XMP-cn:Description"] == NASTY_CLEAN
    assert tags["XMP-dc:Description"] == NASTY_CLEAN
    assert tags["XMP-cn:ConfidenceScore"] == 0.87
    assert tags["XMP-cn:VlmModel"] == "qwen2.5-vl-7b"
    assert tags["XMP-cn:ColorRegions"] == ["red barn", "blue & green <sky>"]
    assert tags["XMP-cn:ProcessingTimestamp"] == "2025:03:04 05:06:07.123456+00:00"


# --------------------------------------------------------------- merging


LIGHTROOM_SIDECAR = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000">
 <!-- written by a camera raw editor -->
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cn="urn:not-ours">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmlns:iw="http://imageworks.ai/color-narrator/1.0/"
    xmp:Rating="3"
    xmp:Label="two&#10;lines"
    crs:Exposure2012="+0.35"
    iw:vlmModel="stale-model">
   <cn:foreign>keep me, same prefix but another namespace</cn:foreign>
   <dc:subject>
    <rdf:Bag>
     <rdf:li>barn</rdf:li>
     <rdf:li>farm &amp; field</rdf:li>
    </rdf:Bag>
   </dc:subject>
   <dc:description>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">old caption</rdf:li>
     <rdf:li xml:lang="de-DE">alte Beschreibung</rdf:li>
    </rdf:Alt>
   </dc:description>
   <iw:description>stale description</iw:description>
   <iw:colorRegions><rdf:Bag><rdf:li>stale</rdf:li></rdf:Bag></iw:colorRegions>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


def test_merge_into_existing_sidecar_keeps_foreign_properties(tmp_path: Path) -> None:
    image = tmp_path / "IMG_0001.CR2"
    image.write_bytes(b"raw")
    sidecar = xmp_sidecar_path(image)
    sidecar.write_text(LIGHTROOM_SIDECAR, encoding="utf-8")
    record = full_record(description=NASTY, color_regions=("fresh",))
    assert write_xmp_sidecar(image, record) == sidecar

    data = sidecar.read_bytes()
    root = parse_packet(data)
    # Ours replaced: one value each, the new ones.
    assert cn_text(root, "description") == NASTY_CLEAN
    assert cn_text(root, "vlmModel") == "qwen2.5-vl-7b"
    assert [li.text for li in root.findall(f".//{{{CN}}}colorRegions//{{{RDF}}}li")] == ["fresh"]
    assert dc_default(root) == NASTY_CLEAN
    assert b"stale" not in data and b"old caption" not in data
    # Theirs kept, with their prefixes, values and comment.
    descriptions = root.findall(f"{{{RDF}}}RDF/{{{RDF}}}Description")
    assert descriptions[0].get("{http://ns.adobe.com/xap/1.0/}Rating") == "3"
    assert descriptions[0].get("{http://ns.adobe.com/xap/1.0/}Label") == "two\nlines"
    assert descriptions[0].get("{http://ns.adobe.com/camera-raw-settings/1.0/}Exposure2012") == "+0.35"
    assert root.find(".//{urn:not-ours}foreign") is not None
    subjects = root.findall(f".//{{{DC}}}subject/{{{RDF}}}Bag/{{{RDF}}}li")
    assert [li.text for li in subjects] == ["barn", "farm & field"]
    langs = {li.get(XML_LANG): li.text for li in root.findall(f".//{{{DC}}}description//{{{RDF}}}li")}
    assert langs == {"x-default": NASTY_CLEAN, "de-DE": "alte Beschreibung"}
    text = data.decode("utf-8")
    assert 'xmp:Rating="3"' in text and 'crs:Exposure2012="+0.35"' in text
    assert "<!-- written by a camera raw editor -->" in text
    assert 'x:xmptk="Adobe XMP Core 7.0-c000 1.000000"' in text
    assert "xmlns:iw=" not in text  # the unused old binding of our namespace is gone
    assert 'xmlns:cn="urn:not-ours"' in text  # their "cn" prefix, untouched

    # Writing again gives exactly the same file: nothing accumulates.
    write_xmp_sidecar(image, record)
    assert sidecar.read_bytes() == data


# What Lightroom Classic writes for a raw file (trimmed): attributes for simple
# properties, one rdf:Description, no xpacket wrapper.
FOREIGN_ONLY_SIDECAR = """<x:xmpmeta xmlns:x="adobe:ns:meta/" x:xmptk="Adobe XMP Core 7.0-c000 1.000000">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:dc="http://purl.org/dc/elements/1.1/"
    xmlns:crs="http://ns.adobe.com/camera-raw-settings/1.0/"
    xmp:Rating="2"
    crs:WhiteBalance="As Shot">
   <dc:title>
    <rdf:Alt>
     <rdf:li xml:lang="x-default">Barn at dusk</rdf:li>
    </rdf:Alt>
   </dc:title>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
"""


@pytest.mark.parametrize(
    "existing",
    [
        FOREIGN_ONLY_SIDECAR,
        LIGHTROOM_SIDECAR.replace(' xmlns:cn="urn:not-ours"', "").replace("cn:foreign", "crs:foreign"),
    ],
    ids=["lightroom", "stale-prefix"],
)
def test_merged_sidecar_read_by_exiftool(tmp_path: Path, exiftool: str, existing: str) -> None:
    image = tmp_path / "IMG_0001.CR2"
    sidecar = xmp_sidecar_path(image)
    sidecar.write_text(existing, encoding="utf-8")
    write_xmp_sidecar(image, full_record(description="new & shiny"))
    tags = exif_read(exiftool, sidecar)
    assert tags["XMP-cn:Description"] == "new & shiny"  # group named after our prefix
    assert tags["XMP-dc:Description"] == "new & shiny"
    assert tags["XMP-cn:ColorRegions"] == ["red barn", "blue & green <sky>"]
    assert tags["XMP-xmp:Rating"] in (2, 3)


def test_unparseable_sidecar_is_left_untouched(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    sidecar = xmp_sidecar_path(image)
    for junk in (b"<x:xmpmeta><rdf:RDF>truncated", b"\xff\xfe not xml", b"<a>no rdf here</a>"):
        sidecar.write_bytes(junk)
        with pytest.raises(OutputError) as info:
            write_xmp_sidecar(image, full_record())
        assert "left untouched" in str(info.value) and info.value.hint
        assert isinstance(info.value, ImageWorksError)
        assert sidecar.read_bytes() == junk
        assert temp_leftovers(tmp_path) == []


def test_sidecar_with_doctype_is_refused(tmp_path: Path) -> None:
    sidecar = tmp_path / "photo.xmp"
    junk = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaaaaaaaa">]>'
        b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="'
        + RDF.encode()
        + b'">&a;</rdf:RDF></x:xmpmeta>'
    )
    sidecar.write_bytes(junk)
    with pytest.raises(OutputError, match="DOCTYPE"):
        write_xmp_sidecar(tmp_path / "photo.jpg", full_record())
    assert sidecar.read_bytes() == junk


def test_overwrite_false(tmp_path: Path) -> None:
    image = tmp_path / "photo.jpg"
    sidecar = write_xmp_sidecar(image, full_record(description="first"))
    first = sidecar.read_bytes()
    with pytest.raises(OutputError, match="Colour Narrator"):
        write_xmp_sidecar(image, full_record(description="second"), overwrite=False)
    assert sidecar.read_bytes() == first
    # A sidecar with only foreign properties is still merged into.
    other = tmp_path / "other.jpg"
    xmp_sidecar_path(other).write_text(FOREIGN_ONLY_SIDECAR, encoding="utf-8")
    write_xmp_sidecar(other, full_record(description="fresh"), overwrite=False)
    root = parse_packet(xmp_sidecar_path(other).read_bytes())
    assert cn_text(root, "description") == "fresh"
    assert dc_default(root) == "fresh"


def test_blank_sidecar_counts_as_absent(tmp_path: Path) -> None:
    sidecar = tmp_path / "photo.xmp"
    sidecar.write_bytes(b"  \n")
    write_xmp_sidecar(tmp_path / "photo.jpg", full_record())
    assert sidecar.read_bytes() == render_xmp(full_record())


def test_merge_keeps_xml_declaration_and_custom_rdf_prefix(tmp_path: Path) -> None:
    sidecar = tmp_path / "photo.xmp"
    sidecar.write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<x:xmpmeta xmlns:x="adobe:ns:meta/"><R:RDF xmlns:R="{RDF}">'
        '<R:Description R:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmp:Rating="5"/>'
        "</R:RDF></x:xmpmeta>",
        encoding="utf-8",
    )
    write_xmp_sidecar(tmp_path / "photo.jpg", full_record())
    data = sidecar.read_bytes()
    assert data.startswith(b'<?xml version="1.0" encoding="UTF-8"?>')
    root = parse_packet(data)
    assert cn_text(root, "description") == "A red barn & a <blue> sky"
    assert len(root.findall(f"{{{RDF}}}RDF/{{{RDF}}}Description")) == 2


# --------------------------------------------------------------- JSON sidecar


JSON_KEYS = [
    "description",
    "confidence_score",
    "processing_timestamp",
    "mono_contamination_level",
    "vlm_model",
    "vlm_processing_time",
    "hue_analysis",
    "chroma_analysis",
    "validation_status",
    "color_regions",
    "source_file",
    "metadata_version",
]


def test_json_sidecar_name_and_fields(tmp_path: Path) -> None:
    image = make_jpeg(tmp_path / "photo.jpg")
    path = write_json_sidecar(image, full_record(description=NASTY))
    assert path == tmp_path / "photo.jpg.cn_metadata.json"
    raw = path.read_bytes()
    text = raw.decode("utf-8")  # strict UTF-8
    assert "\U0001f308" in text  # ensure_ascii=False
    assert "\\ud800" not in text and "\ufffd" in text  # a lone surrogate: strict parsers refuse it
    data = json.loads(text)
    assert list(data) == JSON_KEYS
    assert data["description"] == NASTY.replace("\ud800", "\ufffd")  # everything else exactly
    assert data["confidence_score"] == 0.87
    assert data["processing_timestamp"] == "2025-03-04T05:06:07.123456+00:00"
    assert data["mono_contamination_level"] == 0.125
    assert data["vlm_model"] == "qwen2.5-vl-7b"
    assert data["vlm_processing_time"] == 2.25
    assert data["hue_analysis"] == "warm reds"
    assert data["chroma_analysis"] == "high chroma"
    assert data["validation_status"] == "passed"
    assert data["color_regions"] == ["red barn", "blue & green <sky>"]
    assert data["source_file"] == os.fspath(image)
    assert data["metadata_version"] == "1.0"


def test_json_sidecar_nulls_and_non_utf8_name(tmp_path: Path) -> None:
    name = os.fsdecode(b"caf\xe9 \xff.jpg")  # Latin-1 bytes: not UTF-8
    image = tmp_path / name
    try:
        make_jpeg(image)
    except (OSError, UnicodeEncodeError):
        pytest.skip("file system does not accept non-UTF-8 names")
    path = write_json_sidecar(image, NarrationRecord("d", "m", 1.0, confidence_score=float("inf")))
    assert os.fsencode(path.name) == b"caf\xe9 \xff.jpg.cn_metadata.json"
    data = json.loads(path.read_bytes().decode("utf-8"))
    assert data["source_file"] == os.fsdecode(
        os.fsencode(image).replace(b"\xe9", b"\xef\xbf\xbd").replace(b"\xff", b"\xef\xbf\xbd")
    )
    assert data["confidence_score"] is None and data["hue_analysis"] is None
    assert data["color_regions"] == []


# --------------------------------------------------------------- results JSONL


def result(image: str | Path, error: str | None = None, **extra: object) -> dict[str, object]:
    record: dict[str, object] = {
        "image": image,
        "prompt": "Describe the colours.",
        "template": "default",
        "backend": "vllm",
        "model": "qwen2.5-vl-7b",
        "base_url": "http://127.0.0.1:8000/v1",
        "description": None if error else "a red barn",
        "processing_time": 1.25,
        "usage": None if error else {"prompt_tokens": 10, "completion_tokens": 5},
        "attempts": [{"n": 1, "error": error}],
        "error": error,
    }
    record.update(extra)
    return record


def test_jsonl_lines_visible_while_open_and_appended(tmp_path: Path) -> None:
    path = tmp_path / "out" / "results.jsonl"
    with JsonlWriter(path) as writer:
        writer.write(result(tmp_path / "a.jpg"))
        lines = list(iter_results(path))  # flushed: visible before close
        assert len(lines) == 1
        writer.write(result("b.jpg", error="BackendTimeout: read timed out"))
        assert len(list(iter_results(path))) == 2
    with JsonlWriter(path, fsync=True) as writer:  # a second run appends
        writer.write(result("c.jpg", timestamp="2025-01-01T00:00:00+00:00"))
    records = list(iter_results(path))
    assert [r["image"] for r in records] == [os.fspath(tmp_path / "a.jpg"), "b.jpg", "c.jpg"]
    first = records[0]
    assert set(first) == {
        "image",
        "prompt",
        "template",
        "backend",
        "model",
        "base_url",
        "description",
        "processing_time",
        "usage",
        "attempts",
        "error",
        "timestamp",
    }
    stamp = datetime.fromisoformat(first["timestamp"])
    assert stamp.utcoffset() == timedelta(0)
    assert records[2]["timestamp"] == "2025-01-01T00:00:00+00:00"
    assert path.read_bytes().count(b"\n") == 3
    assert completed_images(path) == {os.fspath(tmp_path / "a.jpg"), "c.jpg"}


def test_completed_images_missing_file(tmp_path: Path) -> None:
    assert completed_images(tmp_path / "nope.jsonl") == set()
    assert list(iter_results(tmp_path / "nope.jsonl")) == []


def test_resume_after_truncated_last_line(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with JsonlWriter(path) as writer:
        writer.write(result("a.jpg"))
        writer.write(result("b.jpg"))
    with open(path, "ab") as fh:  # a killed run: half a line, no newline
        fh.write(b'{"image": "c.jpg", "error": null, "descrip')
    assert completed_images(path) == {"a.jpg", "b.jpg"}
    with JsonlWriter(path) as writer:
        writer.write(result("c.jpg"))
    lines = path.read_bytes().split(b"\n")
    assert lines[2] == b'{"image": "c.jpg", "error": null, "descrip'  # broken line kept, alone
    assert json.loads(lines[3])["image"] == "c.jpg"
    assert completed_images(path) == {"a.jpg", "b.jpg", "c.jpg"}
    # Garbage in the middle (binary junk, non-objects) is skipped too.
    with open(path, "ab") as fh:
        fh.write(b"\xff\xfe\x00junk\n[1, 2]\n\n")
    with JsonlWriter(path) as writer:
        writer.write(result("d.jpg"))
    assert completed_images(path) == {"a.jpg", "b.jpg", "c.jpg", "d.jpg"}


def test_jsonl_non_utf8_image_names_round_trip(tmp_path: Path) -> None:
    raw_names = [b"caf\xe9.jpg", b"\xff\xfe.jpg", "naïve 🌈.jpg".encode()]
    images = [Path(os.fsdecode(tmp_path)) / os.fsdecode(n) for n in raw_names]
    path = tmp_path / "results.jsonl"
    with JsonlWriter(path) as writer:
        for image in images:
            writer.write(result(image))  # a Path: the writer fsdecodes it
        writer.write(result(os.fsencode(images[0]), error="boom"))  # bytes work too
    data = path.read_bytes()
    data.decode("utf-8")  # the file is valid UTF-8
    assert "naïve 🌈.jpg".encode() in data  # UTF-8 names stay readable
    assert b"\\udc" not in data and "caf\ufffd.jpg".encode() in data  # U+FFFD in the text ...
    records = [json.loads(line) for line in data.splitlines()]
    assert [r.get("image_bytes_b64") is not None for r in records] == [
        True,
        True,
        False,
        True,
    ]  # ... bytes beside
    done = completed_images(path)
    assert done == {os.fsdecode(image) for image in images}
    assert {os.fsencode(name) for name in done} == {os.fsencode(image) for image in images}


def test_jsonl_threads_do_not_interleave(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with JsonlWriter(path) as writer:

        def work(n: int) -> None:
            for i in range(50):
                writer.write(result(f"{n}-{i}.jpg", description="x" * 5000))

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(path.read_bytes().splitlines()) == 200
    assert len(completed_images(path)) == 200


def test_jsonl_refuses_unserialisable_without_writing(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    with JsonlWriter(path) as writer:
        with pytest.raises(TypeError):
            writer.write(result("a.jpg", usage=object()))
        with pytest.raises(ValueError):
            writer.write(result("a.jpg", processing_time=float("nan")))
    assert path.read_bytes() == b""


# --------------------------------------------------------------- atomic writes


def test_atomic_write_creates_and_replaces_keeping_mode(tmp_path: Path) -> None:
    target = tmp_path / "file.bin"
    atomic_write_bytes(target, b"one")
    assert target.read_bytes() == b"one"
    os.chmod(target, 0o640)
    atomic_write_bytes(target, b"two" * 100_000)
    assert target.read_bytes() == b"two" * 100_000
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert temp_leftovers(tmp_path) == []


def test_atomic_write_failure_mid_write_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "photo.jpg.cn_metadata.json"
    target.write_bytes(b"old content")
    real_write = os.write
    calls = []

    def failing_write(fd: int, data: bytes | memoryview) -> int:
        calls.append(fd)
        if len(calls) == 1:  # write part of the data, then the disk "fills up"
            return real_write(fd, bytes(data[:5]))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic_module.os, "write", failing_write)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_bytes(target, b"new content that will not fit")
    monkeypatch.undo()
    assert len(calls) == 2
    assert target.read_bytes() == b"old content"
    assert temp_leftovers(tmp_path) == []


def test_atomic_write_failure_at_rename_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "photo.xmp"
    old = render_xmp(full_record(description="old"))
    target.write_bytes(old)

    def failing_replace(src: object, dst: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomic_module.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        write_xmp_sidecar(tmp_path / "photo.jpg", NarrationRecord("d", "m", 1.0))
    assert target.read_bytes() == old
    assert temp_leftovers(tmp_path) == []


def test_json_sidecar_serialisation_failure_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = tmp_path / "photo.jpg"
    old = write_json_sidecar(image, full_record()).read_bytes()

    def broken(*args: object, **kwargs: object) -> str:
        raise RuntimeError("serialiser crashed")

    monkeypatch.setattr(json_sidecar_module, "dumps_json", broken)
    with pytest.raises(RuntimeError):
        write_json_sidecar(image, full_record(description="new"))
    assert json_sidecar_path(image).read_bytes() == old
    assert temp_leftovers(tmp_path) == []


def test_atomic_write_hard_kill_keeps_old_file(tmp_path: Path) -> None:
    """A process killed in the middle of writing leaves the old file whole."""
    target = tmp_path / "photo.xmp"
    target.write_bytes(b"old xmp")
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from imageworks_core.outputs import atomic\n"
        "real = os.write\n"
        "def dying(fd, data):\n"
        "    real(fd, bytes(data[:10]))\n"
        "    os._exit(9)\n"
        "atomic.os.write = dying\n"
        "atomic.atomic_write_bytes(Path(sys.argv[1]), b'new' * 1000)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", script, os.fspath(target)], env=env, check=False)
    assert done.returncode == 9
    assert target.read_bytes() == b"old xmp"
    # The killed writer's half-written temp file is the only trace, and it is not the target.
    leftovers = temp_leftovers(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".photo.xmp.")


# --------------------------------------------------------------- embedding


def test_embed_writes_into_jpeg_and_keeps_backup(tmp_path: Path, exiftool: str) -> None:
    image = make_jpeg(tmp_path / "photo.jpg")
    # Foreign metadata already in the image must survive.
    subprocess.run([exiftool, "-q", "-overwrite_original", "-XMP-xmp:Rating=4", os.fspath(image)], check=True)
    original = image.read_bytes()
    embed_xmp(image, full_record(description=NASTY))
    tags = exif_read(exiftool, image)
    assert tags["XMP-cn:Description"] == NASTY_CLEAN
    assert tags["XMP-dc:Description"] == NASTY_CLEAN
    assert tags["XMP-cn:ConfidenceScore"] == 0.87
    assert tags["XMP-cn:ColorRegions"] == ["red barn", "blue & green <sky>"]
    assert tags["XMP-cn:ValidationStatus"] == "passed"
    assert tags["XMP-xmp:Rating"] == 4
    backup = tmp_path / "photo.jpg_original"
    assert backup.read_bytes() == original
    with Image.open(image) as img:
        img.load()
        assert img.size == (32, 24)

    # A second embed replaces every cn: value (no stale regions) and keeps the first backup.
    embed_xmp(image, NarrationRecord("second & last", "other-model", 0.5))
    tags = exif_read(exiftool, image)
    assert tags["XMP-cn:Description"] == "second & last"
    assert tags["XMP-dc:Description"] == "second & last"
    assert "XMP-cn:ColorRegions" not in tags and "XMP-cn:ConfidenceScore" not in tags
    assert backup.read_bytes() == original


def test_embed_without_backup(tmp_path: Path, exiftool: str) -> None:
    image = make_jpeg(tmp_path / "photo.jpg")
    embed_xmp(image, full_record(), keep_backup=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]
    assert exif_read(exiftool, image)["XMP-cn:VlmModel"] == "qwen2.5-vl-7b"


def test_embed_failure_is_reported(tmp_path: Path, exiftool: str) -> None:
    fake = tmp_path / "not-really.jpg"
    fake.write_bytes(b"this is not a JPEG")
    with pytest.raises(OutputError, match="exiftool could not embed"):
        embed_xmp(fake, full_record())
    assert fake.read_bytes() == b"this is not a JPEG"


def test_embed_without_exiftool_or_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError):
        embed_xmp(tmp_path / "missing.jpg", full_record())
    image = make_jpeg(tmp_path / "photo.jpg")
    monkeypatch.setenv("PATH", os.fspath(tmp_path / "empty-bin"))
    with pytest.raises(OutputError) as info:
        embed_xmp(image, full_record())
    assert isinstance(info.value, ImageWorksError)
    assert "apt-get install libimage-exiftool-perl" in (info.value.hint or "")
