"""Each distribution declares what its code imports, and ships what a package should.

deptry reads a distribution's ``pyproject.toml`` and every import under its
``src/``: an import that is not declared (DEP001 missing, DEP003 only present
because something else pulled it in) fails, as does a declared dependency that
nothing uses (DEP002).  This is how a missing ``sniffio`` would have been caught
before a user met it.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTIONS = [
    "core",
    "plugins/vllm",
    "plugins/lmdeploy",
    "plugins/triton",
    "plugins/transformers",
    "plugins/diffusers",
    "plugins/sdwebui",
    "plugins/comfyui",
    "examples/imageworks-backend-echo",
    "examples/imageworks-backend-ollama",
]


def _deptry() -> str | None:
    here = Path(sys.executable).with_name("deptry")
    return str(here) if here.exists() else shutil.which("deptry")


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_every_import_is_declared_in_its_own_pyproject(dist: str) -> None:
    deptry = _deptry()
    require(deptry is not None, "deptry is not installed (scripts/install.sh --dev)")
    assert deptry is not None
    proc = subprocess.run(
        [deptry, "src", "--no-ansi"],
        cwd=ROOT / dist,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"{dist}: undeclared or unused dependencies\n{proc.stdout}\n{proc.stderr}"
    assert "No dependency issues found" in proc.stdout + proc.stderr


def _project(dist: str) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((ROOT / dist / "pyproject.toml").read_text(encoding="utf-8"))[
        "project"
    ]
    return project


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_distribution_metadata(dist: str) -> None:
    project = _project(dist)
    folder = ROOT / dist
    assert (folder / "LICENSE").is_file(), f"{dist}: no LICENSE file"
    assert project.get("license-files") == ["LICENSE"], f"{dist}: LICENSE not named in license-files"
    assert project.get("license") == "MIT"
    readme = project.get("readme")
    assert isinstance(readme, str) and (folder / readme).is_file(), f"{dist}: no readme"
    classifiers = project.get("classifiers")
    assert isinstance(classifiers, list)
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    packages = list((folder / "src").glob("*/__init__.py"))
    assert len(packages) == 1, f"{dist}: expected one package under src/"
    assert (packages[0].parent / "py.typed").is_file(), f"{dist}: no py.typed marker"
    # one version source: the version in pyproject.toml, read at run time through the metadata
    assert isinstance(project.get("version"), str)
    source = "\n".join(p.read_text(encoding="utf-8") for p in packages[0].parent.rglob("*.py"))
    assert '__version__ = "' not in source and "__version__ = '" not in source, f"{dist}: a second version"
    # where a user who found the package on an index reads its documentation and reports a bug;
    # the links point into this tree, so a moved doc or folder fails here
    urls = project.get("urls")
    assert isinstance(urls, dict), f"{dist}: no [project.urls]"
    assert set(urls) >= {"Homepage", "Documentation", "Source", "Issues"}, f"{dist}: {sorted(urls)}"
    home = urls["Homepage"].rstrip("/")
    assert home.startswith("https://"), urls["Homepage"]
    assert urls["Issues"] == f"{home}/issues"
    assert urls["Source"] == f"{home}/tree/main/{dist}"
    documentation = urls["Documentation"].removeprefix(f"{home}/blob/main/")
    assert documentation != urls["Documentation"] and (ROOT / documentation).is_file(), urls["Documentation"]


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints" / "test.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints/test.txt: {line!r} is not a pin (name==version)"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_test_environment_is_the_pinned_one() -> None:
    """What runs the tests is what constraints/test.txt pins (install.sh --dev installs with it)."""
    wrong = {}
    for name, version in _pins().items():
        try:
            installed = Version(importlib.metadata.version(name))
        except importlib.metadata.PackageNotFoundError:
            wrong[name] = f"not installed (pinned {version})"
            continue
        if installed.public != Version(version).public:
            wrong[name] = f"{installed} installed, {version} pinned"
    require(not wrong, f"the test environment differs from constraints/test.txt: {wrong}")


def test_runtime_dependencies_are_not_pinned_for_tests() -> None:
    """Users get current versions of the runtime dependencies: the tests must not hold them back."""
    runtime = set()
    for dist in DISTRIBUTIONS:
        for req in _project(dist).get("dependencies", []):
            runtime.add(canonicalize_name(Requirement(req).name))
    # the in-process transformers and diffusers backends run the model stack the tiny test
    # models are built with (pinned so those models load the same everywhere)
    runtime -= {"transformers", "torch", "huggingface-hub", "diffusers"}
    assert not runtime & set(_pins()), sorted(runtime & set(_pins()))
