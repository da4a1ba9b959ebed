"""``imageworks completion``: scripts the real shells load, completing commands, options and backends."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import run_cli, show
from conftest import require


@pytest.fixture(scope="module", params=["bash", "zsh", "fish"])
def script(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    shell = str(request.param)
    folder = tmp_path_factory.mktemp(shell)
    proc = run_cli(folder, "completion", shell)
    assert proc.returncode == 0 and proc.stdout.strip(), show(proc)
    path = folder / f"imageworks.{shell}"
    path.write_text(proc.stdout)
    return shell, path


def complete(shell: str, path: Path, line: str) -> list[str]:
    """What the real *shell* offers for *line* (the cursor at its end) with *path* loaded."""
    require(
        shutil.which(shell) is not None, f"{shell} is not installed (scripts/install.sh --dev installs it)"
    )
    if shell == "fish":
        code = f"source {path}; complete -C {line!r}"
        out = subprocess.run(["fish", "--no-config", "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [row.split("\t")[0] for row in out.stdout.splitlines()]
    if shell == "bash":
        words = line.split(" ")
        code = (
            f"source {path}; COMP_LINE={line!r}; COMP_POINT=${{#COMP_LINE}}; "
            f"COMP_WORDS=({' '.join(repr(w) for w in words)}); COMP_CWORD={len(words) - 1}; "
            f"_shtab_imageworks imageworks {words[-1]!r} {words[-2]!r}; printf '%s\\n' \"${{COMPREPLY[@]}}\""
        )
        out = subprocess.run(["bash", "--norc", "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [w.strip() for w in out.stdout.splitlines() if w.strip()]
    # zsh: completion needs a terminal (zle); check the script loads into compsys and defines the function
    loaded = "print -r -- ${+functions[_shtab_imageworks]}"
    code = f"autoload -U compinit && compinit -u && source {path} && {loaded}"
    out = subprocess.run(["zsh", "-f", "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stdout + out.stderr
    return []


def test_commands_options_and_backends_complete(script: tuple[str, Path]) -> None:
    shell, path = script
    commands = complete(shell, path, "imageworks ")
    if shell == "zsh":
        return  # loaded and defined (above); zsh offers nothing without a terminal
    assert {"describe", "health", "backends", "compare", "serve", "completion"} <= set(commands), commands
    assert complete(shell, path, "imageworks desc") == ["describe"]
    assert "--output" in complete(shell, path, "imageworks describe --out")
    assert "--vlm-backend" in complete(shell, path, "imageworks health --vlm-b")
    backends = complete(shell, path, "imageworks describe --vlm-backend ")
    assert {"vllm", "lmdeploy", "triton", "openai", "auto"} <= set(backends), backends  # the installed ones
    assert set(complete(shell, path, "imageworks completion ")) == {"bash", "zsh", "fish"}


def test_scripts_cost_nothing_at_startup() -> None:
    """Tab never starts Python; and building the parser (every command) does not import shtab."""
    code = "import sys, imageworks_core.cli as c; c.build_parser(); print('shtab' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_an_unknown_shell_is_a_usage_error(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "completion", "powershell")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr and "bash" in proc.stderr, show(proc)
