"""Tools for testing code that uses imageworks, and for testing backend plugins.

- ``FakeBackend``: an in-process backend whose answers, delays and failures
  a test scripts (``Delay``, ``FailAfter``).
- ``MockTransport``: answers a ``Client``'s HTTP requests in-process from a
  function (``MockRequest`` in, ``MockResponse`` out): a plugin's request
  bodies and its reading of a server's exact answers, without a socket.
- ``FakeOpenAIServer``: a local OpenAI-compatible server in its own process,
  scriptable per request (``imageworks_core.testing.fake_server``).
- ``MockOpenAIServer``: the same server's script, answers and request log
  in-process, through a ``MockTransport`` (``imageworks_core.testing.mock_server``).
- ``BackendConformance``: the conformance suite a backend plugin's tests
  subclass (``imageworks_core.testing.conformance``; imports pytest).
- ``set_testing``: shorten the dispatcher's waits (backoff, pauses, probes) in tests; nothing else.
- The pytest plugin (``imageworks_core.testing.pytest_plugin``, registered
  through the ``pytest11`` entry point) provides the fixtures
  ``imageworks_fake``, ``imageworks_client_factory`` and ``imageworks_openai_server``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..retry import set_testing
from .fake import Delay, FailAfter, FakeBackend
from .fake_server import FakeOpenAIServer
from .mock import MockRequest, MockResponse, MockTransport
from .mock_server import MockOpenAIServer

__all__ = [
    "BackendConformance",
    "Delay",
    "FailAfter",
    "FakeBackend",
    "FakeOpenAIServer",
    "MockOpenAIServer",
    "MockRequest",
    "MockResponse",
    "MockTransport",
    "set_testing",
]

if TYPE_CHECKING:
    from .conformance import BackendConformance


def __getattr__(name: str) -> Any:
    if name == "BackendConformance":  # lazily: it imports pytest
        from .conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module 'imageworks_core.testing' has no attribute {name!r}")
