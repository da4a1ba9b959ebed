"""``backend = "auto"``: the first healthy backend wins and is logged; none healthy is a clear error."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require
from servers._proc import free_port

from imageworks_core import BackendUnavailable, Client, Request
from imageworks_core.auto import DEFAULT_ORDER, candidates, choose_backend
from imageworks_core.backends import openai as openai_module
from imageworks_core.backends.openai import OpenAIBackend
from imageworks_core.testing import FakeBackend

HAVE_TRANSFORMERS = all(
    importlib.util.find_spec(m) is not None
    for m in ("torch", "transformers", "imageworks_backend_transformers")
)
REPO = Path(__file__).resolve().parents[1]


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    @property
    def text(self) -> str:
        return "\n".join(r.getMessage() for r in self.records)


@pytest.fixture
def auto_log() -> Iterator[Records]:
    """What the ``imageworks.auto`` logger said (whatever the CLI's logging setup did to propagation)."""
    handler = Records()
    logger = logging.getLogger("imageworks.auto")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    require(HAVE_TRANSFORMERS, "torch, transformers and imageworks-backend-transformers are needed")
    from servers.tiny_vlm import tiny_llava_info

    cache = Path(os.environ.get("IMAGEWORKS_TEST_CACHE", Path(tempfile.gettempdir()) / "imageworks-tests"))
    return tiny_llava_info(cache / "hf-home").snapshot


def client_with(*plugins: Any, fallback: tuple[str, ...] | None = None, **overrides: Any) -> Client:
    return Client(
        plugins=plugins,
        entry_points=False,
        backend="auto",
        fallback=fallback,
        overrides=overrides,
        user_file=False,
        project_file=False,
    )


def transformers_plugin() -> Any:
    from imageworks_backend_transformers import TransformersBackend

    return TransformersBackend()


# ------------------------------------------------------------------ choosing


@pytest.mark.anyio
async def test_picks_the_first_healthy_backend_in_the_default_order(auto_log: Records) -> None:
    vllm = FakeBackend("vllm", healthy=False)
    lmdeploy = FakeBackend("lmdeploy", healthy=True, reply="from lmdeploy")
    openai = FakeBackend("openai", healthy=True, reply="from openai")
    async with client_with(openai, lmdeploy, vllm) as client:  # registration order does not matter
        assert candidates(client) == ["vllm", "lmdeploy", "openai"]  # installed ones of DEFAULT_ORDER
        assert await choose_backend(client) == "lmdeploy"
        assert client.settings.backend == "lmdeploy"
        result = await client.infer(Request(prompt="hi"))
        assert result.text == "from lmdeploy" and result.backend == "lmdeploy"
    assert not openai.calls  # checked only up to the first healthy one
    assert [r.levelno for r in auto_log.records] == [logging.WARNING]
    assert "using lmdeploy" in auto_log.text
    assert "skipped vllm: down" in auto_log.text and "fake backend scripted as down" in auto_log.text


@pytest.mark.anyio
async def test_first_one_healthy_says_so(auto_log: Records) -> None:
    async with client_with(FakeBackend("vllm"), FakeBackend("triton")) as client:
        assert await choose_backend(client) == "vllm"
    assert "using vllm" in auto_log.text and "first healthy one of vllm, triton" in auto_log.text


@pytest.mark.anyio
async def test_fallback_setting_is_the_order(auto_log: Records) -> None:
    a, b, c = FakeBackend("a", healthy=False), FakeBackend("b"), FakeBackend("c")
    async with client_with(a, b, c, fallback=("a", "c", "b")) as client:
        assert candidates(client) == ["a", "c", "b"]
        assert await choose_backend(client) == "c"
        assert client.backend_order() == ["c", "a", "b"]  # the fallbacks stay behind it
    assert "skipped a" in auto_log.text


@pytest.mark.anyio
async def test_none_healthy_is_a_clear_error() -> None:
    vllm = FakeBackend("vllm", healthy=False)
    triton = FakeBackend("triton", healthy=False)
    async with client_with(vllm, triton) as client:
        with pytest.raises(BackendUnavailable) as info:
            await choose_backend(client)
        assert client.settings.backend == "auto"  # nothing was switched
    message = info.value.message
    assert "none of vllm, triton is usable" in message
    assert "  vllm: down at" in message and "  triton: down at" in message
    assert info.value.hint and "vllm: fake.healthy = True" in info.value.hint


@pytest.mark.anyio
async def test_nothing_installed_to_choose_from() -> None:
    async with client_with(FakeBackend("custom")) as client:
        assert candidates(client) == []
        with pytest.raises(BackendUnavailable, match="no backend is installed"):
            await choose_backend(client)


def test_default_order_keeps_vllm_first_and_the_default_unchanged() -> None:
    assert DEFAULT_ORDER[0] == "vllm"
    client = Client(plugins=[FakeBackend("vllm")], entry_points=False, user_file=False, project_file=False)
    assert client.settings.backend == "vllm"  # auto is opt-in


# ------------------------------------------------------------------ with the real in-process backend


@pytest.mark.anyio
async def test_transformers_comes_last_and_is_used_when_its_model_is_local(
    tiny_model: Path, auto_log: Records
) -> None:
    vllm, lmdeploy = FakeBackend("vllm", healthy=False), FakeBackend("lmdeploy", healthy=False)
    backends = {"transformers": {"model": str(tiny_model)}}
    async with client_with(transformers_plugin(), vllm, lmdeploy, backends=backends) as client:
        assert candidates(client) == ["vllm", "lmdeploy", "transformers"]
        assert await choose_backend(client) == "transformers"
        result = await client.infer(Request(prompt="Describe.", max_tokens=4))
        assert result.backend == "transformers" and result.usage.completion_tokens == 4
    assert "using transformers" in auto_log.text
    assert "skipped vllm" in auto_log.text and "skipped lmdeploy" in auto_log.text


@pytest.mark.anyio
async def test_a_healthy_server_wins_over_transformers(tiny_model: Path) -> None:
    backends = {"transformers": {"model": str(tiny_model)}}
    async with client_with(transformers_plugin(), FakeBackend("openai"), backends=backends) as client:
        assert await choose_backend(client) == "openai"
        assert client.context("transformers").state.get("transformers") is None  # never even checked


@pytest.mark.anyio
async def test_transformers_is_skipped_when_its_model_would_be_downloaded(
    tiny_model: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    backends = {"transformers": {"model": "someone/not-downloaded-vlm"}}
    async with client_with(
        transformers_plugin(), FakeBackend("vllm", healthy=False), backends=backends
    ) as client:
        report = await client.health("transformers")
        assert report.ready and report.metrics["model_local"] == 0.0  # usable, but only after a download
        with pytest.raises(BackendUnavailable) as info:
            await choose_backend(client)
    assert "transformers: someone/not-downloaded-vlm is not on local disk" in info.value.message
    assert "vllm: down" in info.value.message


# ------------------------------------------------------------------ the command line


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_cli_describe_with_backend_auto(tiny_model: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    src = sorted((REPO / "samples").glob("*.jpg"))[0]
    shutil.copy2(src, images / src.name)
    dead = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGEWORKS_")}
    env.update(
        IMAGEWORKS_CONFIG_FILE=str(tmp_path / "none.toml"),
        IMAGEWORKS_BACKENDS__TRANSFORMERS__MODEL=str(tiny_model),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    for name in ("VLLM", "LMDEPLOY", "TRITON", "OPENAI"):
        env[f"IMAGEWORKS_BACKENDS__{name}__BASE_URL"] = dead
    out = tmp_path / "results.jsonl"
    argv = [sys.executable, "-m", "imageworks_core.cli", "describe", str(images), "--vlm-backend", "auto"]
    argv += ["--max-tokens", "6", "--output", str(out), "--xmp", "none", "--no-json-sidecar", "--quiet"]
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "backend auto: using transformers" in proc.stderr
    assert "skipped vllm" in proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["backend"] for r in rows] == ["transformers"]


# ------------------------------------------------------------------ local servers at their default URLs


@pytest.fixture
def local_presets(monkeypatch: pytest.MonkeyPatch, faulty: Any) -> dict[str, str]:
    """Nothing listens at Ollama's and LM Studio's URLs; llama.cpp's is the fault-injecting server."""

    urls = {
        "ollama": f"http://127.0.0.1:{free_port()}/v1",
        "llamacpp": faulty.v1,
        "lmstudio": f"http://127.0.0.1:{free_port()}/v1",
    }
    for name, url in urls.items():
        monkeypatch.setitem(openai_module.PRESETS, name, (url, None))
    return urls


def openai_client(**overrides: Any) -> Client:
    return client_with(FakeBackend("vllm", healthy=False), OpenAIBackend(), **overrides)


@pytest.mark.anyio
async def test_an_unconfigured_openai_backend_is_looked_for_at_each_local_server(
    local_presets: dict[str, str], auto_log: Records, faulty: Any
) -> None:
    async with openai_client() as client:
        assert await choose_backend(client) == "openai"
        assert client.settings.backend_settings("openai").base_url == local_presets["llamacpp"]
        assert client.settings_sources()["backends.openai.preset"] == "code"  # chosen, and said where from
        result = await client.infer(Request(prompt="hi"))
        assert result.backend == "openai" and result.text
    said = auto_log.text
    assert "using openai (preset llamacpp)" in said
    assert "skipped vllm" in said and "skipped openai: down" in said
    assert "skipped openai (preset ollama): down" in said
    assert "lmstudio" not in said  # tried in order, up to the first that answers
    assert faulty.log()[-1]["path"] == "/v1/chat/completions"


@pytest.mark.anyio
async def test_a_configured_openai_url_is_not_second_guessed(local_presets: dict[str, str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    async with openai_client(backends={"openai": {"base_url": dead}}) as client:
        with pytest.raises(BackendUnavailable) as info:
            await choose_backend(client)
        assert client.settings.backend == "auto"
    assert "preset" not in info.value.message  # only the URL the user gave


@pytest.mark.anyio
async def test_nothing_at_any_local_url_lists_each_and_one_hint_each(
    local_presets: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(openai_module.PRESETS, "llamacpp", (f"http://127.0.0.1:{free_port()}/v1", None))
    async with openai_client() as client:
        with pytest.raises(BackendUnavailable) as info:
            await choose_backend(client)
        assert client.settings.backend == "auto" and client.settings.backend_settings("openai").preset is None
    message, hint = info.value.message, info.value.hint or ""
    presets = [f"openai (preset {p})" for p in ("ollama", "llamacpp", "lmstudio")]
    for label in ("vllm", "openai", *presets):
        assert f"\n  {label}: down at" in message
    assert hint.count("openai:") == 1 and "ollama serve" in hint  # the launch lines once, not once per URL
