"""Tools for testing code that uses imageworks, and for testing backend plugins.

- ``FakeBackend``: an in-process backend whose answers, delays and failures
  a test scripts.
- ``set_testing``: turn retry sleeps off.
- The pytest plugin (``imageworks_core.testing.pytest_plugin``, registered
  through the ``pytest11`` entry point) provides fixtures.
"""

from __future__ import annotations

from ..retry import set_testing
from .fake import Delay, FakeBackend

__all__ = ["Delay", "FakeBackend", "set_testing"]
