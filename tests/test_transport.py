"""The transport seam against a real server: httpx (asyncio and trio) and aiohttp (asyncio).

Each test runs every transport the running event loop can use against the
fault-injecting server, then checks what came back: statuses and bodies
passed through untouched, connection failures and timeouts turned into the
error tree with the URL named, and every error body shape of PROTOCOLS.md
turned into a readable message.
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
import sniffio
from conftest import require
from servers._proc import free_port, read_http_request

from imageworks_core.errors import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    BackendTimeout,
    BackendUnavailable,
)
from imageworks_core.http import HttpClient, error_from_response, extract_error_message, iter_sse_data
from imageworks_core.transport import Timeouts, Transport, open_transport
from imageworks_core.transport_aiohttp import AiohttpTransport
from imageworks_core.transport_httpx import HttpxTransport

pytestmark = [pytest.mark.anyio, pytest.mark.server]

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}


#: Every transport each event loop can use (aiohttp is asyncio-only).
TRANSPORTS = pytest.mark.parametrize(
    ("anyio_backend", "kind"),
    [("asyncio", "httpx"), ("asyncio", "aiohttp"), ("trio", "httpx")],
    ids=["asyncio-httpx", "asyncio-aiohttp", "trio-httpx"],
)


def new_transport(kind: str) -> Transport:
    if kind == "httpx":
        return HttpxTransport(max_connections=4)
    return AiohttpTransport(max_connections=4)


@pytest.fixture
async def transport(kind: str) -> AsyncIterator[Transport]:
    t = new_transport(kind)
    try:
        yield t
    finally:
        await t.aclose()


def http(transport: Transport, base_url: str, **timeouts: float) -> HttpClient:
    return HttpClient(
        transport,
        backend="testbackend",
        base_url=base_url,
        headers={},
        timeouts=Timeouts(**{"connect": 2.0, "read": 10.0, "idle": 10.0, **timeouts}),
        hint="start the test server",
    )


def chat_body(rid: str, *, stream: bool = False) -> bytes:
    body: dict[str, Any] = {
        "model": "fake-vlm",
        "messages": [{"role": "user", "content": f"item={rid}"}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return json.dumps(body).encode()


# ------------------------------------------------------------------ passthrough


@TRANSPORTS
async def test_status_headers_and_body_pass_through(faulty: Any, transport: Transport) -> None:
    faulty.script(
        [
            {
                "match": {"path": "/teapot"},
                "fault": "status",
                "status": 418,
                "body": "I'm a teapot\nsecond line",
                "headers": {"X-Custom": "yes"},
            },
            {
                "match": {"path": "/json"},
                "fault": "status",
                "status": 500,
                "body": {"error": {"message": "b"}},
            },
        ]
    )
    t = Timeouts(connect=2, read=10, idle=10)
    resp = await transport.request("GET", faulty.base_url + "/teapot", headers={}, body=None, timeouts=t)
    assert resp.status == 418
    assert resp.headers["x-custom"] == "yes"
    assert resp.headers["content-type"].startswith("text/plain")
    assert resp.body == b"I'm a teapot\nsecond line"
    resp = await transport.request("GET", faulty.base_url + "/json", headers={}, body=None, timeouts=t)
    assert resp.status == 500
    assert json.loads(resp.body) == {"error": {"message": "b"}}
    resp = await transport.request(
        "POST",
        faulty.v1 + "/chat/completions",
        headers={**JSON, "X-Request-Id": "hdr-1"},
        body=chat_body("x"),
        timeouts=t,
    )
    assert resp.status == 200
    answer = json.loads(resp.body)
    assert answer["choices"][0]["message"]["content"] == "[hdr-1] A grey cat on a sofa."
    assert resp.headers["x-request-id"] == "hdr-1"
    [entry] = faulty.log(CHAT)
    assert entry["request_id"] == "hdr-1" and entry["method"] == "POST" and entry["model"] == "fake-vlm"


@TRANSPORTS
async def test_many_concurrent_requests_share_the_pool(faulty: Any, transport: Transport) -> None:
    client = http(transport, faulty.v1)
    results: dict[int, Any] = {}

    async def one(i: int) -> None:
        results[i] = await client.post_json("chat/completions", chat_body(str(i)))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for i in range(40):  # 10x the pool size
                tg.start_soon(one, i)
    assert {i: r["choices"][0]["message"]["content"] for i, r in results.items()} == {
        i: f"[{i}] A grey cat on a sofa." for i in range(40)
    }
    assert len(faulty.log(CHAT)) == 40


# ------------------------------------------------------------------ connection failures and timeouts


@TRANSPORTS
async def test_connect_refused_is_unavailable_with_the_url(transport: Transport) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1/models"
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailable) as info:
        await transport.request("GET", url, headers={}, body=None, timeouts=Timeouts(connect=2, read=5))
    assert time.monotonic() - t0 < 2.0
    assert info.value.url == url
    assert url in str(info.value)
    assert "ssl:" not in str(info.value) and "Cannot connect to host" not in str(info.value)  # said once
    # through the backend's HttpClient: backend name, URL, both likely causes and the hint
    base = url.removesuffix("/models")
    with pytest.raises(BackendUnavailable) as info2:
        await http(transport, base).get_json("models")
    text = str(info2.value)
    assert "testbackend" in text and url in text and "down or still loading" in text
    assert info2.value.hint == "start the test server"
    with pytest.raises(BackendUnavailable):
        async with transport.stream("GET", url, headers={}, body=None, timeouts=Timeouts(connect=2)):
            pass


@TRANSPORTS
async def test_https_to_a_plain_http_server_says_to_use_http(faulty: Any, transport: Transport) -> None:
    url = faulty.base_url.replace("http://", "https://") + "/health"
    with pytest.raises(BackendUnavailable) as info:
        await transport.request("GET", url, headers={}, body=None, timeouts=Timeouts(connect=5, read=5))
    assert "plain HTTP on this port: use an http:// URL" in str(info.value), info.value


@TRANSPORTS
async def test_read_timeout(faulty: Any, transport: Transport) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "delay", "delay_s": 3}])
    t0 = time.monotonic()
    with pytest.raises(BackendTimeout) as info:
        await transport.request(
            "POST",
            faulty.v1 + "/chat/completions",
            headers=JSON,
            body=chat_body("1"),
            timeouts=Timeouts(read=0.3),
        )
    assert time.monotonic() - t0 < 2.0
    assert faulty.base_url in str(info.value)
    # a per-call timeout through HttpClient overrides the default
    client = http(transport, faulty.v1, read=30.0)
    t0 = time.monotonic()
    with pytest.raises(BackendTimeout) as info2:
        await client.post_json("chat/completions", chat_body("2"), timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    assert "testbackend" in str(info2.value)


@TRANSPORTS
async def test_stream_lines_and_idle_timeout(faulty: Any, transport: Transport) -> None:
    client = http(transport, faulty.v1, read=30.0, idle=0.4)
    async with client.stream("POST", "chat/completions", body=chat_body("s1", stream=True)) as resp:
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = [e async for e in iter_sse_data(resp, backend="testbackend", url=faulty.v1)]
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e.get("choices"))
    assert text == "[s1] A grey cat on a sofa."

    faulty.script([{"match": {"path": CHAT, "stream": True}, "fault": "ok", "chunk_delay_s": 5.0}])
    t0 = time.monotonic()
    lines: list[bytes] = []
    with pytest.raises(BackendTimeout) as info:
        async with client.stream("POST", "chat/completions", body=chat_body("s2", stream=True)) as resp:
            async for line in resp.lines():
                lines.append(line)
    # 0.4 s of silence ends it, far from the 5 s a missing idle timeout would wait (a loaded 2-core
    # machine has the margin)
    assert time.monotonic() - t0 < 3.0
    assert "silent" in str(info.value) and "0.4" in str(info.value)
    assert lines and lines[0].startswith(b"data: ")  # the first event arrived before the silence


@TRANSPORTS
async def test_stream_cut_is_a_retryable_protocol_error(faulty: Any, transport: Transport) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "sse_cut", "chunks": 2}])
    client = http(transport, faulty.v1)
    lines: list[bytes] = []
    with pytest.raises(BackendProtocolError) as info:
        async with client.stream("POST", "chat/completions", body=chat_body("c", stream=True)) as resp:
            async for line in resp.lines():
                lines.append(line)
    assert info.value.retryable
    assert sum(1 for line in lines if line.startswith(b"data: ")) == 3  # role + 2 content chunks
    assert not any(b"[DONE]" in line for line in lines)


@TRANSPORTS
async def test_connection_reset_is_unavailable(faulty: Any, transport: Transport) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "reset"}])
    with pytest.raises(BackendUnavailable) as info:
        await transport.request(
            "POST", faulty.v1 + "/chat/completions", headers=JSON, body=chat_body("r"), timeouts=Timeouts()
        )
    assert info.value.retryable
    # the pool is still usable afterwards
    faulty.script([])
    resp = await transport.request(
        "POST", faulty.v1 + "/chat/completions", headers=JSON, body=chat_body("r2"), timeouts=Timeouts()
    )
    assert resp.status == 200


@TRANSPORTS
async def test_stream_error_status_is_mapped_before_anything_is_yielded(
    faulty: Any, transport: Transport
) -> None:
    faulty.script(
        [
            {
                "match": {"path": CHAT},
                "fault": "status",
                "status": 503,
                "body": {"error": {"message": "queue full"}},
                "headers": {"Retry-After": "7"},
            }
        ]
    )
    with pytest.raises(BackendOverloaded) as info:
        async with http(transport, faulty.v1).stream(
            "POST", "chat/completions", body=chat_body("o", stream=True)
        ):
            pytest.fail("an error status must not be yielded as a stream")
    assert info.value.retry_after == 7.0
    assert "queue full" in str(info.value) and "HTTP 503" in str(info.value)


@TRANSPORTS
async def test_credentials_in_the_base_url_never_reach_a_message(faulty: Any, transport: Transport) -> None:
    port = faulty.base_url.rsplit(":", 1)[1]
    secret_base = f"http://user:s3cr3t-pw@127.0.0.1:{port}/v1"
    faulty.script([{"match": {"path": CHAT}, "fault": "delay", "delay_s": 2}])
    errors: list[BaseException] = []
    client = http(transport, secret_base, read=0.3)
    for call in (
        lambda: client.post_json("chat/completions", chat_body("1")),
        lambda: http(transport, f"http://user:s3cr3t-pw@127.0.0.1:{free_port()}/v1").get_json("models"),
    ):
        try:
            await call()
        except BackendError as exc:
            errors.append(exc)
    faulty.script([{"match": {"path": CHAT}, "fault": "status", "status": 400, "body": "bad"}])
    try:
        await http(transport, secret_base).post_json("chat/completions", chat_body("2"))
    except BackendError as exc:
        errors.append(exc)
    assert [type(e) for e in errors] == [BackendTimeout, BackendUnavailable, BackendRejected]
    for exc in errors:
        assert "s3cr3t" not in str(exc), str(exc)
        assert "s3cr3t" not in repr(exc.args)
        assert "s3cr3t" not in str(getattr(exc, "url", ""))


@TRANSPORTS
async def test_open_transport_follows_the_event_loop(kind: str) -> None:
    t = open_transport(kind, max_connections=2)
    try:
        if sniffio.current_async_library() == "trio" or kind == "httpx":
            assert isinstance(t, HttpxTransport)
        else:
            assert isinstance(t, AiohttpTransport)
    finally:
        await t.aclose()
    auto = open_transport("auto", max_connections=2)
    try:
        expected = AiohttpTransport if sniffio.current_async_library() == "asyncio" else HttpxTransport
        assert isinstance(auto, expected)
    finally:
        await auto.aclose()


# ------------------------------------------------------------------ error body shapes (PROTOCOLS.md)


def shape(
    id: str,
    status: int,
    body: Any,
    error: type[BackendError],
    message: str,
    content_type: str | None = None,
    headers: dict[str, str] | None = None,
) -> Any:
    return pytest.param(status, body, content_type, headers or {}, error, message, id=id)


VLLM_404 = {"error": {"message": "The model `big` does not exist.", "type": "NotFoundError", "code": 404}}
FLAT_400 = {"object": "error", "message": "At most 2 image(s) may be provided in one prompt.", "code": 400}
FASTAPI_422 = {"detail": [{"loc": ["body", "top_k"], "msg": "Extra inputs are not permitted"}]}
SHAPES = [
    shape(
        "error.message (vLLM >= 0.10.1)", 404, VLLM_404, BackendRejected, "The model `big` does not exist."
    ),
    shape("flat message (old vLLM, LMDeploy)", 400, FLAT_400, BackendRejected, "At most 2 image(s) may be"),
    shape(
        "detail string (FastAPI)",
        400,
        {"detail": "only text message is supported"},
        BackendRejected,
        "only text",
    ),
    shape(
        "detail object (LMDeploy older 401)",
        401,
        {"detail": {"error": {"message": "Invalid API key", "type": "invalid_request_error"}}},
        BackendRejected,
        "Invalid API key",
    ),
    shape(
        "detail list (FastAPI 422)",
        422,
        FASTAPI_422,
        BackendRejected,
        "top_k: Extra inputs are not permitted",
    ),
    shape(
        "error string (Triton)", 400, {"error": "unexpected inference input 'foo'"}, BackendRejected, "'foo'"
    ),
    shape(
        "error string 401 (vLLM --api-key)", 401, {"error": "Unauthorized"}, BackendRejected, "Unauthorized"
    ),
    shape(
        "error string 503 (Triton queue full)",
        503,
        {"error": "Exceeds maximum queue size"},
        BackendOverloaded,
        "Exceeds maximum queue size",
        headers={"Retry-After": "2"},
    ),
    shape(
        "busy on a 500", 500, {"error": {"message": "Server is busy, later"}}, BackendOverloaded, "is busy"
    ),
    shape(
        "plain text (HF serve 500)",
        500,
        "Internal Server Error",
        BackendServerError,
        "Internal Server Error",
    ),
    shape("JSON as text/plain", 400, '{"message": "bad image"}', BackendRejected, "bad image", "text/plain"),
    shape("empty 503", 503, "", BackendOverloaded, "(empty body)"),
    shape("empty 400 (Triton not ready)", 400, "", BackendRejected, "(empty body)"),
    shape(
        "HTML 502 (proxy)", 502, "<html>Bad Gateway</html>", BackendUnavailable, "Bad Gateway", "text/html"
    ),
    shape(
        "429 with an HTTP date",
        429,
        {"error": {"message": "slow down"}},
        BackendOverloaded,
        "slow down",
        headers={"Retry-After": "DATE"},
    ),
]


@TRANSPORTS
@pytest.mark.parametrize(("status", "body", "content_type", "headers", "error", "message"), SHAPES)
async def test_error_body_shapes_over_the_wire(
    faulty: Any,
    transport: Transport,
    status: int,
    body: Any,
    content_type: str | None,
    headers: dict[str, str],
    error: type[BackendError],
    message: str,
) -> None:
    headers = dict(headers)
    if headers.get("Retry-After") == "DATE":
        headers["Retry-After"] = email.utils.formatdate(time.time() + 30, usegmt=True)
    rule: dict[str, Any] = {
        "match": {"path": "/v1/models"},
        "fault": "status",
        "status": status,
        "body": body,
    }
    if content_type:
        rule["content_type"] = content_type
    if headers:
        rule["headers"] = headers
    faulty.script([rule])
    with pytest.raises(BackendError) as info:
        await http(transport, faulty.v1).get_json("models")
    exc = info.value
    assert type(exc) is error, f"{type(exc).__name__}: {exc}"
    assert exc.status == status
    assert message in exc.message
    assert f"HTTP {status}" in exc.message and "testbackend" in exc.message
    assert faulty.v1 + "/models" in exc.message
    if status in (401, 403):
        assert exc.hint and "api_key" in exc.hint
    if "Retry-After" in headers:
        assert isinstance(exc, BackendOverloaded)
        expected = 2.0 if headers["Retry-After"] == "2" else 30.0
        assert exc.retry_after == pytest.approx(expected, abs=2)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"error": {"message": "nested"}}, "nested"),
        ({"object": "error", "message": "flat"}, "flat"),
        ({"detail": "fastapi"}, "fastapi"),
        ({"detail": {"error": {"message": "lmdeploy 401"}}}, "lmdeploy 401"),
        ({"detail": {"reason": "no message key"}}, '"reason": "no message key"'),
        (
            {"detail": [{"loc": ["body", "messages", 0], "msg": "field required"}]},
            "messages.0: field required",
        ),
        ({"detail": [{"msg": "a"}, {"msg": "b"}]}, "a; b"),
        ({"error": "triton says no"}, "triton says no"),
        ({"unexpected": "shape"}, '{"unexpected": "shape"}'),
        (b"plain text\n", "plain text"),
        ("  ", "(empty body)"),
        (b"", "(empty body)"),
        ("[1, 2]", "[1, 2]"),
        ('"just a json string"', "just a json string"),
        ({"error": {"message": "   "}}, "(empty message)"),
        (b"\xff\xfe not utf-8", "not utf-8"),
        (  # nginx in front of a stopped server: one line of the page's text
            b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad "
            b"Gateway</h1></center>\r\n<hr><center>nginx/1.25.3</center>\r\n</body>\r\n</html>\r\n",
            "an HTML page, not an API answer: 502 Bad Gateway 502 Bad Gateway nginx/1.25.3",
        ),
        (  # a web server on the configured port (Python's http.server), scripts and comments dropped
            '<!DOCTYPE HTML>\n<html lang="en"><head><style>p {x: 1}</style><title>Error response</title>'
            "<script>var a = '<p>';</script></head><body><!-- note --><h1>Error response</h1>"
            "<p>Message: File not found &amp; gone.</p></body></html>",
            "an HTML page, not an API answer: Error response Error response Message: File not found & gone.",
        ),
        (b"<error>an XML body</error>", "<error>an XML body</error>"),  # not HTML: as it is
    ],
)
def test_extract_error_message(body: Any, message: str) -> None:
    raw = json.dumps(body) if isinstance(body, dict) else body
    assert extract_error_message(raw) == message or message in extract_error_message(raw)
    if isinstance(body, dict):
        assert message in extract_error_message(body)  # an already-decoded body works too


def test_a_huge_or_hostile_html_page_is_read_quickly() -> None:
    """Only the page's start is read, in linear time: a server cannot hang the client with it."""
    page = "<html><title>Oops</title>" + "<script>" * 300_000 + "x" * 2_000_000
    t0 = time.monotonic()
    msg = extract_error_message(page)
    assert time.monotonic() - t0 < 2.0
    assert msg.startswith("an HTML page, not an API answer: Oops")


