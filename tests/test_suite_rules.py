"""The suite's own rules (docs/contributing.md, "Tests prove what users get"), enforced."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

PROBE = """
import pytest

def test_missing_tool():
    pytest.skip("exiftool not installed")

def test_not_applicable():
    pytest.skip("aiohttp runs under asyncio only")

def test_runs():
    pass
"""


def _run_probe(tmp_path: Path, *, ci: bool, source: str = PROBE) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_probe.py").write_text(source, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci:
        env["CI"] = "true"
    env["PYTHONPATH"] = str(TESTS)
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "no:cacheprovider", "test_probe.py"]
    return subprocess.run(
        argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_a_skip_for_a_missing_prerequisite_fails_the_session_in_ci(tmp_path: Path) -> None:
    done = _run_probe(tmp_path, ci=True)
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout[-3000:]
    assert "skipped in CI" in done.stdout
    assert "test_probe.py::test_missing_tool" in done.stdout
    assert (
        "test_probe.py::test_not_applicable"
        not in done.stdout.split("skipped in CI")[1].split("short test")[0]
    )


def test_the_same_skip_is_only_a_skip_outside_ci(tmp_path: Path) -> None:
    done = _run_probe(tmp_path, ci=False)
    assert done.returncode == pytest.ExitCode.OK, done.stdout[-3000:]
    assert "skipped in CI" not in done.stdout


def test_a_not_applicable_skip_passes_in_ci(tmp_path: Path) -> None:
    source = 'import pytest\n\ndef test_x():\n    pytest.skip("aiohttp runs under asyncio only")\n'
    done = _run_probe(tmp_path, ci=True, source=source)
    assert done.returncode == pytest.ExitCode.OK, done.stdout[-3000:]


def test_a_module_skipped_at_import_fails_the_session_in_ci(tmp_path: Path) -> None:
    source = 'import pytest\n\npytest.importorskip("a_module_nobody_has")\n\ndef test_x():\n    pass\n'
    done = _run_probe(tmp_path, ci=True, source=source)
    assert done.returncode != pytest.ExitCode.OK, done.stdout[-3000:]
    assert "a_module_nobody_has" in done.stdout


# ------------------------------------------------------------------ defaults are what tests run

ROOT = TESTS.parent
# attempt counts, limits and policies: a test runs with their defaults unless it is about them
POLICIES = {"max_attempts", "cooldown_after", "deadline", "wait_for_backend"}
FLAGS = {"--wait-for-backend": "wait_for_backend"}


def _decorated_about(node: ast.FunctionDef | ast.AsyncFunctionDef) -> set[str]:
    """The settings named by ``@pytest.mark.about(...)`` on a test."""
    named: set[str] = set()
    for decorator in node.decorator_list:
        if (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "about"
        ):
            named |= {
                a.value for a in decorator.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
            }
    return named


def _overrides(tree: ast.AST) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if isinstance(node.func, ast.Name) and node.func.id == "settings":
                continue  # hypothesis.settings(deadline=...): the property test's own time limit
            found += [(k.value.lineno, k.arg) for k in node.keywords if k.arg in POLICIES]
        elif isinstance(node, ast.Dict):
            found += [
                (key.lineno, key.value)
                for key in node.keys
                if isinstance(key, ast.Constant) and key.value in POLICIES
            ]
        elif isinstance(node, ast.Constant) and node.value in FLAGS:
            found.append((node.lineno, FLAGS[node.value]))
    return found


def _test_sources() -> list[Path]:
    return sorted([*TESTS.glob("test_*.py"), *TESTS.glob("*_helpers.py"), *ROOT.glob("plugins/*/tests/*.py")])


def policy_overrides_not_declared() -> list[str]:
    problems: list[str] = []
    for path in _test_sources():
        if path.name == Path(__file__).name:
            continue  # its own examples
        tree = ast.parse(path.read_text(encoding="utf-8"))
        where = path.relative_to(ROOT)
        seen: set[int] = set()
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.name.startswith(
                "test"
            ):
                continue
            about = _decorated_about(node)
            for line, name in _overrides(node):
                seen.add(line)
                if name not in about:
                    problems.append(
                        f"{where}:{line}: {node.name} sets {name} without @pytest.mark.about({name!r})"
                    )
        for line, name in _overrides(tree):
            if line not in seen:
                problems.append(
                    f"{where}:{line}: {name} set outside a test (a helper or fixture): pass it from the test"
                )
    return problems


def test_tests_change_attempt_counts_and_policies_only_when_about_them() -> None:
    """Rule: a test may shorten waits, never change attempt counts, limits or policies from their
    defaults unless it is about that setting, and then it says so: ``@pytest.mark.about("max_attempts")``."""
    problems = policy_overrides_not_declared()
    assert not problems, "\n".join(problems)


def test_the_policy_check_finds_an_undeclared_override(tmp_path: Path) -> None:
    source = (
        "import pytest\n"
        "def test_quiet():\n"
        "    make(retry={'max_attempts': 40})\n"
        "@pytest.mark.about('wait_for_backend')\n"
        "def test_declared():\n"
        "    make(wait_for_backend=0)\n"
        "    run(['--wait-for-backend', '0'])\n"
        "def test_flag():\n"
        "    run(['describe', '--wait-for-backend', '0'])\n"
    )
    tree = ast.parse(source)
    undeclared = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef):
            about = _decorated_about(node)
            undeclared += [(node.name, name) for _, name in _overrides(node) if name not in about]
    assert undeclared == [("test_quiet", "max_attempts"), ("test_flag", "wait_for_backend")]
