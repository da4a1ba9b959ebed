"""``imageworks ask``: a prompt (and images) to a text or vision backend, as a user runs it.

Against the fault-injecting server: what reaches the server, what is printed
(whole, streamed to a real pseudo-terminal, or as JSON), hostile model text,
and the exit codes of the other commands.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import backend_args, run_cli, run_in_terminal, show

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
CHAT = "/v1/chat/completions"


def chat_log(faulty: Any) -> list[dict[str, Any]]:
    return [e for e in faulty.log(CHAT) if e["status"] == 200]


def test_ask_prints_the_answer_and_sends_only_text(faulty: Any, tmp_path: Path) -> None:
    faulty.script(
        [
            {
                "match": {"path": CHAT, "body_contains": "What is a gelatin silver print?"},
                "fault": "ok",
                "content": "A photographic print on paper coated with silver halides.",
            },
            {"match": {"path": CHAT}, "fault": "status", "status": 400},
        ]
    )
    proc = run_cli(tmp_path, "ask", "What is a gelatin silver print?", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    assert proc.stdout == "A photographic print on paper coated with silver halides.\n", show(proc)
    (entry,) = chat_log(faulty)
    assert entry["stream"] is False  # stdout is a pipe: not streamed


def test_ask_with_an_image_and_a_system_prompt(faulty: Any, tmp_path: Path) -> None:
    image = SAMPLES / "mono_sepia.jpg"
    faulty.script(
        [
            {
                "match": {"path": CHAT, "body_contains": "data:image/jpeg;base64,"},
                "fault": "ok",
                "content": "image seen",
            },
            {"match": {"path": CHAT}, "fault": "ok", "content": "no image"},
        ]
    )
    proc = run_cli(
        tmp_path, "ask", "Is it toned?", "--image", str(image), "--system", "Be brief.", *backend_args(faulty)
    )
    assert proc.returncode == 0 and proc.stdout == "image seen\n", show(proc)
    faulty.reset()
    faulty.script(
        [
            {"match": {"path": CHAT, "body_contains": '"role": "system"'}, "fault": "ok", "content": "sys"},
            {"match": {"path": CHAT}, "fault": "ok", "content": "no system prompt"},
        ]
    )
    proc = run_cli(tmp_path, "ask", "x", "--system", "Be brief.", *backend_args(faulty))
    assert proc.stdout == "sys\n", show(proc)


def test_ask_json_record(faulty: Any, tmp_path: Path) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "ok", "content": 'say "hi"\n'}])
    proc = run_cli(tmp_path, "ask", "greet", "--json", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    record = json.loads(proc.stdout)
    assert record["text"] == 'say "hi"\n'
    assert record["backend"] == "openai" and record["model"] == "fake-vlm"
    assert record["base_url"] == faulty.v1 and record["finish_reason"] == "stop"
    assert record["usage"]["total_tokens"] > 0 and record["latency"] > 0


def test_hostile_text_cannot_drive_the_terminal(faulty: Any, tmp_path: Path) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "ok", "content": "ok\x1b]0;pwned\x07\x1b[2J done"}])
    proc = run_cli(tmp_path, "ask", "x", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    assert "\x1b" not in proc.stdout and "\x07" not in proc.stdout
    assert "pwned" in proc.stdout and "done" in proc.stdout


def _run_in_terminal(cwd: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """The CLI with stdout on a pseudo-terminal: its exit code and what the terminal showed."""
    code, out, err = run_in_terminal(cwd, *args, env=env)
    assert "Traceback" not in err and "ResourceWarning" not in err, err
    return code, out.replace("\r\n", "\n")


def test_ask_streams_to_a_terminal(faulty: Any, tmp_path: Path) -> None:
    faulty.script(
        [
            {
                "match": {"path": CHAT, "stream": True},
                "fault": "ok",
                "content": "Silver gelatin, selenium toned.",
                "piece_chars": 4,
            },
            {"match": {"path": CHAT}, "fault": "ok", "content": "not streamed"},
        ]
    )
    code, out = _run_in_terminal(tmp_path, "ask", "x", *backend_args(faulty))
    assert code == 0 and out == "Silver gelatin, selenium toned.\n", out
    assert [e["stream"] for e in chat_log(faulty)] == [True]
    faulty.reset()
    code, out = _run_in_terminal(tmp_path, "ask", "x", "--no-stream", *backend_args(faulty))
    assert code == 0 and [e["stream"] for e in chat_log(faulty)] == [False], out


@pytest.mark.about("wait_for_backend")
def test_ask_exit_codes(faulty: Any, tmp_path: Path) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "status", "status": 400}])
    proc = run_cli(tmp_path, "ask", "x", *backend_args(faulty))
    assert proc.returncode == 1 and proc.stdout == "" and "400" in proc.stderr, show(proc)
    proc = run_cli(
        tmp_path,
        "ask",
        "x",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        "http://127.0.0.1:9/v1",
        "--vlm-model",
        "m",
        "--wait-for-backend",
        "0",
    )
    assert proc.returncode == 3 and "127.0.0.1:9" in proc.stderr, show(proc)
    proc = run_cli(tmp_path, "ask", "x", "--image", str(tmp_path / "missing.jpg"), *backend_args(faulty))
    assert proc.returncode == 2 and "missing.jpg: no such file" in proc.stderr, show(proc)  # bad usage


def test_a_streamed_answer_never_shows_an_echoed_key_split_across_chunks(faulty: Any, tmp_path: Path) -> None:
    key = "sk-live-ASKECHO-77c0ffee4b1d"
    echo = {"fault": "echo_auth", "where": "content", "piece_chars": 3}
    faulty.script([{"match": {"path": CHAT, "stream": True}, **echo}])
    code, out = _run_in_terminal(
        tmp_path, "ask", "x", *backend_args(faulty), "--vlm-api-key-env", "ASK_KEY", env={"ASK_KEY": key}
    )
    assert code == 0 and "Bearer ***" in out, out
    assert key not in out and [e["stream"] for e in chat_log(faulty)] == [True], out
