"""The public API: __all__, lazy imports, the async client on asyncio and trio, serialisation."""

from __future__ import annotations

import subprocess
import sys

import anyio
import pytest

import imageworks_core
from imageworks_core import (
    BackendRejected,
    BackendUnavailable,
    Chunk,
    Client,
    HealthReport,
    PreparedImage,
    Request,
    Result,
    Usage,
    converter,
)
from imageworks_core.serialize import from_json_dict, to_json_dict
from imageworks_core.testing import Delay, FakeBackend


def _jpeg() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 80, 40)).save(buf, "JPEG")
    return buf.getvalue()


JPEG = _jpeg()


def test_all_is_sorted_and_complete() -> None:
    assert imageworks_core.__all__ == sorted(imageworks_core.__all__)
    public = {n for n in dir(imageworks_core) if not n.startswith("_")}
    assert public == set(imageworks_core.__all__)
    for name in imageworks_core.__all__:
        assert getattr(imageworks_core, name) is not None


def test_import_is_light() -> None:
    code = (
        "import sys, imageworks_core; "
        "heavy = [m for m in ('PIL', 'aiohttp', 'httpx', 'rich', 'cattrs', 'anyio') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def _client(*plugins: FakeBackend, **kw) -> Client:
    return Client(
        plugins=plugins,
        entry_points=False,
        user_file=False,
        project_file=False,
        backend=plugins[0].name,
        **kw,
    )


@pytest.mark.anyio
async def test_infer_stream_health_map(anyio_backend: str) -> None:
    fake = FakeBackend(reply="a grey cat")
    async with _client(fake) as client:
        result = await client.infer(Request(prompt="hi", images=(PreparedImage.from_bytes(JPEG),)))
        assert (result.text, result.backend, result.ok) == ("a grey cat", "fake", True)
        assert result.attempts[0].backend == "fake" and result.latency >= 0
        chunks = [c async for c in client.stream(Request(prompt="hi"))]
        assert "".join(c.text for c in chunks) == "a grey cat"
        assert chunks[-1].finish_reason == "stop" and chunks[-1].usage is not None
        report = await client.health()
        assert isinstance(report, HealthReport) and report.ready
        async with client.map([JPEG, PreparedImage.from_bytes(JPEG)], prompt="p") as results:
            got = [r async for r in results]
        assert len(got) == 2 and all(r.ok for r in got)
        assert {r.id for r in got} == {"#0", "#1"}


@pytest.mark.anyio
async def test_infer_raises_the_final_error_and_map_yields_it(anyio_backend: str) -> None:
    fake = FakeBackend()
    fake.script(BackendRejected("bad request", backend="fake"))
    async with _client(fake) as client:
        with pytest.raises(BackendRejected):
            await client.infer(Request(prompt="x"))
        fake.script(BackendRejected("bad", backend="fake"))
        async with client.map([Request(prompt="a", id="a"), Request(prompt="b", id="b")], ordered=True) as rs:
            got = [r async for r in rs]
        assert [r.ok for r in got] == [False, True]
        assert isinstance(got[0].error, BackendRejected)


@pytest.mark.anyio
async def test_client_is_closed_after_exit(anyio_backend: str) -> None:
    fake = FakeBackend(delay=0.0)
    client = _client(fake)
    async with client:
        await client.infer(Request(prompt="x"))
    with pytest.raises(imageworks_core.ImageWorksError, match="closed"):
        await client.infer(Request(prompt="x", backend="fake"))


@pytest.mark.anyio
async def test_cancelling_an_infer_is_clean(anyio_backend: str) -> None:
    fake = FakeBackend()
    fake.script(Delay(30))
    async with _client(fake) as client:
        with anyio.move_on_after(0.2) as scope:
            await client.infer(Request(prompt="slow"))
        assert scope.cancelled_caught
        assert (await client.infer(Request(prompt="fast"))).ok


def test_serialisation_round_trip() -> None:
    err = BackendUnavailable(
        "cannot connect", backend="vllm", url="http://u:p@h:8000/v1?k=1", hint="start it"
    )
    result = Result(text="t", backend="vllm", model="m", usage=Usage(1, 2, 3), error=err, item=object())
    data = to_json_dict(result)
    assert "item" not in data
    assert data["error"]["type"] == "BackendUnavailable" and data["error"]["retryable"] is True
    assert "u:p" not in str(data)  # credentials never serialised
    back = from_json_dict(data, Result)
    assert isinstance(back.error, BackendUnavailable) and back.error.hint == "start it"
    assert back.usage == Usage(1, 2, 3)
    req = Request(prompt="p", images=(PreparedImage.from_bytes(JPEG),), extra={"top_k": 3})
    assert from_json_dict(to_json_dict(req), Request) == req
    chunk = Chunk(text="x", usage=Usage(1, 1, 2))
    assert converter.structure(converter.unstructure(chunk), Chunk) == chunk
