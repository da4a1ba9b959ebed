"""The in-process transformers backend, run for real on a tiny random-weight LLaVA.

The model is built offline by ``servers/tiny_vlm.py`` (no download) into the
test cache; every test loads it from that local folder on CPU.  Generation
takes ~1-10 ms per token here, so requests stay small.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import require
from PIL import Image

from imageworks_core import (
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    Client,
    ConfigError,
    HealthReport,
    ImageWorksError,
    InputError,
    PreparedImage,
    Request,
)

HAVE_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def hf_home() -> Path:
    cache = Path(os.environ.get("IMAGEWORKS_TEST_CACHE", Path(tempfile.gettempdir()) / "imageworks-tests"))
    return cache / "hf-home"


@pytest.fixture(scope="session")
def tiny(hf_home: Path) -> Any:
    """The tiny LLaVA (built once per cache); ``.snapshot`` is a local model folder."""
    require(HAVE_TORCH, "torch and transformers are not installed")
    require(
        importlib.util.find_spec("imageworks_backend_transformers") is not None,
        "imageworks-backend-transformers is not installed (pip install -e plugins/transformers)",
    )
    from servers.tiny_vlm import tiny_llava_info

    return tiny_llava_info(hf_home)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub access from this test, whatever the developer's shell says."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> PreparedImage:
    """A real JPEG made with Pillow: a colour field with a darker square in it."""
    im = Image.new("RGB", size, color)
    im.paste(tuple(c // 3 for c in color), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return PreparedImage.from_bytes(buf.getvalue(), source=f"rgb{color}.jpg")


RED, GREEN, BLUE, WHITE = (200, 20, 20), (20, 180, 40), (30, 40, 210), (240, 240, 240)


def make_client(model: str | os.PathLike[str], **settings: Any) -> Client:
    from imageworks_backend_transformers import TransformersBackend

    retry = settings.pop("retry", None)
    overrides: dict[str, Any] = {"backends": {"transformers": {"model": str(model), **settings}}}
    if retry:
        overrides["retry"] = retry
    return Client(
        plugins=[TransformersBackend()],
        entry_points=False,
        backend="transformers",
        overrides=overrides,
        user_file=False,
        project_file=False,
    )


def state(client: Client) -> Any:
    return client.context("transformers").state["transformers"]


def ask(image: PreparedImage, max_tokens: int = 12, **kw: Any) -> Request:
    return Request(prompt="Describe this image.", images=(image,), max_tokens=max_tokens, **kw)


# ------------------------------------------------------------------ packaging


def test_import_is_light_and_entry_point_is_registered() -> None:
    require(
        importlib.util.find_spec("imageworks_backend_transformers") is not None,
        "imageworks-backend-transformers is not installed",
    )
    code = (
        "import sys, imageworks_backend_transformers as m\n"
        "from imageworks_core.plugins import BackendRegistry, installed_backend_names\n"
        "assert 'transformers' in installed_backend_names()\n"
        "r = BackendRegistry()\n"
        "info = r.get('transformers').info\n"
        "assert info.settings_cls is m.TransformersSettings\n"
        "assert not info.capabilities.model_switch and info.capabilities.streaming\n"
        "heavy = [x for x in ('torch', 'transformers') if x in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_settings_are_validated() -> None:
    from imageworks_backend_transformers import TransformersBackend

    for bad in ({"device": "tpu"}, {"dtype": "int8"}, {"threads": 0}):
        client = Client(
            plugins=[TransformersBackend()],
            entry_points=False,
            backend="transformers",
            overrides={"backends": {"transformers": bad}},
            user_file=False,
            project_file=False,
        )
        with pytest.raises(ConfigError) as info:
            client.config  # noqa: B018
        assert "backends.transformers" in str(info.value)
    ok = Client(
        plugins=[TransformersBackend()],
        entry_points=False,
        backend="transformers",
        overrides={"backends": {"transformers": {"device": "cuda:1", "dtype": "bfloat16"}}},
        user_file=False,
        project_file=False,
    )
    assert ok.settings.backend_settings("transformers").device == "cuda:1"


# ------------------------------------------------------------------ health


@pytest.mark.anyio
async def test_health_before_and_after_load(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        before = await client.health()
        assert isinstance(before, HealthReport)
        assert before.ready and before.reachable
        assert before.models == (str(tiny.snapshot),)
        assert before.metrics["loaded"] == 0.0 and before.metrics["model_local"] == 1.0
        assert "not loaded yet" in (before.detail or "")
        assert before.version and "transformers" in before.version and "torch" in before.version
        assert before.metrics["rss_bytes"] > 0
        assert state(client).engine is None  # health never loads

        await client.infer(ask(jpeg(RED), max_tokens=4))
        after = await client.health()
        assert after.ready and after.metrics["loaded"] == 1.0
        assert after.metrics["param_bytes"] > 100_000  # ~0.75 MB of float32 weights
        assert after.metrics["rss_bytes"] > 0
        assert after.metrics["requests"] == 1.0 and after.metrics["running"] == 0.0
        assert "loaded on cpu (float32)" in (after.detail or "")
        assert "cuda_allocated_bytes" not in after.metrics


@pytest.mark.anyio
async def test_hub_id_found_in_the_local_cache(
    tiny: Any, hf_home: Path, offline: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    async with make_client(tiny.model_id) as client:
        report = await client.health()
        assert report.ready and report.metrics["model_local"] == 1.0
        assert "in the local cache" in (report.detail or "")
        result = await client.infer(ask(jpeg(RED), max_tokens=6))
        assert result.model == tiny.model_id and result.usage.completion_tokens == 6


@pytest.mark.anyio
async def test_offline_and_not_cached_fails_clearly(
    tiny: Any, offline: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    model = "imageworks-test/not-downloaded-vlm"
    async with make_client(model) as client:
        report = await client.health()
        assert not report.ready
        assert report.metrics["model_local"] == 0.0
        assert model in (report.detail or "")
        assert "--vlm-model" in (report.hint or "")

        result = await client.dispatcher.run_one(ask(jpeg(RED)))
        exc = result.error
        assert isinstance(exc, BackendUnavailable)
        assert model in exc.message and "HF_HUB_OFFLINE" in exc.message
        assert exc.hint and "--vlm-model /path/to/folder" in exc.hint
        assert "backends.transformers.model" in exc.hint
        assert len(result.attempts) == 1  # not retried: nothing changes on a retry
        assert "torch" not in sys.modules or state(client).engine is None


@pytest.fixture
def online_empty_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Downloads allowed, nothing cached."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.anyio
async def test_unreachable_hub_fails_fast_and_once(
    tiny: Any, online_empty_cache: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    model = "someone/not-downloaded-vlm"
    async with make_client(model) as client:
        report = await client.health()
        assert report.ready and report.metrics["model_local"] == 0.0
        assert "downloads it from the Hugging Face Hub" in (report.detail or "")
        start = time.monotonic()
        result = await client.dispatcher.run_one(ask(jpeg(RED)))
        assert time.monotonic() - start < 15  # not minutes of hub retries
        exc = result.error
        assert isinstance(exc, BackendUnavailable) and len(result.attempts) == 1
        assert model in exc.message and endpoint in exc.message and "cannot be reached" in exc.message
        assert exc.hint and "--vlm-model /path/to/folder" in exc.hint
        first = state(client).load_failure
        assert first is not None
        again = await client.dispatcher.run_one(ask(jpeg(BLUE)))  # the next item fails at once
        assert isinstance(again.error, BackendUnavailable) and again.error.message == exc.message
        assert state(client).load_failure is first  # remembered, not retried


@pytest.mark.anyio
async def test_model_unknown_to_the_hub_is_a_config_error(
    tiny: Any, online_empty_cache: None, monkeypatch: pytest.MonkeyPatch, faulty: Any
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", faulty.base_url)  # answers 404 for /api/models/...
    async with make_client("someone/no-such-vlm") as client:
        with pytest.raises(ConfigError) as info:
            await client.infer(ask(jpeg(RED)))
    assert "has no model 'someone/no-such-vlm'" in info.value.message
    assert [e["path"] for e in faulty.log()] == ["/api/models/someone/no-such-vlm"]


@pytest.mark.anyio
async def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    require(importlib.util.find_spec("imageworks_backend_transformers") is not None, "plugin not installed")
    folder = tmp_path / "no" / "such" / "model"
    async with make_client(folder) as client:
        report = await client.health()
        assert not report.ready and not report.reachable
        assert str(folder) in (report.detail or "")
        with pytest.raises(ConfigError) as info:
            await client.infer(ask(jpeg(RED)))
        assert "backends.transformers.model" in str(info.value)


@pytest.mark.anyio
async def test_cuda_asked_for_without_a_gpu(tiny: Any) -> None:
    import torch

    require(not torch.cuda.is_available(), "this machine has a CUDA GPU")
    async with make_client(tiny.snapshot, device="cuda") as client:
        with pytest.raises(BackendUnavailable) as info:
            await client.infer(ask(jpeg(RED)))
        assert "sees no CUDA GPU" in info.value.message
        assert 'device = "cpu"' in (info.value.hint or "")


# ------------------------------------------------------------------ infer


@pytest.mark.anyio
async def test_infer_with_a_real_image(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        red = await client.infer(ask(jpeg(RED), max_tokens=16))
        assert red.backend == "transformers" and red.model == str(tiny.snapshot)
        assert isinstance(red.text, str) and red.text.strip()
        assert red.finish_reason == "length"
        assert red.usage.completion_tokens == 16
        assert red.usage.prompt_tokens is not None and red.usage.prompt_tokens > tiny.image_tokens
        assert red.usage.total_tokens == red.usage.prompt_tokens + 16
        again = await client.infer(ask(jpeg(RED), max_tokens=16))
        assert again.text == red.text  # greedy: repeatable
        blue = await client.infer(ask(jpeg(BLUE), max_tokens=16))
        assert blue.text != red.text  # the answer depends on the image


@pytest.mark.anyio
async def test_end_of_sequence_stop_strings_and_messages(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        image = jpeg(GREEN)
        base = await client.infer(ask(image, max_tokens=16))
        # bias the end-of-sequence token up: the answer ends at once
        eos = await client.infer(ask(image, extra={"sequence_bias": [[[tiny.eos_token_id], 100.0]]}))
        assert eos.text == "" and eos.finish_reason == "stop" and eos.usage.completion_tokens == 1
        # a stop string cuts the answer before it
        word = base.text[6:9]
        cut = await client.infer(ask(image, max_tokens=16, stop=(word,)))
        assert cut.finish_reason == "stop"
        assert cut.text == base.text[: base.text.find(word)]
        # OpenAI-style messages with a data: URL give the same prompt, so the same answer
        messages = (
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": image.data_url()}},
                    {"type": "text", "text": "Describe this image."},
                ],
            },
        )
        via_messages = await client.infer(Request(messages=messages, max_tokens=16))
        assert via_messages.text == base.text


@pytest.mark.anyio
async def test_bad_inputs_fail_clearly_and_the_client_stays_usable(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        broken = PreparedImage(
            data=b"\xff\xd8\xff\xe0 not really a jpeg", mime="image/jpeg", source="broken.jpg"
        )
        with pytest.raises(InputError) as info:
            await client.infer(ask(broken))
        assert "broken.jpg" in info.value.message
        with pytest.raises(BackendRejected) as rejected:
            await client.infer(ask(jpeg(RED), extra={"no_such_generate_option": 1}))
        assert "no_such_generate_option" in rejected.value.message
        remote = (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.jpg"}}]},
        )
        with pytest.raises(InputError):
            await client.infer(Request(messages=remote, max_tokens=4))
        ok = await client.infer(ask(jpeg(RED), max_tokens=4))
        assert ok.usage.completion_tokens == 4


@pytest.mark.anyio
async def test_sampling_with_a_seed_is_repeatable(tiny: Any) -> None:
    async with make_client(tiny.snapshot, seed=7) as client:
        a = await client.infer(ask(jpeg(RED), max_tokens=12, temperature=1.5))
        b = await client.infer(ask(jpeg(RED), max_tokens=12, temperature=1.5))
        assert a.text == b.text


# ------------------------------------------------------------------ stream


@pytest.mark.anyio
async def test_stream_yields_pieces_then_finish_and_usage(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        whole = await client.infer(ask(jpeg(WHITE), max_tokens=24))
        chunks = [c async for c in client.stream(ask(jpeg(WHITE), max_tokens=24))]
        texts = [c.text for c in chunks if c.text]
        assert len(texts) >= 3  # really incremental
        assert all(c.finish_reason is None for c in chunks[:-1])
        last = chunks[-1]
        assert last.finish_reason == "length"
        assert last.usage is not None and last.usage.completion_tokens == 24
        assert last.usage.prompt_tokens == whole.usage.prompt_tokens
        assert "".join(c.text for c in chunks) == whole.text
        assert {c.model for c in chunks} == {str(tiny.snapshot)}


@pytest.mark.anyio
async def test_stream_stop_string_and_early_exit(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        whole = await client.infer(ask(jpeg(BLUE), max_tokens=20))
        word = whole.text[10:13]
        chunks = [c async for c in client.stream(ask(jpeg(BLUE), max_tokens=20, stop=(word,)))]
        assert chunks[-1].finish_reason == "stop"
        assert "".join(c.text for c in chunks) == whole.text[: whole.text.find(word)]
        # leave a long stream after its first piece: the generation stops, the lock is freed
        start = time.monotonic()
        async with contextlib.aclosing(client.stream(ask(jpeg(BLUE), max_tokens=3000))) as stream:
            async for chunk in stream:
                assert chunk.text
                break
        st = state(client)
        assert st.running == 0 and st.cancelled == 1
        after = await client.infer(ask(jpeg(BLUE), max_tokens=4))
        assert after.usage.completion_tokens == 4
        assert time.monotonic() - start < 20


@pytest.mark.anyio
async def test_stream_idle_timeout(tiny: Any) -> None:
    import time as _time

    from transformers import LogitsProcessor, LogitsProcessorList

    class Stall(LogitsProcessor):  # the 4th token takes 1 s: a silence longer than the idle timeout
        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            self.calls += 1
            if self.calls == 4:
                _time.sleep(1.0)
            return scores

    async with make_client(tiny.snapshot, stream_idle_timeout=0.3) as client:
        await client.infer(ask(jpeg(RED), max_tokens=2))  # load first
        stalled = Request(
            prompt="Describe this image.",
            images=(jpeg(RED),),
            max_tokens=40,
            extra={"logits_processor": LogitsProcessorList([Stall()]), "min_new_tokens": 10},
        )
        with pytest.raises(BackendTimeout) as info:
            async for _ in client.stream(stalled):
                pass
        assert "stream_idle_timeout" in (info.value.hint or "")
        assert state(client).running == 0
        ok = await client.infer(ask(jpeg(RED), max_tokens=3))
        assert ok.usage.completion_tokens == 3


# ------------------------------------------------------------------ concurrency, cancellation, timeouts


@pytest.mark.anyio
async def test_four_concurrent_requests_are_serialised(tiny: Any) -> None:
    images = [jpeg(c) for c in (RED, GREEN, BLUE, WHITE)]
    async with make_client(tiny.snapshot) as client:
        alone = [(await client.infer(ask(im, max_tokens=40))).text for im in images]
        results: dict[int, str] = {}
        seen_waiting: list[float] = []
        seen_running: list[float] = []

        async def one(i: int) -> None:
            results[i] = (await client.infer(ask(images[i], max_tokens=40))).text

        async def watch() -> None:
            while len(results) < 4:
                report = await client.health()
                seen_waiting.append(report.metrics["waiting"])
                seen_running.append(report.metrics["running"])
                await anyio.sleep(0.002)

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            for i in range(4):
                tg.start_soon(one, i)
        assert [results[i] for i in range(4)] == alone  # all answered, none disturbed by another
        assert max(seen_running) == 1.0  # one generation at a time
        assert max(seen_waiting) >= 1.0  # the others queued on the lock
        assert (await client.health()).metrics["requests"] == 8.0


@pytest.mark.anyio
async def test_cancelling_an_inflight_generation(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        await client.infer(ask(jpeg(RED), max_tokens=2))  # load first
        start = time.monotonic()
        with anyio.move_on_after(0.3) as scope:
            await client.infer(ask(jpeg(RED), max_tokens=3000))
        assert scope.cancelled_caught
        stopped_after = time.monotonic() - start
        report = await client.health()
        assert report.metrics["cancelled"] == 1.0 and report.metrics["running"] == 0.0
        assert stopped_after < 10  # stopped within a token or so, not after 3000 tokens
        ok = await client.infer(ask(jpeg(GREEN), max_tokens=5))  # still usable
        assert ok.usage.completion_tokens == 5
    assert state_is_unloaded(client)


def state_is_unloaded(client: Client) -> bool:
    return not client._connections.contexts  # the client dropped its contexts on close


@pytest.mark.anyio
async def test_generation_timeout(tiny: Any) -> None:
    async with make_client(tiny.snapshot) as client:
        await client.infer(ask(jpeg(RED), max_tokens=2))
        with pytest.raises(BackendTimeout) as info:
            await client.infer(ask(jpeg(RED), max_tokens=3000, timeout=0.2))
        assert "0.2s" in info.value.message and "timeout" in (info.value.hint or "")
        # a timeout is retried (the default 4 tries): each try's generation was stopped, none runs on
        assert (await client.health()).metrics["cancelled"] == 4.0
        ok = await client.infer(ask(jpeg(RED), max_tokens=3))
        assert ok.usage.completion_tokens == 3


# ------------------------------------------------------------------ unload


@pytest.mark.anyio
async def test_close_unloads_the_model(tiny: Any) -> None:
    client = make_client(tiny.snapshot)
    async with client:
        await client.infer(ask(jpeg(RED), max_tokens=3))
        st = state(client)
        model_ref = weakref.ref(st.engine.model)
        processor_ref = weakref.ref(st.engine.processor)
    assert st.engine is None and st.closed
    gc.collect()
    assert model_ref() is None and processor_ref() is None
    with pytest.raises(ImageWorksError):
        await client.infer(ask(jpeg(RED), max_tokens=3))


@pytest.mark.anyio
async def test_close_during_a_generation_stops_it(tiny: Any) -> None:
    client = make_client(tiny.snapshot)
    outcome: list[BaseException] = []
    async with client:
        await client.infer(ask(jpeg(RED), max_tokens=2))
        st = state(client)

        async def long_one() -> None:
            try:
                await client.infer(ask(jpeg(RED), max_tokens=3000))
            except ImageWorksError as exc:
                outcome.append(exc)

        async with anyio.create_task_group() as tg:
            tg.start_soon(long_one)
            while not st.threads:  # the generation thread is running
                await anyio.sleep(0.01)
            start = time.monotonic()
            await client.aclose()  # stops the generation, waits for it, unloads
            closed_in = time.monotonic() - start
    assert st.engine is None
    assert closed_in < 10
    assert not st.threads
    # the stopped generation returned its short answer (or, had the close come first, a clear error)
    assert not outcome or "client is closing" in outcome[0].message


@pytest.mark.anyio
async def test_close_with_a_stream_left_open(tiny: Any) -> None:
    """A stream dropped without ``aclose()`` still holds its turn; closing the client must not hang."""
    client = make_client(tiny.snapshot)
    async with client:
        stream = client.stream(ask(jpeg(RED), max_tokens=3000))
        first = await stream.__anext__()
        assert first.text
        st = state(client)
        assert st.running == 1
        start = time.monotonic()
    assert time.monotonic() - start < 10
    assert st.engine is None and not st.threads
    await stream.aclose()  # what the event loop's finaliser would do later
    assert st.running == 0


# ------------------------------------------------------------------ command line


@pytest.fixture
def sample_copy(tmp_path: Path) -> Iterator[Path]:
    """A copy of the repository's sample images (never write into samples/)."""
    dest = tmp_path / "samples"
    dest.mkdir()
    for src in sorted((REPO / "samples").glob("*.jpg"))[:3]:
        shutil.copy2(src, dest / src.name)
    yield dest


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWORKS_")}
    env.update(
        IMAGEWORKS_CONFIG_FILE=str(tmp_path / "no-user-config.toml"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
    )
    return env


@pytest.mark.slow
def test_cli_describe_end_to_end(tiny: Any, sample_copy: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    argv = [
        sys.executable,
        "-m",
        "imageworks_core.cli",
        "describe",
        str(sample_copy),
        "--vlm-backend",
        "transformers",
        "--vlm-model",
        str(tiny.snapshot),
        "--max-tokens",
        "8",
        "--output",
        str(out),
        "--xmp",
        "sidecar",
        "--quiet",
    ]
    proc = subprocess.run(
        argv, cwd=tmp_path, env=_cli_env(tmp_path), capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    images = sorted(p.name for p in sample_copy.glob("*.jpg"))
    assert sorted(Path(r["image"]).name for r in rows) == images
    for row in rows:
        assert row["backend"] == "transformers"
        assert row["description"]
        assert not row.get("error")
    for name in images:
        assert (sample_copy / (Path(name).stem + ".xmp")).is_file() or (
            sample_copy / (name + ".xmp")
        ).is_file()
    assert not list((REPO / "samples").glob("*.xmp"))  # nothing written into the repository


# ------------------------------------------------------------------ the core's conformance suite

try:
    from imageworks_core.testing.conformance import BackendConformance
except ImportError:  # pragma: no cover - an older core without the suite
    BackendConformance = None  # type: ignore[assignment,misc]


def _tiny_snapshot() -> str:
    require(HAVE_TORCH, "torch and transformers are not installed")
    from servers.tiny_vlm import tiny_llava_info

    cache = Path(os.environ.get("IMAGEWORKS_TEST_CACHE", Path(tempfile.gettempdir()) / "imageworks-tests"))
    return str(tiny_llava_info(cache / "hf-home").snapshot)


if BackendConformance is not None:

    class TestTransformersConformance(BackendConformance):
        """The installed entry point, on the tiny model; no server, so no server faults to inject."""

        backend = "transformers"
        needs_server = False
        max_tokens = 8

        def make_client(self, plugin: Any, *, settings: Any = None, **kwargs: Any) -> Client:
            section = {"model": _tiny_snapshot(), **dict(settings or {})}
            return super().make_client(plugin, settings=section, **kwargs)
