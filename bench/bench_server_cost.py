"""What the two socket test servers cost per request: why the benchmarks keep their own server.

The testing kit's fake server (``imageworks_core.testing.fake_server``, aiohttp,
scriptable, strict request checks; the suite's fault server is the same server)
and the benchmarks' canned server (``tests/servers/fast_openai.py``, a bare
``asyncio.Protocol``) each answer the same 1,500 chat requests, every one with a
~40 KB base64 image, over one kept-alive connection.  Printed: each server
process's own CPU time per request, and the ratio.  A benchmark of the client
needs a server that costs a small fraction of it.

    python bench/bench_server_cost.py [-n 1500]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers._proc import ServerProcess, free_port, python_argv  # noqa: E402

IMAGE = "data:image/jpeg;base64," + base64.b64encode(os.urandom(30_000)).decode()
BODY = json.dumps(
    {
        "model": "fake-vlm",
        "max_tokens": 64,
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Describe"},
                    {"type": "image_url", "image_url": {"url": IMAGE}},
                ],
            }
        ],
    }
).encode()


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cost_ms(script: Path, n: int) -> float:
    """Server CPU milliseconds per request."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with ServerProcess(
        python_argv(script, "--port", str(port)), ready_url=url + "/health", name=script.stem
    ) as server:
        assert server.proc is not None
        with httpx.Client(base_url=url) as client:
            for _ in range(50):  # warm up
                client.post("/v1/chat/completions", content=BODY).raise_for_status()
            before = _cpu_s(server.proc.pid)
            for _ in range(n):
                client.post("/v1/chat/completions", content=BODY).raise_for_status()
            return (_cpu_s(server.proc.pid) - before) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, default=1500, help="requests per server")
    args = parser.parse_args()
    fast = cost_ms(ROOT / "tests" / "servers" / "fast_openai.py", args.n)
    fake = cost_ms(ROOT / "tests" / "servers" / "faulty_openai.py", args.n)
    print(f"server CPU per request: fast_openai {fast:.3f} ms, the kit's fake server {fake:.3f} ms")
    print(f"ratio: the fake server costs {fake / fast:.1f}x what fast_openai costs")


if __name__ == "__main__":
    main()
