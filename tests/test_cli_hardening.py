"""Bad input, hostile text and faults through the real CLI: a clear error, nothing lost (issue 13).

Each test names the item of issue 13 it pins.  The server is the fault server
on 127.0.0.1 (``tests/servers/faulty_openai.py``); JSON files are checked with
``jq`` and a strict UTF-8 / no-lone-surrogate reading, as other tools read them.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import PERMISSIONS_HOLD, backend_args, cli_argv, cli_env, read_jsonl, run_cli, show
from conftest import require
from PIL import Image

HOSTILE = "\x1b[2J\x1b]0;pwned\x07\x1b[31mred\x1b[0m\rover \u202eevil\x9b2J"
NO_SIDECARS = ("--xmp", "none", "--no-json-sidecar")
ESCAPES = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]")


def _jpegs(folder: Path, count: int, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"{prefix}{i:02d}.jpg"
        Image.new("RGB", (40, 30), (i * 40 % 256, 90, 200)).save(path, "JPEG")
        out.append(path)
    return out


def _chat(faulty: Any) -> list[dict[str, Any]]:
    return faulty.log("/v1/chat/completions")


def _strict_json(path: Path, *, lines: bool) -> list[Any]:
    """Parse like strict tools do: valid UTF-8, no lone surrogates (escaped or not), and jq agrees."""
    raw = path.read_bytes()
    text = raw.decode("utf-8")  # strict
    docs = [json.loads(line) for line in text.splitlines() if line.strip()] if lines else [json.loads(text)]

    def walk(obj: Any) -> None:
        if isinstance(obj, str):
            obj.encode("utf-8")  # a lone surrogate (from a \udcXX escape) cannot be encoded
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(k)
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    for doc in docs:
        walk(doc)
    jq = shutil.which("jq")
    if jq:
        proc = subprocess.run([jq, "-c", "."], input=raw, capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
    return docs


# ------------------------------------------------------------------ 5. resume by resolved path


def test_resume_matches_any_spelling_of_the_same_file(tmp_path: Path, faulty: Any) -> None:
    imgs = tmp_path / "imgs"
    _jpegs(imgs, 3)
    out = tmp_path / "r.jsonl"
    proc = run_cli(
        imgs,
        "describe",
        ".",
        "--output",
        str(out),
        "--xmp",
        "none",
        "--no-json-sidecar",
        *backend_args(faulty),
    )
    assert proc.returncode == 0, show(proc)
    assert len(_chat(faulty)) == 3
    records = read_jsonl(out)
    assert {r["resolved_path"] for r in records} == {os.path.realpath(p) for p in imgs.iterdir()}
    (tmp_path / "link").symlink_to(imgs)
    for spelling, cwd in (
        ("imgs", tmp_path),
        (str(imgs), tmp_path / "imgs"),
        ("link", tmp_path),
        ("./", imgs),
    ):
        proc = run_cli(
            cwd, "describe", spelling, "--output", str(out), "--resume", "--xmp", "none", "--no-json-sidecar",
            *backend_args(faulty),
        )  # fmt: skip
        assert proc.returncode == 0, show(proc)
        assert "3 already described in the results file" in proc.stdout, show(proc)
    assert len(_chat(faulty)) == 3  # nothing described twice
    assert len(read_jsonl(out)) == 3  # nothing duplicated


# ------------------------------------------------------------------ 6. strict JSON everywhere


def test_json_outputs_are_strict_utf8_with_surrogates_in_text_and_names(tmp_path: Path, faulty: Any) -> None:
    folder = tmp_path / "in"
    _jpegs(folder, 1)
    raw_name = b"caf\xe9 \xff.jpg"
    try:
        shutil.copy(folder / "img00.jpg", os.path.join(os.fsencode(folder), raw_name))
    except (OSError, UnicodeEncodeError):
        pytest.skip("file system does not accept non-UTF-8 names")
    # the model answers with a lone surrogate (a valid JSON escape the server may send)
    faulty.script(
        [{"match": {"path": "/v1/chat/completions"}, "fault": "ok", "content": "half \ud800 a pair"}]
    )
    proc = run_cli(tmp_path, "describe", "in", "--output", "r.jsonl", "--json", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    records = _strict_json(tmp_path / "r.jsonl", lines=True)
    assert len(records) == 2 and all(r["description"] == "half \ufffd a pair" for r in records)
    odd = next(r for r in records if "image_bytes_b64" in r)
    assert base64.b64decode(odd["image_bytes_b64"]) == b"in/" + raw_name  # recoverable
    assert base64.b64decode(odd["resolved_path_bytes_b64"]) == os.path.realpath(
        os.path.join(os.fsencode(folder), raw_name)
    )
    for sidecar in folder.glob("*.cn_metadata.json"):
        [meta] = _strict_json(sidecar, lines=False)
        assert meta["description"] == "half \ufffd a pair"
    json.loads(proc.stdout.encode("utf-8", "surrogateescape").decode("utf-8"))  # the summary too
    # and --resume still recognises the undecodable name
    proc = run_cli(tmp_path, "describe", "in", "--output", "r.jsonl", "--resume", *backend_args(faulty))
    assert proc.returncode == 0 and "2 already described in the results file" in proc.stdout, show(proc)
    assert len(_chat(faulty)) == 2


# ------------------------------------------------------------------ 7. terminal escapes


def test_terminal_escapes_from_the_model_and_the_server_are_shown_not_obeyed(
    tmp_path: Path, faulty: Any
) -> None:
    folder = tmp_path / "in"
    _jpegs(folder, 2)
    (folder / "img00.jpg").rename(folder / "evil\x1b[2J.jpg")
    faulty.script(
        [
            {"match": {"path": "/v1/chat/completions"}, "fault": "ok", "content": HOSTILE, "times": 1},
            {
                "match": {"path": "/v1/chat/completions"},
                "fault": "status",
                "status": 400,
                "body": {"error": {"message": f"bad {HOSTILE}"}},
            },
        ]
    )
    proc = run_cli(tmp_path, "-vv", "describe", "in", "--output", "r.jsonl", *backend_args(faulty))
    assert proc.returncode == 1, show(proc)
    assert not ESCAPES.search(proc.stdout), proc.stdout
    assert not ESCAPES.search(proc.stderr), proc.stderr
    assert "\\x1b[2J" in proc.stdout  # shown, visibly
    records = read_jsonl(tmp_path / "r.jsonl")
    assert any(r["description"] == HOSTILE.strip() for r in records)  # the raw text is kept as data
    assert any(HOSTILE.strip() in (r["error"] or "") or "\x1b" in (r["error"] or "") for r in records)
    # --stream prints the tokens as they come: escaped too
    faulty.reset()
    faulty.script([{"match": {"path": "/v1/chat/completions"}, "fault": "ok", "content": HOSTILE}])
    proc = run_cli(
        tmp_path, "describe", "in", "--output", "s.jsonl", "--stream", "--overwrite", *backend_args(faulty)
    )
    assert proc.returncode == 0, show(proc)
    assert "pwned" in proc.stdout and not ESCAPES.search(proc.stdout + proc.stderr), show(proc)


# ------------------------------------------------------------------ 8, 9. clean usage errors, nothing sent


BAD_URLS = ["http://127.0.0.1:99999", "javascript:alert(1)", "ftp://127.0.0.1/v1", "http://:8000/v1"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_base_url_is_a_usage_error(tmp_path: Path, faulty: Any, url: str) -> None:
    _jpegs(tmp_path / "in", 1)
    for cmd in (("describe", "in"), ("health",), ("config", "show")):
        proc = run_cli(tmp_path, *cmd, "--vlm-backend", "openai", "--vlm-base-url", url)
        assert proc.returncode == 2, show(proc)
        first = proc.stderr.splitlines()[0]
        assert "not an http(s) URL" in first and "flag" in first and "base_url" in first, show(proc)
    assert not (tmp_path / "imageworks-results.jsonl").exists()
    assert faulty.log() == []


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999", "javascript:alert(1)"])
def test_bad_base_url_from_the_config_file_or_environment_names_where_it_came_from(
    tmp_path: Path, faulty: Any, url: str
) -> None:
    _jpegs(tmp_path / "in", 1)
    cfg = tmp_path / "imageworks.toml"
    cfg.write_text(f'backend = "openai"\n\n[backends.openai]\nbase_url = "{url}"\n', encoding="utf-8")
    env_var = "IMAGEWORKS_BACKENDS__OPENAI__BASE_URL"
    for source, env, where in (
        ("file", {"IMAGEWORKS_CONFIG_FILE": str(cfg)}, str(cfg)),
        ("env", {env_var: url, "IMAGEWORKS_BACKEND": "openai"}, env_var),
    ):
        for cmd in (("describe", "in"), ("health",), ("config", "show")):
            proc = run_cli(tmp_path, *cmd, **env)
            assert proc.returncode == 2, f"{source} {cmd}: {show(proc)}"
            [line] = proc.stderr.splitlines()
            assert "not an http(s) URL" in line and repr(url) in line, line
            assert where in line and "backends.openai.base_url" in line, line
    assert not (tmp_path / "imageworks-results.jsonl").exists()
    assert faulty.log() == []


def test_unusable_output_is_a_usage_error_before_anything_is_sent(tmp_path: Path, faulty: Any) -> None:
    _jpegs(tmp_path / "in", 2)
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("x")
    for output, why in (("adir", "is a directory"), ("afile/r.jsonl", "")):
        proc = run_cli(tmp_path, "describe", "in", "--output", output, *backend_args(faulty))
        assert proc.returncode == 2, show(proc)
        first = proc.stderr.splitlines()[0]
        assert "cannot write the results file" in first and output in first and why in first, show(proc)
        assert "--output" in first
    assert faulty.log() == []  # not even the health check
    assert not list((tmp_path / "in").glob("*.xmp"))


def test_output_in_a_read_only_folder(tmp_path: Path, faulty: Any) -> None:
    require(PERMISSIONS_HOLD, "running as root without setpriv: a read-only folder is still writable")
    _jpegs(tmp_path / "in", 1)
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = run_cli(tmp_path, "describe", "in", "--output", "ro/r.jsonl", *backend_args(faulty))
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 2 and "cannot write the results file" in proc.stderr, show(proc)
    assert faulty.log() == []


# ------------------------------------------------------------------ 10, 11. discovery


def _remove_chain(top: Path) -> None:
    """Remove a ``d/d/d/...`` chain one level at a time (``shutil.rmtree`` recurses and would fail)."""
    while (top / "d").is_dir():
        (top / "d").rename(top / "x")
        for name in os.listdir(top / "x"):
            if name == "d":
                (top / "x" / "d").rename(top / "d")
            else:
                (top / "x" / name).unlink()
        (top / "x").rmdir()


@pytest.fixture
def deep_tree(tmp_path: Path) -> Iterator[Path]:
    top = tmp_path / "tree"
    top.mkdir()
    try:
        yield top
    finally:
        _remove_chain(top)


def test_very_deep_folder_loses_nothing(tmp_path: Path, faulty: Any, deep_tree: Path) -> None:
    top = deep_tree
    _jpegs(top, 1, prefix="top")
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(1100):  # made relative to a descriptor: no path is ever longer than one name
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        with os.fdopen(os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as fh:
            fh.write((top / "top00.jpg").read_bytes())
    finally:
        os.close(fd)
    proc = run_cli(
        tmp_path,
        "describe",
        "tree",
        "--output",
        "r.jsonl",
        "--xmp",
        "none",
        "--no-json-sidecar",
        *backend_args(faulty),
    )
    assert proc.returncode in (0, 1), show(proc)
    records = read_jsonl(tmp_path / "r.jsonl")
    by_name = {os.path.basename(r["image"]): r for r in records}
    assert by_name["top00.jpg"]["error"] is None  # the sibling is not lost
    deep = by_name["deep.jpg"]  # described, or one clear per-path error
    assert deep["error"] is None or "too long" in deep["error"], deep


def test_symlink_loop_is_named_as_such(tmp_path: Path, faulty: Any) -> None:
    folder = tmp_path / "in"
    _jpegs(folder, 1)
    (folder / "loop.jpg").symlink_to("loop.jpg")
    (folder / "a.jpg").symlink_to("b.jpg")
    (folder / "b.jpg").symlink_to("a.jpg")
    for spec in ("in", "in/loop.jpg"):
        proc = run_cli(
            tmp_path, "describe", spec, "--output", "r.jsonl", "--overwrite", *backend_args(faulty)
        )
        assert proc.returncode == 1, show(proc)
        assert "loop.jpg: symbolic link loop" in proc.stdout, show(proc)
        assert "broken symbolic link" not in proc.stdout, show(proc)
    assert "a.jpg: symbolic link loop" in proc.stdout or "in/a.jpg" not in proc.stdout


# ------------------------------------------------------------------ 12, 13. small truths


def test_latency_is_server_time_and_queue_time_is_separate(tmp_path: Path, faulty: Any) -> None:
    _jpegs(tmp_path / "in", 4)
    faulty.script([{"match": {"path": "/v1/chat/completions"}, "fault": "delay", "delay_s": 0.6}])
    proc = run_cli(
        tmp_path,
        "describe",
        "in",
        "--output",
        "r.jsonl",
        "--json",
        "--concurrency",
        "1",
        *backend_args(faulty),
    )
    assert proc.returncode == 0, show(proc)
    records = read_jsonl(tmp_path / "r.jsonl")
    assert all(0.55 < r["processing_time"] < 1.2 for r in records), records
    # one slot, a window of two: each later item waited about one answer for the slot
    assert max(r["queue_time"] for r in records) > 0.4, records
    summary = json.loads(proc.stdout)
    assert summary["latency_p95_s"] < 1.2, summary


def test_skipped_images_say_why(tmp_path: Path, faulty: Any) -> None:
    _jpegs(tmp_path / "in", 4)
    proc = run_cli(tmp_path, "describe", "in", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    proc = run_cli(tmp_path, "describe", "in", *backend_args(faulty))
    assert proc.returncode == 0, show(proc)
    assert "4 already described (their sidecar exists); --overwrite to redo" in proc.stdout, show(proc)
    assert "in/img00.jpg" not in proc.stdout
    proc = run_cli(tmp_path, "-v", "describe", "in", *backend_args(faulty))
    assert all(f"in/img0{i}.jpg" in proc.stdout for i in range(4)), show(proc)
    proc = run_cli(tmp_path, "describe", "in", "--json", *backend_args(faulty))
    assert json.loads(proc.stdout)["skip_reasons"] == {
        "already described (their sidecar exists); --overwrite to redo": 4
    }
    assert len(_chat(faulty)) == 4


# ------------------------------------------------------------------ 14. logging and exit codes

BROKEN_PLUGIN = """
from imageworks_core import BackendInfo, BackendSettings, hookimpl


