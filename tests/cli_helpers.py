"""Running the ``imageworks`` command in tests: a clean environment, no tracebacks allowed."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def cli_env(cwd: Path, **extra: str) -> dict[str, str]:
    """The environment of a CLI run: no config file, no IMAGEWORKS_* from outside; waits as users get them."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWORKS_")}
    env.update(
        IMAGEWORKS_CONFIG_FILE=str(cwd / "no-such-user-config.toml"),
        PYTHONUNBUFFERED="1",
        PYTHONIOENCODING="utf-8",
        # leaks show: run_cli fails a test whose CLI run printed one
        PYTHONWARNINGS="default::ResourceWarning",
    )
    env.update(extra)
    return env


#: Run as root (CI is), the CLI starts without the capabilities that make root ignore file
#: permissions, so a chmod 000 image or a read-only folder behaves as it does for a user.
AS_USER: tuple[str, ...] = ()
if hasattr(os, "geteuid") and os.geteuid() == 0 and shutil.which("setpriv"):
    AS_USER = ("setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")
#: File permissions hold for the CLI (a user, or root run through ``AS_USER``).
PERMISSIONS_HOLD = not (hasattr(os, "geteuid") and os.geteuid() == 0) or bool(AS_USER)


def cli_argv(*args: str) -> list[str]:
    return [*AS_USER, sys.executable, "-m", "imageworks_core.cli", *args]


def python_as_user(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run *code* in a new interpreter with file permissions enforced (``AS_USER`` when root)."""
    return subprocess.run(
        [*AS_USER, sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def run_cli(
    cwd: Path, *args: str, timeout: float = 120, errors: str = "surrogateescape", **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the CLI in *cwd*; fails the test if it printed a traceback or leaked a resource."""
    proc = subprocess.run(
        cli_argv(*args),
        cwd=cwd,
        env=cli_env(cwd, **env),
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors=errors,
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "ResourceWarning" not in proc.stderr, proc.stderr
    return proc


def show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def read_jsonl(path: Path, *, skip_broken: bool = False) -> list[dict[str, Any]]:
    """Every record; with *skip_broken*, a line cut short by a kill is skipped instead of failing."""
    records = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if not skip_broken:
                raise
    return records


def backend_args(faulty: Any) -> list[str]:
    """Flags pointing the generic backend at the fault server."""
    return ["--vlm-backend", "openai", "--vlm-base-url", faulty.v1, "--vlm-model", "fake-vlm"]


def run_in_terminal(
    cwd: Path, *args: str, on_terminal: str = "stdout", env: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run the CLI with *on_terminal* (``stdout``, ``stderr`` or ``both``) on a pseudo-terminal, as a
    user at a shell sees it: ``(exit code, what the terminal showed, the other stream)``."""
    leader, follower = pty.openpty()
    piped = {"stdout": "stderr", "stderr": "stdout"}.get(on_terminal)
    proc = subprocess.Popen(
        cli_argv(*args),
        cwd=cwd,
        env=cli_env(cwd, **(env or {})),
        stdout=subprocess.PIPE if piped == "stdout" else follower,
        stderr=subprocess.PIPE if piped == "stderr" else follower,
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    other = b""
    try:
        shown = _read_until_closed(leader, timeout)
    finally:
        code = proc.wait(timeout=60)
        stream = proc.stdout if piped == "stdout" else proc.stderr
        if stream is not None:
            other = stream.read()
            stream.close()
    return code, shown.decode("utf-8", "replace"), other.decode("utf-8", "replace")


def _read_until_closed(leader: int, timeout: float) -> bytes:
    """All a program wrote to a pseudo-terminal, until it closed its end (or *timeout* seconds of
    silence); closes *leader*."""
    out = b""
    try:
        while select.select([leader], [], [], timeout)[0]:
            try:
                data = os.read(leader, 4096)
            except OSError:  # the other end closed: the program ended
                break
            if not data:
                break
            out += data
    finally:
        os.close(leader)
    return out