def test_error_message_is_bounded() -> None:
    msg = extract_error_message(json.dumps({"error": {"message": "x" * 10_000}}))
    assert len(msg) <= 501
    msg = extract_error_message("y" * 10_000)
    assert len(msg) <= 501


@pytest.mark.parametrize(
    ("status", "message", "error"),
    [
        (404, "The model `big` does not exist.", BackendRejected),
        (400, "model 'x' not found", BackendRejected),
        (401, "Unauthorized", BackendRejected),
        (403, "Forbidden", BackendRejected),
        (413, "Request Entity Too Large", BackendRejected),
        (429, "rate limited", BackendOverloaded),
        (503, "busy", BackendOverloaded),
        (502, "bad gateway", BackendUnavailable),
        (504, "gateway timeout", BackendUnavailable),
        (500, "oops", BackendServerError),
        (501, "unsupported", BackendServerError),
    ],
)
def test_error_from_response_status_mapping(status: int, message: str, error: type[BackendError]) -> None:
    url = "http://user:pw@127.0.0.1:8000/v1/chat/completions?key=abc"
    exc = error_from_response(status, {}, {"error": {"message": message}}, backend="vllm", url=url)
    assert type(exc) is error
    assert exc.backend == "vllm" and exc.status == status
    assert message in exc.message and f"HTTP {status}" in exc.message
    assert "pw" not in str(exc) and "abc" not in str(exc) and "abc" not in str(exc.url)
    if issubclass(error, BackendProtocolError):
        assert exc.retryable is (status >= 500)


