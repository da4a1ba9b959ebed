"""A scriptable in-process backend for tests of code that uses imageworks.

    fake = FakeBackend(reply="A grey cat.")
    fake.script(BackendUnavailable("down"), "second try answers")
    async with Client(plugins=[fake], backend="fake", entry_points=False) as client: ...

Each call takes the next scripted outcome (a string answers, an exception is
raised, a ``Delay`` sleeps first, a ``FailAfter`` streams some text and then
fails); when the script is empty it takes the ``always`` outcome if one is
set, else it answers ``reply``.  A request's ``timeout`` is honoured like a
transport would (``BackendTimeout``), and more images than
``capabilities.max_images`` are refused (``BackendRejected``).  Every request
is kept in ``calls``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import attrs

from ..context import BackendContext
from ..errors import BackendRejected, BackendTimeout, redact_url
from ..hookspecs import hookimpl
from ..models import BackendInfo, Capabilities, Chunk, HealthReport, Request, Result, Usage
from ..settings import BackendSettings

__all__ = ["Delay", "FailAfter", "FakeBackend"]


@attrs.frozen(slots=True)
class Delay:
    """Sleep *seconds*, then take the next outcome (or the default reply)."""

    seconds: float
    then: Any = None


@attrs.frozen(slots=True)
class FailAfter:
    """Stream *text* (word by word), then raise *error*; ``infer`` raises *error* at once.

    Models a server that fails part-way, e.g. an error reported inside an HTTP 200 stream.
    """

    text: str
    error: BaseException


class FakeBackend:
    """A backend whose answers, delays, failures and health a test can script.

    Attributes:
        name: The backend name it registers under.
        reply: The default answer (``str`` or a callable ``Request -> str``).
        delay: Seconds every call sleeps before answering.
        healthy: What ``health`` reports (``ready``).
        reachable: ``health``'s ``reachable`` (``None``: same as ``healthy``);
            ``healthy=False, reachable=True`` reports "up but not ready".
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
        self.reachable: bool | None = None
        self.capabilities = capabilities or Capabilities()
        self.settings_cls = settings_cls
        self.model = model
        self.calls: list[Request] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._script: deque[Any] = deque()
        self._always: Any = None

    def script(self, *outcomes: Any) -> FakeBackend:
        """Queue outcomes for the next calls: ``str``, an exception, ``Delay`` or ``FailAfter``."""
        self._script.extend(outcomes)
        return self

    def always(self, outcome: Any) -> FakeBackend:
        """Take *outcome* on every call once the script is empty (``None``: answer ``reply`` again)."""
        self._always = outcome
        return self

    async def _outcome(self, request: Request) -> str | FailAfter:
        self.calls.append(request)
        limit = self.capabilities.max_images
        if limit is not None and len(request.images) > limit:
            raise BackendRejected(
                f"{self.name} backend: at most {limit} image(s) per request, got {len(request.images)}",
                backend=self.name,
                hint="send fewer images per request",
            )
        outcome = self._script.popleft() if self._script else self._always
        try:
            with anyio.fail_after(request.timeout):
                if self.delay:
                    await anyio.sleep(self.delay)
                while isinstance(outcome, Delay):
                    await anyio.sleep(outcome.seconds)
                    outcome = outcome.then
        except TimeoutError:
            raise BackendTimeout(
                f"{self.name} backend: no answer within the request timeout of {request.timeout}s",
                backend=self.name,
            ) from None
        if isinstance(outcome, BaseException):
            raise outcome
        if isinstance(outcome, str | FailAfter):
            return outcome
        return self.reply(request) if callable(self.reply) else self.reply

    def _enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

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
        reachable = self.healthy if self.reachable is None else self.reachable
        return HealthReport(
            backend=ctx.name,
            url=redact_url(ctx.base_url),
            reachable=reachable,
            ready=self.healthy,
            models=(self.model,) if self.healthy else (),
            detail=None
            if self.healthy
            else f"fake backend scripted as {'not ready' if reachable else 'down'}",
            hint=None if self.healthy else "fake.healthy = True",
        )

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        self._enter()
        try:
            text = await self._outcome(request)
        finally:
            self.in_flight -= 1
        if isinstance(text, FailAfter):
            raise text.error
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
        self._enter()
        try:
            outcome = await self._outcome(request)
            text = outcome.text if isinstance(outcome, FailAfter) else outcome
            words = text.split(" ")
            for i, word in enumerate(words):
                yield Chunk(text=word if i == 0 else " " + word, model=self.model)
                await anyio.lowlevel.checkpoint()
            if isinstance(outcome, FailAfter):
                raise outcome.error
            n = len(words)
            yield Chunk(
                finish_reason="stop", usage=Usage(prompt_tokens=10, completion_tokens=n, total_tokens=10 + n)
            )
        finally:
            self.in_flight -= 1
