"""``imageworks serve``: flags to ``ServeOptions``, then run (the CLI's part of the gateway)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["add_serve_flags", "run_serve"]


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("gateway")
    g.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need a token)"
    )
    g.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    g.add_argument(
        "--token-env",
        metavar="VAR",
        help="environment variable holding the access token(s), comma-separated; callers send "
        "Authorization: Bearer TOKEN",
    )
    g.add_argument("--allow-paths", type=Path, metavar="DIR", help="let /v1/describe read images under DIR")
    g.add_argument("--max-body-mb", type=float, default=32.0, metavar="MB", help="largest request body (32)")
    g.add_argument("--max-images", type=int, default=8, metavar="N", help="images per request at most (8)")
    g.add_argument(
        "--max-image-pixels",
        type=int,
        default=50_000_000,
        metavar="N",
        help="pixels per image at most (50 MP)",
    )
    g.add_argument(
        "--queue", type=int, default=256, metavar="N", help="requests admitted at once; beyond: 429 (256)"
    )
    g.add_argument("--rate-limit", type=float, metavar="PER_S", help="requests/s per token (default: none)")
    g.add_argument(
        "--drain-timeout", type=float, default=30.0, metavar="SECONDS", help="SIGTERM waits this long (30)"
    )


def run_serve(args: argparse.Namespace, make_client: Callable[[argparse.Namespace], Any]) -> int:
    """Serve until SIGTERM; 0 after draining.  ``ConfigError`` (exit 2) for bad flags or a refused host."""
    from ..errors import ConfigError

    try:
        import prometheus_client  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"imageworks serve needs the serve extra ({exc.name} is missing)",
            hint="pip install 'imageworks-core[serve]'",
        ) from None
    from .options import ServeOptions, check_bind, read_tokens

    for name, value, low in (
        ("--port", args.port, 0),
        ("--max-images", args.max_images, 1),
        ("--max-image-pixels", args.max_image_pixels, 1),
        ("--queue", args.queue, 1),
        ("--max-body-mb", args.max_body_mb, 0.001),
        ("--drain-timeout", args.drain_timeout, 0),
    ):
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, not {value}")
    if args.rate_limit is not None and args.rate_limit <= 0:
        raise ConfigError(f"--rate-limit must be > 0, not {args.rate_limit}")
    if args.allow_paths is not None and not args.allow_paths.is_dir():
        raise ConfigError(f"--allow-paths {args.allow_paths}: not a folder")
    options = ServeOptions(
        host=args.host,
        port=args.port,
        tokens=read_tokens(args.token_env),
        allow_paths=args.allow_paths,
        max_body_mb=args.max_body_mb,
        max_images=args.max_images,
        max_image_pixels=args.max_image_pixels,
        queue=args.queue,
        rate_limit=args.rate_limit,
        drain_timeout=args.drain_timeout,
    )
    check_bind(options)  # before the client, the config and the socket
    from .runner import serve

    client = make_client(args)
    client.config  # noqa: B018 - a bad configuration fails here, before binding
    serve(client, options)
    return 0
