"""A WebSocket server on aiohttp's ``WebSocketResponse`` (what ComfyUI's ``/ws`` runs on), for
the client's tests: ``python websocket_server.py --port N``.

- ``GET /health``: 200.
- ``GET /ws?clientId=X``: accepts; sends ComfyUI-shaped messages (``status`` with the ``sid``,
  the request's ``Authorization`` header echoed in it, ``execution_start``, five ``progress``, a
  binary preview frame, ``executing`` with ``node: null``), pings the client and waits for its
  pong (reported as a ``pong`` message), then a 200 KiB text message, then closes.
- ``GET /ws-silent``: accepts and sends nothing until the client goes.
- ``GET /refuse``: 403 (a proxy that does not pass WebSockets).
- ``GET /hold``: never answers the upgrade.
- ``GET /closes``: how many connections the client closed itself (a close frame seen).
"""

from __future__ import annotations

import asyncio
import json

from _aiohttp_run import run_server
from aiohttp import WSMsgType, web

closes = {"n": 0}


async def health(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def comfy_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(autoping=False)
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "")
    auth = request.headers.get("Authorization")
    status = {"status": {"exec_info": {"queue_remaining": 1}}, "sid": sid, "authorization": auth}
    await ws.send_str(json.dumps({"type": "status", "data": status}))
    await ws.send_str(json.dumps({"type": "execution_start", "data": {"prompt_id": "p1"}}))
    for step in range(1, 6):
        data = {"value": step, "max": 5, "prompt_id": "p1", "node": "3"}
        await ws.send_str(json.dumps({"type": "progress", "data": data}))
    await ws.send_bytes(b"\x00\x00\x00\x01\x00\x00\x00\x02" + b"\x89PNG preview")
    await ws.ping(b"are you there")
    msg = await ws.receive(timeout=10)
    await ws.send_str(json.dumps({"type": "pong", "data": {"seen": msg.type == WSMsgType.PONG}}))
    await ws.send_str(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p1"}}))
    await ws.send_str("x" * (200 * 1024))
    await ws.close()
    return ws


async def silent_ws(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.CLOSE:
            break
    closes["n"] += 1
    return ws


async def hold(request: web.Request) -> web.Response:
    await asyncio.sleep(3600)  # a proxy that takes the upgrade and never answers
    return web.Response(status=504)


async def refuse(request: web.Request) -> web.Response:
    return web.Response(status=403, text="WebSockets are not allowed here")


async def count_closes(request: web.Request) -> web.Response:
    return web.json_response(closes)


def main() -> None:
    run_server(
        web.Application(),
        [
            web.get("/health", health),
            web.get("/ws", comfy_ws),
            web.get("/ws-silent", silent_ws),
            web.get("/refuse", refuse),
            web.get("/hold", hold),
            web.get("/closes", count_closes),
        ],
    )


if __name__ == "__main__":
    main()
