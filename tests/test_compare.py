"""``imageworks compare`` end to end against real local servers, plus its candidate parsing and statistics.

The fault-injecting server plays two stacks with different, known latencies
(rules matched on the requested model); a third candidate points at a port
where nothing listens; ``transformers serve`` with the tiny LLaVA is the real
VLM.  The numbers in ``summary.json`` are checked against the servers' own
request logs.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest
from cli_helpers import read_jsonl, run_cli, show
from servers._proc import free_port

from imageworks_core.compare.candidates import (
    Candidate,
    candidate_client,
    configured_candidates,
    parse_candidates,
)
from imageworks_core.compare.stats import quantile
from imageworks_core.errors import ConfigError
from imageworks_core.outputs import RESULT_KEYS

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = sorted((ROOT / "samples").glob("*.jpg"))
FAST_S, SLOW_S = 0.02, 0.3
HOSTILE = "<script>alert(1)</script></td></tr>\"quoted\" 'single' <img src=x onerror=alert(2)> &amp; end"
_GENERATED = re.compile(r'<time id="generated">[^<]*</time>')


def photos(folder: Path, n: int = len(SAMPLES)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy2(src, folder / src.name)) for src in SAMPLES[:n]]


def write_candidates(cwd: Path, base_v1: str, down_v1: str | None = None, extra: str = "") -> None:
    text = f"""
[tool.imageworks.candidates.fast]
backend = "openai"
base_url = "{base_v1}"
model = "fast"

[tool.imageworks.candidates.slow]
backend = "openai"
base_url = "{base_v1}"
model = "slow"
options = {{ max_tokens = 40, timeout = 30 }}
"""
    if down_v1:
        text += f"""
