"""A TCP pass-through on 127.0.0.1 that keeps every byte a server sent back.

A real server decides how many stream events it sends (``transformers serve``
joins the tokens a slow reader fell behind on into one event), so a test that
wants to prove the client passes events through one by one compares the
client's chunks with what the server really sent, read here, instead of
assuming a count.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import anyio
from anyio.abc import ByteStream, SocketStream


class Recording:
    """What the server sent through the proxy, over every connection, in order."""

    def __init__(self) -> None:
        self.from_server = bytearray()
        self.url = ""

    def sse_events(self) -> list[Any]:
        """Every SSE ``data:`` payload the server sent that is JSON, in order."""
        events: list[Any] = []
        for line in bytes(self.from_server).split(b"\n"):
            if line.startswith(b"data:") and line[5:].strip() not in (b"", b"[DONE]"):
                try:
                    events.append(json.loads(line[5:]))
                except ValueError:  # a line cut by HTTP chunk framing would show here
                    raise AssertionError(f"an SSE line the test cannot read: {line[:200]!r}") from None
        return events

    def stream_texts(self) -> list[str]:
        """The non-empty ``delta.content`` of every chat-completion event, in order."""
        texts: list[str] = []
        for event in self.sse_events():
            for choice in event.get("choices") or ():
                content = (choice.get("delta") or {}).get("content")
                if content:
                    texts.append(content)
        return texts


async def _pipe(source: ByteStream, sink: ByteStream, keep: bytearray | None) -> None:
    try:
        async for data in source:
            if keep is not None:
                keep += data
            await sink.send(data)
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        pass
    finally:
        with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            await sink.send_eof()


@asynccontextmanager
async def recording_proxy(target_url: str) -> AsyncIterator[Recording]:
    """Proxy *target_url*'s host and port; ``Recording.url`` is *target_url* through the proxy."""
    parts = urlsplit(target_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    recording = Recording()

    async def handle(client: SocketStream) -> None:
        async with client, await anyio.connect_tcp(host, port) as upstream, anyio.create_task_group() as tg:
            tg.start_soon(_pipe, client, upstream, None)
            await _pipe(upstream, client, recording.from_server)
            tg.cancel_scope.cancel()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    proxy_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    recording.url = urlunsplit(parts._replace(netloc=f"127.0.0.1:{proxy_port}"))
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        try:
            yield recording
        finally:
            tg.cancel_scope.cancel()
