"""The backend conformance suite, run against the core's own backends.

* ``FakeBackend`` in-process, its faults scripted on the plugin object;
* the core's ``openai`` backend (loaded from its entry point) against the
  kit's fake OpenAI-compatible server, its faults scripted on the server.

Plus tests of the kit itself: the fake server's answers and control API,
and that the suite fails a backend that breaks the contract.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import typing
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import pytest

from imageworks_core import (
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendSettings,
    BackendTimeout,
    BackendUnavailable,
    Capabilities,
    PreparedImage,
    Request,
)
from imageworks_core.testing import FakeBackend, FakeOpenAIServer
from imageworks_core.testing import fake_server as fs
from imageworks_core.testing.conformance import (
    BackendConformance,
    FakeBackendFaults,
    OnMockOpenAIServer,
    png_bytes,
)


class TestFakeBackendConformance(BackendConformance):
    """``FakeBackend`` honours the contract it lets other code test against."""

    backend = "fake"
    needs_server = False

    @pytest.fixture
    def backend_plugin(self) -> FakeBackend:
        return FakeBackend("fake", reply="A grey cat on a sofa.", capabilities=Capabilities(max_images=3))

    @pytest.fixture
    def faults(self, backend_plugin: FakeBackend) -> FakeBackendFaults:
        return FakeBackendFaults(backend_plugin)


class TestOpenAIBackendConformance(BackendConformance):
    """The core's generic ``openai`` backend against the kit's fake server (all defaults)."""

    backend = "openai"


class TestOpenAIBackendConformanceInProcess(OnMockOpenAIServer, BackendConformance):
    """The same suite on the in-process ``MockOpenAIServer``: the kit's two servers play alike."""

    backend = "openai"


# ---------------------------------------------------------------- the suite fails broken plugins


def test_the_suite_fails_a_backend_that_lies_about_itself() -> None:
    """Run one conformance test body directly on a broken plugin: it must fail."""
    import anyio

    from imageworks_core.hookspecs import hookimpl

    class Broken(FakeBackend):
        @hookimpl
        async def infer(self, ctx: Any, request: Request) -> Any:
            result = await FakeBackend.infer(self, ctx, request)
            return attrs.evolve(result, backend="someone-else", finish_reason=None)

    class Suite(BackendConformance):
        backend = "broken"
        needs_server = False

    suite = Suite()
    plugin = Broken("broken")
    image = PreparedImage.from_bytes(png_bytes())
    with pytest.raises(AssertionError):
        anyio.run(suite.test_infer_with_an_image, plugin, None, None, image)


def test_the_suite_fails_a_health_hook_with_a_bug() -> None:
    import anyio

    from imageworks_core.hookspecs import hookimpl

    class Raises(FakeBackend):
        @hookimpl
        async def health(self, ctx: Any) -> Any:
            raise KeyError("status")  # a bug, not a "down" report

    class Suite(BackendConformance):
        backend = "raises"
        needs_server = False

    fake = Raises("raises")
    with pytest.raises(KeyError):
        anyio.run(Suite().test_health_down_is_reported, fake, None, FakeBackendFaults(fake))


def test_the_suite_fails_settings_the_loader_cannot_check() -> None:
    @attrs.frozen(slots=True)
    class LooseSettings(BackendSettings):
        """Settings with a type the config loader does not know.

        Attributes:
            mode: One of two words.
        """

        mode: typing.Literal["a", "b"] = "a"

    class Suite(BackendConformance):
        backend = "loose"
        needs_server = False

    with pytest.raises(AssertionError, match="accepted wrong-typed values"):
        Suite().test_settings_reject_wrong_types(FakeBackend("loose", settings_cls=LooseSettings))


# ---------------------------------------------------------------- the fake server itself


def _post(url: str, body: Any) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:  # it holds the connection
            return exc.code, dict(exc.headers), exc.read()


def _chat(image: bool = True, **extra: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"type": "text", "text": "Describe it"}]
    if image:
        url = PreparedImage.from_bytes(png_bytes()).data_url()
        parts.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": parts}], **extra}


def test_fake_server_answers_and_logs(imageworks_openai_server: FakeOpenAIServer) -> None:
    server = imageworks_openai_server
    code, _, body = _post(server.v1 + "/chat/completions", _chat())
    assert code == 200
    answer = json.loads(body)
    assert answer["choices"][0]["message"]["content"] == fs.DEFAULT_REPLY
    assert answer["usage"]["completion_tokens"] > 0
    (entry,) = server.requests()
    assert entry["images"] == 1 and entry["mimes"] == ["image/png"] and entry["max_tokens"] == 16
    assert entry["json"]["messages"][0]["content"][0]["image_url"]["url"].endswith("chars>")
    assert server.in_flight() == 0


def test_fake_server_streams_sse_with_usage(imageworks_openai_server: FakeOpenAIServer) -> None:
    server = imageworks_openai_server
    server.configure(reply="I see {images} image(s) for {model}")
    code, headers, body = _post(
        server.v1 + "/chat/completions", _chat(stream=True, stream_options={"include_usage": True})
    )
    assert code == 200 and headers["Content-Type"].startswith("text/event-stream")
    events = [line[6:] for line in body.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    text = "".join(o["choices"][0]["delta"].get("content", "") for o in objs if o["choices"])
    assert text == "I see 1 image(s) for m"
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 6


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages"),
        (_chat(max_tokens=None), "max_tokens"),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}],
                    }
                ],
            },
            "data: URLs",
        ),
        (
            {
                "max_tokens": 5,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,%%"}}],
                    }
                ],
            },
            "invalid base64",
        ),
    ],
)
def test_fake_server_checks_requests_like_a_strict_server(
    imageworks_openai_server: FakeOpenAIServer, body: dict[str, Any], message: str
) -> None:
    body = {k: v for k, v in body.items() if v is not None}
    code, _, raw = _post(imageworks_openai_server.v1 + "/chat/completions", body)
    assert code == 400
    assert message in json.loads(raw)["error"]["message"]


