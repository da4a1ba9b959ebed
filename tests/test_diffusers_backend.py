"""The in-process ``diffusers`` backend, end to end on a tiny random-weight pipeline.

The pipeline is built in this test session (``tests/servers/tiny_sd.py``; shapes from
diffusers' own fast tests, a byte-level CLIP vocabulary written here): the real
loading and generation code runs on CPU and nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
import io
from pathlib import Path
from typing import Any

import pytest
from conftest import require

require(
    importlib.util.find_spec("diffusers") is not None, "diffusers is not installed (scripts/install.sh --dev)"
)
require(
    importlib.util.find_spec("imageworks_backend_diffusers") is not None,
    "the diffusers backend is not installed (scripts/install.sh --dev)",
)

from cli_helpers import read_jsonl, run_cli, show  # noqa: E402
from PIL import Image  # noqa: E402

from imageworks_core import BackendRejected, Client, ConfigError, ImageRequest  # noqa: E402

STEPS = 2
SETTINGS = {"device": "cpu", "local_files_only": True}


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from servers import tiny_sd

    return tiny_sd.build(tmp_path_factory.mktemp("tiny-sd"))


def sd_client(folder: Path, **kw: Any) -> Client:
    return Client(
        backend="diffusers",
        overrides={
            "backends": {"diffusers": {"model": str(folder), "device": "cpu", "local_files_only": True}}
        },
        user_file=False,
        project_file=False,
        allow=["diffusers"],
        **kw,
    )


@pytest.mark.anyio
async def test_generates_deterministic_images_with_a_seed(tiny_sd: Path) -> None:
    async with sd_client(tiny_sd) as c:
        first = await c.generate_image(ImageRequest("a red barn", n=2, seed=123, steps=STEPS, size="64x64"))
        again = await c.generate_image(ImageRequest("a red barn", n=1, seed=124, steps=STEPS, size="64x64"))
        other = await c.generate_image(ImageRequest("a red barn", n=1, seed=999, steps=STEPS, size="64x64"))
    assert first.backend == "diffusers" and len(first.images) == 2
    assert [i.seed for i in first.images] == [123, 124] and first.seed == 123
    for img in first.images:
        assert img.mime == "image/png" and (img.width, img.height) == (64, 64)
        with Image.open(io.BytesIO(img.data)) as im:
            assert im.size == (64, 64)
    # image i uses seed + i whatever n is: the second image of the first request is the
    # first image of a request with seed 124
    assert again.images[0].data == first.images[1].data
    assert other.images[0].data != first.images[0].data
    assert first.parameters["steps"] == STEPS and first.parameters["sampler"] == "DDIMScheduler"
    assert "load" in first.timings and "load" not in again.timings  # loaded once, lazily
    assert first.timings["generate"] > 0


@pytest.mark.anyio
async def test_without_a_seed_one_is_drawn_and_reported(tiny_sd: Path) -> None:
    async with sd_client(tiny_sd) as c:
        r = await c.generate_image(ImageRequest("noise", steps=1, size="32x32"))
        again = await c.generate_image(ImageRequest("noise", steps=1, size="32x32", seed=r.seed))
    assert isinstance(r.seed, int) and again.images[0].data == r.images[0].data


@pytest.mark.anyio
async def test_bad_sizes_and_arguments_are_rejected(tiny_sd: Path) -> None:
    async with sd_client(tiny_sd) as c:
        with pytest.raises(BackendRejected, match="multiple of 8"):
            await c.generate_image(ImageRequest("x", size="60x64", steps=1))
        with pytest.raises(BackendRejected, match="refused"):
            await c.generate_image(ImageRequest("x", size="32x32", steps=1, extras={"height": 60}))
        ok = await c.generate_image(ImageRequest("still works", size="32x32", steps=1, seed=1))
    assert len(ok.images) == 1  # a refused request loses nothing else


@pytest.mark.anyio
async def test_text_requests_are_refused_clearly(tiny_sd: Path) -> None:
    from imageworks_core import Request

    async with sd_client(tiny_sd) as c:
        with pytest.raises(ConfigError, match="cannot answer text or vision requests"):
            await c.infer(Request(prompt="hi"))


@pytest.mark.anyio
async def test_close_unloads_the_pipeline(tiny_sd: Path) -> None:
    c = sd_client(tiny_sd)
    async with c:
        await c.generate_image(ImageRequest("x", size="32x32", steps=1, seed=3))
        st = c.context("diffusers").state["diffusers"]
        assert st.pipe is not None
    assert st.pipe is None and st.closed


def test_cli_generate_with_diffusers(tiny_sd: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[backends.diffusers]\nmodel = "{tiny_sd}"\ndevice = "cpu"\nlocal_files_only = true\n')
    args = ["generate", "a small test chart", "--backend", "diffusers", "--config", str(cfg)]
    args += ["--seed", "7", "--steps", "2", "--size", "64x48", "-n", "2", "--negative", "text, watermark"]
    proc = run_cli(tmp_path, *args, timeout=300)
    assert proc.returncode == 0, show(proc)
    names = proc.stdout.split()
    assert names == ["a-small-test-chart_001.png", "a-small-test-chart_002.png"]
    with Image.open(tmp_path / names[1]) as im:
        params = im.text["parameters"]  # type: ignore[attr-defined]
        assert im.size == (64, 48)
    assert params.split("\n")[1] == "Negative prompt: text, watermark"
    assert "Steps: 2, Sampler: DDIMScheduler, CFG scale: 7.5, Seed: 8, Size: 64x48, " in params
    records = read_jsonl(tmp_path / "imageworks-generated.jsonl")
    assert [r["seed"] for r in records] == [7, 8]


@pytest.mark.anyio
async def test_each_step_is_a_progress_event_on_the_event_loop(tiny_sd: Path) -> None:
    import threading

    from imageworks_core import Event

    seen: list[tuple[Event, int]] = []
    async with sd_client(tiny_sd) as c:
        await c.generate_image(
            ImageRequest("x", size="32x32", steps=3, seed=3),
            on_event=lambda e: seen.append((e, threading.get_ident())),
        )
    steps = [(e.step, e.total, e.backend) for e, _ in seen if e.kind == "progress"]
    assert steps == [(1, 3, "diffusers"), (2, 3, "diffusers"), (3, 3, "diffusers")]
    assert {thread for _, thread in seen} == {threading.get_ident()}  # callbacks never on the worker
    assert seen[-1][0].kind == "done"


def test_cli_generate_shows_the_steps_on_a_terminal(tiny_sd: Path, tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: one line per step, rewritten in place, cleared at the end."""
    from cli_helpers import run_in_terminal

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[backends.diffusers]\nmodel = "{tiny_sd}"\ndevice = "cpu"\nlocal_files_only = true\n')
    args = ["generate", "a chart", "--backend", "diffusers", "--config", str(cfg), "--steps", "3"]
    code, text, out = run_in_terminal(
        tmp_path, *args, "--size", "32x32", "--seed", "1", on_terminal="stderr", timeout=300
    )
    assert code == 0, text
    assert out.split() == ["a-chart_001.png"]
    for step in (1, 2, 3):
        assert f"\r\x1b[2Kdiffusers: step {step}/3 ({100 * step // 3} %)" in text, text
    assert text.index("step 3/3") < text.rindex("\r\x1b[2K") < text.index("1 image(s) written")
    assert "Traceback" not in text and "ResourceWarning" not in text


