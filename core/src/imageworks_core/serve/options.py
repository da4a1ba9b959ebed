"""What ``imageworks serve`` was asked to do, and the decision to bind (made before binding)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import attrs

from ..errors import ConfigError
from ..settings import Secret

__all__ = ["ServeOptions", "check_bind", "read_tokens"]


@attrs.frozen(slots=True)
class ServeOptions:
    """The gateway's own settings (the backends' come from the usual configuration).

    Attributes:
        host: Address to bind (loopback unless tokens are configured).
        port: TCP port.
        tokens: Access tokens callers send as ``Authorization: Bearer``; empty:
            no authentication (then only a loopback host is allowed).
        allow_paths: A folder whose images ``/v1/describe`` may read by ``path``
            (``None``: no path inputs).
        max_body_mb: Largest request body, MB (413 beyond it).
        max_images: Most images in one request (413 beyond it).
        max_image_pixels: Most pixels of one image as sent (413 beyond it).
        queue: Requests admitted at once (running or waiting for a backend);
            beyond it the gateway answers 429 with ``Retry-After``.
        rate_limit: Requests per second per token (or per client address
            without tokens), with bursts of as many; ``None``: no limit.
        drain_timeout: Seconds SIGTERM waits for requests in flight.
    """

    host: str = "127.0.0.1"
    port: int = 8765
    tokens: tuple[Secret, ...] = ()
    allow_paths: Path | None = None
    max_body_mb: float = 32.0
    max_images: int = 8
    max_image_pixels: int = 50_000_000
    queue: int = 256
    rate_limit: float | None = None
    drain_timeout: float = 30.0

    @property
    def max_body(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(options: ServeOptions) -> None:
    """Refuse a non-loopback host without access tokens (before anything binds).

    Raises:
        ConfigError: *options.host* is not loopback and no token is configured.
    """
    if not is_loopback(options.host) and not options.tokens:
        raise ConfigError(
            f"refusing to serve on {options.host} without an access token (anyone who can reach it "
            "could use your backends): set --token-env VAR, or bind 127.0.0.1"
        )


def read_tokens(var: str | None, env: os._Environ[str] | dict[str, str] | None = None) -> tuple[Secret, ...]:
    """The access tokens in environment variable *var* (comma or whitespace separated).

    Raises:
        ConfigError: *var* is named but unset or empty.
    """
    if var is None:
        return ()
    env = os.environ if env is None else env
    raw = env.get(var, "")
    tokens = tuple(Secret(t) for t in raw.replace(",", " ").split())
    if not tokens:
        raise ConfigError(
            f"--token-env {var}: the environment variable {var} is unset or empty",
            hint=f"export {var}=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')",
        )
    return tokens
