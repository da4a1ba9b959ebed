"""A ComfyUI-shaped server on aiohttp (ComfyUI's own web stack), for end-to-end tests of the
comfyui plugin over real sockets: ``python comfyui_server.py --port N``.

It speaks the routes the plugin uses, with the shapes of ComfyUI's ``server.py`` and
``execution.py``: ``POST /prompt`` queues a workflow (``client_id`` kept), a background "run"
sends that client's ``/ws`` socket ``execution_start``, ``executing``, one ``progress`` per
KSampler step (0.05 s each), then writes the history entry and sends ``executing {node: null}``
and ``execution_success``; ``GET /history/{id}``, ``GET /view`` (a PNG of the requested size),
``GET /queue``, ``GET /system_stats``, ``GET /object_info/CheckpointLoaderSimple``,
``GET /models/checkpoints``; ``POST /queue`` and ``POST /interrupt`` answer 200.
``GET /stats`` tells the test what it saw (sockets opened, prompts, client ids).
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from typing import Any

from _aiohttp_run import run_server
from aiohttp import web
from PIL import Image

CHECKPOINT = "tiny-sd.safetensors"
sockets: dict[str, web.WebSocketResponse] = {}
history: dict[str, Any] = {}
running: dict[str, Any] = {}
stats: dict[str, Any] = {"sockets": [], "client_ids": [], "prompts": 0}


async def send(client_id: str, kind: str, data: dict[str, Any]) -> None:
    ws = sockets.get(client_id)
    if ws is not None and not ws.closed:
        await ws.send_str(json.dumps({"type": kind, "data": data}))


async def ws_handler(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
    sockets[sid] = ws
    stats["sockets"].append(sid)
    try:
        await send(sid, "status", {"status": {"exec_info": {"queue_remaining": len(running)}}, "sid": sid})
        async for _ in ws:
            pass
    finally:
        sockets.pop(sid, None)
    return ws


def _steps_and_size(workflow: dict[str, Any]) -> tuple[int, int, int]:
    steps, width, height = 4, 64, 64
    for node in workflow.values():
        inputs = node.get("inputs", {})
        if node.get("class_type") == "KSampler":
            steps = int(inputs.get("steps", steps))
        if node.get("class_type") == "EmptyLatentImage":
            width, height = int(inputs.get("width", width)), int(inputs.get("height", height))
    return min(steps, 50), width, height


async def run(prompt_id: str, client_id: str, workflow: dict[str, Any]) -> None:
    steps, width, height = _steps_and_size(workflow)
    await send(client_id, "execution_start", {"prompt_id": prompt_id, "timestamp": 1})
    await send(client_id, "executing", {"node": "3", "display_node": "3", "prompt_id": prompt_id})
    for step in range(1, steps + 1):
        await asyncio.sleep(0.05)
        await send(client_id, "progress", {"value": step, "max": steps, "prompt_id": prompt_id, "node": "3"})
    name = f"imageworks_{len(history) + 1:05}_.png"
    history[prompt_id] = {
        "prompt": [0, prompt_id, workflow, {"client_id": client_id}, ["9"]],
        "outputs": {"9": {"images": [{"filename": name, "subfolder": "", "type": "output"}]}},
        "status": {"status_str": "success", "completed": True, "messages": []},
        "size": [width, height],
    }
    running.pop(prompt_id, None)
    await send(client_id, "executing", {"node": None, "prompt_id": prompt_id})
    await send(client_id, "execution_success", {"prompt_id": prompt_id, "timestamp": 2})


async def post_prompt(request: web.Request) -> web.Response:
    body = await request.json()
    prompt_id = uuid.uuid4().hex
    client_id = str(body.get("client_id", ""))
    stats["prompts"] += 1
    stats["client_ids"].append(client_id)
    running[prompt_id] = True
    request.app["tasks"].add(asyncio.ensure_future(run(prompt_id, client_id, body["prompt"])))
    return web.json_response({"prompt_id": prompt_id, "number": stats["prompts"], "node_errors": {}})


async def get_history(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    entry = history.get(prompt_id)
    return web.json_response({} if entry is None else {prompt_id: entry})


async def view(request: web.Request) -> web.Response:
    name = request.rel_url.query["filename"]
    entry = next(e for e in history.values() if e["outputs"]["9"]["images"][0]["filename"] == name)
    buf = io.BytesIO()
    Image.new("RGB", tuple(entry["size"]), (180, 60, 40)).save(buf, "PNG")
    return web.Response(body=buf.getvalue(), content_type="image/png")


async def queue(request: web.Request) -> web.Response:
    if request.method == "POST":
        return web.json_response({})
    items = [[i, pid, {}, {}, ["9"]] for i, pid in enumerate(running)]
    return web.json_response({"queue_running": items, "queue_pending": []})


async def system_stats(request: web.Request) -> web.Response:
    system = {"os": "posix", "comfyui_version": "0.3.66", "python_version": "3.12"}
    return web.json_response({"system": system, "devices": [{"name": "cpu", "type": "cpu", "index": 0}]})


async def object_info(request: web.Request) -> web.Response:
    spec = {"required": {"ckpt_name": [[CHECKPOINT], {}]}}
    return web.json_response({"CheckpointLoaderSimple": {"input": spec, "name": "CheckpointLoaderSimple"}})


async def checkpoints(request: web.Request) -> web.Response:
    return web.json_response([CHECKPOINT])


async def ok(request: web.Request) -> web.Response:
    return web.json_response({})


async def get_stats(request: web.Request) -> web.Response:
    return web.json_response(stats)


def main() -> None:
    app = web.Application()
    app["tasks"] = set()
    run_server(
        app,
        [
            web.get("/ws", ws_handler),
            web.post("/prompt", post_prompt),
            web.get("/history/{prompt_id}", get_history),
            web.get("/view", view),
            web.route("*", "/queue", queue),
            web.post("/interrupt", ok),
            web.get("/system_stats", system_stats),
            web.get("/object_info/CheckpointLoaderSimple", object_info),
            web.get("/models/checkpoints", checkpoints),
            web.get("/stats", get_stats),
        ],
    )


if __name__ == "__main__":
    main()
