"""Numeric settings are checked where they are read: exit 2 naming the key and where it came from.

Found by an adversarial pass (issue 12): ``concurrency = 0`` hung the run,
a negative one crashed, ``--vlm-timeout -1`` timed every request out,
``--temperature inf`` was sent as invalid JSON.  And ``--vlm-timeout`` bounds
a whole try, not each read: a server trickling one byte a second cannot hold
a request past it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import read_jsonl, run_cli, show
from PIL import Image
from servers._proc import read_http_request
from servers.faulty_openai import WARMUP_PROMPT

URL = "http://127.0.0.1:9/v1"  # never reached: the settings are refused first


def _image(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "a.jpg", "JPEG")


@pytest.mark.parametrize(
    ("args", "env", "key", "source"),
    [
        (["--concurrency", "0"], {}, "concurrency", "flag"),
        (["--concurrency", "-3"], {}, "concurrency", "flag"),
        ([], {"IMAGEWORKS_BACKENDS__VLLM__CONCURRENCY": "0"}, "concurrency", "IMAGEWORKS_BACKENDS__VLLM__"),
        ([], {"IMAGEWORKS_CONCURRENCY": "-1"}, "concurrency", "IMAGEWORKS_CONCURRENCY"),
        (["--vlm-timeout", "-1"], {}, "timeout", "flag"),
        (["--vlm-timeout", "0"], {}, "timeout", "flag"),
        (["--vlm-timeout", "nan"], {}, "timeout", "flag"),
        (["--temperature", "inf"], {}, "temperature", "flag"),
        (["--temperature", "nan"], {}, "temperature", "flag"),
        (["--max-tokens", "0"], {}, "max_tokens", "flag"),
        (["--wait-for-backend", "-5"], {}, "wait_for_backend", "flag"),
        (["--wait-for-backend", "inf"], {}, "wait_for_backend", "flag"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
@pytest.mark.about("wait_for_backend")
def test_bad_numbers_exit_2_naming_key_and_source(
    tmp_path: Path, args: list[str], env: dict[str, str], key: str, source: str
) -> None:
    _image(tmp_path)
    proc = run_cli(tmp_path, "describe", "a.jpg", "--vlm-base-url", URL, *args, timeout=60, **env)
    assert proc.returncode == 2, show(proc)
    assert key in proc.stderr and source.lower() in proc.stderr.lower(), proc.stderr
    assert not (tmp_path / "imageworks-results.jsonl").exists()


def test_a_per_backend_negative_timeout_in_the_config_file(tmp_path: Path) -> None:
    _image(tmp_path)
    cfg = tmp_path / "config.toml"
    cfg.write_text("[backends.vllm]\ntimeout = -5\n")
    proc = run_cli(tmp_path, "describe", "a.jpg", "--vlm-base-url", URL, "--config", str(cfg), timeout=60)
    assert proc.returncode == 2, show(proc)
    assert "timeout" in proc.stderr and str(cfg) in proc.stderr, proc.stderr


@pytest.fixture
def trickle() -> Iterator[str]:
    """An HTTP server that answers everything 200 and sends its body one byte a second
    (the model list and the client's warm-up request at once)."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            try:
                head, rest = read_http_request(conn)
                if head.startswith(b"GET") and b"/models" in head:
                    body = b'{"object":"list","data":[{"id":"m","object":"model"}]}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                    conn.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    return
                if WARMUP_PROMPT.encode() in rest:  # the items are what trickles
                    body = b'{"choices":[{"message":{"content":"OK"},"finish_reason":"length"}]}'
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                    conn.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    return
                body = b'{"choices":[{"message":{"content":"never finished"}}]}' * 10
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                conn.sendall(b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body))
                for byte in body:
                    if stop.wait(1.0):
                        return
                    conn.sendall(bytes([byte]))
            except OSError:
                return

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/v1"
    finally:
        stop.set()
        t.join(5)
        srv.close()


@pytest.mark.slow
def test_a_trickling_server_cannot_hold_a_try_past_the_timeout(tmp_path: Path, trickle: str) -> None:
    _image(tmp_path)
    t0 = time.monotonic()
    proc = run_cli(
        tmp_path,
        "describe",
        "a.jpg",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        trickle,
        "--vlm-timeout",
        "2",
        "--xmp",
        "none",
        timeout=120,
    )
    took = time.monotonic() - t0
    assert proc.returncode == 1, show(proc)
    [record] = read_jsonl(tmp_path / "imageworks-results.jsonl")
    assert "longer than 2s for one try" in record["error"], record
    # default retries: every try is cut at 2 s (plus backoff), far from the 550 s the body would take
    tries = len(record["attempts"])
    assert tries >= 1 and all(a["latency"] < 3.0 for a in record["attempts"]), record["attempts"]
    assert took < tries * 2.0 + 20, f"{took:.1f}s for {tries} tries"
