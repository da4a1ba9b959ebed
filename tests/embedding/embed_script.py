"""An embedding script: map, stream and timeouts on one client (run by ``test_embedding_apps``).

``python -X dev -W error::ResourceWarning embed_script.py BASE_URL asyncio|trio``
Uses only the public API.  Prints one JSON line of what it saw.
"""

from __future__ import annotations

import contextlib
import json
import sys

import anyio

from imageworks_core import BackendError, Client, Request


async def main(base_url: str) -> dict[str, object]:
    seen: dict[str, object] = {}
    # trust_env=False: the hostile pyproject.toml and IMAGEWORKS_* around us change nothing
    async with Client(
        backend="openai", base_url=base_url, model="fake-vlm", max_tokens=7, concurrency=4, trust_env=False
    ) as client:
        async with client.map([Request(prompt=f"id=map{i}") for i in range(12)]) as results:
            seen["map_full"] = sum([r.ok async for r in results])
        async with client.map([Request(prompt=f"id=brk{i}") for i in range(12)]) as results:
            async for _ in results:
                break  # leaving the block cancels the rest
        with anyio.move_on_after(0.05):
            async with client.map([Request(prompt=f"id=cnl{i}") for i in range(12)]) as results:
                async for _ in results:
                    pass

        async with contextlib.aclosing(client.stream(Request(prompt="id=s1"))) as chunks:
            seen["stream_full"] = "".join([c.text async for c in chunks])
        async with contextlib.aclosing(client.stream(Request(prompt="id=s2"))) as chunks:
            async for _ in chunks:
                break
        with anyio.move_on_after(0.05):
            async with contextlib.aclosing(client.stream(Request(prompt="id=slow-stream"))) as chunks:
                async for _ in chunks:
                    pass
        for rid in ("cut", "inband"):
            try:
                async with contextlib.aclosing(client.stream(Request(prompt=f"id={rid}"))) as chunks:
                    async for _ in chunks:
                        pass
            except BackendError as exc:
                seen[f"stream_{rid}"] = type(exc).__name__

        with anyio.move_on_after(0.2) as scope:
            await client.infer(Request(prompt="id=slow"))
        seen["infer_moved_on"] = scope.cancelled_caught
        try:
            with anyio.fail_after(0.2):
                await client.infer(Request(prompt="id=slow"))
        except TimeoutError:
            seen["infer_failed_after"] = True
        seen["infer_after"] = (await client.infer(Request(prompt="id=last"))).ok
    return seen


if __name__ == "__main__":
    url, loop = sys.argv[1], sys.argv[2]
    print(json.dumps(anyio.run(main, url, backend=loop)))
