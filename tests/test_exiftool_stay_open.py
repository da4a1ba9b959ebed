"""``--xmp embed`` on long-lived ``exiftool -stay_open`` processes (issue 18): one process
serves many images, odd names fall back to a one-shot exiftool, a killed process is
replaced and reaped, and no exiftool outlives the Python process (clean exit, Ctrl-C,
SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import test_outputs
from test_outputs import exif_read, make_jpeg

from imageworks_core.outputs import NarrationRecord, embed_xmp
from imageworks_core.outputs.embed import exiftool_config
from imageworks_core.outputs.exiftool import ExifToolPool, ExifToolProcess, close_default_pools, default_pool


@pytest.fixture
def exiftool() -> str:
    """Path of exiftool (see test_outputs: skips without it, fails in CI)."""
    return str(test_outputs.exiftool.__wrapped__())  # type: ignore[attr-defined]


def _pool(exe: str) -> ExifToolPool:
    return default_pool(exe, exiftool_config())


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """True once *pid* no longer exists (a zombie still exists: it was not reaped)."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def _fresh_pools() -> object:
    close_default_pools()
    yield
    close_default_pools()


def test_hundred_embeds_use_one_process(tmp_path: Path, exiftool: str) -> None:
    pool = _pool(exiftool)
    started = pool.started
    images = [make_jpeg(tmp_path / f"p{i}.jpg") for i in range(100)]
    for i, image in enumerate(images):
        embed_xmp(image, NarrationRecord(f"image {i} & <co>", "m", 0.5), keep_backup=False)
    assert pool.started - started == 1
    assert len(pool.pids()) == 1
    for i in (0, 57, 99):
        tags = exif_read(exiftool, images[i])
        assert tags["XMP-cn:Description"] == tags["XMP-dc:Description"] == f"image {i} & <co>"


def test_name_with_line_break_uses_a_one_shot_exiftool(tmp_path: Path, exiftool: str) -> None:
    pool = _pool(exiftool)
    embed_xmp(make_jpeg(tmp_path / "warm.jpg"), NarrationRecord("warm", "m", 0.5))
    (proc_pid,) = pool.pids()
    image = make_jpeg(tmp_path / "two\nlines\r.jpg")
    embed_xmp(image, NarrationRecord("odd name", "m", 0.5))
    assert exif_read(exiftool, image)["XMP-cn:Description"] == "odd name"
    assert pool.pids() == [proc_pid]


def test_process_refuses_arguments_with_line_breaks(exiftool: str) -> None:
    proc = ExifToolProcess(exiftool)
    try:
        with pytest.raises(ValueError, match="line break"):
            proc.execute(["-ver", "/tmp/a\nb.jpg"], 10)
        status, out, err = proc.execute(["-ver"], 10)
        assert (status, err) == (0, b"") and out.strip()
    finally:
        proc.close()
    assert _gone(proc.pid)


def test_killed_process_is_replaced_and_reaped(tmp_path: Path, exiftool: str) -> None:
    pool = _pool(exiftool)
    first = make_jpeg(tmp_path / "first.jpg")
    embed_xmp(first, NarrationRecord("one", "m", 0.5))
    (old,) = pool.pids()
    os.kill(old, signal.SIGKILL)
    second = make_jpeg(tmp_path / "second.jpg")
    embed_xmp(second, NarrationRecord("two", "m", 0.5))
    (new,) = pool.pids()
    assert new != old
    assert _gone(old), "the killed exiftool was left as a zombie"
    assert exif_read(exiftool, second)["XMP-cn:Description"] == "two"


def test_exit_status_and_stderr_per_command(tmp_path: Path, exiftool: str) -> None:
    proc = ExifToolProcess(exiftool)
    try:
        status, _, err = proc.execute([os.fspath(tmp_path / "missing.jpg")], 10)
        assert status == 1 and b"File not found" in err
        status, out, err = proc.execute(["-ver"], 10)
        assert status == 0 and err == b"" and b"File not found" not in out
    finally:
        proc.close()


_CHILD = """
import os, sys, time
from pathlib import Path
from PIL import Image
from imageworks_core.outputs import NarrationRecord, embed_xmp
from imageworks_core.outputs.embed import exiftool_config
from imageworks_core.outputs.exiftool import default_pool
image = Path(sys.argv[1])
Image.new("RGB", (8, 8)).save(image)
embed_xmp(image, NarrationRecord("x", "m", 0.5))
print(*default_pool(sys.argv[2], exiftool_config()).pids(), flush=True)
if sys.argv[3] == "interrupt":
    raise KeyboardInterrupt
if sys.argv[3] == "sigkill":
    os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("ending", ["normal", "interrupt", "sigkill"])
def test_no_exiftool_outlives_python(tmp_path: Path, exiftool: str, ending: str) -> None:
    # TMPDIR: a SIGKILLed child cannot remove its temporary files; keep them in tmp_path.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TMPDIR": os.fspath(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, os.fspath(tmp_path / "x.jpg"), exiftool, ending],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    pids = [int(p) for p in done.stdout.split()]
    assert len(pids) == 1, done.stderr
    assert _gone(pids[0]), f"exiftool {pids[0]} survived a Python exit ({ending})"
    assert done.returncode == {"normal": 0, "interrupt": -2, "sigkill": -9}[ending], done.stderr