# ------------------------------------------------------------------ redirects and long lines


@TRANSPORTS
@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
async def test_a_redirect_is_reported_as_one_and_not_followed(
    faulty: Any, transport: Transport, streamed: bool
) -> None:
    elsewhere = "http://user:hunter2@127.0.0.1:9/v1/chat/completions"
    faulty.script(
        [{"match": {"path": CHAT}, "fault": "status", "status": 307, "headers": {"Location": elsewhere}}]
    )
    client = http(transport, faulty.v1)
    with pytest.raises(BackendRejected) as info:
        if streamed:
            async with client.stream("POST", "chat/completions", body=chat_body("r", stream=True)):
                pass
        else:
            await client.post_json("chat/completions", chat_body("r"))
    text = str(info.value)
    assert "redirect (HTTP 307)" in text and "not followed" in text, text
    assert "hunter2" not in text and "127.0.0.1:9/v1/chat/completions" in text
    assert not info.value.retryable
    assert len(faulty.log(CHAT)) == 1  # asked once, nothing sent to the other address


@TRANSPORTS
async def test_an_sse_line_over_512_kib_is_read_whole(faulty: Any, transport: Transport) -> None:
    big = "x" * (600 * 1024)
    event = {"choices": [{"index": 0, "delta": {"content": big}, "finish_reason": None}]}
    body = f"data: {json.dumps(event)}\r\n\r\ndata: [DONE]\r\n\r\n"
    faulty.script(
        [
            {
                "match": {"path": CHAT},
                "fault": "status",
                "status": 200,
                "body": body,
                "content_type": "text/event-stream",
            }
        ]
    )
    client = http(transport, faulty.v1)
    async with client.stream("POST", "chat/completions", body=chat_body("big", stream=True)) as resp:
        events = [e async for e in iter_sse_data(resp, backend="testbackend", url=faulty.v1)]
    assert len(events) == 1 and events[0]["choices"][0]["delta"]["content"] == big


