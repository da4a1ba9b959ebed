"""The WebSocket client (``imageworks_core.websocket``, through ``ctx.http.websocket``) against a
real aiohttp WebSocket server process (ComfyUI's ``/ws`` runs on the same ``WebSocketResponse``),
under asyncio and trio."""

from __future__ import annotations

import json
import pathlib
import urllib.request
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from servers._proc import ServerProcess, free_port, python_argv

from imageworks_core import BackendProtocolError, BackendUnavailable, Client
from imageworks_core.websocket import connect_websocket, ws_url

pytestmark = pytest.mark.anyio
SERVERS = pathlib.Path(__file__).parent / "servers"


@pytest.fixture(scope="module")
def ws_server() -> Iterator[str]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = python_argv(SERVERS / "websocket_server.py", "--port", str(port))
    with ServerProcess(argv, ready_url=base + "/health", name="websocket-server", ready_timeout=30):
        yield base


def _client(base: str) -> Client:
    backends = {"openai": {"base_url": base, "model": "m", "api_key": "sk-ws-test-key-123"}}
    return Client(backend="openai", overrides={"backends": backends}, user_file=False, project_file=False)


async def test_messages_binary_frames_and_pings_through_the_backends_http(ws_server: str) -> None:
    async with _client(ws_server) as client:
        ctx = client.context("openai")
        got: list[Any] = []
        with anyio.fail_after(20):
            async with ctx.http.websocket("/ws?clientId=abc123") as ws:
                async for message in ws:
                    got.append(
                        json.loads(message) if isinstance(message, str) and message[0] == "{" else message
                    )
    status = got[0]
    assert status["type"] == "status" and status["data"]["sid"] == "abc123"
    assert status["data"]["authorization"] == "Bearer sk-ws-test-key-123"  # the backend's key went along
    progress = [m["data"]["value"] for m in got if isinstance(m, dict) and m["type"] == "progress"]
    assert progress == [1, 2, 3, 4, 5]
    assert [m for m in got if isinstance(m, bytes)] == [b"\x00\x00\x00\x01\x00\x00\x00\x02\x89PNG preview"]
    pong = next(m for m in got if isinstance(m, dict) and m["type"] == "pong")
    assert pong["data"]["seen"] is True  # the server's ping was answered
    assert got[-2]["type"] == "executing" and got[-2]["data"]["node"] is None
    assert got[-1] == "x" * (200 * 1024)  # a message over many TCP reads, whole


async def test_closing_early_says_goodbye(ws_server: str) -> None:
    with anyio.fail_after(10):
        async with connect_websocket(ws_server + "/ws-silent") as ws:
            with anyio.move_on_after(0.2):
                await ws.receive()
        for _ in range(100):
            closes = json.loads(await anyio.to_thread.run_sync(_get, ws_server + "/closes"))["n"]
            if closes:
                break
            await anyio.sleep(0.02)
    assert closes >= 1


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as resp:
        data: bytes = resp.read()
        return data


async def test_a_refused_upgrade_is_a_protocol_error_naming_the_status(ws_server: str) -> None:
    async with _client(ws_server) as client:
        with pytest.raises(BackendProtocolError) as info:
            async with client.context("openai").http.websocket("/refuse"):
                pass
    assert info.value.status == 403 and "refused the WebSocket upgrade (HTTP 403)" in info.value.message
    assert info.value.message.startswith("openai backend: ")
    assert "sk-ws-test" not in str(info.value)


async def test_an_upgrade_nobody_answers_is_a_protocol_error_after_the_connect_timeout(
    ws_server: str,
) -> None:
    t0 = anyio.current_time()
    with anyio.fail_after(10), pytest.raises(BackendProtocolError) as info:
        async with connect_websocket(ws_server + "/hold", connect_timeout=0.5):
            pass
    assert "no answer to the WebSocket upgrade within 0.5s" in info.value.message
    assert anyio.current_time() - t0 < 5


async def test_nothing_listening_is_unavailable() -> None:
    base = f"http://127.0.0.1:{free_port()}"
    async with _client(base) as client:
        with pytest.raises(BackendUnavailable) as info:
            async with client.context("openai").http.websocket("/ws"):
                pass
    assert "cannot connect to" in info.value.message and base in info.value.message


def test_ws_url() -> None:
    assert ws_url("http://h:8188/ws?clientId=1") == "ws://h:8188/ws?clientId=1"
    assert ws_url("https://h/ws") == "wss://h/ws"
    assert ws_url("wss://h/ws") == "wss://h/ws"
