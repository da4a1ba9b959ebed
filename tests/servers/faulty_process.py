"""``faulty_openai`` as its own process on a fixed port: killed and started again by fault tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import faulty_openai
from ._proc import ServerProcess, free_port, python_argv

CHAT = "/v1/chat/completions"


class FaultyProcess:
    """One port; the server on it can be killed (SIGKILL, a crash) and started again."""

    def __init__(self, name: str = "faulty-proc") -> None:
        self.name = name
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.v1 = self.base + "/v1"
        self.proc: ServerProcess | None = None

    def start(self) -> FaultyProcess:
        if self.proc is None:  # one process object (one log) across kills and restarts
            argv = python_argv(Path(faulty_openai.__file__), "--port", str(self.port))
            self.proc = ServerProcess(argv, ready_url=self.base + "/health", name=self.name, ready_timeout=30)
        self.proc.start()
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def script(self, rules: list[dict[str, Any]], default: Any = "ok") -> None:
        faulty_openai.script(self.base, rules, default)

    def log(self, path: str | None = CHAT) -> list[dict[str, Any]]:
        return faulty_openai.request_log(self.base, path)

    def answered(self) -> int:
        return sum(1 for e in self.log() if e["status"] == 200 and e["completed"])
