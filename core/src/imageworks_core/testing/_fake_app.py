"""The fake server process: aiohttp on 127.0.0.1 answering from ``_fake_rules``' script."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import struct
import time
from collections.abc import Sequence
from typing import Any

from ._fake_answers import Plan, delay_of, plan, refusal
from ._fake_control import begin, control, end
from ._fake_rules import DEFAULT_MODEL, DEFAULT_REPLY, RequestInfo, State, server_settings

CONTROL = "/_imageworks/"
READY_LINE = "IMAGEWORKS_FAKE_SERVER_READY"
_HANG_LIMIT = 600.0


# ---------------------------------------------------------------- the server (runs in its own process)


def make_app(state: State) -> Any:
    """The aiohttp application (imported lazily: only the server process needs aiohttp.web)."""
    from aiohttp import web

    async def control_call(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            payload = json.loads(raw) if raw else {}
        except ValueError as exc:
            return web.json_response({"error": {"message": f"not JSON: {exc}"}}, status=400)
        code, answer = control(
            state, request.method, request.path[len(CONTROL) :], payload, request.query_string
        )
        return web.json_response(answer, status=code)

    def client_gone(request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    def kill_connection(request: web.Request, rst: bool) -> None:
        transport = request.transport
        if transport is None:
            return
        if rst:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()

    async def render(request: web.Request, answer: Plan, entry: dict[str, Any]) -> web.StreamResponse:
        if answer.status is None and answer.end == "hang":
            deadline = time.monotonic() + _HANG_LIMIT
            # aiohttp has no "client left" event to wait on: poll the transport
            while not client_gone(request) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
            if client_gone(request):
                raise asyncio.CancelledError
            answer = Plan(504, body=b'{"error": {"message": "hung for too long", "code": 504}}')
        if answer.status is None:
            entry["completed"] = True
            kill_connection(request, rst=answer.end == "rst")
            raise asyncio.CancelledError  # nothing may be written; aiohttp ends the handler quietly
        headers = dict(answer.headers)
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = answer.content_type
        entry["status"] = answer.status
        if answer.parts is None:
            resp = web.Response(status=answer.status, body=answer.body, headers=headers)
            entry["completed"] = not client_gone(request)
            return resp
        stream = web.StreamResponse(status=answer.status, headers=headers)
        await stream.prepare(request)
        for gap, data in answer.parts:
            if gap > 0:
                await asyncio.sleep(gap)
            if data:
                await stream.write(data)
        if answer.end != "eof":
            entry["completed"] = True
            kill_connection(request, rst=answer.end == "rst")
            raise asyncio.CancelledError
        await stream.write_eof()
        entry["completed"] = not client_gone(request)
        return stream

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path.startswith(CONTROL):
            return await control_call(request)
        raw = await request.read()
        info = RequestInfo(request.method, request.path, request.query_string, request.headers, raw)
        action, entry = begin(state, info)
        try:
            answer = refusal(state, info, entry)
            if answer is None:
                delay = delay_of(action)
                if delay > 0:
                    await asyncio.sleep(delay)
                answer = plan(state, info, action, entry["seq"], f"{request.scheme}://{request.host}")
            return await render(request, answer, entry)
        finally:
            end(state, entry, client_gone(request))

    app = web.Application(client_max_size=256 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def _serve(args: argparse.Namespace) -> None:
    from aiohttp import web

    settings = server_settings(
        model=args.model,
        reply=args.reply,
        require_max_tokens=not args.no_require_max_tokens,
        strict=not args.lenient,
        echo_request_id=args.echo_request_id,
    )
    runner = web.AppRunner(make_app(State(settings)), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"{READY_LINE} http://{host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            if args.parent_pid and os.getppid() != args.parent_pid:
                break  # the test process is gone: stop by ourselves
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake server until SIGTERM (or until ``--parent-pid`` exits)."""
    p = argparse.ArgumentParser(
        prog="python -m imageworks_core.testing.fake_server",
        description="A local OpenAI-compatible fake server for tests.",
    )
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one, printed when ready)")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"the served model id (default: {DEFAULT_MODEL})")
    p.add_argument(
        "--reply", default=DEFAULT_REPLY, help="the canned answer ({images}, {model}, {prompt}, {request_id})"
    )
    p.add_argument(
        "--no-require-max-tokens", action="store_true", help="accept chat requests without max_tokens"
    )
    p.add_argument("--lenient", action="store_true", help="answer malformed chat requests too")
    p.add_argument(
        "--echo-request-id",
        action="store_true",
        help="start replies with '[<request id>] ', echo X-Request-Id",
    )
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this process is no longer our parent")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0
