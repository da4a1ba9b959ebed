"""``imageworks generate`` end to end against the fault-injecting server's images route.

The PNGs are read back with Pillow and with exiftool (the tools users have); the
results JSONL is compared with ``tests/golden/generate-results.jsonl`` after the
run-specific values are replaced (``IMAGEWORKS_WRITE_GOLDEN=1`` rewrites it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import read_jsonl, run_cli, run_in_terminal, show
from conftest import require
from PIL import Image
from servers._proc import ServerProcess, free_port, python_argv

GOLDEN = Path(__file__).parent / "golden" / "generate-results.jsonl"
WRITE = os.environ.get("IMAGEWORKS_WRITE_GOLDEN") == "1"
KEY = "sk-gen-cli-0a9b8c7d6e-DO-NOT-PRINT"
# a prompt with everything an escaper must handle: XML specials, quotes, a comma and colon
# (the WebUI quotes such values), a newline-free unicode tail
PROMPT = 'A <b>"lighthouse"</b> & harbour, at dusk: oil — Ölgemälde'


def gen(tmp_path: Path, faulty: Any, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--backend", "openai", "--base-url", faulty.v1, "--api-key-env", "IW_GEN_KEY"]
    return run_cli(tmp_path, "generate", *args, *flags, IW_GEN_KEY=KEY)


def test_generate_writes_pngs_with_metadata(tmp_path: Path, faulty: Any) -> None:
    proc = gen(tmp_path, faulty, PROMPT, "-n", "2", "--size", "40x24", "--out", "art", "--negative", "blur")
    assert proc.returncode == 0, show(proc)
    slug = "a-b-lighthouse-b-harbour-at-dusk-oil-olgemalde"
    names = [f"art/{slug}_001.png", f"art/{slug}_002.png"]
    assert proc.stdout.split() == names
    for name in names:
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.size == (40, 24)
            text = im.text  # type: ignore[attr-defined]
        lines = text["parameters"].split("\n")
        assert lines[0] == PROMPT and lines[1] == "Negative prompt: blur"
        assert lines[2].startswith("Size: 40x24, Backend: openai, Version: imageworks ")
        assert "Seed" not in lines[2]  # the OpenAI API reports no seed: none is claimed
        assert "XML:com.adobe.xmp" in text
    assert KEY not in proc.stdout + proc.stderr
    records = read_jsonl(tmp_path / "imageworks-generated.jsonl")
    assert [r["image"] for r in records] == names and all(r["error"] is None for r in records)
    _golden(records)


def test_exiftool_reads_the_prompt_back(tmp_path: Path, faulty: Any) -> None:
    require(shutil.which("exiftool") is not None, "exiftool is not installed (scripts/install.sh --dev)")
    proc = gen(tmp_path, faulty, PROMPT, "--size", "16x16")
    assert proc.returncode == 0, show(proc)
    path = tmp_path / proc.stdout.split()[0]
    out = subprocess.run(
        ["exiftool", "-j", "-XMP-dc:Description", "-PNG:Parameters", "-XMP-xmp:CreatorTool", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    tags = json.loads(out.stdout)[0]
    assert tags["Description"] == PROMPT
    assert tags["Parameters"].startswith(PROMPT + "\n")
    assert tags["CreatorTool"] == "imageworks"


def test_never_overwrites_without_the_flag(tmp_path: Path, faulty: Any) -> None:
    first = gen(tmp_path, faulty, "red square", "--size", "8x8")
    assert first.returncode == 0, show(first)
    target = tmp_path / "red-square_001.png"
    before = target.read_bytes()
    again = gen(tmp_path, faulty, "red square", "--size", "8x8")
    assert again.returncode == 2, show(again)
    assert "already exist" in again.stderr and "--overwrite" in again.stderr
    assert target.read_bytes() == before
    assert len(faulty.log("/v1/images/generations")) == 1  # nothing was sent the second time
    forced = gen(tmp_path, faulty, "red square", "--size", "16x16", "--overwrite")
    assert forced.returncode == 0, show(forced)
    with Image.open(target) as im:
        assert im.size == (16, 16)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".imageworks-")]  # no temp left


@pytest.mark.about("wait_for_backend")
def test_exit_codes(tmp_path: Path, faulty: Any) -> None:
    usage = run_cli(tmp_path, "generate", "x", "--backend", "vllm")
    assert usage.returncode == 2 and "does not generate images" in usage.stderr, show(usage)
    bad = gen(tmp_path, faulty, "x", "--size", "big")
    assert bad.returncode == 2 and "WIDTHxHEIGHT" in bad.stderr, show(bad)
    faulty.script([{"match": {"path": "/v1/images/generations"}, "fault": "status", "status": 400}])
    rejected = gen(tmp_path, faulty, "refused prompt")
    assert rejected.returncode == 1 and "injected 400" in rejected.stderr, show(rejected)
    down = run_cli(
        tmp_path,
        "generate",
        "x",
        "--backend",
        "openai",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--wait-for-backend",
        "0",
    )
    assert down.returncode == 3 and "cannot connect" in down.stderr, show(down)
    records = read_jsonl(tmp_path / "imageworks-generated.jsonl")
    assert [r["image"] for r in records] == [None, None]  # the two that reached a backend
    assert "injected 400" in records[0]["error"] and records[0]["attempts"][0]["status"] == 400


def test_backends_lists_kinds(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "backends")
    assert proc.returncode == 0, show(proc)
    assert "kinds: vision, text, image_generation" in proc.stdout


def _normalise(text: str) -> str:
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?\+00:00", "<TIMESTAMP>", text)
    text = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<PORT>", text)
    text = re.sub(
        r'("(?:processing_time|queue_time|latency|generate|download)": )[0-9.e-]+', r"\1<SECONDS>", text
    )
    return text


def _golden(records: list[dict[str, Any]]) -> None:
    text = _normalise("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    if WRITE:
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


# ------------------------------------------------------------------ ComfyUI over real sockets, on a terminal


@pytest.fixture
def comfyui_server() -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = python_argv(Path(__file__).parent / "servers" / "comfyui_server.py", "--port", str(port))
    with ServerProcess(argv, ready_url=base + "/system_stats", name="comfyui-shaped", ready_timeout=30):
        yield base


def test_generate_on_comfyui_shows_its_steps_on_the_terminal(tmp_path: Path, comfyui_server: str) -> None:
    """``imageworks generate --backend comfyui`` at a terminal, against a ComfyUI-shaped aiohttp server
    (tests/servers/comfyui_server.py): the sampler's steps arrive over ``/ws`` and show as the
    progress line, the socket and the queued prompt share a client id, the PNG is written."""
    args = ["generate", "a lighthouse", "--backend", "comfyui", "--base-url", comfyui_server]
    args += ["--steps", "6", "--size", "64x48", "--out", str(tmp_path / "out")]
    code, text, _ = run_in_terminal(tmp_path, *args, on_terminal="both")
    assert code == 0, text
    assert "Traceback" not in text
    steps = re.findall(r"comfyui: step (\d)/6 \(\d+ %\), node 3", text)
    assert steps == ["1", "2", "3", "4", "5", "6"], text
    [png] = list((tmp_path / "out").glob("*.png"))
    with Image.open(png) as image:
        assert image.size == (64, 48)
    with urllib.request.urlopen(comfyui_server + "/stats", timeout=5) as resp:
        stats = json.loads(resp.read())
    assert stats["prompts"] == 1 and stats["sockets"] == stats["client_ids"]