[tool.imageworks.candidates.down]
backend = "openai"
base_url = "{down_v1}"
model = "fast"
"""
    (cwd / "pyproject.toml").write_text(text + extra)


def latency_script(faulty: Any, evil: bool = False) -> None:
    rules: list[dict[str, Any]] = [
        {"match": {"path": "/v1/chat/completions", "model": "slow"}, "fault": "delay", "delay_s": SLOW_S},
        {"match": {"path": "/v1/chat/completions", "model": "fast"}, "fault": "delay", "delay_s": FAST_S},
    ]
    if evil:
        rules.insert(0, {"match": {"path": "/v1/chat/completions", "model": "slow"}, "content": HOSTILE})
        rules[0]["fault"] = "delay"
        rules[0]["delay_s"] = SLOW_S
    faulty.script(rules)


def summary(out: Path) -> dict[str, dict[str, Any]]:
    data = json.loads((out / "summary.json").read_text())
    return {c["name"]: c for c in data["candidates"]}


# ------------------------------------------------------------------ candidates and statistics


def test_candidate_specs_backend_model_and_configured(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.imageworks.candidates.vllm-7B-awq]\nbackend = "vllm"\nbase_url = "http://gpu2:8000/v1"\n'
        'model = "Qwen/Qwen2.5-VL-7B-Instruct-AWQ"\noptions = { max_tokens = 300, timeout = 60 }\n'
    )
    configured = configured_candidates(cwd=tmp_path, user_file=False)
    got = parse_candidates(
        ["vllm,lmdeploy/Qwen/Qwen2-VL-2B", "vllm-7B-awq"],
        configured=configured,
        installed={"vllm", "lmdeploy"},
    )
    assert [(c.name, c.backend, c.model) for c in got] == [
        ("vllm", "vllm", None),
        ("lmdeploy/Qwen/Qwen2-VL-2B", "lmdeploy", "Qwen/Qwen2-VL-2B"),
        ("vllm-7B-awq", "vllm", "Qwen/Qwen2.5-VL-7B-Instruct-AWQ"),
    ]
    client = candidate_client(got[2], flags={"max_tokens": 100}, user_file=False, cwd=tmp_path)
    s = client.settings
    assert (s.backend, s.fallback, s.max_tokens) == ("vllm", (), 300)  # the candidate's option beats the flag
    assert s.backends["vllm"].base_url == "http://gpu2:8000/v1"
    assert s.backends["vllm"].timeout == 60


def test_bad_candidates_fail_before_anything_is_sent(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a configured candidate nor an installed backend"):
        parse_candidates(["vlm"], configured={}, installed={"vllm"})
    with pytest.raises(ConfigError, match="named twice"):
        parse_candidates(["vllm,vllm"], configured={}, installed={"vllm"})
    (tmp_path / "pyproject.toml").write_text(
        '[tool.imageworks.candidates.x]\nbackend = "vllm"\nmodle = "m"\n'
    )
    with pytest.raises(ConfigError, match=r"unknown key 'modle' in candidates\.x") as info:
        configured_candidates(cwd=tmp_path, user_file=False)
    assert "pyproject.toml" in str(info.value)
    bad = Candidate(name="x", backend="openai", options={"max_tokens": "many"}, source="cfg.toml")
    with pytest.raises(ConfigError, match=r"candidate 'x': expected an integer for max_tokens") as info:
        candidate_client(bad, user_file=False, cwd=tmp_path)
    assert "cfg.toml" in str(info.value)
    secret = Candidate(name="z", backend="openai", options={"api_key": "sk-123", "headers": {"X-Key": "h"}})
    assert "sk-123" not in repr(secret) and "X-Key" not in repr(secret)
    with pytest.raises(ConfigError, match="max_pixels cannot differ"):
        Candidate(name="y", backend="openai", options={"max_pixels": 5}).overrides()


def test_quantile_and_its_confidence_interval() -> None:
    xs = [float(i) for i in range(100)]
    q = quantile(xs, 0.5)
    assert q is not None
    assert q.value == pytest.approx(statistics.median(xs))
    assert q.low is not None and q.high is not None
    assert 38 <= q.low < q.value < q.high <= 61  # ranks n/2 -/+ 1.96 sqrt(n/4)
    small = quantile([3.0, 1.0, 2.0], 0.5)
    assert small is not None and (small.value, small.low, small.high) == (2.0, None, None)
    assert quantile([], 0.5) is None


# ------------------------------------------------------------------ real servers


@pytest.mark.server
def test_two_stacks_and_one_down_numbers_agree_with_the_server_log(tmp_path: Path, faulty: Any) -> None:
    images = photos(tmp_path / "photos", 4)
    down = f"http://127.0.0.1:{free_port()}/v1"
    write_candidates(tmp_path, faulty.v1, down)
    latency_script(faulty)
    proc = run_cli(
        tmp_path,
        "compare",
        "photos",
        "--candidates",
        "fast,slow,down",
        "--repeat",
        "2",
        "--max-tokens",
        "20",
        "--out",
        "cmp",
    )
    assert proc.returncode == 1, show(proc)  # one candidate failed every image: exit 1, the others reported
    out = tmp_path / "cmp"
    records = read_jsonl(out / "results.jsonl")
    assert len(records) == len(images) * 2 * 3
    assert all(set(RESULT_KEYS) <= set(r) for r in records)
    by = summary(out)
    log = faulty.log("/v1/chat/completions")
    for name, delay in (("fast", FAST_S), ("slow", SLOW_S)):
        sent = [e for e in log if e["model"] == name]
        assert len(sent) == len(images) * 2 + 1, sent  # + the warm-up, which is not counted
        assert all(e["stream"] for e in sent)  # the openai backend streams: the first token is timed
        s = by[name]
        assert (s["ok"], s["failed"], s["sent"]) == (len(images) * 2, 0, len(images) * 2)
        server = sorted(e["duration_s"] for e in sent[1:])
        assert delay <= s["latency_p50"]["value"] < delay + 0.25, s
        assert abs(s["latency_p50"]["value"] - statistics.median(server)) < 0.1, (s, server)
        assert delay <= s["ttft_p50"]["value"] <= s["latency_p50"]["value"] + 0.01
        assert s["wall_s"] >= delay * len(images) * 2 / 8  # at most 8 in flight by default
        assert s["images_per_s"] == pytest.approx(s["ok"] / s["wall_s"], rel=0.01)
    assert by["fast"]["images_per_s"] > by["slow"]["images_per_s"]
    d = by["down"]
    assert (d["ok"], d["failed"], d["errors"]) == (
        0,
        len(images) * 2,
        {"BackendUnavailable": len(images) * 2},
    )
    assert "cannot connect" in d["first_error"]
    assert not [e for e in log if e["model"] not in ("fast", "slow")]
    for line in ("fast ", "slow ", "down "):
        assert any(row.startswith(line) for row in proc.stdout.splitlines()), show(proc)
    page = (out / "report.html").read_text()
    assert "BackendUnavailable" in page and "cannot connect" in page


@pytest.mark.server
def test_hostile_answer_is_escaped_and_from_rebuilds_the_same_report(tmp_path: Path, faulty: Any) -> None:
    photos(tmp_path / "photos", 2)
    write_candidates(tmp_path, faulty.v1)
    latency_script(faulty, evil=True)
    proc = run_cli(tmp_path, "compare", "photos", "--candidates", "fast,slow", "--no-stream", "--out", "a")
    assert proc.returncode == 0, show(proc)
    page = (tmp_path / "a" / "report.html").read_text()
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace("onerror=alert(2)&gt;", "")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&lt;/td&gt;&lt;/tr&gt;&quot;quoted&quot;" in page
    assert "&amp;amp;" in page
    assert all(r["ttft"] is None for r in read_jsonl(tmp_path / "a" / "results.jsonl"))  # --no-stream

    again = run_cli(tmp_path, "compare", "--from", "a/results.jsonl", "--out", "b")
    assert again.returncode == 0, show(again)
    rebuilt = (tmp_path / "b" / "report.html").read_text()
    assert rebuilt != page or _GENERATED.search(page) is not None
    assert _GENERATED.sub("", rebuilt) == _GENERATED.sub("", page)
    first = json.loads((tmp_path / "a" / "summary.json").read_text())
    second = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert {**first, "generated": ""} == {**second, "generated": ""}
    assert not (tmp_path / "b" / "results.jsonl").exists()  # --from sends nothing and writes no results


@pytest.mark.server
def test_from_mixes_a_describe_run_with_a_compare_run(tmp_path: Path, faulty: Any) -> None:
    photos(tmp_path / "photos", 2)
    write_candidates(tmp_path, faulty.v1)
    latency_script(faulty)
    described = run_cli(
        tmp_path,
        "describe",
        "photos",
        *("--vlm-backend", "openai", "--vlm-base-url", faulty.v1, "--vlm-model", "fast"),
        *("--xmp", "none", "--no-json-sidecar", "--output", "yesterday.jsonl"),
    )
    assert described.returncode == 0, show(described)
    compared = run_cli(tmp_path, "compare", "photos", "--candidates", "slow", "--out", "today")
    assert compared.returncode == 0, show(compared)
    sent = len(faulty.log("/v1/chat/completions"))
    mixed = run_cli(
        tmp_path,
        "compare",
        "--from",
        "yesterday.jsonl",
        "today/results.jsonl",
        "old=yesterday.jsonl",
        "--json",
    )
    assert mixed.returncode == 0, show(mixed)
    assert len(faulty.log("/v1/chat/completions")) == sent  # nothing was sent
    names = [c["name"] for c in json.loads(mixed.stdout)["candidates"]]
    assert names == ["openai/fast", "slow", "old"]
    stats = {c["name"]: c for c in json.loads(mixed.stdout)["candidates"]}
    assert stats["openai/fast"]["wall_estimated"] is True and stats["openai/fast"]["ok"] == 2
    assert stats["slow"]["wall_estimated"] is False


def test_usage_errors_exit_2_and_name_the_problem(tmp_path: Path) -> None:
    photos(tmp_path / "photos", 1)
    (tmp_path / "pyproject.toml").write_text(
        '[tool.imageworks.candidates.bad]\nbackend = "openai"\noptions = { max_tokens = "many" }\n'
    )
    proc = run_cli(tmp_path, "compare", "photos", "--candidates", "bad", "--out", "o")
    assert proc.returncode == 2, show(proc)
    assert "candidate 'bad'" in proc.stderr and "pyproject.toml" in proc.stderr
    assert not (tmp_path / "o" / "results.jsonl").exists()
    proc = run_cli(tmp_path, "compare", "photos", "--candidates", "nosuch", "--out", "o")
    assert proc.returncode == 2 and "installed backends" in proc.stderr, show(proc)
    proc = run_cli(tmp_path, "compare", "--from", "missing.jsonl")
    assert proc.returncode == 2 and "no such results file" in proc.stderr, show(proc)
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "results.jsonl").write_text('{"image": "x"}\n')
    proc = run_cli(tmp_path, "compare", "photos", "--candidates", "openai", "--out", "o")
    assert proc.returncode == 2 and "--overwrite" in proc.stderr, show(proc)


@pytest.mark.server
@pytest.mark.slow
def test_three_candidates_with_transformers_serve(tmp_path: Path, faulty: Any, hf_server: Any) -> None:
    images = photos(tmp_path / "photos", 2)
    down = f"http://127.0.0.1:{free_port()}/v1"
    write_candidates(
        tmp_path,
        faulty.v1,
        down,
        extra=f'\n[tool.imageworks.candidates.hf]\nbackend = "openai"\nbase_url = "{hf_server.base_url}"\n'
        f'model = "{hf_server.model_id}"\n',
    )
    latency_script(faulty)
    proc = run_cli(
        tmp_path,
        "compare",
        "photos",
        "--candidates",
        "hf,slow,down",
        "--max-tokens",
        "8",
        "--out",
        "cmp",
        timeout=300,
    )
    assert proc.returncode == 1, show(proc)
    by = summary(tmp_path / "cmp")
    assert (by["hf"]["ok"], by["slow"]["ok"], by["down"]["ok"]) == (len(images), len(images), 0)
    assert by["hf"]["model"].startswith(hf_server.model_id)
    assert by["hf"]["tokens_per_s"] and by["hf"]["ttft_p50"] is not None
    assert len([e for e in faulty.log("/v1/chat/completions") if e["model"] == "slow"]) == len(images) + 1


@pytest.mark.server
def test_parallel_candidates_overlap_and_lose_nothing(tmp_path: Path, faulty: Any) -> None:
    images = photos(tmp_path / "photos", 3)
    write_candidates(tmp_path, faulty.v1)
    latency_script(faulty)
    proc = run_cli(tmp_path, "compare", "photos", "--candidates", "slow,fast", "--parallel", "--out", "p")
    assert proc.returncode == 0, show(proc)
    by = summary(tmp_path / "p")
    assert (by["slow"]["ok"], by["fast"]["ok"]) == (len(images), len(images))
    log = faulty.log("/v1/chat/completions")
    slow = [e["time"] for e in log if e["model"] == "slow"]
    fast = [e["time"] for e in log if e["model"] == "fast"]
    assert min(fast) < max(slow)  # the fast candidate did not wait for the slow one to finish


def _jpeg(path: Path, size: tuple[int, int], orientation: int | None = None) -> Path:
    from PIL import Image

    image = Image.new("RGB", size, (200, 40, 40))
    image.paste((20, 20, 220), (0, 0, size[0] // 2, size[1]))  # left half blue
    if orientation is None:
        image.save(path, "JPEG", quality=90)
    else:
        exif = Image.Exif()
        exif[0x0112] = orientation
        image.save(path, "JPEG", quality=90, exif=exif.tobytes())
    return path


def test_thumbnails_come_upright_from_the_prepared_frame_and_never_fail_an_image(tmp_path: Path) -> None:
    """Live runs make each thumbnail while preparing the image (no second decode).

    The thumbnail is upright (EXIF orientation applied), at most 150 px, a JPEG; a
    small JPEG sent as it is still gets one; a thumbnail folder that cannot be
    written costs the report its thumbnails, never the images.
    """
    import anyio
    from PIL import Image

    from imageworks_core.compare.run import prepare_all
    from imageworks_core.compare.thumbs import thumb_path

    src = tmp_path / "src"
    src.mkdir()
    rotated = _jpeg(src / "rotated.jpg", (1600, 1000), orientation=6)  # shown as 1000 x 1600
    small = _jpeg(src / "small.jpg", (300, 200))  # within the budget: passed through byte for byte
    thumbs = tmp_path / "thumbs"
    prepared = anyio.run(prepare_all, [str(src)], 1_000_000, thumbs)
    assert [p.error for p in prepared] == [None, None]
    with Image.open(thumb_path(thumbs, str(rotated))) as im:
        assert im.format == "JPEG" and max(im.size) == 150 and im.height > im.width, im.size
        top, bottom = im.getpixel((im.width // 2, 5)), im.getpixel((im.width // 2, im.height - 5))
        assert isinstance(top, tuple) and isinstance(bottom, tuple)
        assert top[2] > 150 > bottom[2]  # the left (blue) half is on top after a 90-degree turn
    with Image.open(thumb_path(thumbs, str(small))) as im:
        assert im.format == "JPEG" and im.size == (150, 100)
    small_prepared = next(p.image for p in prepared if p.key == str(small))
    assert small_prepared is not None and small_prepared.data == small.read_bytes()

    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the thumbnail folder should be")
    again = anyio.run(prepare_all, [str(src)], 1_000_000, blocked)
    assert [p.error for p in again] == [None, None] and all(p.image is not None for p in again)
