"""pytest fixtures for code that uses imageworks (registered via the ``pytest11`` entry point).

Fixtures:
    imageworks_fake: a fresh ``FakeBackend`` named ``fake``.
    imageworks_client_factory: ``make(*plugins, **client_kwargs) -> Client``
        with no config files, no entry points (unless asked) and retry sleeps off.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest


@pytest.fixture
def imageworks_fake() -> Any:
    from .fake import FakeBackend

    return FakeBackend()


@pytest.fixture
def imageworks_client_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    from ..client import Client

    monkeypatch.setenv("IMAGEWORKS_TESTING", "1")

    def make(*plugins: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("entry_points", False)
        kwargs.setdefault("user_file", False)
        kwargs.setdefault("project_file", False)
        if plugins and "backend" not in kwargs:
            kwargs["backend"] = plugins[0].backend_info().name
        return Client(plugins=plugins, **kwargs)

    yield make
