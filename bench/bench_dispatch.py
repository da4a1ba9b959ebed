"""Dispatcher benchmark: our client against the usual ways of calling an OpenAI-compatible server.

Starts ``tests/servers/fast_openai.py`` (a canned server that costs ~0.03 ms
CPU per request, so the clients are what is measured), then runs every peer of
``bench/peers.py`` at each concurrency, each measurement in its own fresh
subprocess (no shared warm state, imports or pools between peers), repeats
the whole round *repeats* times in a rotating order, and prints medians and
ratios.  ``ours`` is included when ``bench/ours.py`` exists (see the contract in
``bench/peers.py``); the ratios are taken against it, else against
``--baseline``.

``litellm_router`` needs LiteLLM, which pins ``openai<3``; when the current
interpreter cannot import it, it runs under ``.venv-bench/bin/python``
(override with ``--bench-python``) and is skipped if neither has it.

    python bench/bench_dispatch.py                       # n=2000, c=8,64,256, 5 repeats
    python bench/bench_dispatch.py -n 1000 --repeats 1 --concurrency 64   # quick

``--ours-at REV`` adds a peer ``ours@REV``: the same ``bench/ours.py`` run on the
core of an earlier commit (``git archive REV core`` into a temporary folder, put
first on ``PYTHONPATH``), so a before/after ratio is measured in one run on one
machine instead of against a figure from another day.  The peer ``ours_auto`` is
``ours`` with the adaptive limit (``BENCH_CONCURRENCY=auto``, the default users
get, with the hard maximum at *c*): beside ``ours`` it shows the limiter's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.servers._proc import ServerProcess, free_port, python_argv  # noqa: E402

PEERS_PY = BENCH_DIR / "peers.py"
FAST_SERVER = ROOT / "tests" / "servers" / "fast_openai.py"
ALL_PEERS = ["openai_default", "openai_aiohttp", "raw_httpx", "raw_aiohttp", "litellm_router"]
DEFAULT_BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _can_import(python: str, module: str) -> bool:
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 1)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_pythons(peers: list[str], bench_python: str) -> dict[str, str]:
    """The interpreter for each peer; a peer that no interpreter can run is left out (with a note)."""
    chosen: dict[str, str] = {}
    for peer in peers:
        if peer != "litellm_router" or _can_import(sys.executable, "litellm"):
            chosen[peer] = sys.executable
        elif Path(bench_python).exists() and _can_import(bench_python, "litellm"):
            chosen[peer] = bench_python
        else:
            _log(f"skipping {peer}: litellm is importable neither here nor in {bench_python}")
    return chosen


def server_stats(base_url: str) -> dict[str, float]:
    with urllib.request.urlopen(base_url + "/_stats", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def core_at(rev: str, into: Path) -> Path:
    """``core/src`` of commit *rev*, extracted under *into* (for the ``ours@REV`` peer)."""
    folder = into / rev.replace("/", "_")
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", rev, "core"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "core" / "src"


def measure_once(
    python: str,
    peer: str,
    base_url: str,
    n: int,
    c: int,
    warmup: int,
    timeout_s: float,
    core_src: Path | None = None,
) -> dict[str, Any]:
    """One measurement in a fresh subprocess; adds the server's CPU per request.

    With *core_src*, ``imageworks_core`` is imported from there (an earlier commit's core).
    """
    name = peer.split("@", 1)[0]
    env = dict(os.environ)
    if name == "ours_auto":
        name = "ours"
        env["BENCH_CONCURRENCY"] = "auto"
    argv = [python, str(PEERS_PY), "--base-url", base_url, "-n", str(n), "-c", str(c), "--peer", name]
    argv += ["--warmup", str(warmup), "--deadline-s", str(max(10.0, timeout_s - 30))]
    if core_src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(core_src), env.get("PYTHONPATH")) if p)
    before = server_stats(base_url)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return {"peer": peer, "c": c, "n": n, "ok": 0, "failed": f"timed out after {timeout_s}s"}
    after = server_stats(base_url)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:
        tail = (proc.stderr or proc.stdout)[-1500:]
        return {"peer": peer, "c": c, "n": n, "ok": 0, "failed": f"exit {proc.returncode}: {tail}"}
    record: dict[str, Any] = json.loads(lines[-1])
    record["peer"] = peer
    served = max(1.0, after["requests"] - before["requests"] - 1)  # minus the /_stats call itself
    record["server_cpu_ms_per_req"] = round(1000 * (after["cpu_s"] - before["cpu_s"]) / served, 4)
    return record


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    good = [r for r in records if r.get("ok") and not r.get("failed")]
    if not good:
        return {
            "runs": len(records),
            "good_runs": 0,
            "failed": records[-1].get("failed") if records else None,
        }
    return {
        "runs": len(records),
        "good_runs": len(good),
        "req_per_s": round(statistics.median(r["req_per_s"] for r in good), 1),
        "cpu_ms_per_req": round(statistics.median(r["cpu_ms_per_req"] for r in good), 3),
        "server_cpu_ms_per_req": round(statistics.median(r["server_cpu_ms_per_req"] for r in good), 4),
        "ok_min": min(r["ok"] for r in good),
        "req_per_s_all": [r["req_per_s"] for r in good],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark our dispatcher against peer clients.")
    parser.add_argument("-n", type=int, default=2000, help="measured requests per run")
    parser.add_argument("--concurrency", default="8,64,256", help="comma-separated concurrencies")
    parser.add_argument(
        "--repeats", type=int, default=5, help="runs per (peer, concurrency); median reported"
    )
    parser.add_argument(
        "--peers", default=None, help="comma-separated subset (default: all, plus ours if present)"
    )
    parser.add_argument(
        "--baseline", default=None, help="ratio reference (default: ours if present, else raw_aiohttp)"
    )
    parser.add_argument("--warmup", type=int, default=16, help="unmeasured requests per run")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="server-side delay per answer")
    parser.add_argument("--bench-python", default=str(DEFAULT_BENCH_PYTHON), help="interpreter with litellm")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="limit for one measurement")
    parser.add_argument("--max-total-s", type=float, default=3600.0, help="stop starting runs after this")
    parser.add_argument("--json-out", default=None, help="write all records and summaries here")
    parser.add_argument(
        "--ours-at",
        action="append",
        default=[],
        metavar="REV",
        help="also run ours on the core of commit REV (peer ours@REV); may be repeated",
    )
    args = parser.parse_args(argv)

    ours = (BENCH_DIR / "ours.py").is_file()
    peers = args.peers.split(",") if args.peers else [*(["ours"] if ours else []), *ALL_PEERS]
    for mine in ("ours", "ours_auto"):
        if mine in peers and not ours:
            _log(f"skipping {mine}: bench/ours.py does not exist")
            peers.remove(mine)
    concurrencies = [int(x) for x in args.concurrency.split(",") if x]
    pythons = choose_pythons(peers, args.bench_python)
    peers = [p for p in peers if p in pythons]
    earlier = Path(tempfile.mkdtemp(prefix="imageworks-bench-rev-"))
    cores: dict[str, Path] = {}
    for rev in args.ours_at:
        cores[f"ours@{rev}"] = core_at(rev, earlier)
        pythons[f"ours@{rev}"] = sys.executable
        peers.append(f"ours@{rev}")
    baseline = args.baseline or ("ours" if "ours" in peers else "raw_aiohttp")

    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    server_args = ["--port", str(port), "--delay-ms", str(args.delay_ms)]
    records: list[dict[str, Any]] = []
    started = time.monotonic()
    with ServerProcess(
        python_argv(FAST_SERVER, *server_args), ready_url=base_url + "/health", name="fast_openai"
    ):
        for c in concurrencies:
            for rep in range(args.repeats):
                shift = rep % max(1, len(peers))
                for peer in peers[shift:] + peers[:shift]:  # rotate so no peer always runs first
                    if time.monotonic() - started > args.max_total_s:
                        _log("max-total-s reached; stopping early")
                        break
                    record = measure_once(
                        pythons[peer], peer, base_url, args.n, c, args.warmup, args.timeout_s, cores.get(peer)
                    )
                    record.update(repeat=rep, python=pythons[peer])
                    records.append(record)
                    shown = record.get("failed") or (
                        f"{record['req_per_s']:>8.1f} req/s {record['cpu_ms_per_req']:>7.3f} ms CPU/req "
                        f"(server {record['server_cpu_ms_per_req']:.3f}) ok={record['ok']}"
                    )
                    _log(f"c={c:<4} rep={rep} {peer:<15} {shown}")

    shutil.rmtree(earlier, ignore_errors=True)
    summary: dict[str, dict[str, Any]] = {}
    for c in concurrencies:
        for peer in peers:
            summary[f"{peer}@{c}"] = summarize([r for r in records if r["peer"] == peer and r["c"] == c])

    settings = f"n={args.n} repeats={args.repeats} warmup={args.warmup} delay_ms={args.delay_ms}"
    print(f"\n{settings} baseline={baseline}")
    header = (
        f"{'peer':<16}{'c':>5}{'req/s':>10}{'CPU ms/req':>12}{'srv ms/req':>12}{'x req/s':>10}{'x CPU':>9}"
    )
    print(header)
    print("-" * len(header))
    for c in concurrencies:
        ref = summary.get(f"{baseline}@{c}", {})
        for peer in peers:
            s = summary[f"{peer}@{c}"]
            if not s.get("good_runs"):
                print(f"{peer:<16}{c:>5}  failed: {str(s.get('failed'))[:80]}")
                continue
            # "x req/s": how many times the baseline's throughput this peer's is below it;
            # "x CPU": how many times the baseline's CPU per request this peer spends.
            speed = f"{ref['req_per_s'] / s['req_per_s']:.2f}" if ref.get("good_runs") else "-"
            cpu = f"{s['cpu_ms_per_req'] / ref['cpu_ms_per_req']:.2f}" if ref.get("good_runs") else "-"
            print(
                f"{peer:<16}{c:>5}{s['req_per_s']:>10.1f}{s['cpu_ms_per_req']:>12.3f}"
                f"{s['server_cpu_ms_per_req']:>12.4f}{speed:>10}{cpu:>9}"
            )
    print(f"\nx req/s = {baseline} req/s / peer req/s;  x CPU = peer CPU/req / {baseline} CPU/req")
    if args.json_out:
        out = {"args": vars(args), "baseline": baseline, "records": records, "summary": summary}
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    failed = [r for r in records if r.get("failed") or r.get("ok") != args.n]
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
