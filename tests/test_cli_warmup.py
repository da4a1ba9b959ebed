"""Warm-up as the CLI user gets it: on by default, one one-token request per endpoint after the
health check and before any image; ``--no-warmup`` sends none; a failed warm-up stops the batch
before anything is sent, with the server's own message (exit 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cli_helpers import backend_args, read_jsonl, run_cli, show
from PIL import Image

CHAT = "/v1/chat/completions"


def _images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (40, 30), (i * 50 % 256, 80, 160)).save(folder / f"w{i}.jpg", "JPEG")


def test_the_default_warms_each_endpoint_once_before_the_images(tmp_path: Path, faulty: Any) -> None:
    _images(tmp_path / "in", 3)
    proc = run_cli(tmp_path, "describe", "in", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    everything = faulty.log(CHAT, warmups=True)
    warmups = [e for e in everything if e["warmup"]]
    assert len(warmups) == 1, everything  # the server recognised the core's warm-up prompt
    assert everything[0]["warmup"], "the warm-up comes before any image"
    assert len(faulty.log(CHAT)) == 3
    records = read_jsonl(tmp_path / "imageworks-results.jsonl")
    assert len(records) == 3 and all(r["error"] is None for r in records)  # the warm-up is no result


def test_no_warmup_sends_only_the_images(tmp_path: Path, faulty: Any) -> None:
    _images(tmp_path / "in", 2)
    proc = run_cli(tmp_path, "describe", "in", "--no-warmup", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    assert not [e for e in faulty.log(CHAT, warmups=True) if e["warmup"]]
    assert len(faulty.log(CHAT)) == 2


def test_a_failing_warm_up_stops_the_batch_before_any_image(tmp_path: Path, faulty: Any) -> None:
    _images(tmp_path / "in", 2)
    faulty.script(
        [
            {
                "match": {"warmup": True},
                "fault": "status",
                "status": 400,
                "body": {"error": {"message": "model fake-vlm has no chat template", "code": 400}},
            }
        ]
    )
    proc = run_cli(tmp_path, "describe", "in", *backend_args(faulty))
    assert proc.returncode == 3, show(proc)
    assert "no backend is ready" in proc.stderr and "has no chat template" in proc.stderr, show(proc)
    assert faulty.log(CHAT) == []  # no image was sent, so none was lost or charged
    # the same batch goes through once the server is fixed
    faulty.reset()
    proc = run_cli(tmp_path, "describe", "in", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    assert len(read_jsonl(tmp_path / "imageworks-results.jsonl")) == 2
