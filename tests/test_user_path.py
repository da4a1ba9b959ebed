"""What a user gets: wheels built from this tree, installed by backend name into a bare venv.

No editable installs, no test extras, no trio: ``pip install --find-links WHEELHOUSE
imageworks-backend-vllm`` (and lmdeploy, triton) into a fresh venv, the runtime
dependencies at whatever versions the registry serves today.  In that venv every
module of every installed distribution imports (an undeclared dependency fails
here, as ``sniffio`` once did), ``pip check`` passes, the commands run, and
``imageworks describe`` with default settings describes the samples against a
real server, or, with nothing listening, exits 3 with the launch lines and no
traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import read_jsonl
from conftest import require
from servers._proc import free_port

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
DISTRIBUTIONS = {
    "imageworks-core": "core",
    "imageworks-backend-vllm": "plugins/vllm",
    "imageworks-backend-lmdeploy": "plugins/lmdeploy",
    "imageworks-backend-triton": "plugins/triton",
    "imageworks-backend-transformers": "plugins/transformers",
    "imageworks-backend-diffusers": "plugins/diffusers",
    "imageworks-backend-sdwebui": "plugins/sdwebui",
    "imageworks-backend-comfyui": "plugins/comfyui",
    "imageworks-backend-echo": "examples/imageworks-backend-echo",
    "imageworks-backend-ollama": "examples/imageworks-backend-ollama",
}
#: What a user installs, by name (each pulls in imageworks-core).
USER_INSTALLS = [
    "imageworks-backend-vllm",
    "imageworks-backend-lmdeploy",
    "imageworks-backend-triton",
    "imageworks-backend-sdwebui",
    "imageworks-backend-comfyui",
]
TEST_ONLY = ["pytest", "trio", "transformers", "torch", "deptry"]

pytestmark = pytest.mark.slow


def _run(argv: list[str], *, timeout: float = 600, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


def _show(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist of every distribution and a wheel built from it (a file missing from the sdist fails)."""
    try:
        import build  # noqa: F401
    except ImportError:
        require(False, "the 'build' package is not installed (scripts/install.sh --dev)")
    out = tmp_path_factory.mktemp("wheelhouse")
    for folder in DISTRIBUTIONS.values():
        src = tmp_path_factory.mktemp("src") / Path(folder).name
        # build from a copy: a build must not depend on (or leave) files in the tree
        shutil.copytree(ROOT / folder, src, ignore=shutil.ignore_patterns("build", "dist", "__pycache__"))
        # no --sdist/--wheel: build makes the sdist, then the wheel from the unpacked sdist; in an
        # isolated build environment, as pip builds an sdist for a user (so [build-system] is tested)
        proc = _run([sys.executable, "-m", "build", "--outdir", str(out), str(src)], env=_clean_env())
        assert proc.returncode == 0, f"building {folder}\n{_show(proc)}"
    return out


