"""The suite's fault-injecting OpenAI-compatible server: the kit's fake server, set up the suite's way.

Run as its own process (127.0.0.1 only)::

    python tests/servers/faulty_openai.py --port N

It is ``imageworks_core.testing.fake_server`` (the one socket fake server; its
rule language is in ``imageworks_core/testing/_fake_rules.py``) serving
``fake-vlm``, answering malformed chat requests instead of refusing them,
without requiring ``max_tokens``, and starting each reply with the request's
id (``[item-3] A grey cat on a sofa.``, echoed in ``X-Request-Id`` too), so a
test can tell which item an answer belongs to.  A test scripts it through
``script`` and reads what it received through ``request_log`` (warm-up
requests left out unless asked for), helpers over ``FakeOpenAIServer.connect``.

``MockFaulty`` is the same server in-process (``MockOpenAIServer``): tests of
request bodies and of reading a server's exact answers need no socket, and
``transport_for(url)`` gives the client its transport.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from imageworks_core.testing import MockOpenAIServer, MockTransport
from imageworks_core.testing.fake_server import WARMUP_PROMPT, FakeOpenAIServer, main

__all__ = [
    "ANSWER",
    "SERVED_MODEL",
    "WARMUP_PROMPT",
    "MockFaulty",
    "current_script",
    "request_log",
    "reset",
    "script",
    "transport_for",
]

SERVED_MODEL = "fake-vlm"
ANSWER = "A grey cat on a sofa."
PROFILE = [
    "--model",
    SERVED_MODEL,
    "--reply",
    ANSWER,
    "--no-require-max-tokens",
    "--lenient",
    "--echo-request-id",
]


def script(base_url: str, rules: Sequence[Mapping[str, Any]], default: Any = "ok") -> dict[str, Any]:
    """Replace the server's rules; returns the installed script (``ValueError`` when it is invalid)."""
    return FakeOpenAIServer.connect(base_url).script(rules, default)


def current_script(base_url: str) -> dict[str, Any]:
    """The installed rules with their ``seen`` and ``fired`` counters."""
    return FakeOpenAIServer.connect(base_url).current_script()


def request_log(base_url: str, path: str | None = None, *, warmups: bool = False) -> list[dict[str, Any]]:
    """Every request since the last reset (only *path*'s when given), oldest first; warm-ups if asked."""
    return FakeOpenAIServer.connect(base_url).requests(path, warmups=warmups)


def reset(base_url: str) -> None:
    """No rules (default ``ok``), an empty log."""
    FakeOpenAIServer.connect(base_url).reset()


class MockFaulty(MockOpenAIServer):
    """The suite's fault server in-process: the same script and log, no socket."""

    def __init__(self) -> None:
        super().__init__(
            model=SERVED_MODEL, reply=ANSWER, require_max_tokens=False, strict=False, echo_request_id=True
        )

    def log(self, path: str | None = None, *, warmups: bool = False) -> list[dict[str, Any]]:
        return self.requests(path, warmups=warmups)


def transport_for(url: str | None) -> MockTransport | None:
    """The in-process transport answering *url*, if a ``MockFaulty`` serves it (else a real one)."""
    parts = urlsplit(url or "")
    server = MockOpenAIServer.running(f"{parts.scheme}://{parts.hostname}") if parts.hostname else None
    return server.transport if server is not None else None


if __name__ == "__main__":
    sys.exit(main([*PROFILE, *sys.argv[1:]]))
