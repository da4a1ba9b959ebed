"""Start the real Triton Inference Server (from ``nvidia-pytriton``) with the tiny test models.

Usage::

    with triton_serve() as triton:
        httpx.post(f"{triton.base_url}/v2/models/tiny_vlm/generate", json={"text_input": "hi"})

The server process (``triton_models.py``) binds HTTP, gRPC and metrics to free ports on 127.0.0.1 and
is stopped (its whole process group) when the context exits.  See ``TRITON_NOTES.md`` for the
verified wire shapes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if __package__:  # imported as tests.servers.triton_serve, or as servers.triton_serve under pytest
    from ._proc import ServerProcess, free_port, http_status, python_argv
else:  # imported with tests/servers itself on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _proc import ServerProcess, free_port, http_status, python_argv  # type: ignore[no-redef]

MODELS_SCRIPT = Path(__file__).with_name("triton_models.py")

#: Every model ``triton_models.py`` serves (kept in sync with ``triton_models.MODEL_NAMES``,
#: which is not imported here so that importing this module does not import pytriton).
MODEL_NAMES: tuple[str, ...] = ("tiny_vlm", "tiny_vlm_stream", "tiny_vlm_batched", "vllm_style", "text_only")
#: Models whose generate endpoint streams several responses (decoupled models; ``/infer`` answers 501).
DECOUPLED_MODELS: tuple[str, ...] = ("tiny_vlm_stream", "vllm_style")

_PORT_IN_USE_MARKERS = ("already in use", "Address in use", "address already in use")


@dataclass(frozen=True)
class TritonServer:
    """A running Triton server: where it listens and which models it serves."""

    base_url: str
    http_port: int
    grpc_port: int
    metrics_port: int
    process: ServerProcess
    models: tuple[str, ...] = MODEL_NAMES
    decoupled_models: tuple[str, ...] = field(default=DECOUPLED_MODELS)

    @property
    def grpc_target(self) -> str:
        """``host:port`` for a gRPC channel."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def model_url(self, model: str) -> str:
        return f"{self.base_url}/v2/models/{model}"


def triton_env() -> dict[str, str]:
    """Environment for the server process.

    The Python backend stub links against ``libpython3.X.so``; without this it may pick up the
    system library instead of the one of the running interpreter.
    """
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    previous = os.environ.get("LD_LIBRARY_PATH", "")
    return {
        "LD_LIBRARY_PATH": os.pathsep.join(p for p in (libdir, previous) if p),
        "PYTHONUNBUFFERED": "1",
    }


def _wait_models_ready(proc: ServerProcess, base_url: str, models: tuple[str, ...], timeout: float) -> None:
    """``/v2/health/ready`` can be 200 before the models are loaded: wait on every model."""
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending:
        if proc.proc is not None and proc.proc.poll() is not None:
            raise RuntimeError(
                f"triton exited with {proc.proc.returncode} while loading models:\n{proc.log()}"
            )
        pending = [m for m in pending if http_status(f"{base_url}/v2/models/{m}/ready", timeout=1.0) != 200]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"triton models {pending} not ready after {timeout}s:\n{proc.log()}")
        time.sleep(0.1)


def _start(http_port: int, workdir: Path, ready_timeout: float) -> TritonServer:
    grpc_port, metrics_port = free_port(), free_port()
    while len({http_port, grpc_port, metrics_port}) < 3:
        grpc_port, metrics_port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{http_port}"
    proc = ServerProcess(
        python_argv(
            MODELS_SCRIPT,
            "--http-port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
            "--workspace",
            str(workdir / f"workspace-{http_port}"),
        ),
        ready_url=f"{base_url}/v2/models/{MODEL_NAMES[0]}/ready",
        env=triton_env(),
        ready_timeout=ready_timeout,
        name="triton",
    )
    started = time.monotonic()
    proc.start()
    try:
        remaining = max(5.0, ready_timeout - (time.monotonic() - started))
        _wait_models_ready(proc, base_url, MODEL_NAMES, remaining)
    except BaseException:
        proc.stop()
        raise
    return TritonServer(
        base_url=base_url,
        http_port=http_port,
        grpc_port=grpc_port,
        metrics_port=metrics_port,
        process=proc,
    )


def _remove_leftover_shm(pid: int) -> None:
    """Shared-memory regions of the Python backend, left behind only if the server was killed."""
    shm = Path("/dev/shm")
    if shm.is_dir():
        for region in shm.glob(f"pytrtion{pid}-*"):
            with contextlib.suppress(OSError):
                region.unlink()


@contextlib.contextmanager
def triton_serve(http_port: int | None = None, *, ready_timeout: float = 120.0) -> Iterator[TritonServer]:
    """Run Triton with the test models on 127.0.0.1 until the context exits.

    *http_port* defaults to a free port; gRPC and metrics always get free ports.  Waits until every
    model in ``MODEL_NAMES`` is ready (about 6-10 s).  A startup that fails because a picked port was
    taken meanwhile is retried with new ports (only when *http_port* was not given).
    """
    workdir = Path(tempfile.mkdtemp(prefix="imageworks-triton-"))
    server: TritonServer | None = None
    try:
        attempts = 1 if http_port is not None else 3
        for attempt in range(attempts):
            port = http_port if http_port is not None else free_port()
            try:
                server = _start(port, workdir, ready_timeout)
                break
            except RuntimeError as exc:
                if attempt + 1 < attempts and any(m in str(exc) for m in _PORT_IN_USE_MARKERS):
                    continue
                raise
        assert server is not None
        yield server
    finally:
        if server is not None:
            server.process.stop()
            if server.process.proc is not None:
                _remove_leftover_shm(server.process.proc.pid)
        shutil.rmtree(workdir, ignore_errors=True)
