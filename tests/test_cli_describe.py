"""``imageworks describe`` / ``narrate`` end to end, as a user runs them: a subprocess per run.

Against the real OpenAI-compatible test server (``transformers serve`` with a
tiny LLaVA, through the ``openai`` backend and, when installed, the ``vllm``
one) and against the fault-injecting server: folder in -> results JSONL, XMP
and JSON sidecars out, read back with exiftool; ``--xmp embed``; ``--stream``;
resume after a SIGKILLed run; XMP escaping of a hostile answer; a sidecar that
cannot be written failing only its own image.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import cli_argv, cli_env, read_jsonl, run_cli, show
from conftest import require
from PIL import Image
from servers._proc import free_port

from imageworks_core.outputs.jsonl import RESULT_KEYS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
EXIFTOOL = shutil.which("exiftool") or "/usr/bin/exiftool"
RDF = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
DC = "{http://purl.org/dc/elements/1.1/}"
CN = "{http://imageworks.ai/color-narrator/1.0/}"


# ------------------------------------------------------------------ helpers


def copy_samples(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sorted(SAMPLES.glob("*.jpg")):
        out.append(Path(shutil.copy2(src, folder / src.name)))
    assert out, f"no sample images in {SAMPLES}"
    return out


def make_jpegs(folder: Path, count: int, size: tuple[int, int] = (48, 32)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"img{i:02d}.jpg"
        Image.new("RGB", size, (i * 8 % 256, 255 - i * 8 % 256, 90)).save(path, "JPEG")
        paths.append(path)
    return paths


def exiftool_read(path: Path) -> dict[str, Any]:
    require(os.access(EXIFTOOL, os.X_OK), "exiftool is not installed")
    proc = subprocess.run(
        [EXIFTOOL, "-j", "-G1", "-Warning", "-XMP-dc:Description", "-XMP-cn:all", os.fsencode(path)],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    [data] = json.loads(proc.stdout)
    return dict(data)


def xmp_description(path: Path) -> str:
    """dc:description's x-default text, parsed with a strict XML parser."""
    root = ET.fromstring(path.read_bytes())
    items = root.findall(f".//{DC}description/{RDF}Alt/{RDF}li")
    assert items, path.read_text(errors="replace")
    return items[0].text or ""


