"""The kit's one fake server, played two ways: over a socket (``FakeOpenAIServer``) and in-process
(``MockOpenAIServer``).  The same script must give the same answers, the same log and, through a
``Client``, the same errors."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import anyio
import pytest

from imageworks_core import (
    BackendOverloaded,
    BackendProtocolError,
    BackendTimeout,
    BackendUnavailable,
    Client,
    Request,
)
from imageworks_core.testing import FakeOpenAIServer, MockOpenAIServer, MockRequest
from imageworks_core.testing.fake_server import cut, drop, hang, ok, status, stream_error

CHAT = "/v1/chat/completions"
IMAGE = "data:image/png;base64,iVBORw0KGgo="
SCRIPT = [
    {"match": {"request_id": "busy"}, "fault": "status", "status": 429, "headers": {"Retry-After": "3"}},
    {"match": {"body_contains": "second"}, "skip": 1, "times": 1, "fault": "ok", "content": "skipped once"},
    {"match": {"path": "/v1/models"}, "fault": "echo_auth", "status": 403},
    {"match": {"stream": True, "model": "events"}, "fault": "sse_events", "events": [{"m": "{model}"}]},
]
BODIES: list[dict[str, Any]] = [
    {"model": "m", "messages": [{"role": "user", "content": "request_id=busy"}], "max_tokens": 4},
    {"model": "m", "messages": [{"role": "user", "content": "second"}], "max_tokens": 4},
    {"model": "m", "messages": [{"role": "user", "content": "second"}], "max_tokens": 4},
    {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}],
    },
    {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": IMAGE}}]}],
        "max_tokens": 9,
    },
    {"model": "events", "messages": [{"role": "user", "content": "x"}], "max_tokens": 4, "stream": True},
    {"model": "m", "messages": [{"role": "user", "content": "item=7"}], "max_tokens": 4, "stream": True},
]


def _plain(status_code: int, body: bytes) -> tuple[int, Any]:
    """The answer without what differs between runs (ids and times)."""
    text = body.decode()
    if text.startswith("data:"):
        events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
        return status_code, [e if e == "[DONE]" else _scrub(json.loads(e)) for e in events]
    return status_code, _scrub(json.loads(text))


def _scrub(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in ("id", "created")}
    return obj


def _over_socket(server: FakeOpenAIServer, method: str, path: str, body: Any) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        server.base_url + path, data=data, method=method, headers={"Authorization": "Bearer sk-x"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return _plain(resp.status, resp.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return _plain(exc.code, exc.read())


async def _in_process(server: MockOpenAIServer, method: str, path: str, body: Any) -> tuple[int, Any]:
    request = MockRequest(
        method,
        server.base_url + path,
        {"authorization": "Bearer sk-x"},
        b"" if body is None else json.dumps(body).encode(),
    )
    answer = await server.transport.handler(request)
    return _plain(answer.status, answer.body)


@pytest.fixture
def socket_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(echo_request_id=True) as server:
        yield server


@pytest.mark.anyio
async def test_the_same_script_gives_the_same_answers_and_log(socket_server: FakeOpenAIServer) -> None:
    mock = MockOpenAIServer(echo_request_id=True)
    calls = [("POST", CHAT, body) for body in BODIES] + [("GET", "/v1/models", None), ("GET", "/nope", None)]
    answers = {}
    for name, server in (("socket", socket_server), ("mock", mock)):
        server.script(SCRIPT)
        got = []
        for method, path, body in calls:
            if isinstance(server, FakeOpenAIServer):
                got.append(await anyio.to_thread.run_sync(_over_socket, server, method, path, body))
            else:
                got.append(await _in_process(server, method, path, body))
        answers[name] = got
    assert answers["socket"] == answers["mock"]
    statuses = [code for code, _ in answers["mock"]]
    assert statuses == [429, 200, 200, 400, 200, 200, 200, 403, 404]
    assert answers["mock"][2][1]["choices"][0]["message"]["content"] == "skipped once"
    assert "'max_tokens' is required" in answers["mock"][3][1]["error"]["message"]
    assert answers["mock"][5][1] == [{"m": "events"}, "[DONE]"]
    assert (
        "".join(
            e["choices"][0]["delta"].get("content", "")
            for e in answers["mock"][6][1][:-1]
            if e.get("choices")
        )
        == "[7] " + "A small test picture: a red square on a white ground."
    )
    assert "Bearer sk-x" in answers["mock"][7][1]["error"]["message"]

    def comparable(entries: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
        keys = (
            "path",
            "request_id",
            "model",
            "stream",
            "images",
            "mimes",
            "answer",
            "rule",
            "status",
            "completed",
        )
        return [tuple(e[k] for k in keys) for e in entries]

    assert comparable(socket_server.requests()) == comparable(mock.requests())
    assert [r["fired"] for r in mock.current_script()["rules"]] == [1, 1, 1, 1]


def _client(server: Any, timeout: float | None = None, **kw: Any) -> Client:
    section: dict[str, Any] = {"base_url": server.v1, "model": "m"}
    if timeout is not None:
        section["timeout"] = timeout  # a wait, shortened; attempts and policies keep their defaults
    overrides = {"backends": {"openai": section}}
    return Client(backend="openai", overrides=overrides, user_file=False, project_file=False, **kw)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("answer", "error", "words"),
    [
        (status(503, headers={"Retry-After": "2"}), BackendOverloaded, "injected 503"),
        (drop(), BackendUnavailable, ""),
        (hang(), BackendTimeout, "timed out"),
    ],
)
async def test_a_plugin_meets_the_same_errors_on_both(
    socket_server: FakeOpenAIServer, answer: dict[str, Any], error: type, words: str
) -> None:
    """One try of the ``openai`` backend's ``infer`` hook (no retry layer between), with a 0.5 s
    read timeout: the same error class from the socket server and from the in-process one."""
    mock = MockOpenAIServer()
    for server, kw in ((socket_server, {}), (mock, {"transport": mock.transport})):
        server.always(answer)
        async with _client(server, timeout=0.5, **kw) as c:
            infer = c.hook("openai", "infer")
            with pytest.raises(error) as exc_info:
                await infer(ctx=c.context("openai"), request=Request(prompt="hi", max_tokens=4))
        shown = str(exc_info.value)
        assert words in shown and str(urlsplit(server.base_url).hostname) in shown, shown


@pytest.mark.anyio
async def test_a_normal_answer_is_the_same_on_both(socket_server: FakeOpenAIServer) -> None:
    mock = MockOpenAIServer()
    texts = []
    for server, kw in ((socket_server, {}), (mock, {"transport": mock.transport})):
        server.always(ok(text="x y z", finish_reason="length"))
        async with _client(server, **kw) as c:
            result = await c.infer(Request(prompt="hi", max_tokens=4))
        texts.append((result.text, result.finish_reason, result.usage))
    assert texts[0] == texts[1] == (texts[0][0], "length", texts[0][2])
    assert texts[0][0] == "x y z"


@pytest.mark.anyio
async def test_a_cut_stream_breaks_off_in_process_too() -> None:
    mock = MockOpenAIServer()
    mock.always(cut(after=2))
    async with Client(
        backend="openai",
        overrides={"backends": {"openai": {"base_url": mock.v1, "model": "m"}}},
        user_file=False,
        project_file=False,
        transport=mock.transport,
    ) as c:
        texts = []
        with pytest.raises(BackendProtocolError, match="broke off"):
            async for chunk in c.stream(Request(prompt="hi", max_tokens=4)):
                texts.append(chunk.text)
    assert "".join(texts).startswith("A small")


@pytest.mark.anyio
async def test_in_process_another_host_is_not_listening() -> None:
    mock = MockOpenAIServer()
    mock.always(stream_error("nope"))
    request = MockRequest("GET", "http://elsewhere.test/health", {})
    with pytest.raises(ConnectionRefusedError, match=r"nothing listens at elsewhere\.test:80"):
        await mock.transport.handler(request)
    assert mock.requests() == []


def test_a_bad_script_is_refused_with_the_reason() -> None:
    mock = MockOpenAIServer()
    with pytest.raises(ValueError, match=r"rules\[0\]: fault must be one of"):
        mock.script([{"fault": "explode"}])
    with pytest.raises(ValueError, match=r"rules\[0\].match: an object with keys among"):
        mock.script([{"fault": "ok", "match": {"colour": "red"}}])
