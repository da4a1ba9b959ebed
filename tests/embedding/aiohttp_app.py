"""An aiohttp web app sharing one ``Client`` across uploads (run by ``test_embedding_apps``).

``python -X dev -W error::ResourceWarning aiohttp_app.py BASE_URL UPLOADS DISCONNECTS``
The client lives in a ``cleanup_ctx``; ``handler_cancellation=True`` makes a
client that hangs up cancel its request.  Prints one JSON line of what it saw.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from PIL import Image

from imageworks_core import BackendError, BackendOverloaded, Client, InputError, Request, aprepare_image

CLIENT = web.AppKey("imageworks_client", Client)


def make_app(base_url: str) -> web.Application:
    async def imageworks(app: web.Application) -> AsyncIterator[None]:
        async with Client(
            backend="openai",
            base_url=base_url,
            model="fake-vlm",
            max_tokens=7,
            concurrency=4,
            trust_env=False,
        ) as client:
            app[CLIENT] = client
            yield

    async def describe(request: web.Request) -> web.Response:
        try:
            image = await aprepare_image(await request.read(), max_pixels=100_000)
        except InputError as exc:
            return web.json_response({"error": exc.message}, status=400)
        prompt = f"id={request.query.get('id', 'x')}"
        try:
            result = await request.app[CLIENT].infer(Request(prompt=prompt, images=[image]))
        except BackendOverloaded as exc:
            headers = {"Retry-After": str(round(exc.retry_after))} if exc.retry_after else {}
            return web.json_response({"error": exc.message}, status=503, headers=headers)
        except BackendError as exc:
            return web.json_response({"error": exc.message}, status=502)
        return web.json_response({"text": result.text})

    app = web.Application(client_max_size=20 * 1024 * 1024)
    app.cleanup_ctx.append(imageworks)
    app.router.add_post("/describe", describe)
    return app


async def main(base_url: str, uploads: int, disconnects: int) -> dict[str, int]:
    runner = web.AppRunner(make_app(base_url), handler_cancellation=True)
    await runner.setup()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 40, 40)).save(buf, "JPEG")
    jpeg = buf.getvalue()
    counts = {"ok": 0, "disconnected": 0, "other": 0}
    try:
        async with aiohttp.ClientSession() as session:

            async def upload(i: int) -> None:
                hang_up = i < disconnects
                timeout = aiohttp.ClientTimeout(total=0.1 if hang_up else 60)
                try:
                    async with session.post(
                        f"http://127.0.0.1:{port}/describe?id=up{i}", data=jpeg, timeout=timeout
                    ) as resp:
                        body = await resp.json()
                        counts["ok" if resp.status == 200 and body.get("text") else "other"] += 1
                except TimeoutError:
                    counts["disconnected" if hang_up else "other"] += 1

            await asyncio.gather(*(upload(i) for i in range(uploads)))
    finally:
        await runner.cleanup()  # the cleanup_ctx closes the client
    return counts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))))
