"""The conformance suite's faults: the ``FaultInjector`` protocol and the kit's injectors."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import pytest

from ..errors import (
    BackendOverloaded,
    BackendProtocolError,
    BackendUnavailable,
)

# ---------------------------------------------------------------- faults a FaultInjector knows

#: Health: the server answers but cannot serve yet (loading, engine dead, no model).
NOT_READY = "not_ready"
#: Every request fails to connect (for backends without a ``down_url``).
DOWN = "down"
#: Inference answers "busy" (HTTP 429 / 503) asking to retry after ``RETRY_AFTER`` seconds.
OVERLOADED = "overloaded"
#: Inference is refused as a bad request (HTTP 4xx) saying ``REJECT_MESSAGE``.
REJECTED = "rejected"
#: Inference answers HTTP 200 with a body that cannot be parsed.
MALFORMED = "malformed"
#: Streaming answers HTTP 200, sends some text, then reports ``STREAM_ERROR_MESSAGE`` in-band.
STREAM_ERROR = "stream_error"
#: Inference never answers (until the client gives up or goes away).
HANG = "hang"
FAULTS = frozenset({NOT_READY, DOWN, OVERLOADED, REJECTED, MALFORMED, STREAM_ERROR, HANG})

RETRY_AFTER = 7.0
REJECT_MESSAGE = "imageworks conformance: this request is rejected on purpose"
STREAM_ERROR_MESSAGE = "imageworks conformance: failure inside the stream"
_SECRET_KEY = "sk-imageworks-conformance-secret"  # noqa: S105 - a canary, not a credential
_SECRET_PASSWORD = "conformance-pw-7f3a"  # noqa: S105 - a canary, not a credential


@runtime_checkable
class FaultInjector(Protocol):
    """Makes a backend's server (or an in-process backend) misbehave on request."""

    def inject(self, fault: str) -> bool:
        """Make every later request fail as *fault* (one of ``FAULTS``); ``False`` if unsupported."""

    def clear(self) -> None:
        """Back to normal answers."""

    def in_flight(self) -> int | None:
        """Requests the server is still handling (``None``: cannot tell)."""

    def images_received(self) -> int | None:
        """Images in the last inference request the server received (``None``: cannot tell)."""


class OpenAIServerFaults:
    """``FaultInjector`` for the kit's ``FakeOpenAIServer`` (OpenAI-compatible shapes).

    ``NOT_READY`` covers the probes of every OpenAI-style server at once:
    ``/health`` 503 (vLLM, LMDeploy, trtllm-serve), ``/health/ready`` and
    ``/v2/health/ready`` 400 (Triton) and an empty ``/v1/models`` (generic).
    Subclass and override ``inject`` for a server with other shapes.
    """

    def __init__(self, server: Any) -> None:
        self.server = server

    def inject(self, fault: str) -> bool:
        from . import fake_server as fs

        s = self.server
        if fault == NOT_READY:
            s.always(
                fs.status(503, {"status": "initializing", "message": "loading the model"}), path="/health"
            )
            s.always(fs.status(400, ""), path="/health/ready")
            s.always(fs.status(400, ""), path="/v2/health/ready")
            s.always(fs.status(200, {"object": "list", "data": []}), path="/v1/models")
            return True
        if fault == OVERLOADED:
            body = {
                "error": {"message": "imageworks conformance: server busy", "type": "rate_limit", "code": 429}
            }
            s.always(fs.status(429, body, headers={"Retry-After": f"{RETRY_AFTER:g}"}))
            return True
        if fault == REJECTED:
            s.always(fs.status(400, {"error": {"message": REJECT_MESSAGE, "type": "invalid_request_error"}}))
            return True
        if fault == MALFORMED:
            s.always(fs.malformed())
            return True
        if fault == STREAM_ERROR:
            s.always(fs.stream_error(STREAM_ERROR_MESSAGE, code=500, after=2))
            return True
        if fault == HANG:
            s.always(fs.hang())
            return True
        return False  # DOWN: the suite uses down_url instead

    def clear(self) -> None:
        self.server.reset()

    def in_flight(self) -> int | None:
        return int(self.server.in_flight())

    def images_received(self) -> int | None:
        chats = self.server.requests("/v1/chat/completions")
        return int(chats[-1]["images"]) if chats else None


class OnMockOpenAIServer:
    """Mix in before ``BackendConformance``: the server tests run on an in-process ``MockOpenAIServer``.

    ::

        class TestMineInProcess(OnMockOpenAIServer, BackendConformance):
            backend = "mine"
    """

    @pytest.fixture
    def mock_openai_server(self) -> Any:
        from .mock_server import MockOpenAIServer

        return MockOpenAIServer()

    @pytest.fixture
    def transport(self, mock_openai_server: Any) -> Any:
        return mock_openai_server.transport

    @pytest.fixture
    def server_url(self, mock_openai_server: Any) -> str:
        return str(mock_openai_server.base_url)

    @pytest.fixture
    def faults(self, mock_openai_server: Any) -> FaultInjector:
        return OpenAIServerFaults(mock_openai_server)


class FakeBackendFaults:
    """``FaultInjector`` for an in-process ``FakeBackend``."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    def inject(self, fault: str) -> bool:
        from ..errors import BackendRejected as Rejected
        from .fake import Delay, FailAfter

        fake, name = self.fake, self.fake.name
        if fault == NOT_READY:
            fake.healthy, fake.reachable = False, True
        elif fault == DOWN:
            fake.healthy, fake.reachable = False, False
            fake.always(
                BackendUnavailable(
                    f"{name} backend: cannot connect (scripted as down)",
                    backend=name,
                    hint="fake.healthy = True",
                )
            )
        elif fault == OVERLOADED:
            fake.always(
                BackendOverloaded(
                    f"{name} backend: busy (scripted)", retry_after=RETRY_AFTER, backend=name, status=429
                )
            )
        elif fault == REJECTED:
            fake.always(
                Rejected(f"{name} backend answered HTTP 400: {REJECT_MESSAGE}", backend=name, status=400)
            )
        elif fault == MALFORMED:
            fake.always(BackendProtocolError(f"{name} backend: malformed answer (scripted)", backend=name))
        elif fault == STREAM_ERROR:
            err = BackendProtocolError(f"{name} backend: {STREAM_ERROR_MESSAGE}", backend=name, status=500)
            fake.always(FailAfter("A partial", err))
        elif fault == HANG:
            fake.always(Delay(3600.0))
        else:
            return False
        return True

    def clear(self) -> None:
        self.fake.healthy, self.fake.reachable = True, None
        self.fake.always(None)

    def in_flight(self) -> int | None:
        return int(self.fake.in_flight)

    def images_received(self) -> int | None:
        return len(self.fake.calls[-1].images) if self.fake.calls else None