def test_httpx_transport_runs_on_httpx2_when_installed() -> None:
    """Under trio httpx2's pool is ~6x cheaper per request than httpx's (issue 18)."""
    require(
        importlib.util.find_spec("httpx2") is not None, "httpx2 is not installed (scripts/install.sh --dev)"
    )
    t = HttpxTransport(max_connections=2)
    assert type(t._client).__module__.split(".")[0] == "httpx2"


def test_httpx_transport_falls_back_to_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "httpx2", None)  # import httpx2 -> ImportError
    t = HttpxTransport(max_connections=2)
    assert type(t._client).__module__.split(".")[0] == "httpx"


class _ClosesAfterEachAnswer:
    """A socket server that answers each connection once and then closes it, without
    saying ``Connection: close`` (as a server whose keep-alive just timed out does);
    with *answer* false it closes every connection without a word."""

    def __init__(self, *, answer: bool) -> None:
        import socket
        import threading

        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.2)
        self.answer = answer
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self.srv.getsockname()[1]}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                try:
                    read_http_request(conn)
                    if self.answer:
                        body = b'{"ok":true}'
                        conn.sendall(
                            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                        )
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.srv.close()


@TRANSPORTS
async def test_a_kept_alive_connection_the_server_closed_is_tried_once_more(transport: Transport) -> None:
    """Back-to-back POSTs to a server that drops each connection after its answer all
    succeed (the stale pooled connection costs one more try on a new one), and a server
    that drops every connection unanswered is an outage after that one more try."""
    server = _ClosesAfterEachAnswer(answer=True)
    try:
        for i in range(6):
            resp = await transport.request(
                "POST",
                server.url + "/v1/chat/completions",
                headers=JSON,
                body=chat_body(f"r{i}"),
                timeouts=Timeouts(),
            )
            assert resp.status == 200 and json.loads(resp.body) == {"ok": True}
            async with transport.stream(
                "POST",
                server.url + "/v1/chat/completions",
                headers=JSON,
                body=chat_body(f"s{i}"),
                timeouts=Timeouts(),
            ) as stream:
                assert stream.status == 200
                assert json.loads(await stream.read()) == {"ok": True}
    finally:
        server.close()
    silent = _ClosesAfterEachAnswer(answer=False)
    try:
        with pytest.raises((BackendUnavailable, BackendProtocolError)):
            await transport.request(
                "POST",
                silent.url + "/v1/chat/completions",
                headers=JSON,
                body=chat_body("x"),
                timeouts=Timeouts(),
            )
        assert silent.connections <= 2
    finally:
        silent.close()


@TRANSPORTS
async def test_a_connect_nothing_answers_is_an_outage_not_a_timed_out_try(transport: Transport) -> None:
    """A listener whose accept queue is full drops new SYNs: the connect hangs until its
    limit, and that is the server being unreachable (the items keep their attempts)."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(0)
    url = f"http://127.0.0.1:{srv.getsockname()[1]}/v1/models"
    fillers = []
    try:
        for _ in range(8):  # fill the accept queue; later connects go unanswered
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(srv.getsockname())
            fillers.append(s)
        await anyio.sleep(0.2)
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailable, match="no answer to the connect") as info:
            await transport.request(
                "GET", url, headers={}, body=None, timeouts=Timeouts(connect=0.5, read=30)
            )
        assert time.monotonic() - t0 < 5
        assert info.value.retryable
    finally:
        for s in fillers:
            s.close()
        srv.close()