class Plugin:
    @hookimpl
    def backend_info(self):
        # a plugin bug the core does not check: a description that is not text
        return BackendInfo(name="buggy", description=object(), default_base_url="http://127.0.0.1:9",
                           settings_cls=BackendSettings)

    @hookimpl
    async def health(self, ctx):
        raise AssertionError("unused")

    @hookimpl
    async def infer(self, ctx, request):
        raise AssertionError("unused")

    @hookimpl
    async def stream(self, ctx, request):
        raise AssertionError("unused")
        yield


plugin = Plugin()
"""


def _site(tmp_path: Path, *, broken: bool, buggy: bool) -> str:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    eps = []
    if broken:
        eps.append("broken = no_such_module_for_imageworks:plugin")
    if buggy:
        (site / "buggy_iw_plugin.py").write_text(BROKEN_PLUGIN)
        eps.append("buggy = buggy_iw_plugin:plugin")
    info = site / "imageworks_backend_testbroken-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: imageworks-backend-testbroken\nVersion: 0.1\n"
    )
    (info / "entry_points.txt").write_text("[imageworks.backends]\n" + "\n".join(eps) + "\n")
    return str(site)


def test_plugin_load_warning_is_a_json_line_with_json(tmp_path: Path, faulty: Any) -> None:
    _jpegs(tmp_path / "in", 1)
    site = _site(tmp_path, broken=True, buggy=False)
    proc = run_cli(tmp_path, "describe", "in", "--json", *backend_args(faulty), PYTHONPATH=site)
    assert proc.returncode == 0, show(proc)
    lines = [json.loads(line) for line in proc.stderr.splitlines()]
    warning = next(x for x in lines if x.get("event") == "plugin_load_failed")
    assert warning["plugin"] == "broken" and warning["level"] == "warning"
    json.loads(proc.stdout)
    # without --json: one readable line, the run goes on
    proc = run_cli(tmp_path, "describe", "in", "--overwrite", *backend_args(faulty), PYTHONPATH=site)
    assert proc.returncode == 0 and "plugin 'broken'" in proc.stderr, show(proc)


def test_log_level_from_the_environment(tmp_path: Path, faulty: Any) -> None:
    _jpegs(tmp_path / "in", 1)
    proc = run_cli(tmp_path, "describe", "in", *backend_args(faulty))
    assert "DEBUG" not in proc.stderr and "INFO" not in proc.stderr, show(proc)
    proc = run_cli(
        tmp_path, "describe", "in", "--overwrite", *backend_args(faulty), IMAGEWORKS_LOG_LEVEL="debug"
    )
    assert proc.returncode == 0 and "imageworks: INFO event=attempt" in proc.stderr, show(proc)
    proc = run_cli(
        tmp_path, "-vv", "describe", "in", "--overwrite", *backend_args(faulty), IMAGEWORKS_LOG_LEVEL="error"
    )
    assert "imageworks: INFO event=attempt" in proc.stderr  # -vv asks for more than the environment


def test_internal_error_has_its_own_exit_code_and_no_traceback(tmp_path: Path) -> None:
    site = _site(tmp_path, broken=False, buggy=True)
    proc = run_cli(tmp_path, "backends", "--json", PYTHONPATH=site)  # run_cli fails on any traceback
    assert proc.returncode == 70, show(proc)
    [line, hint] = proc.stderr.splitlines()
    assert line.startswith("imageworks: internal error: ") and "bug" in hint, show(proc)
    # asked for, the traceback is there
    proc = subprocess.run(
        cli_argv("-vv", "backends", "--json"),
        cwd=tmp_path,
        env=cli_env(tmp_path, PYTHONPATH=site),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 70 and "Traceback" in proc.stderr, proc.stderr


def test_a_plugins_own_text_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """``imageworks backends`` prints what plugins say about themselves (description, load
    error): escape sequences in it are shown, not obeyed."""
    site = _site(tmp_path, broken=False, buggy=False)
    (Path(site) / "hostile_iw_plugin.py").write_text(
        BROKEN_PLUGIN.replace(
            'name="buggy", description=object()', f'name="hostile", description={HOSTILE!r}'
        )
    )
    entry = Path(site) / "imageworks_backend_testbroken-0.1.dist-info" / "entry_points.txt"
    entry.write_text("[imageworks.backends]\nhostile = hostile_iw_plugin:plugin\n")
    proc = run_cli(tmp_path, "backends", PYTHONPATH=site)
    assert proc.returncode == 0, show(proc)
    assert "hostile" in proc.stdout and "pwned" in proc.stdout, show(proc)
    assert not any(c in proc.stdout for c in "\x1b\x07\x9b\r\u202e"), proc.stdout
