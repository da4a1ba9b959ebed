"""Run the gateway under uvicorn: bind (after the bind check), serve, drain on SIGTERM, exit 0."""

from __future__ import annotations

import logging
import math
import signal
import sys

from ..client import Client
from ..errors import ConfigError
from .app import create_app
from .options import ServeOptions, check_bind

__all__ = ["serve"]

log = logging.getLogger("imageworks.serve")


def serve(client: Client, options: ServeOptions) -> None:
    """Serve *client* until SIGTERM / SIGINT, then drain requests in flight (bounded) and return.

    Raises:
        ConfigError: A non-loopback host without tokens (nothing was bound).
    """
    check_bind(options)
    import uvicorn

    app = create_app(client, options)
    config = uvicorn.Config(
        app,
        host=options.host,
        port=options.port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="on",
        access_log=False,  # one line per request costs more than the request; /metrics counts them
        log_config=None,  # the imageworks logging setup applies
        timeout_graceful_shutdown=max(1, math.ceil(options.drain_timeout)),
        server_header=False,
        proxy_headers=False,  # a local gateway: trust no X-Forwarded-For (and skip a layer per request)
    )
    server = uvicorn.Server(config)
    shown = f"[{options.host}]" if ":" in options.host else options.host
    print(
        f"imageworks: serving on http://{shown}:{options.port} (backends: "
        f"{' -> '.join(client.backend_order())}; "
        f"{'token required' if options.tokens else 'no token, loopback only'})",
        file=sys.stderr,
        flush=True,
    )
    # uvicorn drains on SIGTERM, then raises the signal again once its own handler is gone:
    # ours turns that into a normal return (exit 0) instead of a death by signal
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not server.started:
        raise ConfigError(f"could not serve on {shown}:{options.port} (see the error above)")
