"""The LMDeploy backend against a real OpenAI-compatible VLM server (``transformers serve``).

LMDeploy itself needs a GPU; the ``hf_server`` fixture is a real server written
by others that speaks the same protocol, so this proves the plugin's requests
and answer handling work end to end (health degrades gracefully: no JSON
``/health`` vocabulary, no ``/metrics``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import anyio
import pytest
from PIL import Image
from servers.recording_proxy import recording_proxy

from imageworks_backend_lmdeploy import LmdeploySettings
from imageworks_core import BackendRejected, Client, PreparedImage, Request

pytestmark = [pytest.mark.anyio, pytest.mark.server]

MAX_TOKENS = 12


def jpeg(color: tuple[int, int, int], size: tuple[int, int] = (96, 64)) -> bytes:
    img = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):  # a little structure, not a flat field
        for y in range(size[1]):
            img.putpixel((x, y), (255 - color[0], 255 - color[1], 255 - color[2]))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def request(color: tuple[int, int, int] = (200, 40, 40), **kw: Any) -> Request:
    return Request(
        prompt="Describe the colours in this image.",
        images=(PreparedImage.from_bytes(jpeg(color)),),
        max_tokens=MAX_TOKENS,
        **kw,
    )


def client_for(server: Any, **keys: Any) -> Client:
    return Client(
        backend="lmdeploy",
        overrides={"max_tokens": MAX_TOKENS, "backends": {"lmdeploy": {"base_url": server.base_url, **keys}}},
        user_file=False,
        project_file=False,
        allow=["lmdeploy"],
    )


async def test_health(hf_server: Any) -> None:
    async with client_for(hf_server) as client:
        report = await client.health()
    assert report.reachable and report.ready, report
    assert hf_server.model_id in report.models
    assert report.version is None
    assert report.metrics == {}  # no /metrics on this server: no figures, no error
    assert report.latency > 0
    # not an LMDeploy server: said in the detail, but still ready
    assert "owned_by" in (report.detail or "")


async def test_describe_a_real_jpeg(hf_server: Any) -> None:
    async with client_for(hf_server, max_pixels=401408, min_pixels=3136) as client:
        assert isinstance(client.context("lmdeploy").settings, LmdeploySettings)
        result = await client.infer(request())
    assert result.ok
    assert result.text.strip()
    assert result.backend == "lmdeploy"
    assert result.model.startswith(hf_server.model_id)  # served back as "<id>@main"
    assert result.usage.prompt_tokens and result.usage.prompt_tokens > 16  # 16 image tokens + text
    assert result.usage.completion_tokens == MAX_TOKENS
    assert result.finish_reason == "length"  # truncated, with text: a normal result


async def test_stream_a_real_jpeg_matches_infer(hf_server: Any) -> None:
    async with (
        recording_proxy(hf_server.base_url) as server,
        client_for(hf_server, base_url=server.url) as client,
    ):
        whole = await client.infer(request())
        chunks = [c async for c in client.stream(request())]
    text = "".join(c.text for c in chunks)
    assert text == whole.text  # greedy model: the same answer either way
    # really incremental: each text event the server sent is one chunk, as it came (the
    # server decides how many: it joins the tokens of a reader that fell behind)
    assert [c.text for c in chunks if c.text] == server.stream_texts() != []
    assert chunks[-1].finish_reason == "length"
    assert any(c.usage and c.usage.completion_tokens == MAX_TOKENS for c in chunks)


async def test_unknown_model_is_a_clear_rejection(hf_server: Any) -> None:
    async with client_for(hf_server, model="no/such-model") as client:
        with pytest.raises(BackendRejected) as info:
            await client.infer(request())
        with pytest.raises(BackendRejected):
            _ = [c async for c in client.stream(request())]
        # the client stays usable afterwards
        report = await client.health()
    err = info.value
    assert err.status == 400
    assert err.backend == "lmdeploy"
    assert "no/such-model" in err.message
    assert "/v1/chat/completions" in err.message
    assert report.ready
    async with client_for(hf_server) as client:  # the server is fine for the right model
        assert (await client.infer(request())).ok


async def test_sixteen_concurrent_requests_all_succeed(hf_server: Any) -> None:
    colours = [((i * 53) % 256, (i * 97) % 256, (i * 31) % 256) for i in range(16)]
    results: dict[int, Any] = {}
    async with client_for(hf_server, concurrency=16) as client:

        async def one(i: int) -> None:
            results[i] = await client.infer(request(colours[i], id=f"item-{i}"))

        async with anyio.create_task_group() as tg:
            for i in range(16):
                tg.start_soon(one, i)
    assert sorted(results) == list(range(16))
    assert all(r.ok and r.text.strip() for r in results.values())
    assert all(r.id == f"item-{i}" for i, r in results.items())
    assert len({r.text for r in results.values()}) > 1  # different images, different answers


async def test_legacy_color_narrator_config_processes_images(hf_server: Any, tmp_path: Path) -> None:
    """The seed's acceptance: ``vlm_backend = "lmdeploy"`` in ``[tool.imageworks.color_narrator]``."""
    (tmp_path / "pyproject.toml").write_text(
        "[tool.imageworks.color_narrator]\n"
        'vlm_backend = "lmdeploy"\n'
        f'vlm_base_url = "{hf_server.base_url}/v1"\n'
        f"vlm_max_tokens = {MAX_TOKENS}\n"
        "vlm_timeout = 60\n"
        "vlm_lmdeploy_max_pixels = 401408\n"
        "output_dir = 'not ours: Colour Narrator keeps its own keys'\n"
    )
    paths = []
    for i, colour in enumerate([(220, 30, 30), (30, 200, 30), (30, 30, 220), (240, 240, 20)]):
        path = tmp_path / f"photo-{i}.jpg"
        path.write_bytes(jpeg(colour, (320, 240)))
        paths.append(path)

    client = Client.from_config(cwd=tmp_path, user_file=False)
    settings = client.settings
    assert settings.backend == "lmdeploy"
    assert settings.max_tokens == MAX_TOKENS
    lm = settings.backends["lmdeploy"]
    assert lm.base_url == f"{hf_server.base_url}/v1"
    assert lm.timeout == 60.0
    assert isinstance(lm, LmdeploySettings) and lm.max_pixels == 401408
    results = []
    async with client, client.map(paths, prompt="Describe the colours in this image.") as stream:
        async for result in stream:
            results.append(result)
    assert len(results) == len(paths)
    assert all(r.ok for r in results), [r.error for r in results]
    assert {r.id for r in results} == {str(p) for p in paths}
    assert all(r.backend == "lmdeploy" and r.text.strip() for r in results)
