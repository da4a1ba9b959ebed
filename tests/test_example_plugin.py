"""The worked example plugins, installed the way a user installs a third-party backend.

``examples/imageworks-backend-echo``, ``examples/imageworks-backend-ollama`` and
``core/`` are built as wheels, installed with ``--no-deps --no-index`` into a
fresh virtual environment, and then the installed ``imageworks`` command must
list both, describe the sample images with ``echo``, and each example's own
tests (the conformance suite among them) must pass there.

How the fresh environment gets its third-party dependencies without a network:
``python -m venv --system-site-packages`` would expose the *base* interpreter's
site-packages, not this project's virtual environment, so instead a folder of
symlinks to every package in this environment's site-packages *except* the
ImageWorks distributions (and ``.pth`` files, which hold editable installs) is
put on the fresh environment's path with a ``.pth`` file.  ImageWorks itself
comes only from the two wheels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {name: REPO / "examples" / f"imageworks-backend-{name}" for name in ("echo", "ollama")}
SAMPLES = REPO / "samples"

pytestmark = pytest.mark.slow


def _run(argv: list[str | os.PathLike[str]], *, cwd: Path, env: dict[str, str], timeout: float = 120) -> str:
    proc = subprocess.run(
        [os.fspath(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if proc.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, argv))} exited {proc.returncode}\n--- stdout\n{proc.stdout[-6000:]}"
            f"\n--- stderr\n{proc.stderr[-6000:]}"
        )
    return proc.stdout


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IMAGEWORKS_", "PYTHON", "VIRTUAL_ENV", "PYTEST"))
    }
    env["IMAGEWORKS_CONFIG_FILE"] = str(tmp / "no-user-config.toml")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _is_ours(name: str) -> bool:
    lowered = name.lower()
    return (
        lowered.startswith(("imageworks", "_editable_impl_imageworks", "__editable__"))
        or lowered.endswith(".pth")
        or lowered == "__pycache__"
    )


@pytest.fixture(scope="module")
def examples_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fresh virtual environment with imageworks-core and the example plugins from wheels."""
    root = tmp_path_factory.mktemp("echo-plugin")
    env = _clean_env(root)
    wheels = root / "wheels"
    for project in (REPO / "core", *EXAMPLES.values()):
        _run(
            [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", wheels, project],
            cwd=root,
            env=env,
        )
    built = sorted(p.name for p in wheels.glob("*.whl"))
    expected = ["imageworks_backend_echo", "imageworks_backend_ollama", "imageworks_core"]
    assert [n.split("-")[0] for n in built] == expected, built

    deps = root / "deps"
    deps.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not _is_ours(entry.name):
            (deps / entry.name).symlink_to(entry)

    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=root, env=env)
    python = venv / "bin" / "python"
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=root, env=env
        ).strip()
    )
    (site / "_imageworks_test_deps.pth").write_text(f"{deps}\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "--disable-pip-version-check",
            "install",
            "--no-deps",
            "--no-index",
            *sorted(wheels.glob("*.whl")),
        ],
        cwd=root,
        env=env,
    )
    return {"root": root, "bin": venv / "bin", "python": python}


def test_installed_backends_list_the_examples(examples_env: dict[str, Path]) -> None:
    root = examples_env["root"]
    out = _run([examples_env["bin"] / "imageworks", "backends", "--json"], cwd=root, env=_clean_env(root))
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == {"echo", "ollama", "openai"}, "only the installed wheels' backends may appear"
    echo = rows["echo"]
    assert echo["error"] is None
    assert echo["distribution"] == "imageworks-backend-echo" and echo["version"] == "0.1.0"
    assert "prefix" in echo["settings"]
    assert echo["capabilities"]["max_images"] == 4
    ollama = rows["ollama"]
    assert ollama["error"] is None
    assert ollama["distribution"] == "imageworks-backend-ollama" and ollama["version"] == "0.1.0"
    assert {"keep_alive", "num_ctx"} <= set(ollama["settings"])


def test_describe_with_echo(examples_env: dict[str, Path]) -> None:
    root = examples_env["root"]
    photos = root / "photos"
    shutil.copytree(SAMPLES, photos, ignore=shutil.ignore_patterns("*.md", "*.xmp", "*.json"))
    images = sorted(p.name for p in photos.iterdir())
    assert images, "no sample images"
    output = root / "results.jsonl"
    argv = [
        examples_env["bin"] / "imageworks",
        "describe",
        photos,
        "--vlm-backend",
        "echo",
        "--xmp",
        "none",
        "--output",
        output,
        "--quiet",
    ]
    _run(argv, cwd=root, env=_clean_env(root))
    records = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(Path(r["image"]).name for r in records) == images
    for r in records:
        assert r["error"] is None and r["backend"] == "echo" and r["model"] == "echo-1"
        assert r["description"].startswith("echo: ") and "image 1: image/jpeg, " in r["description"]
    assert all((photos / f"{name}.cn_metadata.json").exists() for name in images)


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_example_conformance_suite_passes_in_the_fresh_environment(
    examples_env: dict[str, Path], example: str
) -> None:
    root = examples_env["root"]
    copy = root / f"example-{example}"
    shutil.copytree(
        EXAMPLES[example], copy, ignore=shutil.ignore_patterns("src", "build", "dist", "__pycache__")
    )
    out = _run(
        [examples_env["python"], "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=copy,
        env=_clean_env(root),
    )
    summary = out.strip().splitlines()[-1]
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 20, out[-3000:]
    assert not re.search(r"\d+ (failed|errors?)\b", summary), out[-3000:]
