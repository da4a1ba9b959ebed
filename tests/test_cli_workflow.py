"""``imageworks generate --workflow FILE``: a ComfyUI workflow from the command line.

The workflow is the comfyui backend's own setting, checked before anything is
sent (the protocol itself is tested in test_comfyui.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from cli_helpers import read_jsonl, run_cli, show

DEAD = ["--base-url", "http://127.0.0.1:9"]


def test_workflow_without_a_prompt_placeholder_is_refused_before_sending(tmp_path: Path) -> None:
    flow = tmp_path / "flow.json"
    flow.write_text(json.dumps({"1": {"class_type": "KSampler", "inputs": {"seed": "{{seed}}"}}}))
    proc = run_cli(tmp_path, "generate", "a lighthouse", "--workflow", str(flow), *DEAD)
    assert proc.returncode == 2, show(proc)
    assert "{{prompt}}" in proc.stderr and "flow.json" in proc.stderr, show(proc)
    (line,) = read_jsonl(tmp_path / "imageworks-generated.jsonl")
    assert line["image"] is None and "{{prompt}}" in line["error"]
    assert not list(tmp_path.glob("*.png"))


def test_a_missing_workflow_file_is_named(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "generate", "x", "--workflow", str(tmp_path / "nope.json"), *DEAD)
    assert proc.returncode == 2 and "nope.json" in proc.stderr, show(proc)


def test_workflow_with_another_backend_is_a_usage_error(tmp_path: Path) -> None:
    flow = tmp_path / "flow.json"
    flow.write_text("{}")
    proc = run_cli(tmp_path, "generate", "x", "--workflow", str(flow), "--backend", "sdwebui", *DEAD)
    assert proc.returncode == 2 and "--backend comfyui" in proc.stderr, show(proc)
    assert not (tmp_path / "imageworks-generated.jsonl").exists()  # refused before anything
