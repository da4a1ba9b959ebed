"""pytest fixtures for code that uses imageworks (registered via the ``pytest11`` entry point).

Fixtures:
    imageworks_fake: a fresh ``FakeBackend`` named ``fake``.
    imageworks_client_factory: ``make(*plugins, **client_kwargs) -> Client``
        with no config files, no entry points (unless asked) and retry sleeps off.
    imageworks_openai_server: the kit's fake OpenAI-compatible server
        (``FakeOpenAIServer``), a real HTTP server on 127.0.0.1 in its own
        process, reset for each test.  One process serves the whole session
        and stops when the session ends (or when the test process dies).

This module imports nothing heavy: it is loaded into every pytest run of an
environment where imageworks-core is installed.
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
def imageworks_testing() -> Iterator[None]:
    """The dispatcher's waits (backoff, Retry-After pauses, probe intervals) shortened to nothing.

    Attempt counts, timeouts and every other limit keep their defaults; see ``set_testing``.
    """
    from ..retry import testing

    with testing():
        yield


@pytest.fixture
def imageworks_client_factory(imageworks_testing: None) -> Iterator[Callable[..., Any]]:
    from ..client import Client

    def make(*plugins: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("entry_points", False)
        kwargs.setdefault("user_file", False)
        kwargs.setdefault("project_file", False)
        if plugins and "backend" not in kwargs:
            kwargs["backend"] = plugins[0].backend_info().name
        return Client(plugins=plugins, **kwargs)

    yield make


@pytest.fixture(scope="session")
def imageworks_openai_server_session() -> Iterator[Any]:
    """The session's fake OpenAI-compatible server process (use ``imageworks_openai_server``)."""
    from .fake_server import FakeOpenAIServer

    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture
def imageworks_openai_server(imageworks_openai_server_session: Any) -> Iterator[Any]:
    """A ``FakeOpenAIServer`` with no rules and an empty request log.

    ``.base_url`` is the server root (``.v1`` the API base); script it with
    ``.push(answer)`` / ``.always(answer)`` (answers from
    ``imageworks_core.testing.fake_server``: ``ok``, ``status``, ``hang`` ...)
    and read ``.requests()`` afterwards.
    """
    server = imageworks_openai_server_session
    server.reset()
    yield server
    server.reset()