@pytest.mark.anyio
async def test_img2img_starts_from_the_init_image_at_its_size(tiny_sd: Path) -> None:
    from imageworks_core import PreparedImage

    buf = io.BytesIO()
    Image.new("RGB", (40, 24), (250, 250, 0)).save(buf, "PNG")
    start = PreparedImage.from_bytes(buf.getvalue())
    async with sd_client(tiny_sd) as c:
        a = await c.generate_image(ImageRequest("x", init_image=start, strength=0.5, steps=4, seed=5))
        b = await c.generate_image(ImageRequest("x", init_image=start, strength=0.5, steps=4, seed=5))
        wide = await c.generate_image(ImageRequest("x", init_image=start, size="64x32", steps=2, seed=5))
        plain = await c.generate_image(ImageRequest("x", size="40x24", steps=4, seed=5))
    assert (a.images[0].width, a.images[0].height) == (40, 24)  # the image's size (sides of 8)
    assert (wide.images[0].width, wide.images[0].height) == (64, 32)
    assert a.images[0].data == b.images[0].data != plain.images[0].data  # seeded, and not txt2img
    assert a.parameters["mode"] == "img2img" and a.parameters["strength"] == 0.5
    assert "mode" not in plain.parameters


def test_cli_init_image_and_its_usage_errors(tiny_sd: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[backends.diffusers]\nmodel = "{tiny_sd}"\ndevice = "cpu"\nlocal_files_only = true\n')
    Image.new("RGB", (48, 32), (0, 90, 200)).save(tmp_path / "start.jpg")
    base = [
        "generate",
        "a chart",
        "--backend",
        "diffusers",
        "--config",
        str(cfg),
        "--steps",
        "2",
        "--seed",
        "3",
    ]
    proc = run_cli(tmp_path, *base, "--init-image", "start.jpg", "--strength", "0.6", timeout=300)
    assert proc.returncode == 0, show(proc)
    with Image.open(tmp_path / proc.stdout.split()[0]) as im:
        assert im.size == (48, 32)
        assert "Denoising strength: 0.6" in im.text["parameters"]  # type: ignore[attr-defined]
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    for extra, says in (
        (["--strength", "0.5"], "--strength goes with --init-image"),
        (["--init-image", "missing.png"], "missing.png"),
        (["--init-image", "broken.jpg"], "broken.jpg"),
        (["--init-image", "start.jpg", "--strength", "2"], "strength=2.0 is out of range"),
    ):
        proc = run_cli(tmp_path, *base, *extra, timeout=120)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, show(proc)


@pytest.mark.anyio
async def test_cancel_stops_the_pipeline_and_the_next_request_runs(tiny_sd: Path) -> None:
    import time

    import anyio

    async with sd_client(tiny_sd) as c:
        await c.generate_image(ImageRequest("warm", size="32x32", steps=1, seed=1))  # loaded
        start = time.monotonic()
        with anyio.move_on_after(0.5) as scope:
            await c.generate_image(ImageRequest("long", size="64x64", steps=900, seed=1))
        assert scope.cancelled_caught and time.monotonic() - start < 8  # 900 steps would take minutes
        st = c.context("diffusers").state["diffusers"]
        before = st.generations
        # the abandoned generation stops at its next step, so this one gets the pipeline soon
        r = await c.generate_image(ImageRequest("after", size="32x32", steps=1, seed=2))
        assert len(r.images) == 1 and time.monotonic() - start < 30
        assert st.generations == before + 2  # the interrupted run ended (counted) before this one
