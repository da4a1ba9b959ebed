"""Piping the CLI into a reader that stops early (``imageworks config show | head -1``).

Under ``set -o pipefail`` a script fails on any non-zero exit in its pipeline, so a
reader that had what it wanted must not turn into an error: exit 0, nothing on stderr.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from cli_helpers import cli_argv, cli_env


@pytest.mark.parametrize(
    "args",
    [("config", "show"), ("backends",), ("backends", "--json"), ("--version",)],
    ids=["config-show", "backends", "backends-json", "version"],
)
def test_a_reader_that_closes_early_is_not_a_failure(tmp_path: Path, args: tuple[str, ...]) -> None:
    proc = subprocess.Popen(
        cli_argv(*args), cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has started: every write meets a closed pipe
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
