"""Embedding (issue 20): errors a host can catch, images as bytes, proxies under ``trust_env``."""

from __future__ import annotations

import io
import logging
from typing import Any

import anyio
import anyio.to_thread
import pytest
from PIL import Image

from imageworks_core import BackendRejected, Client, InputError, Request

pytestmark = [pytest.mark.anyio, pytest.mark.filterwarnings("error::ResourceWarning")]
CHAT = "/v1/chat/completions"


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (1600, 1200), (10, 120, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _client(base_url: str, **kwargs: Any) -> Client:
    return Client(backend="openai", base_url=base_url, model="fake-vlm", trust_env=False, **kwargs)


def test_request_images_refuse_other_types_at_construction() -> None:
    with pytest.raises(InputError) as err:
        Request(prompt="x", images=[{"url": "http://x/y.jpg"}])
    assert "Request.images cannot hold a dict" in str(err.value) and err.value.hint
    assert Request(images=b"\xff\xd8").images == (b"\xff\xd8",)  # one image, not a tuple of ints


async def test_bytes_and_paths_in_request_images_are_prepared(faulty: Any, tmp_path: Any) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(_jpeg())
    async with _client(faulty.v1, max_pixels=100_000) as client:
        result = await client.infer(Request(prompt="id=b1", images=[_jpeg(), path]))
        assert result.ok
        chunks = [c async for c in client.stream(Request(prompt="id=b2", images=[_jpeg()]))]
        assert "".join(c.text for c in chunks)
        with pytest.raises(InputError):  # the caller's bad bytes are the caller's error, not a plugin's
            await client.infer(Request(prompt="id=b3", images=[b"not an image"]))
    assert {e["request_id"] for e in faulty.log(CHAT)} == {"b1", "b2"}


async def test_errors_from_infer_carry_their_attempts(faulty: Any) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "status", "status": 422}])
    async with _client(faulty.v1) as client:
        with pytest.raises(BackendRejected) as err:
            await client.infer(Request(prompt="id=a1"))
    [attempt] = err.value.attempts
    assert attempt.backend == "openai" and attempt.error_type == "BackendRejected"


async def test_a_retried_try_is_not_a_warning(faulty: Any, caplog: pytest.LogCaptureFixture) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "status", "status": 500, "times": 1}])
    caplog.set_level(logging.DEBUG, logger="imageworks")
    async with _client(faulty.v1) as client:
        result = await client.infer(Request(prompt="id=r1"))
    assert result.ok and len(result.attempts) == 2
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert any(r.name.startswith("imageworks.") for r in caplog.records)  # logged, lower


