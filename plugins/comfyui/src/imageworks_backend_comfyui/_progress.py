"""ComfyUI's ``/ws`` messages for one prompt: its sampling steps as progress, and its end.

ComfyUI (``server.py``) accepts ``GET /ws?clientId=ID`` and sends the messages of a prompt to the
socket whose id was the ``client_id`` of ``POST /prompt``: ``execution_start``,
``executing {node}``, ``progress {value, max, prompt_id, node}`` (a sampler's steps),
``executed``, then ``executing {node: null}`` and ``execution_success`` (or ``execution_error``,
``execution_interrupted``); binary messages are preview images (skipped). Older releases leave
``prompt_id`` out of ``progress``: such a message counts as ours, the socket being ours alone.

The history stays the source of truth for the outcome (``_backend._wait`` polls it); the socket
only reports progress and wakes the poller as soon as the prompt has ended.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio

from imageworks_core.plugin import BackendContext

__all__ = ["ENDED", "listen"]

#: Message types that end a prompt (the history has, or is about to have, its entry).
ENDED = frozenset({"execution_success", "execution_error", "execution_interrupted"})


def _ours(data: Any, prompt_id: str) -> bool:
    return isinstance(data, dict) and data.get("prompt_id", prompt_id) == prompt_id


async def listen(
    ctx: BackendContext, messages: AsyncIterator[str | bytes], prompt_id: str, ended: anyio.Event
) -> None:
    """Report the prompt's steps through ``ctx.progress`` and set *ended* when it is over."""
    async for message in messages:
        if not isinstance(message, str):
            continue  # a preview image
        try:
            parsed = json.loads(message)
        except ValueError:
            continue
        if not isinstance(parsed, dict):
            continue
        kind, data = parsed.get("type"), parsed.get("data")
        if not isinstance(data, dict) or not _ours(data, prompt_id):
            continue
        if kind == "progress":
            value, total = data.get("value"), data.get("max")
            if isinstance(value, int) and isinstance(total, int) and total > 0:
                node = data.get("node")
                ctx.progress(value, total, f"node {node}" if node is not None else None)
        elif kind in ENDED or (kind == "executing" and data.get("node") is None and "prompt_id" in data):
            ended.set()
