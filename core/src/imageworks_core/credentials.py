"""What a backend's requests carry from its settings: the API key, the headers, URL credentials.

``user:password@`` in a base URL becomes a Basic ``Authorization`` header (with another
``Authorization`` header or an API key it is a configuration error: only one can be sent); the
URL's query (``?key=...``) is kept apart and sent with every request. Every value that is a
credential is registered as a secret, so that no log, error or output file shows it.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import ConfigError
from .redact import is_sensitive_header, register_secret, url_secrets
from .settings import BackendSettings, Secret

__all__ = ["api_key", "request_headers", "split_endpoint"]


def api_key(settings: BackendSettings, env: Mapping[str, str]) -> Secret | None:
    """The backend's API key: ``api_key``, else the environment variable ``api_key_env`` names."""
    if settings.api_key:
        return settings.api_key
    if settings.api_key_env:
        value = env.get(settings.api_key_env)
        if value:
            return Secret(value)
    return None


def request_headers(settings: BackendSettings, env: Mapping[str, str]) -> dict[str, str]:
    """The backend's configured headers and its key as a Bearer ``Authorization``."""
    headers = dict(settings.headers)
    for header, value in headers.items():
        if is_sensitive_header(header):
            register_secret(value)
    key = api_key(settings, env)
    if key:
        headers["Authorization"] = f"Bearer {key.reveal()}"
    return headers


def split_endpoint(
    name: str, url: str, headers: dict[str, str], *, source: str | None
) -> tuple[str, str, dict[str, str]]:
    """``(base URL without credentials or query, query, headers)`` for backend *name* at *url*.

    Raises:
        ConfigError: The URL carries credentials and *headers* an ``Authorization`` already
            (*source* says where the URL came from).
    """
    register_secret(*url_secrets(url))
    parts = urlsplit(url)
    if parts.username is not None or parts.password is not None:
        key = f"backends.{name}.base_url"
        if any(h.lower() == "authorization" for h in headers):
            raise ConfigError(
                f"the {name} base URL carries credentials (user:password@) and an Authorization "
                "header or API key is set too; only one can be sent",
                source=source,
                key=key,
                hint="drop the user:password@ part of the URL, or the api_key / api_key_env / "
                "Authorization header",
            )
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        token = base64.b64encode(pair.encode("utf-8")).decode("ascii")
        headers = {**headers, "Authorization": f"Basic {token}"}
        register_secret(headers["Authorization"])
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", "")), parts.query, headers
