"""Run an aiohttp test server from its command line: ``--port N``, 127.0.0.1 only, quiet, quick to stop.

Imported by the server scripts of this folder (run as ``python tests/servers/<name>.py``,
so this folder is first on ``sys.path``).
"""

from __future__ import annotations

import argparse

from aiohttp import web


def run_server(app: web.Application, routes: list[web.RouteDef]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app.router.add_routes(routes)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, shutdown_timeout=1)