@pytest.fixture(scope="module")
def user_venv(wheelhouse: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only what ``pip install <backend>`` brings (the wheelhouse, then the registry)."""
    venv = tmp_path_factory.mktemp("user") / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    proc = _run([base, "-m", "venv", str(venv)])
    assert proc.returncode == 0, _show(proc)
    python = venv / "bin" / "python"
    proc = _run(
        [str(python), "-m", "pip", "install", "-q", "--find-links", str(wheelhouse), *USER_INSTALLS],
        env=_clean_env(),
    )
    assert proc.returncode == 0, f"pip install of the built wheels failed\n{_show(proc)}"
    return venv


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("IMAGEWORKS_", "PYTHON", "VIRTUAL_ENV", "PIP_CONSTRAINT"))
    }
    env.update(extra)
    return env


def _cli(venv: Path, cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    proc = _run(
        [str(venv / "bin" / "imageworks"), *args],
        cwd=cwd,
        timeout=timeout,
        env=_clean_env(IMAGEWORKS_CONFIG_FILE=str(cwd / "no-user-config.toml"), PYTHONIOENCODING="utf-8"),
    )
    assert "Traceback" not in proc.stderr + proc.stdout, _show(proc)
    return proc


# ------------------------------------------------------------------ the built distributions


def test_each_wheel_and_sdist_carries_license_and_py_typed(wheelhouse: Path) -> None:
    for name in DISTRIBUTIONS:
        stem = name.replace("-", "_")
        wheels = list(wheelhouse.glob(f"{stem}-*.whl"))
        sdists = list(wheelhouse.glob(f"{stem}-*.tar.gz"))
        assert len(wheels) == 1 and len(sdists) == 1, sorted(p.name for p in wheelhouse.iterdir())
        names = zipfile.ZipFile(wheels[0]).namelist()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), (name, names)
        assert any(n.endswith("/py.typed") for n in names), (name, names)
        with tarfile.open(sdists[0]) as tar:
            members = tar.getnames()
        assert any(m.endswith("/LICENSE") for m in members), (name, members)


# ------------------------------------------------------------------ the user's venv


def test_only_what_a_user_installs_is_there(user_venv: Path) -> None:
    python = str(user_venv / "bin" / "python")
    code = (
        "import importlib.util, json, sys; "
        "print(json.dumps({n: bool(importlib.util.find_spec(n)) for n in sys.argv[1:]}))"
    )
    proc = _run([python, "-c", code, *TEST_ONLY, "sniffio"], env=_clean_env())
    found = json.loads(proc.stdout)
    assert not any(found[n] for n in TEST_ONLY), found  # a bare venv: none of the test tools
    proc = _run([python, "-m", "pip", "check"], env=_clean_env())
    assert proc.returncode == 0, _show(proc)


IMPORT_ALL = r"""
import importlib, importlib.metadata as md, json, pkgutil, re, sys

report = {}
for dist in sys.argv[1:]:
    # names a module may miss only when it belongs to one of the distribution's extras
    extras = set()
    for req in md.requires(dist) or []:
        if "extra ==" in req:
            extras.add(re.split(r"[\s;<>=!~\[]", req, maxsplit=1)[0].lower().replace("-", "_"))
    top = dist.replace("-", "_")
    package = importlib.import_module(top)
    names = [top] + [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")]
    for name in names:
        try:
            importlib.import_module(name)
            report[name] = "ok"
        except ModuleNotFoundError as exc:
            missing = (exc.name or "").split(".")[0]
            report[name] = f"needs extra {missing}" if missing in extras else f"FAILED: {exc!r}"
        except Exception as exc:
            report[name] = f"FAILED: {exc!r}"
print(json.dumps(report))
"""


def test_every_module_of_every_installed_distribution_imports(user_venv: Path) -> None:
    dists = ["imageworks-core", *USER_INSTALLS]
    proc = _run([str(user_venv / "bin" / "python"), "-c", IMPORT_ALL, *dists], env=_clean_env())
    assert proc.returncode == 0, _show(proc)
    report = json.loads(proc.stdout)
    failed = {k: v for k, v in report.items() if v.startswith("FAILED")}
    assert not failed, failed
    assert "imageworks_core.transport" in report and "imageworks_backend_triton" in report
    assert len(report) > 30, report


def test_version_and_backends_commands(user_venv: Path, tmp_path: Path) -> None:
    proc = _cli(user_venv, tmp_path, "--version")
    assert proc.returncode == 0, _show(proc)
    for name in ["imageworks-core", *USER_INSTALLS]:
        assert f"{name} 0.1.0" in proc.stdout, _show(proc)
    module = _run(
        [str(user_venv / "bin" / "python"), "-m", "imageworks_core", "--version"],
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert module.returncode == 0 and module.stdout == proc.stdout, _show(module)
    # the reader closes the pipe after one line: no traceback, exit 0
    piped = _run(
        ["bash", "-c", f"set -o pipefail; '{user_venv}/bin/imageworks' --version | head -1"],
        env=_clean_env(),
        cwd=tmp_path,
    )
    assert piped.returncode == 0 and "Traceback" not in piped.stderr, _show(piped)
    assert piped.stdout.startswith("imageworks-core 0.1.0"), _show(piped)
    backends = _cli(user_venv, tmp_path, "backends", "--json")
    assert backends.returncode == 0, _show(backends)
    names = {b["name"] for b in json.loads(backends.stdout)}
    assert {"openai", "vllm", "lmdeploy", "triton", "sdwebui", "comfyui"} <= names, names


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "samples"
    folder.mkdir()
    return [Path(shutil.copy2(p, folder / p.name)) for p in sorted(SAMPLES.glob("*.jpg"))]


@pytest.mark.server
def test_describe_the_samples_against_a_real_server(
    user_venv: Path, tmp_path: Path, photos: list[Path], hf_server: Any
) -> None:
    """Default settings (attempts, limits, outputs); only the server's URL is given."""
    proc = _cli(user_venv, tmp_path, "describe", "samples", "--vlm-base-url", hf_server.base_url, timeout=600)
    assert proc.returncode == 0, _show(proc)
    assert f"images: {len(photos)} ok, 0 failed, 0 skipped" in proc.stdout, _show(proc)
    records = read_jsonl(tmp_path / "imageworks-results.jsonl")
    assert sorted(Path(r["image"]).name for r in records) == sorted(p.name for p in photos)
    for r in records:
        assert r["error"] is None and r["description"].strip(), r
        assert r["backend"] == "vllm"  # the default backend
    for photo in photos:
        assert photo.with_suffix(".xmp").is_file()
        assert photo.with_name(photo.name + ".cn_metadata.json").is_file()


def test_describe_with_nothing_listening_exits_3_with_the_launch_lines(
    user_venv: Path, tmp_path: Path, photos: list[Path]
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = _cli(user_venv, tmp_path, "describe", "samples", "--vlm-base-url", url)
    assert proc.returncode == 3, _show(proc)
    assert "vllm serve" in proc.stderr, _show(proc)  # the one-line launch command
    assert "127.0.0.1" in proc.stderr, _show(proc)
    assert not (tmp_path / "imageworks-results.jsonl").exists() or not read_jsonl(
        tmp_path / "imageworks-results.jsonl"
    )
