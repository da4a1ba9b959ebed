"""Run Hugging Face ``transformers serve`` on 127.0.0.1 with the tiny offline LLaVA.

A real OpenAI-compatible vision-language server for integration tests (facts and quirks in
``HF_SERVE_NOTES.md`` beside this file)::

    with transformers_serve(cache_dir) as server:
        httpx.post(f"{server.base_url}/v1/chat/completions", json={"model": server.model_id, ...})

or from a shell (builds the model if needed, then serves in the foreground until Ctrl-C)::

    python tests/servers/hf_serve.py [--port N] [--cache DIR] [--build-only] [--no-preload]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

if __package__:  # imported as tests.servers.hf_serve, or as servers.hf_serve under pytest
    from ._proc import ServerProcess, free_port, python_argv
    from .tiny_vlm import build_tiny_llava
else:  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _proc import ServerProcess, free_port, python_argv  # type: ignore[no-redef]
    from tiny_vlm import build_tiny_llava  # type: ignore[no-redef]

DEFAULT_CACHE_DIR = Path(tempfile.gettempdir()) / "imageworks-tests" / "hf-home"
READY_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class HFServer:
    """A running ``transformers serve``: talk to ``base_url`` and name ``model_id`` in requests.

    The server answers with ``model`` set to ``model_id + "@main"``.
    """

    base_url: str
    model_id: str
    process: ServerProcess


def serve_env(cache_dir: Path) -> dict[str, str]:
    """Environment for a process that must find the tiny model in *cache_dir* and never go online."""
    cache_dir = Path(cache_dir)
    return {
        "HF_HOME": str(cache_dir),
        "HF_HUB_CACHE": str(cache_dir / "hub"),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",  # the CLI would otherwise ask PyPI for a newer version
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # One thread is as fast for a model this size and leaves the other cores to the tests.
        "OMP_NUM_THREADS": os.environ.get("IMAGEWORKS_HF_SERVE_THREADS", "1"),
        "PYTHONUNBUFFERED": "1",
    }


def serve_argv(model_id: str | None, port: int, *, log_level: str = "warning") -> list[str]:
    """argv for ``transformers serve`` on 127.0.0.1:*port*, preloading (and pinning) *model_id* if given.

    Runs the CLI module with the current interpreter (``python -u -m transformers.cli.transformers``)
    rather than the ``transformers`` console script, so it works from any environment that can
    import transformers.
    """
    args = ["transformers.cli.transformers", "serve"]
    if model_id is not None:
        args.append(model_id)
    args += ["--host", "127.0.0.1", "--port", str(port), "--log-level", log_level, "--device", "cpu"]
    # python_argv(path, *args) -> [python, -u, path, *args]; "-m" in the path slot runs the module.
    return python_argv("-m", *args)


@contextlib.contextmanager
def transformers_serve(
    cache_dir: Path = DEFAULT_CACHE_DIR,
    port: int | None = None,
    *,
    preload: bool = True,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = READY_TIMEOUT_S,
) -> Iterator[HFServer]:
    """Build the tiny LLaVA into *cache_dir* if needed, start ``transformers serve``, stop it on exit.

    With *preload* (the default) the model is loaded before the server listens, so "ready"
    (``GET /health`` -> 200) means requests are served at once; the server is then pinned to the
    model and answers 400 to any other ``model``.  Without it the model is loaded by the first
    request that names it and an unknown model is a 500.
    """
    model_id = build_tiny_llava(Path(cache_dir))
    port = free_port() if port is None else port
    base_url = f"http://127.0.0.1:{port}"
    proc = ServerProcess(
        serve_argv(model_id if preload else None, port),
        ready_url=f"{base_url}/health",
        env={**serve_env(Path(cache_dir)), **(env or {})},
        ready_timeout=ready_timeout,
        name="transformers-serve",
    )
    with proc:
        yield HFServer(base_url=base_url, model_id=model_id, process=proc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="transformers serve with a tiny offline LLaVA on 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR, help="HF_HOME to build into")
    parser.add_argument("--build-only", action="store_true", help="build the model, print its id, exit")
    parser.add_argument("--no-preload", action="store_true", help="load the model on the first request")
    parser.add_argument("--log-level", default="warning")
    opts = parser.parse_args(argv)

    model_id = build_tiny_llava(opts.cache)
    print(f"model {model_id} in {opts.cache}", flush=True)
    if opts.build_only:
        return 0
    cmd = serve_argv(None if opts.no_preload else model_id, opts.port, log_level=opts.log_level)
    print(f"serving on http://127.0.0.1:{opts.port}  ({' '.join(cmd)})", flush=True)
    # Become the server, so that signals (Ctrl-C, SIGTERM from a supervisor) reach it directly.
    os.execve(cmd[0], cmd, {**os.environ, **serve_env(opts.cache)})


if __name__ == "__main__":
    sys.exit(main())
