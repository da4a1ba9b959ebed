"""Start a server as its own process on 127.0.0.1 and wait until it answers.

Shared by the test fixtures, the benchmarks and ``.ci/run``.  Every server the
tests talk to is started through ``ServerProcess`` so that it always stops:
on context exit the whole process group is terminated, then killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def read_http_request(conn: socket.socket) -> tuple[bytes, bytes]:
    """One HTTP/1.1 request read whole off a raw socket: its head and its body.

    Reading the body too matters: closing a socket with unread bytes is a reset,
    which can throw away the answer already sent.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    while len(body) < length and (chunk := conn.recv(65536)):
        body += chunk
    return head, body


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """Status code of GET *url*, or ``None`` when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection
            return int(exc.code)
    except (OSError, ValueError):
        return None


class ServerProcess:
    """A subprocess serving HTTP on 127.0.0.1, ready when *ready_url* returns 200.

    Use as a context manager.  ``log`` returns what the server printed, which
    test failures should include.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        ready_url: str,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        ready_timeout: float = 120.0,
        name: str = "server",
    ) -> None:
        self.argv = list(argv)
        self.ready_url = ready_url
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.ready_timeout = ready_timeout
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self._logfile: Any = tempfile.NamedTemporaryFile(  # noqa: SIM115 (closed in stop)
            prefix=f"imageworks-{name}-", suffix=".log", delete=False
        )

    @property
    def log_path(self) -> Path:
        return Path(self._logfile.name)

    def log(self, tail: int = 8000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-tail:]

    def start(self) -> ServerProcess:
        if self._logfile.closed:  # started again after a stop: the same log, appended
            self._logfile = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            self.argv,
            stdout=self._logfile,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready:\n{self.log()}"
                )
            if http_status(self.ready_url, timeout=1.0) == 200:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"{self.name} not ready at {self.ready_url} after {self.ready_timeout}s:\n{self.log()}"
        )

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, for fault tests)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._logfile.close()  # the log stays on disk (log() reads it); an open handle would leak

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def python_argv(module_path: str | os.PathLike[str], *args: str) -> list[str]:
    """argv running *module_path* with the current interpreter, unbuffered."""
    return [sys.executable, "-u", os.fspath(module_path), *args]
