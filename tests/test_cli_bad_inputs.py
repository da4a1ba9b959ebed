"""Every bad input to ``imageworks describe``: one clear error line per image, the run goes on.

One CLI run over a folder of broken files (plus an explicit ``.bmp``) against
the fault-injecting server; each case then checks its own line in the results
JSONL and in the summary, that nothing was sent for it, and that the good
images (including a non-UTF-8 and a spaced file name) succeeded.  Also: a
folder of thousands of files, bad inputs under ``--stream``, and bad
arguments that stop the run before anything is sent.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cli_helpers import PERMISSIONS_HOLD, backend_args, read_jsonl, run_cli, show
from conftest import require
from PIL import Image

from imageworks_core.outputs.jsonl import record_path

NON_UTF8 = os.fsdecode(b"caf\xe9 \xff.jpg")  # Latin-1 bytes: not valid UTF-8
SPACED = "with  two spaces & more.jpg"


# ------------------------------------------------------------------ helpers


def jpeg_bytes(size: tuple[int, int] = (64, 48), colour: tuple[int, int, int] = (200, 120, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def png_bomb() -> bytes:
    """A 60-byte PNG whose header declares 30000 x 30000 pixels (5x Pillow's bomb limit)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def image_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, fmt)
    return buffer.getvalue()


# ------------------------------------------------------------------ one run over every bad input


@attrs.frozen
class Case:
    """One input file and what the run must say about it.

    Attributes:
        id: Test id.
        name: File name inside the input folder.
        error: A phrase the error line must contain; ``None``: the image must succeed.
        explicit: Passed on the command line rather than found in the folder.
    """

    id: str
    name: str
    error: str | None
    explicit: bool = False


CASES = [
    Case("zero-byte", "zero.jpg", "file is empty (0 bytes)"),
    Case("truncated-jpeg", "truncated.jpg", "truncated"),
    Case("jpeg-header-cut", "headercut.jpg", "truncated"),
    Case("text-named-jpg", "notes.jpg", "not an image, the file contains text"),
    Case("bmp-explicit", "explicit.bmp", "not an image file name", explicit=True),
    Case("gif-renamed-jpg", "anim.jpg", "unsupported image format (GIF image)"),
    Case("bmp-renamed-jpg", "paint.jpg", "unsupported image format (BMP image)"),
    Case("decompression-bomb", "bomb.png", "decompression bomb"),
    Case("unreadable", "locked.jpg", "permission denied"),
    Case("broken-symlink", "dangling.jpg", "broken symbolic link"),
    Case("fifo-named-jpg", "pipe.jpg", "not a regular file"),
    Case("good", "good.jpg", None),
    Case("non-utf8-name", NON_UTF8, None),
    Case("spaced-name", SPACED, None),
    Case("png", "good.png", None),
]
BAD = [c for c in CASES if c.error]
GOOD = [c for c in CASES if not c.error]
IS_ROOT = not PERMISSIONS_HOLD  # root that cannot drop its permission override (no setpriv)


def build_inputs(folder: Path) -> None:
    folder.mkdir()
    good = jpeg_bytes()
    data = {
        "zero.jpg": b"",
        "truncated.jpg": jpeg_bytes((640, 480))[:1500],
        "headercut.jpg": good[:40],
        "notes.jpg": b"shopping list:\n- milk\n- eggs\n",
        "anim.jpg": image_bytes("GIF"),
        "paint.jpg": image_bytes("BMP"),
        "bomb.png": png_bomb(),
        "locked.jpg": good,
        "good.jpg": good,
        NON_UTF8: jpeg_bytes(colour=(10, 10, 250)),
        SPACED: jpeg_bytes(colour=(250, 10, 10)),
        "good.png": image_bytes("PNG"),
        "ignored.bmp": image_bytes("BMP"),  # not an image name: a folder walk passes it by
    }
    for name, content in data.items():
        (folder / name).write_bytes(content)
    (folder / "explicit.bmp").write_bytes(image_bytes("BMP"))
    os.symlink("no-such-target.jpg", folder / "dangling.jpg")
    os.mkfifo(folder / "pipe.jpg")  # opening it must neither block nor read forever
    if not IS_ROOT:
        os.chmod(folder / "locked.jpg", 0)


@attrs.frozen
class BadRun:
    proc: subprocess.CompletedProcess[str]
    records: dict[str, list[dict[str, Any]]]
    summary_lines: list[str]
    requests: int
    folder: Path


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory: pytest.TempPathFactory, _faulty_session: Any) -> Iterator[BadRun]:
    cwd = tmp_path_factory.mktemp("bad-inputs")
    folder = cwd / "in"
    build_inputs(folder)
    _faulty_session.reset()
    try:
        proc = run_cli(
            cwd,
            "describe",
            "in",
            "in/explicit.bmp",
            "--output",
            "results.jsonl",
            *backend_args(_faulty_session),
        )
        requests = len(_faulty_session.log("/v1/chat/completions"))
    finally:
        _faulty_session.reset()
        if (folder / "locked.jpg").exists():
            os.chmod(folder / "locked.jpg", 0o644)
    records: dict[str, list[dict[str, Any]]] = {}
    for record in read_jsonl(cwd / "results.jsonl"):
        records.setdefault(os.path.basename(record_path(record) or ""), []).append(record)
    lines = proc.stdout.splitlines()
    failed_at = lines.index("failed images:") if "failed images:" in lines else len(lines)
    hints_at = lines.index("what to do:") if "what to do:" in lines else len(lines)
    yield BadRun(proc, records, lines[failed_at + 1 : hints_at], requests, folder)


