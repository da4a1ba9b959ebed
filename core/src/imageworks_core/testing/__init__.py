"""Tools for testing code that uses imageworks, and for testing backend plugins.

- ``FakeBackend``: an in-process backend whose answers, delays and failures
  a test scripts (``Delay``, ``FailAfter``).
- ``FakeOpenAIServer``: a local OpenAI-compatible server in its own process,
  scriptable per request (``imageworks_core.testing.fake_server``).
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

__all__ = ["BackendConformance", "Delay", "FailAfter", "FakeBackend", "FakeOpenAIServer", "set_testing"]

if TYPE_CHECKING:
    from .conformance import BackendConformance


def __getattr__(name: str) -> Any:
    if name == "BackendConformance":  # lazily: it imports pytest
        from .conformance import BackendConformance

        return BackendConformance
    raise AttributeError(f"module 'imageworks_core.testing' has no attribute {name!r}")
