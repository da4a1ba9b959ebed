"""The comparison report in a real browser: headless Chromium (Debian's ``chromium``).

A report made by ``imageworks compare`` against the fault-injecting server
(three candidates, one of them down, one answering with hostile markup) is
loaded with ``--dump-dom`` (the DOM after parsing, as the browser built it)
and rendered with ``--screenshot`` at desktop and phone widths.  The
desktop screenshot is kept in ``$IMAGEWORKS_TEST_ARTIFACTS`` (default
``<tmp>/imageworks-tests/artifacts``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import run_cli, show
from conftest import require
from PIL import Image
from servers._proc import free_port
from test_compare import HOSTILE, latency_script, photos, write_candidates

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_DEFAULT_ARTIFACTS = Path(tempfile.gettempdir()) / "imageworks-tests" / "artifacts"
ARTIFACTS = Path(os.environ.get("IMAGEWORKS_TEST_ARTIFACTS", _DEFAULT_ARTIFACTS))


class _Node:
    def __init__(self, tag: str, attrs: dict[str, str], parent: _Node | None) -> None:
        self.tag, self.attrs, self.parent = tag, attrs, parent
        self.children: list[_Node] = []
        self.text: list[str] = []

    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def all_text(self) -> str:
        return "".join(self.text) + "".join(c.all_text() for c in self.children)

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[_Node]:
        out = []
        for child in self.children:
            if (
                (tag is None or child.tag == tag)
                and (cls is None or cls in child.classes())
                and all(child.attrs.get(k) == v for k, v in attrs.items())
            ):
                out.append(child)
            out += child.find(tag, cls, **attrs)
        return out


class _Dom(HTMLParser):
    """A small tree of the DOM Chromium dumped (no external parser needed)."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input", "circle", "line", "rect", "source"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.root = _Node("#document", {}, None)
        self._at = self.root
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = _Node(tag, {k: v or "" for k, v in attrs}, self._at)
        self._at.children.append(node)
        if tag not in self.VOID:
            self._at = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._at.children.append(_Node(tag, {k: v or "" for k, v in attrs}, self._at))

    def handle_endtag(self, tag: str) -> None:
        node: _Node | None = self._at
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self._at = node.parent

    def handle_data(self, data: str) -> None:
        self._at.text.append(data)


def chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run headless Chromium on *page* with a fresh profile (removed after: it holds socket links)."""
    assert CHROMIUM
    with tempfile.TemporaryDirectory(prefix="imageworks-chromium-", ignore_cleanup_errors=True) as profile:
        return subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",  # tests may run as root in containers
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--enable-logging=stderr",
                "--v=0",
                *args,
                page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )


def console_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    """What the page wrote to the console (script errors, CSP violations)."""
    return [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]


def non_blank(png: Path) -> tuple[int, int, int]:
    with Image.open(png) as im:
        rgb = im.convert("RGB")
        colours = rgb.getcolors(maxcolors=1 << 20) or []
        non_white = sum(n for n, c in colours if c != (255, 255, 255))
        return rgb.width, len(colours), non_white


@pytest.fixture
def report(tmp_path: Path, faulty: Any) -> Path:
    require(CHROMIUM is not None, "chromium is not installed (scripts/install.sh --dev installs it)")
    photos(tmp_path / "photos", 3)
    write_candidates(tmp_path, faulty.v1, f"http://127.0.0.1:{free_port()}/v1")
    latency_script(faulty, evil=True)
    proc = run_cli(tmp_path, "compare", "photos", "--candidates", "fast,slow,down", "--out", "cmp")
    assert proc.returncode == 1, show(proc)
    return tmp_path / "cmp" / "report.html"


@pytest.mark.server
def test_the_browser_builds_the_expected_page_and_runs_nothing(report: Path, tmp_path: Path) -> None:
    proc = chromium(report, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert console_lines(proc) == [], proc.stderr[-3000:]
    dom = _Dom(proc.stdout).root
    assert dom.find("script") == []
    assert [n.tag for n in dom.find() if any(a.startswith("on") for a in n.attrs)] == []

    summary = dom.find("table", "summary")
    assert len(summary) == 1
    rows = summary[0].find("tbody")[0].find("tr")
    assert [r.find("th")[0].all_text() for r in rows] == ["fast", "slow", "down"]
    assert [("failed-candidate" in r.classes()) for r in rows] == [False, False, True]
    assert "BackendUnavailable" in rows[2].all_text()

    for fid in ("chart-throughput", "chart-latency", "chart-ttft"):
        figure = dom.find("figure", id=fid)
        assert len(figure) == 1, fid
        assert len(figure[0].find("svg")) == 1
    dots = dom.find("figure", id="chart-latency")[0].find("circle")
    assert len(dots) == 3 + 3  # one per answer of fast and slow; none for the candidate that was down

    grid = dom.find("table", "grid")[0]
    assert [th.all_text() for th in grid.find("thead")[0].find("th")] == ["Image", "fast", "slow", "down"]
    body_rows = grid.find("tbody")[0].find("tr")
    assert len(body_rows) == 3
    for row in body_rows:
        cells = row.find("td")
        assert len(cells) == 4
        imgs = cells[0].find("img")
        assert len(imgs) == 1 and imgs[0].attrs["src"].startswith("data:image/jpeg;base64,")
        assert "ok" in cells[1].classes() and "failed" in cells[3].classes()
        # the hostile answer is text in its cell: nothing of it became markup
        assert cells[2].find("div", "text")[0].all_text() == HOSTILE
        assert "BackendUnavailable" in cells[3].all_text()


@pytest.mark.server
def test_the_report_renders_on_desktop_and_phone(report: Path, tmp_path: Path) -> None:
    desktop, phone = tmp_path / "desktop.png", tmp_path / "phone.png"
    for png, size in ((desktop, "1280,2000"), (phone, "390,2400")):
        proc = chromium(report, tmp_path, f"--screenshot={png}", f"--window-size={size}", "--hide-scrollbars")
        assert proc.returncode == 0 and png.is_file(), proc.stderr[-3000:]
        assert console_lines(proc) == [], proc.stderr[-3000:]
        width, colours, non_white = non_blank(png)
        assert width == int(size.split(",")[0])
        assert colours > 50 and non_white > width * 200, (png, colours, non_white)  # text, charts, thumbnails
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy2(desktop, ARTIFACTS / "compare-report.png")


def test_the_console_check_sees_a_script_blocked_by_the_policy(tmp_path: Path) -> None:
    """The "no console errors" assertion can fail: a script in a report-like page is reported."""
    require(CHROMIUM is not None, "chromium is not installed (scripts/install.sh --dev installs it)")
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="default-src '
        "'none'\"></head><body><p>x</p><script>document.title='ran'</script></body></html>"
    )
    proc = chromium(page, tmp_path, "--dump-dom")
    assert any("Content Security Policy" in line for line in console_lines(proc)), proc.stderr[-3000:]
    assert "<title>ran</title>" not in proc.stdout