def test_run_goes_on_and_exits_1(bad_run: BadRun) -> None:
    proc = bad_run.proc
    bad = len(BAD) - (1 if IS_ROOT else 0)  # root can read a chmod-000 file
    good = len(GOOD) + (1 if IS_ROOT else 0)
    assert proc.returncode == 1, show(proc)
    assert f"images: {good} ok, {bad} failed, 0 skipped" in proc.stdout, show(proc)
    assert bad_run.requests == good  # nothing was sent for a bad input
    assert len(bad_run.summary_lines) == bad, show(proc)
    assert sum(len(v) for v in bad_run.records.values()) == good + bad  # one line per input
    assert "ignored.bmp" not in bad_run.records  # a walk ignores non-image names


@pytest.mark.parametrize("case", BAD, ids=[c.id for c in BAD])
def test_bad_input_has_one_clear_error(bad_run: BadRun, case: Case) -> None:
    if case.id == "unreadable":
        require(PERMISSIONS_HOLD, "running as root without setpriv: a chmod 000 file is still readable")
    [record] = bad_run.records[case.name]
    error = record["error"]
    assert isinstance(error, str) and case.error in error, error
    assert case.name in error  # the message names the file
    assert "\n" not in error
    assert record["description"] is None and record["usage"] is None
    assert record["backend"] is None and record["base_url"] is None  # never reached a backend
    assert record["attempts"] == []  # never sent to the server
    [line] = [s for s in bad_run.summary_lines if case.name in s]
    # the summary names the image once, then the reason (without repeating the path)
    assert line.strip() == f"in/{case.name}: {error.removeprefix(f'in/{case.name}: ')}"
    assert line.count(case.name) == error.count(case.name)
    stem = os.path.splitext(case.name)[0]
    assert not (bad_run.folder / f"{stem}.xmp").exists()
    assert not (bad_run.folder / f"{case.name}.cn_metadata.json").exists()


@pytest.mark.parametrize("case", GOOD, ids=[c.id for c in GOOD])
def test_good_input_in_the_same_run_succeeds(bad_run: BadRun, case: Case) -> None:
    [record] = bad_run.records[case.name]
    assert record["error"] is None, record
    assert record["description"].endswith("A grey cat on a sofa.")
    # the JSONL keeps the exact name: U+FFFD in the text, the original bytes beside it (issue 13.6)
    assert "\udce9" not in record["image"]
    assert os.fsencode(record_path(record) or "") == os.fsencode(os.path.join("in", case.name))
    stem = os.path.splitext(case.name)[0]
    assert (bad_run.folder / f"{stem}.xmp").is_file()
    sidecar = bad_run.folder / f"{case.name}.cn_metadata.json"
    meta = json.loads(sidecar.read_bytes().decode("utf-8"))  # strict UTF-8, no lone surrogates
    shown = case.name.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")  # lone -> U+FFFD
    assert meta["source_file"] == os.path.join("in", shown)
    assert not any(case.name in line for line in bad_run.summary_lines)


# ------------------------------------------------------------------ many files, streaming, arguments