def test_fake_server_scripted_answers_in_order(imageworks_openai_server: FakeOpenAIServer) -> None:
    server = imageworks_openai_server
    server.push(fs.status(503, "busy", headers={"Retry-After": "2"}), times=2)
    server.push(fs.ok(text="third"))
    url = server.v1 + "/chat/completions"
    first, second, third, fourth = (_post(url, _chat()) for _ in range(4))
    assert first[0] == second[0] == 503 and first[1]["Retry-After"] == "2" and first[2] == b"busy"
    assert json.loads(third[2])["choices"][0]["message"]["content"] == "third"
    assert json.loads(fourth[2])["choices"][0]["message"]["content"] == fs.DEFAULT_REPLY
    assert [e["status"] for e in server.requests()] == [503, 503, 200, 200]


def test_fake_server_health_probes_are_scriptable(imageworks_openai_server: FakeOpenAIServer) -> None:
    server = imageworks_openai_server
    with urllib.request.urlopen(server.base_url + "/health", timeout=5) as resp:
        assert resp.status == 200
    server.always(fs.status(503, {"status": "initializing"}), path="/health")
    with pytest.raises(urllib.error.HTTPError) as exc_info:
        urllib.request.urlopen(server.base_url + "/health", timeout=5)
    exc_info.value.close()  # it holds the connection
    assert exc_info.value.code == 503
    server.reset()
    assert server.requests() == []


def test_fake_server_stops_with_its_handle() -> None:
    server = FakeOpenAIServer().start()
    url = server.base_url
    assert FakeOpenAIServer.running(url + "/v1") is server
    server.stop()
    assert FakeOpenAIServer.running(url) is None
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=2)
    server.stop()  # idempotent


# ---------------------------------------------------------------- the fake server through the openai backend


def _client(base_url: str) -> Any:
    from imageworks_core import Client

    return Client(
        backend="openai",
        overrides={"backends": {"openai": {"base_url": base_url}}},
        user_file=False,
        project_file=False,
        allow=["openai"],
    )


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (fs.status(429, headers={"Retry-After": "3"}), BackendOverloaded),
        (fs.status(404, {"detail": "Model not found"}), BackendRejected),
        (fs.status(500, "Internal Server Error"), BackendProtocolError),
        (fs.malformed(), BackendProtocolError),
        (fs.drop(), BackendUnavailable),
    ],
)
async def test_openai_backend_maps_fake_server_faults(
    imageworks_openai_server: FakeOpenAIServer, answer: dict[str, Any], error: type[Exception]
) -> None:
    """The backend's own mapping of each fault, from its ``infer`` hook: what the dispatcher then
    does with the error (wait out a 429, retry a 500) is its own tests' business."""
    imageworks_openai_server.always(answer)
    async with _client(imageworks_openai_server.base_url) as client:
        infer = client.hook("openai", "infer")
        with pytest.raises(error):
            await infer(ctx=client.context("openai"), request=Request(prompt="hi", max_tokens=8))
    # no retry layer in between (a dropped connection is sent once more by the transport itself)
    assert len(imageworks_openai_server.requests("/v1/chat/completions")) <= 2


@pytest.mark.anyio
async def test_openai_backend_stream_cut_is_a_protocol_error(
    imageworks_openai_server: FakeOpenAIServer,
) -> None:
    imageworks_openai_server.always(fs.cut(after=2))
    async with _client(imageworks_openai_server.base_url) as client:
        with pytest.raises(BackendProtocolError):
            async for _ in client.stream(Request(prompt="hi", max_tokens=8)):
                pass


@pytest.mark.anyio
async def test_openai_backend_delay_and_timeout(imageworks_openai_server: FakeOpenAIServer) -> None:
    imageworks_openai_server.always(fs.ok(delay=2.0))  # every try (a timeout is retried)
    async with _client(imageworks_openai_server.base_url) as client:
        with pytest.raises(BackendTimeout):
            await client.infer(Request(prompt="hi", max_tokens=8, timeout=0.3))


def test_a_subclass_is_collected_outside_this_repo_and_known_failures_are_xfail(tmp_path: Path) -> None:
    """A plugin author's test module: only the subclass, nothing else; run by pytest as its own project."""
    (tmp_path / "test_mine.py").write_text(
        textwrap.dedent(
            """
            import attrs
            from imageworks_core.hookspecs import hookimpl
            from imageworks_core.testing import FakeBackend
            from imageworks_core.testing.conformance import BackendConformance

            class Liar(FakeBackend):
                @hookimpl
                async def infer(self, ctx, request):
                    result = await FakeBackend.infer(self, ctx, request)
                    return attrs.evolve(result, backend="someone-else")

            class TestLiar(BackendConformance):
                backend = "liar"
                needs_server = False
                plugin = Liar("liar")
                known_failures = {"test_infer_text_only": "reported upstream"}
            """
        )
    )
    selected = "test_infer_text_only or test_infer_with_an_image or test_backend_info_is_complete"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", selected, "test_mine.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = proc.stdout.strip().splitlines()[-1]
    assert "2 failed" in summary and "1 passed" in summary and "2 xfailed" in summary, proc.stdout[-3000:]
