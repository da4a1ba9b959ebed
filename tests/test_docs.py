"""The docs' code blocks run, their config examples load, their links resolve.

* ```python blocks run in a fresh interpreter per page, in order, sharing one
  namespace (a later block may use what an earlier one defined).  A traceback
  points at the Markdown file and line.
* ```toml blocks are parsed; config examples (a ``[tool.imageworks]`` table, or
  the top-level keys of a user config file) are resolved with
  ``imageworks_core.config.load_config`` against the installed backends.
* Shell blocks are not run.  A block preceded by a ``<!-- no-test -->`` line
  is skipped (for the few that need a GPU server).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import attrs
import pytest

from imageworks_core.config import load_config
from imageworks_core.plugins import BackendRegistry
from imageworks_core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
IN_CI = os.environ.get("CI", "").lower() == "true"
REQUIRED = [
    "configuration.md",
    "plugin-authoring.md",
    "embedding.md",
    "architecture.md",
    "backends/vllm.md",
    "backends/lmdeploy.md",
    "backends/triton.md",
    "backends/openai.md",
]
_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
_NO_TEST = "<!-- no-test -->"


@attrs.frozen
class Block:
    page: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    skip: bool

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(DOCS)}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        start = i + 1
        j = start
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        body = [ln[len(indent) :] if ln.startswith(indent) else ln for ln in lines[start:j]]
        blocks.append(Block(page, start + 1, lang, "\n".join(body) + "\n", before == _NO_TEST))
        i = j + 1
    return blocks


PAGES = sorted(DOCS.rglob("*.md"))
BLOCKS = [b for page in PAGES for b in parse_blocks(page)]
PY_PAGES = sorted({b.page for b in BLOCKS if b.lang == "python" and not b.skip})
TOML_BLOCKS = [b for b in BLOCKS if b.lang == "toml" and not b.skip]


def require(condition: bool, why: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"prerequisite missing in CI: {why}")
        pytest.skip(why)


def test_required_pages_exist() -> None:
    missing = [p for p in REQUIRED if not (DOCS / p).is_file()]
    assert not missing, missing


def test_no_test_is_rare() -> None:
    skipped = [b.id for b in BLOCKS if b.skip]
    runnable = [b for b in BLOCKS if b.lang in ("python", "toml") and not b.skip]
    assert len(skipped) <= max(3, len(runnable) // 5), f"too many <!-- no-test --> blocks: {skipped}"


# ---------------------------------------------------------------- python

_RUNNER = r"""
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
for b in blocks:
    code = "\n" * (b["line"] - 1) + b["code"]
    try:
        exec(compile(code, b["page"], "exec"), namespace)
    except BaseException:
        print(f"\n*** the block at {b['page']}:{b['line']} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


@pytest.mark.parametrize("page", PY_PAGES, ids=[str(p.relative_to(DOCS)) for p in PY_PAGES])
def test_python_blocks_run(page: Path, tmp_path: Path) -> None:
    blocks = [
        {"page": str(b.page.relative_to(REPO)), "line": b.line, "code": b.code}
        for b in BLOCKS
        if b.page == page and b.lang == "python" and not b.skip
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER],
        input=json.dumps(blocks),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


# ---------------------------------------------------------------- toml


def _installed() -> tuple[dict[str, type], list[str]]:
    registry = BackendRegistry(allow=None, deny=())
    classes = {n: b.info.settings_cls for n, b in registry.backends.items()}
    return classes, [f.name for f in registry.failures]


def _named_backends(section: dict[str, Any]) -> set[str]:
    names = set((section.get("backends") or {}).keys())
    for key in ("backend",):
        if isinstance(section.get(key), str) and section[key] != "auto":
            names.add(section[key])
    names.update(n for n in section.get("fallback") or () if isinstance(n, str))
    legacy = section.get("color_narrator") or {}
    if isinstance(legacy.get("vlm_backend"), str):
        names.add(legacy["vlm_backend"])
    return names


_TOP = {f.name for f in attrs.fields(Settings)} | {"color_narrator"}


@pytest.mark.parametrize("block", TOML_BLOCKS, ids=[b.id for b in TOML_BLOCKS])
def test_toml_blocks_parse_and_load(block: Block, tmp_path: Path) -> None:
    try:
        data = tomllib.loads(block.code)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.id}: not valid TOML: {exc}")
    imageworks = data.get("tool", {}).get("imageworks")
    if imageworks is not None:
        section, kind = imageworks, "project"
    elif set(data) & _TOP:
        section, kind = data, "user"
    else:
        assert "project" in data or "build-system" in data, (
            f"{block.id}: neither a config example nor a pyproject; mark it <!-- no-test --> if intended"
        )
        return
    classes, broken = _installed()
    missing = sorted(_named_backends(section) - set(classes))
    require(not missing, f"{block.id} configures backends that are not installed: {missing}")
    if kind == "project":
        (tmp_path / "pyproject.toml").write_text(block.code, encoding="utf-8")
        config = load_config(
            settings_classes=classes, cwd=tmp_path, env={}, user_file=False, unavailable=broken
        )
    else:
        path = tmp_path / "config.toml"
        path.write_text(block.code, encoding="utf-8")
        config = load_config(
            settings_classes=classes, env={}, user_file=path, project_file=False, unavailable=broken
        )
    assert config.files, f"{block.id}: the example was not read"


# ---------------------------------------------------------------- links

_LINK = re.compile(r"\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_relative_links_resolve(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    broken = []
    for target in _LINK.findall(text):
        if "://" in target or target.startswith(("#", "mailto:")):
            continue
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            broken.append(target)
    assert not broken, f"{page.relative_to(DOCS)} links to missing files: {broken}"