@pytest.mark.slow
def test_folder_with_thousands_of_files(tmp_path: Path, faulty: Any) -> None:
    count, per_folder = 3000, 1000
    data = jpeg_bytes((8, 8))
    for i in range(count):
        sub = tmp_path / "many" / f"d{i // per_folder}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i:04d}.jpg").write_bytes(data)

    dry = run_cli(tmp_path, "describe", "many", "--dry-run", *backend_args(faulty))
    assert dry.returncode == 0, show(dry)
    assert dry.stdout.count("would describe ") == count
    assert f"{count} planned (dry run)" in dry.stdout
    assert faulty.log() == []
    assert not (tmp_path / "imageworks-results.jsonl").exists()

    real = run_cli(
        tmp_path,
        "describe",
        "many",
        "--concurrency",
        "16",
        "--no-json-sidecar",
        "--quiet",
        *backend_args(faulty),
        timeout=300,
    )
    assert real.returncode == 0, show(real)
    assert f"images: {count} ok, 0 failed, 0 skipped" in real.stdout, show(real)
    records = read_jsonl(tmp_path / "imageworks-results.jsonl")
    assert len({r["image"] for r in records if r["error"] is None}) == count == len(records)
    assert len(faulty.log("/v1/chat/completions")) == count


def test_bad_inputs_under_stream(tmp_path: Path, faulty: Any) -> None:
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "a_empty.jpg").write_bytes(b"")
    (folder / "b_good.jpg").write_bytes(jpeg_bytes())
    (folder / "c_text.jpg").write_text("not a picture", encoding="utf-8")
    proc = run_cli(tmp_path, "describe", "s", "--stream", "--output", "s.jsonl", *backend_args(faulty))
    assert proc.returncode == 1, show(proc)
    records = {os.path.basename(r["image"]): r for r in read_jsonl(tmp_path / "s.jsonl")}
    assert sorted(records) == ["a_empty.jpg", "b_good.jpg", "c_text.jpg"]
    assert "file is empty" in records["a_empty.jpg"]["error"]
    assert "contains text" in records["c_text.jpg"]["error"]
    assert records["b_good.jpg"]["error"] is None
    assert "A grey cat on a sofa." in proc.stdout  # the streamed tokens
    assert "1 ok, 2 failed" in proc.stderr
    assert len(faulty.log("/v1/chat/completions")) == 1


def test_missing_paths_are_per_image_errors(tmp_path: Path, faulty: Any) -> None:
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "real.jpg").write_bytes(jpeg_bytes())
    proc = run_cli(
        tmp_path, "describe", "real.jpg", "nowhere.jpg", "empty-folder", "*.png", *backend_args(faulty)
    )
    assert proc.returncode == 1, show(proc)
    errors = {r["image"]: r["error"] for r in read_jsonl(tmp_path / "imageworks-results.jsonl")}
    assert errors["real.jpg"] is None
    assert "no such file" in errors["nowhere.jpg"]
    assert "folder contains no images" in errors["empty-folder"]
    assert "pattern matches no images" in errors["*.png"]
    assert "1 ok, 3 failed" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--template", "no-such-template"], "unknown template"),
        (["--mono-jsonl", "missing.jsonl", "--template", "colour-narration"], "cannot read --mono-jsonl"),
        (["--mono-jsonl", "garbage.jsonl", "--template", "colour-narration"], "no usable line"),
    ],
    ids=["unknown-template", "missing-mono-jsonl", "garbage-mono-jsonl"],
)
def test_bad_arguments_stop_before_sending(
    tmp_path: Path, faulty: Any, args: list[str], message: str
) -> None:
    (tmp_path / "photo.jpg").write_bytes(jpeg_bytes())
    (tmp_path / "garbage.jsonl").write_text("[1, 2]\nnot json\n", encoding="utf-8")
    proc = run_cli(tmp_path, "describe", "photo.jpg", *args, *backend_args(faulty))
    assert proc.returncode in (1, 2), show(proc)  # see the report: a usage error should exit 2
    assert proc.stderr.startswith("imageworks: ") and message in proc.stderr, show(proc)
    assert faulty.log() == []
    assert not (tmp_path / "imageworks-results.jsonl").exists()


def test_no_paths_at_all(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "describe")
    assert proc.returncode in (1, 2), show(proc)
    assert "no images given" in proc.stderr