def test_library_logger_has_a_null_handler() -> None:
    import imageworks_core  # noqa: F401

    assert any(isinstance(h, logging.NullHandler) for h in logging.getLogger("imageworks").handlers)


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_trust_env_decides_whether_proxy_variables_apply(
    faulty: Any, monkeypatch: pytest.MonkeyPatch, transport: str, anyio_backend: str
) -> None:
    if transport == "aiohttp" and anyio_backend != "asyncio":
        pytest.skip("aiohttp runs under asyncio only")
    monkeypatch.setenv("HTTP_PROXY", faulty.base_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    unreachable = "http://imageworks-proxy-check.invalid/v1"  # resolvable only by the proxy
    for trust in (True, False):
        async with Client(backend="openai", base_url=unreachable, transport=transport, trust_env=trust) as c:
            report = await c.health()
        assert report.ready is trust, report
    assert len(faulty.log("/v1/models")) == 1  # only the trusting client went through the proxy


async def test_cancelled_infer_leaves_the_client_usable(faulty: Any) -> None:
    faulty.script([{"match": {"request_id": "slow"}, "fault": "delay", "delay_s": 5}])
    async with _client(faulty.v1) as client:
        with anyio.move_on_after(0.2):
            await client.infer(Request(prompt="id=slow"))
        assert (await client.infer(Request(prompt="id=after"))).ok


def test_the_documented_status_table_is_what_the_library_raises() -> None:
    """docs/embedding.md's error table: each status named there maps to the class in its row."""
    import re
    from pathlib import Path

    import imageworks_core
    from imageworks_core.http import error_from_response

    page = (Path(__file__).resolve().parents[1] / "docs" / "embedding.md").read_text()
    checked = []
    for row in page.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        name = re.match(r"`(\w+)`", cells[0]) if row.startswith("| `") else None
        if name is None or name.group(1) not in imageworks_core.__all__ or len(cells) != 3:
            continue
        numbers = [int(n) for n in re.findall(r"\*\*(\d{3})\*\*", cells[1])]
        if "every other 5xx" in cells[1]:
            numbers += [505, 507, 599]
        cls = getattr(imageworks_core, name.group(1))
        if not (isinstance(cls, type) and issubclass(cls, imageworks_core.ImageWorksError)):
            continue
        if "**400**-**499**" in cells[1]:
            numbers = [400, 401, 403, 404, 409, 413, 422, 499]
        for code in numbers:
            exc = error_from_response(
                code, {}, b'{"error": {"message": "x"}}', backend="b", url="http://h/v1"
            )
            assert type(exc) is cls, (code, type(exc).__name__, cls.__name__)
            assert exc.retryable is (cells[2] == "yes"), (code, cells[2])
            checked.append(code)
    assert {429, 500, 501, 502, 503, 504, 400, 422} <= set(checked)


async def test_hints_name_library_arguments_and_the_cli_shows_flags(tmp_path: Any) -> None:
    from cli_helpers import run_cli
    from servers._proc import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    async with Client(backend="openai", base_url=url, trust_env=False) as client:
        report = await client.health()
    assert not report.reachable and "Client(base_url=...)" in (report.hint or "")
    assert "--vlm" not in (report.hint or "")
    proc = await anyio.to_thread.run_sync(
        lambda: run_cli(tmp_path, "health", "--vlm-backend", "openai", "--vlm-base-url", url)
    )
    shown = proc.stdout + proc.stderr
    assert "--vlm-base-url URL" in shown and "Client(" not in shown, shown


@pytest.mark.about("wait_for_backend")
async def test_fallback_with_every_backend_busy_is_overloaded_with_the_soonest_retry_after() -> None:
    """A web app failing fast (``wait_for_backend=0``) can answer 503 + Retry-After."""
    from imageworks_core import BackendOverloaded
    from imageworks_core.testing import FakeBackend

    first, second = FakeBackend("first"), FakeBackend("second")
    first.always(BackendOverloaded("first is busy", retry_after=30, backend="first"))
    second.always(BackendOverloaded("second is busy", retry_after=5, backend="second"))
    async with Client(
        plugins=[first, second],
        backend="first",
        fallback=["second"],
        entry_points=False,
        trust_env=False,
        wait_for_backend=0,
    ) as client:
        with pytest.raises(BackendOverloaded) as err:
            await client.infer(Request(prompt="x"))
    assert err.value.retry_after == 5
    assert {a.backend for a in err.value.attempts} == {"first", "second"}


async def test_a_netrc_file_is_never_read_and_never_clashes_with_a_key(
    faulty: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, anyio_backend: str
) -> None:
    """trust_env means proxies and CA files on both transports; a ``.netrc`` login is not sent
    (httpx never sends one; aiohttp's own trust_env did, and crashed beside an API key)."""
    import base64

    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login photo password s3cret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    basic = "Basic " + base64.b64encode(b"photo:s3cret").decode()
    match = {"path": CHAT, "headers": {"Authorization": basic}}
    rule = {"match": match, "fault": "ok", "content": "via netrc"}
    faulty.script([rule])
    transports = ["aiohttp", "httpx"] if anyio_backend == "asyncio" else ["httpx"]
    for transport in transports:
        for key in (None, "k-123"):
            async with Client(
                backend="openai", base_url=faulty.v1, transport=transport, user_file=False, api_key=key
            ) as c:
                result = await c.infer(Request(prompt="a"))
            assert result.ok and result.text != "via netrc", (transport, key, result)