def by_name(records: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(Path(r["image"]).name, []).append(r)
    return out


def chat_requests(faulty: Any) -> list[dict[str, Any]]:
    return faulty.log("/v1/chat/completions")


def request_ids(faulty: Any) -> list[str]:
    """The ids the faulty server read from "item_id=X" in the prompts (the sentence's full stop dropped)."""
    return [str(e["request_id"]).rstrip(".") for e in chat_requests(faulty)]


@functools.cache
def installed_backends() -> frozenset[str]:
    proc = subprocess.run(cli_argv("backends", "--json"), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return frozenset(row["name"] for row in json.loads(proc.stdout) if not row.get("error"))


# ------------------------------------------------------------------ the real server


def check_results(
    out: Path, photos: Sequence[Path], *, backend: str, base_url: str, model_id: str, template: str
) -> dict[str, dict[str, Any]]:
    records = read_jsonl(out, skip_broken=True)
    assert len(records) == len(photos), records
    found = {}
    for r in records:
        assert set(r) == set(RESULT_KEYS), sorted(r)  # the exact schema is pinned in test_outputs.py
        assert r["error"] is None, r
        assert r["template"] == template
        assert r["backend"] == backend
        assert r["base_url"] == base_url
        # transformers serve echoes the model as "<id>@main"
        assert r["model"] in (model_id, f"{model_id}@main"), r["model"]
        assert isinstance(r["description"], str) and r["description"].strip(), r
        assert isinstance(r["processing_time"], float) and r["processing_time"] > 0
        assert r["usage"]["completion_tokens"] is not None and 0 < r["usage"]["completion_tokens"] <= 8
        assert r["usage"]["prompt_tokens"] > 16  # the 16 image tokens plus the prompt
        assert [a["backend"] for a in r["attempts"]] == [backend]
        assert r["attempts"][0]["error"] is None
        assert isinstance(r["prompt"], str) and r["prompt"]
        found[Path(r["image"]).name] = r
    assert set(found) == {p.name for p in photos}
    for photo in photos:
        r = found[photo.name]
        xmp = photo.with_suffix(".xmp")
        sidecar = photo.with_name(photo.name + ".cn_metadata.json")
        assert xmp.is_file() and sidecar.is_file(), sorted(os.listdir(photo.parent))
        meta = json.loads(sidecar.read_text(encoding="utf-8"))
        assert meta["metadata_version"] == "1.0"
        assert Path(meta["source_file"]).name == photo.name
        assert meta["description"] == r["description"]
        assert meta["vlm_model"] == r["model"]
        read = exiftool_read(xmp)
        assert "ExifTool:Warning" not in read, read
        assert read["XMP-dc:Description"] == r["description"]
        assert read["XMP-cn:Description"] == r["description"]
        assert read["XMP-cn:VlmModel"] == r["model"]
        assert xmp_description(xmp) == r["description"]
    return found


@pytest.mark.server
@pytest.mark.parametrize("backend", ["openai", "vllm"])
def test_describe_folder_against_real_server(tmp_path: Path, hf_server: Any, backend: str) -> None:
    require(
        backend in installed_backends(),
        f"the {backend} backend is not installed (imageworks backends --json)",
    )
    photos = copy_samples(tmp_path / "photos")
    proc = run_cli(
        tmp_path,
        "describe",
        "photos",
        "--vlm-backend",
        backend,
        "--vlm-base-url",
        hf_server.base_url,
        "--max-tokens",
        "8",
        "--output",
        "results.jsonl",
    )
    assert proc.returncode == 0, show(proc)
    assert f"images: {len(photos)} ok, 0 failed, 0 skipped" in proc.stdout, show(proc)
    found = check_results(
        tmp_path / "results.jsonl",
        photos,
        backend=backend,
        base_url=hf_server.base_url,
        model_id=hf_server.model_id,
        template="describe",
    )
    assert all(r["prompt"].startswith("Describe this photograph") for r in found.values())
    # A second run finds every image described and sends nothing.
    again = run_cli(
        tmp_path,
        "describe",
        "photos",
        "--vlm-backend",
        backend,
        "--vlm-base-url",
        hf_server.base_url,
        "--output",
        "results.jsonl",
    )
    assert again.returncode == 0, show(again)
    assert f"0 ok, 0 failed, {len(photos)} skipped" in again.stdout, show(again)
    assert len(read_jsonl(tmp_path / "results.jsonl", skip_broken=True)) == len(photos)


@pytest.mark.server
def test_narrate_with_mono_metrics_against_real_server(tmp_path: Path, hf_server: Any) -> None:
    photos = copy_samples(tmp_path / "mono")
    (tmp_path / "mono.jsonl").write_text(
        json.dumps({"image": "mono_sepia.jpg", "contamination_level": 0.42, "hue_deg": 35.5})
        + "\n"
        + json.dumps({"path": str(tmp_path / "mono" / "mono_neutral.jpg"), "contamination_level": 0.01})
        + "\nnot json at all\n",
        encoding="utf-8",
    )
    proc = run_cli(
        tmp_path,
        "narrate",
        "--images",
        "mono",
        "--mono-jsonl",
        "mono.jsonl",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        hf_server.base_url,
        "--max-tokens",
        "8",
        "--output",
        "narration.jsonl",
    )
    assert proc.returncode == 0, show(proc)
    found = check_results(
        tmp_path / "narration.jsonl",
        photos,
        backend="openai",
        base_url=hf_server.base_url,
        model_id=hf_server.model_id,
        template="colour-narration",
    )
    for r in found.values():
        assert r["prompt"].startswith("This photograph is entered as monochrome.")
    sepia, neutral = found["mono_sepia.jpg"]["prompt"], found["mono_neutral.jpg"]["prompt"]
    assert "contamination_level=0.42" in sepia and "hue_deg=35.5" in sepia
    assert "contamination_level=0.01" in neutral and "hue_deg" not in neutral
    assert "measured" not in found["colour_landscape.jpg"]["prompt"]

    mono = tmp_path / "mono"
    assert exiftool_read(mono / "mono_sepia.xmp")["XMP-cn:MonoContaminationLevel"] == 0.42
    assert exiftool_read(mono / "mono_neutral.xmp")["XMP-cn:MonoContaminationLevel"] == 0.01
    assert "XMP-cn:MonoContaminationLevel" not in exiftool_read(mono / "colour_landscape.xmp")
    meta = json.loads((mono / "mono_sepia.jpg.cn_metadata.json").read_text(encoding="utf-8"))
    assert meta["mono_contamination_level"] == 0.42


@pytest.mark.server
def test_stream_against_real_server(tmp_path: Path, hf_server: Any) -> None:
    """``--stream`` prints tokens as they come; transformers serve ends its SSE without [DONE]."""
    [photo, *_] = copy_samples(tmp_path / "photos")
    proc = run_cli(
        tmp_path,
        "describe",
        f"photos/{photo.name}",
        "--stream",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        hf_server.base_url,
        "--max-tokens",
        "8",
        "--output",
        "stream.jsonl",
    )
    assert proc.returncode == 0, show(proc)
    [record] = read_jsonl(tmp_path / "stream.jsonl", skip_broken=True)
    assert record["error"] is None and record["description"], record
    assert f"== photos/{photo.name}" in proc.stdout
    assert record["description"] in proc.stdout
    assert "1 ok, 0 failed" in proc.stderr  # with --stream the summary goes to stderr
    assert exiftool_read(photo.with_suffix(".xmp"))["XMP-dc:Description"] == record["description"]


# ------------------------------------------------------------------ embedding


def test_xmp_embed_writes_into_a_copy(tmp_path: Path, faulty: Any) -> None:
    require(os.access(EXIFTOOL, os.X_OK), "exiftool is not installed")
    folder = tmp_path / "embed"
    folder.mkdir()
    keep = Path(shutil.copy2(SAMPLES / "mono_sepia.jpg", folder / "keep.jpg"))
    nobackup_dir = tmp_path / "nobackup"
    nobackup_dir.mkdir()
    nobackup = Path(shutil.copy2(SAMPLES / "mono_neutral.jpg", nobackup_dir / "nobackup.jpg"))
    original = keep.read_bytes()
    faulty.script([{"fault": "ok", "content": "A toned print of a harbour."}])
    common = ["--vlm-backend", "openai", "--vlm-base-url", faulty.v1, "--vlm-model", "fake-vlm"]

    proc = run_cli(tmp_path, "describe", "embed", "--xmp", "embed", "--output", "r.jsonl", *common)
    assert proc.returncode == 0, show(proc)
    read = exiftool_read(keep)
    assert read["XMP-dc:Description"] == "A toned print of a harbour."
    assert read["XMP-cn:Description"] == "A toned print of a harbour."
    assert read["XMP-cn:VlmModel"] == "fake-vlm"
    backup = folder / "keep.jpg_original"
    assert backup.read_bytes() == original  # exiftool's backup is the untouched image
    assert not keep.with_suffix(".xmp").exists()  # embedded, not a sidecar
    assert (folder / "keep.jpg.cn_metadata.json").is_file()
    with Image.open(keep) as im, Image.open(backup) as before:  # still a JPEG, the same size
        assert im.format == "JPEG" and im.size == before.size

    proc = run_cli(
        tmp_path, "describe", "nobackup", "--xmp", "embed", "--no-backup", "--output", "r.jsonl", *common
    )
    assert proc.returncode == 0, show(proc)
    assert exiftool_read(nobackup)["XMP-dc:Description"] == "A toned print of a harbour."
    assert sorted(os.listdir(nobackup_dir)) == ["nobackup.jpg", "nobackup.jpg.cn_metadata.json"]


# ------------------------------------------------------------------ resume after a crash


def test_resume_after_killed_run(tmp_path: Path, faulty: Any) -> None:
    """SIGKILL a run half way; ``--resume`` requests only the missing images, each once."""
    count = 30
    photos = make_jpegs(tmp_path / "batch", count)
    # Per-image metrics put "item_id=imgNN" in each prompt, which the faulty server logs as the
    # request id, so the log shows exactly which images were requested.
    (tmp_path / "ids.jsonl").write_text(
        "".join(json.dumps({"image": p.name, "item_id": p.stem}) + "\n" for p in photos), encoding="utf-8"
    )
    args = [
        "describe",
        "batch",
        "--template",
        "colour-narration",
        "--mono-jsonl",
        "ids.jsonl",
        "--concurrency",
        "1",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        faulty.v1,
        "--vlm-model",
        "fake-vlm",
        "--output",
        "results.jsonl",
        "--quiet",
    ]
    out = tmp_path / "results.jsonl"
    faulty.script([{"fault": "delay", "delay_s": 0.3}])
    proc = subprocess.Popen(
        cli_argv(*args),
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and len(read_jsonl(out, skip_broken=True)) >= 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    first = read_jsonl(out, skip_broken=True)
    done = {Path(r["image"]).stem for r in first if r["error"] is None}
    # As if the kill had landed mid-write: a cut-off last line, which readers must skip.
    with out.open("ab") as fh:
        fh.write(b'{"image": "batch/img29.jpg", "prompt": "cut sh')
    assert 4 <= len(done) < count, first
    assert len(first) == len(done)  # nothing failed, nothing written twice
    first_ids = request_ids(faulty)
    assert done <= set(first_ids)

    faulty.reset()  # no delay now; a fresh log
    proc2 = run_cli(tmp_path, *args, "--resume")
    assert proc2.returncode == 0, show(proc2)
    assert f"{count - len(done)} ok, 0 failed, {len(done)} skipped" in proc2.stdout, show(proc2)
    resumed_ids = request_ids(faulty)
    assert len(resumed_ids) == count - len(done)
    assert set(resumed_ids) == {p.stem for p in photos} - done

    final = read_jsonl(out, skip_broken=True)
    assert len(out.read_bytes().splitlines()) == len(final) + 1  # only the cut-off line is unreadable
    ok = [Path(r["image"]).stem for r in final if r["error"] is None]
    assert sorted(ok) == sorted(p.stem for p in photos)  # every image exactly once
    assert all(r["error"] is None for r in final)
    for photo in photos:
        assert photo.with_suffix(".xmp").is_file()
        assert photo.with_name(photo.name + ".cn_metadata.json").is_file()


# ------------------------------------------------------------------ hostile answers, failing writes

NASTY = '</x:xmpmeta> & "quotes" <b>\u0001'


def test_xmp_escaping_through_the_pipeline(tmp_path: Path, faulty: Any) -> None:
    [photo] = make_jpegs(tmp_path / "esc", 1)
    faulty.script([{"fault": "ok", "content": NASTY}])
    proc = run_cli(
        tmp_path,
        "describe",
        "esc",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        faulty.v1,
        "--vlm-model",
        "fake-vlm",
    )
    assert proc.returncode == 0, show(proc)
    [record] = read_jsonl(tmp_path / "imageworks-results.jsonl", skip_broken=True)  # the default --output
    assert record["description"] == NASTY  # the JSONL keeps the answer as given
    xmp = photo.with_suffix(".xmp")
    clean = '</x:xmpmeta> & "quotes" <b>'  # U+0001 cannot be carried by XML 1.0
    assert xmp_description(xmp) == clean  # well-formed XML, the text intact
    root = ET.fromstring(xmp.read_bytes())
    assert root.tag == "{adobe:ns:meta/}xmpmeta"
    assert [e.text for e in root.iter(f"{CN}description")] == [clean]
    read = exiftool_read(xmp)
    assert "ExifTool:Warning" not in read, read
    assert read["XMP-dc:Description"] == clean
    assert read["XMP-cn:Description"] == clean
    meta = json.loads(photo.with_name(photo.name + ".cn_metadata.json").read_text(encoding="utf-8"))
    assert meta["description"] in (NASTY, clean)


FOREIGN_XMP = b"""<?xpacket begin="\xef\xbb\xbf" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/">
   <xmp:Rating>4</xmp:Rating>
   <xmp:Label>Red</xmp:Label>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>
"""


def test_a_failing_sidecar_write_fails_only_its_image(tmp_path: Path, faulty: Any) -> None:
    """Unwritable sidecars become their own images' errors, the paid-for description is kept in
    the JSONL, and --resume writes the missing sidecars without asking the model again (issue 13.4);
    a foreign sidecar is merged into."""
    folder = tmp_path / "w"
    a, b, c, d = make_jpegs(folder, 4)
    garbage = b"this is not XMP <<< & not even XML"
    b.with_suffix(".xmp").write_bytes(garbage)  # another program's file we cannot parse
    c.with_suffix(".xmp").mkdir()  # a directory where the sidecar should go
    d.with_suffix(".xmp").write_bytes(FOREIGN_XMP)  # e.g. Lightroom's rating and label
    common = ["--vlm-backend", "openai", "--vlm-base-url", faulty.v1, "--vlm-model", "fake-vlm"]

    proc = run_cli(tmp_path, "describe", "w", "--output", "r.jsonl", *common)
    assert proc.returncode == 1, show(proc)
    recs = by_name(read_jsonl(tmp_path / "r.jsonl", skip_broken=True))
    assert {k: len(v) for k, v in recs.items()} == {p.name: 1 for p in (a, b, c, d)}
    assert all(recs[p.name][0]["error"] is None for p in (a, b, c, d))
    for p in (a, b, c, d):  # the answer the user paid for is in the JSONL, whatever the sidecar did
        assert recs[p.name][0]["description"].endswith("A grey cat on a sofa."), recs[p.name]
    assert recs[a.name][0].get("output_error") is None and recs[d.name][0].get("output_error") is None
    err_b, err_c = recs[b.name][0]["output_error"], recs[c.name][0]["output_error"]
    assert "left untouched" in err_b and "img01.xmp" in err_b, err_b
    assert "img02" in err_c and "sidecar" in err_c, err_c
    assert "\n" not in err_b + err_c
    for err in (err_b, err_c):
        assert err in proc.stdout  # the summary shows the same one line
    assert "2 ok, 2 failed" in proc.stdout

    assert b.with_suffix(".xmp").read_bytes() == garbage  # untouched, byte for byte
    assert not b.with_name(b.name + ".cn_metadata.json").exists()  # nothing half-done for b
    assert c.with_suffix(".xmp").is_dir()
    merged = exiftool_read(d.with_suffix(".xmp"))
    assert merged["XMP-dc:Description"].endswith("A grey cat on a sofa.")
    proc_rating = subprocess.run(
        [EXIFTOOL, "-j", "-XMP-xmp:Rating", "-XMP-xmp:Label", str(d.with_suffix(".xmp"))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    [foreign] = json.loads(proc_rating.stdout)
    assert foreign["Rating"] == 4 and foreign["Label"] == "Red"
    assert not [n for n in os.listdir(folder) if n.startswith(".") or n.endswith((".tmp", ".part"))]

    # Once the obstacles are gone, --resume writes the two missing sidecars from the JSONL: no request.
    b.with_suffix(".xmp").unlink()
    c.with_suffix(".xmp").rmdir()
    faulty.reset()
    proc = run_cli(tmp_path, "describe", "w", "--output", "r.jsonl", "--resume", *common)
    assert proc.returncode == 0, show(proc)
    assert len(chat_requests(faulty)) == 0
    for p in (b, c):
        assert exiftool_read(p.with_suffix(".xmp"))["XMP-dc:Description"].endswith("A grey cat on a sofa.")
        assert p.with_name(p.name + ".cn_metadata.json").is_file()
    final = by_name(read_jsonl(tmp_path / "r.jsonl", skip_broken=True))
    assert [r.get("output_error") for r in final[b.name]] == [err_b, None]  # the new record closes it
    # a third run has nothing left to do
    proc = run_cli(tmp_path, "describe", "w", "--output", "r.jsonl", "--resume", *common)
    assert proc.returncode == 0 and len(chat_requests(faulty)) == 0, show(proc)
    assert "4 already described in the results file" in proc.stdout, show(proc)


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 512 KiB tmpfs (root can mount one; CI runs as root) and a way to fill it up."""
    can_mount = hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("mount") is not None
    require(can_mount, "mounting a small tmpfs needs root")
    where = tmp_path / "small-disk"
    where.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k,mode=1777", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    require(proc.returncode == 0, f"cannot mount a tmpfs: {proc.stderr.strip()}")

    def fill() -> Path:
        filler = where / "filler.bin"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass  # ENOSPC: full
        finally:
            os.close(fd)
        return filler

    try:
        yield where, fill
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_full_disk_keeps_every_description_in_the_jsonl(
    tmp_path: Path, faulty: Any, full_disk: Any
) -> None:
    """No space left for the sidecars (the images' disk is full; the results file is on another):
    every description is still in the JSONL, each image names the failure, nothing half-written is
    left; with space again, --resume writes the sidecars without asking the model."""
    where, fill = full_disk
    images = make_jpegs(where / "imgs", 3)
    filler = fill()
    common = ["--output", "r.jsonl", *("--vlm-backend", "openai", "--vlm-base-url", faulty.v1)]
    proc = run_cli(tmp_path, "describe", str(where / "imgs"), *common)
    assert proc.returncode == 1, show(proc)
    assert "Traceback" not in proc.stdout + proc.stderr
    recs = by_name(read_jsonl(tmp_path / "r.jsonl"))
    assert sorted(recs) == sorted(p.name for p in images)
    for p in images:
        [rec] = recs[p.name]
        assert rec["error"] is None and rec["description"].endswith("A grey cat on a sofa."), rec
        assert "No space left" in rec["output_error"] and "\n" not in rec["output_error"], rec
        assert rec["output_error"] in proc.stdout
    assert sorted(os.listdir(where / "imgs")) == sorted(p.name for p in images)  # no partial files
    assert len(chat_requests(faulty)) == 3

    filler.unlink()
    faulty.reset()
    proc = run_cli(tmp_path, "describe", str(where / "imgs"), *common, "--resume")
    assert proc.returncode == 0, show(proc)
    assert len(chat_requests(faulty)) == 0
    for p in images:
        assert xmp_description(p.with_suffix(".xmp")).endswith("A grey cat on a sofa.")
        assert p.with_name(p.name + ".cn_metadata.json").is_file()


VOLATILE = {"processing_time", "queue_time", "timestamp", "attempts"}


@pytest.mark.parametrize("preflight", [True, False], ids=["preflight", "no-preflight"])
def test_stream_and_batch_give_the_same_records_when_the_fallback_answers(
    tmp_path: Path, faulty: Any, preflight: bool
) -> None:
    """vllm (the primary) is not running, the openai backend (the fallback) answers: with and without
    --stream, every record names the backend, model and URL that answered, and the records are the
    same apart from timings (issue 13.15: one dispatch path)."""
    make_jpegs(tmp_path / "imgs", 3)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    env = {
        "IMAGEWORKS_BACKENDS__OPENAI__BASE_URL": faulty.v1,
        "IMAGEWORKS_BACKENDS__OPENAI__MODEL": "fake-vlm",
    }
    common = ["describe", "imgs", "--vlm-backend", "vllm", "--vlm-base-url", dead, "--fallback", "openai"]
    common += ["--xmp", "none", "--no-json-sidecar", *([] if preflight else ["--no-preflight"])]
    records = {}
    for mode, extra in (("batch", []), ("stream", ["--stream"])):
        proc = run_cli(tmp_path, *common, *extra, "--output", f"{mode}.jsonl", **env)
        assert proc.returncode == 0, show(proc)
        records[mode] = sorted(read_jsonl(tmp_path / f"{mode}.jsonl"), key=lambda r: r["image"])
        for rec in records[mode]:
            assert rec["error"] is None and rec["backend"] == "openai", rec
            assert rec["model"] == "fake-vlm" and rec["base_url"] == faulty.v1, rec
            assert rec["attempts"][-1]["backend"] == "openai" and rec["attempts"][-1]["error"] is None
        tried = [[a["backend"] for a in rec["attempts"]] for rec in records[mode]]
        if preflight:  # vllm was found down before the first image: nothing goes there
            assert tried == [["openai"]] * 3, tried
        else:  # vllm's refusals came during the run (then its breaker may send the rest straight on)
            assert ["vllm"] * 4 + ["openai"] in tried, tried
    assert len(records["batch"]) == 3
    same = [{k: v for k, v in r.items() if k not in VOLATILE} for r in records["batch"]]
    assert same == [{k: v for k, v in r.items() if k not in VOLATILE} for r in records["stream"]]


# ------------------------------------------------------------------ the same job through the Python API


@pytest.mark.anyio
async def test_run_describe_python_api(tmp_path: Path, faulty: Any) -> None:
    """``run_describe`` (what the CLI calls) on asyncio and trio: results, sidecars, a bad input."""
    from imageworks_core import Client
    from imageworks_core.describe import DescribeOptions, run_describe

    photos = make_jpegs(tmp_path / "api", 3)
    (tmp_path / "api" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "api.jsonl"
    events: list[str] = []
    async with Client(
        backend="openai",
        overrides={"backends": {"openai": {"base_url": faulty.v1, "model": "fake-vlm"}}},
        user_file=False,
        project_file=False,
    ) as client:
        summary = await run_describe(
            client,
            DescribeOptions(paths=(str(tmp_path / "api"),), output=out),
            on_event=lambda e: events.append(e.kind),
        )
    assert len(summary.ok) == 3 and len(summary.failed) == 1
    [(image, reason)] = summary.failed
    assert image.endswith("empty.jpg") and "file is empty" in reason
    records = by_name(read_jsonl(out, skip_broken=True))
    assert {k: len(v) for k, v in records.items()} == {**{p.name: 1 for p in photos}, "empty.jpg": 1}
    for photo in photos:
        assert records[photo.name][0]["description"].endswith("A grey cat on a sofa.")
        assert xmp_description(photo.with_suffix(".xmp")).endswith("A grey cat on a sofa.")
    assert events.count("done") == 3 and events.count("failed") == 1
    assert len(chat_requests(faulty)) == 3
