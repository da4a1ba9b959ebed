"""A scriptable in-process backend for tests of code that uses imageworks.

    fake = FakeBackend(reply="A grey cat.")
    fake.script(BackendUnavailable("down"), "second try answers")
    async with Client(plugins=[fake], backend="fake", entry_points=False) as client: ...

Each call takes the next scripted outcome (a string answers, an exception is
raised, a ``Delay`` sleeps first); when the script is empty it answers
``reply``.  Every request is kept in ``calls``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import attrs

from ..context import BackendContext
from ..hookspecs import hookimpl
from ..models import BackendInfo, Capabilities, Chunk, HealthReport, Request, Result, Usage
from ..settings import BackendSettings

__all__ = ["Delay", "FakeBackend"]


@attrs.frozen(slots=True)
class Delay:
    """Sleep *seconds*, then take the next outcome (or the default reply)."""

    seconds: float
    then: Any = None


class FakeBackend:
    """A backend whose answers, delays, failures and health a test can script.

    Attributes:
        name: The backend name it registers under.
        reply: The default answer (``str`` or a callable ``Request -> str``).
        delay: Seconds every call sleeps before answering.
        healthy: What ``health`` reports.
        calls: Every request received, in order.
        max_in_flight: The largest number of concurrent calls seen.
    """

    def __init__(
        self,
        name: str = "fake",
        *,
        reply: str | Callable[[Request], str] = "A grey cat on a sofa.",
        delay: float = 0.0,
        healthy: bool = True,
        capabilities: Capabilities | None = None,
        settings_cls: type[BackendSettings] = BackendSettings,
        model: str = "fake-model",
    ) -> None:
        self.name = name
        self.reply = reply
        self.delay = delay
        self.healthy = healthy
        self.capabilities = capabilities or Capabilities()
        self.settings_cls = settings_cls
        self.model = model
        self.calls: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Any] = deque()

    def script(self, *outcomes: Any) -> FakeBackend:
        """Queue outcomes for the next calls: ``str``, an exception, or ``Delay``."""
        self._script.extend(outcomes)
        return self

    async def _outcome(self, request: Request) -> str:
        self.calls.append(request)
        outcome = self._script.popleft() if self._script else None
        if self.delay:
            await anyio.sleep(self.delay)
        while isinstance(outcome, Delay):
            await anyio.sleep(outcome.seconds)
            outcome = outcome.then
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, str):
            return outcome
        return self.reply(request) if callable(self.reply) else self.reply

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            description="scriptable fake backend (imageworks_core.testing)",
            default_base_url="http://127.0.0.1:9/fake",
            capabilities=self.capabilities,
            settings_cls=self.settings_cls,
        )

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        return HealthReport(
            backend=ctx.name,
            url=ctx.base_url,
            reachable=self.healthy,
            ready=self.healthy,
            models=(self.model,) if self.healthy else (),
            detail=None if self.healthy else "fake backend scripted as down",
            hint=None if self.healthy else "fake.healthy = True",
        )

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            text = await self._outcome(request)
        finally:
            self.in_flight -= 1
        return Result(
            text=text,
            backend=ctx.name,
            model=request.model or ctx.settings.model or self.model,
            usage=Usage(
                prompt_tokens=10, completion_tokens=len(text.split()), total_tokens=10 + len(text.split())
            ),
            finish_reason="stop",
        )

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
        text = await self._outcome(request)
        words = text.split(" ")
        for i, word in enumerate(words):
            yield Chunk(text=word if i == 0 else " " + word, model=self.model)
            await anyio.lowlevel.checkpoint()
        n = len(words)
        yield Chunk(
            finish_reason="stop", usage=Usage(prompt_tokens=10, completion_tokens=n, total_tokens=10 + n)
        )
