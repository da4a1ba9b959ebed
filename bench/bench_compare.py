"""Client overhead of ``imageworks compare`` against plain ``imageworks describe`` on the same images.

Starts ``tests/servers/fast_openai.py`` (a canned OpenAI-compatible server that
costs almost no CPU and answers at once, so the client's own work is all that
is measured), makes N photo-like JPEGs (2000 x 1333 by default, cached), then runs, as a
user would, in alternation:

* describe: ``imageworks describe DIR --xmp none --no-json-sidecar --concurrency C``
  (the results JSONL only);
* compare:  ``imageworks compare DIR --candidates openai --no-stream --concurrency C``
  (preflight, warm-up, one candidate, results JSONL, thumbnails, report.html, summary.json);
* compare, streamed: the same with the default ``--stream`` (what times the first token).

For each it prints the median CPU seconds of the process (user + system, from
``wait4``) and wall seconds over the repeats, and the ratio compare / describe
(goal: CPU <= 1.05).  Interpreter start-up and imports count for both.

Run:  .venv/bin/python bench/bench_compare.py [--count 200] [--repeats 3] [--concurrency 16]
                                              [--size 2000x1333]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
for extra in (str(ROOT), str(BENCH_DIR)):
    if extra not in sys.path:
        sys.path.insert(0, extra)

from bench_images import make_photo  # noqa: E402

from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402

FAST_SERVER = ROOT / "tests" / "servers" / "fast_openai.py"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def ensure_photos(count: int, size: tuple[int, int]) -> Path:
    folder = Path(tempfile.gettempdir()) / "imageworks-bench" / f"compare-{size[0]}x{size[1]}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"photo_{i:03d}.jpg"
        if not path.exists():
            make_photo(2000 + i, size).save(path.with_suffix(".part"), "JPEG", quality=90)
            os.replace(path.with_suffix(".part"), path)
    for extra in sorted(folder.glob("photo_*.jpg"))[count:]:
        extra.unlink()
    return folder


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """``(cpu seconds, wall seconds)`` of one CLI run; fails loudly when it fails."""
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    out, err = proc.communicate()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv[2:5])} failed:\n{out.decode()[-2000:]}\n{err.decode()[-2000:]}")
    return usage.ru_utime + usage.ru_stime, wall


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--size", default="2000x1333", help="photo size, WxH (default: 2000x1333)")
    args = parser.parse_args(argv)
    size = tuple(int(x) for x in args.size.split("x"))
    assert len(size) == 2

    photos = ensure_photos(args.count, (size[0], size[1]))
    work = Path(tempfile.mkdtemp(prefix="imageworks-bench-compare-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWORKS_")}
    env.update(
        IMAGEWORKS_CONFIG_FILE=str(work / "no-config.toml"),
        IMAGEWORKS_BACKENDS__OPENAI__BASE_URL=base,
        IMAGEWORKS_BACKENDS__OPENAI__MODEL="fake-vlm",
    )
    cli = [sys.executable, "-m", "imageworks_core.cli"]
    c = str(args.concurrency)
    commands = {
        "describe": [
            *cli,
            "describe",
            str(photos),
            *("--vlm-backend", "openai", "--xmp", "none", "--no-json-sidecar", "-q"),
            *("--concurrency", c, "--output", "OUT/results.jsonl"),
        ],
        "compare": [
            *cli,
            "compare",
            str(photos),
            "--candidates",
            "openai",
            "--no-stream",
            "--concurrency",
            c,
        ],
        "compare --stream": [*cli, "compare", str(photos), "--candidates", "openai", "--concurrency", c],
    }
    cpu: dict[str, list[float]] = {k: [] for k in commands}
    wall: dict[str, list[float]] = {k: [] for k in commands}
    with ServerProcess(
        python_argv(FAST_SERVER, "--port", str(port)), ready_url=f"{base[:-3]}/health", name="fast"
    ):
        for r in range(args.repeats):
            for name, command in commands.items():
                out = work / f"{name.replace(' ', '_')}-{r}"
                cmd = [a.replace("OUT", str(out)) for a in command]
                if name.startswith("compare"):
                    cmd += ["--out", str(out), "-q"]
                seconds, elapsed = run(cmd, work, env)
                cpu[name].append(seconds)
                wall[name].append(elapsed)
                _log(f"  {name}: cpu {seconds:.2f}s wall {elapsed:.2f}s")
    shutil.rmtree(work, ignore_errors=True)
    base_cpu = statistics.median(cpu["describe"])
    print(f"{args.count} images of {args.size}, concurrency {args.concurrency}, {args.repeats} repeats")
    for name in commands:
        m = statistics.median(cpu[name])
        print(
            f"{name:<17} cpu {m:6.2f}s ({1000 * m / args.count:5.1f} ms/image)  "
            f"wall {statistics.median(wall[name]):6.2f}s  cpu ratio vs describe {m / base_cpu:.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
