"""Fan-out: items in, results out as they complete, with bounded concurrency.

``map`` consumes its items lazily (only as capacity frees up), prepares images
in worker threads and runs each item through ``attempts.ItemRunner`` (which
owns the endpoints, their outage states and the retries); ``preflight``
(its own module) checks health before a batch and waits for a server that is
still loading its model.  Streaming is a mode of the same path (``on_chunk``), not a second one.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

import anyio
import attrs

from .attempts import Backends, ItemRunner, OnChunk
from .errors import ImageWorksError, InputError
from .events import Event, Listeners, OnEvent
from .models import Chunk, HealthReport, PreparedImage, Request, Result
from .preflight import preflight
from .queuewatch import watch_queues

__all__ = ["Dispatcher", "Event", "ungrouped", "unwrap_group"]

log = logging.getLogger("imageworks.dispatch")


class Dispatcher:
    """Fan-out, preflight and the per-item runner for one set of backends (one ``Client``)."""

    def __init__(self, backends: Backends) -> None:
        self.backends = backends
        self.listeners = Listeners()
        self.runner = ItemRunner(backends, self.listeners)
        self._priority = itertools.count()

    async def run_one(
        self,
        request: Request,
        *,
        item_id: str | None = None,
        item: Any = None,
        on_event: OnEvent | None = None,
        on_chunk: OnChunk | None = None,
        seq: int | None = None,
        hook: str | None = None,
    ) -> Result:
        """Answer *request* with retries, outages and fallback; never raises for backend/input errors.

        *hook*: another hook than ``infer`` / ``stream`` (see ``ItemRunner.run``).
        """
        return await self.runner.run(
            request,
            item_id=item_id,
            item=item,
            seq=next(self._priority) if seq is None else seq,
            on_event=on_event,
            on_chunk=on_chunk,
            hook=hook,
        )

    def stream_one(self, request: Request) -> AsyncGenerator[Chunk, None]:
        return self.runner.stream(request)

    def state(self, backend: str) -> str:
        """``up``, ``paused``, ``out`` or ``down``: backend *backend*'s state now (its best
        endpoint's, for a pool)."""
        states = [state for _, state in self.endpoint_states(backend)]
        return next(s for s in ("up", "paused", "out", "down") if s in states)

    def endpoint_states(self, backend: str) -> list[tuple[str, str]]:
        """``(url, state)`` for each endpoint of *backend*."""
        out = []
        for ep in self.runner.pool(backend):
            ep.accepting()  # a pause that is over ends here
            out.append((ep.url, ep.state.value))
        return out

    def outages(self) -> list[tuple[str, str, float]]:
        """``(backend, url, seconds out)`` for each outage this client saw."""
        now = time.monotonic()
        out = []
        for ep in self.runner.endpoints:
            for start, end in ep.outages:
                begun = start if start is not None else now
                out.append((ep.backend, ep.url, (end if end is not None else now) - begun))
        return out

    def limits(self) -> dict[str, int]:
        """Each backend's concurrency limit now (the adaptive one, or the fixed setting; a pool's summed)."""
        out: dict[str, int] = {}
        for ep in self.runner.endpoints:
            out[ep.backend] = out.get(ep.backend, 0) + ep.max_limit
        return out

    # ------------------------------------------------------------ preflight

    async def preflight(
        self, names: Iterable[str] | None = None, *, on_event: OnEvent | None = None, warmup: bool = False
    ) -> list[HealthReport]:
        """Health-check the backends (concurrently) before a batch; see ``preflight.preflight``."""
        return await preflight(
            self.backends, self.runner, self.listeners, names, on_event=on_event, warmup=warmup
        )

    # ------------------------------------------------------------ fan-out

    @contextlib.asynccontextmanager
    async def map(
        self,
        items: Iterable[Any] | AsyncIterable[Any],
        *,
        prompt: str | None = None,
        template: Request | None = None,
        ordered: bool = False,
        fail_fast: bool = False,
        concurrency: int | None = None,
        on_event: OnEvent | None = None,
        on_chunk: OnChunk | None = None,
        preflight: bool = False,
        max_pixels: int | None = None,
    ) -> AsyncIterator[AsyncIterator[Result]]:
        """Fan *items* out; yields an async iterator of ``Result`` as they complete.

        Args:
            items: Image paths, ``bytes``, ``PreparedImage``s, full ``Request``s,
                or ``InputError``s (passed through as failed results) — any
                iterable or async iterable, consumed only as capacity frees up.
            prompt: The prompt for items that are not ``Request``s.
            template: Other request fields for those items (model, max_tokens ...).
            ordered: Yield in input order (bounded reorder buffer).
            fail_fast: Raise the first failure instead of yielding it.
            concurrency: Items in flight for this batch (default: twice the
                largest backend concurrency in the order).  Each backend's own
                ``concurrency`` still bounds its endpoint.
            on_event: Called with each ``Event`` (progress bars, logs): the items'
                events and, while the batch runs, the backends' (outages ...).
            on_chunk: Stream the answers: called with ``(item id, Chunk)`` as text
                arrives (``None`` when an item starts over after a failed try).
                The results are the same as without it.
            preflight: Health-check the backends first (see ``preflight``).
            max_pixels: Pixel budget for images prepared here (default from config).
        """
        if preflight:
            await self.preflight(on_event=on_event)
        settings = self.backends.settings
        base = template or Request()
        if prompt is not None:
            base = attrs.evolve(base, prompt=prompt)
        width = concurrency or 2 * max(
            self.backends.concurrency(n) for n in self.backends.backend_order(base.backend)
        )
        window = anyio.Semaphore(width)
        send, recv = anyio.create_memory_object_stream[tuple[int, Result]](max_buffer_size=width)
        budget = settings.max_pixels if max_pixels is None else max_pixels
        threads = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))
        failure: list[ImageWorksError] = []

        async def one(seq: int, item: Any) -> None:
            result = await self._run_item(item, seq, base, budget, threads, on_event, on_chunk)
            if fail_fast and result.error is not None and not failure:
                failure.append(result.error)
                tg.cancel_scope.cancel()
            await send.send((seq, result))

        async def produce() -> None:
            pending = _aiter(items)  # closed here, not left to the garbage collector (trio warns)
            async with send, contextlib.aclosing(pending), anyio.create_task_group() as workers:
                seq = 0
                async for item in pending:
                    await window.acquire()
                    workers.start_soon(one, seq, item)
                    seq += 1

        if on_event:
            self.listeners.add(on_event)
        # the consumer's own error (or the item iterator's) comes out as itself, not wrapped
        try:
            with ungrouped(), recv:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(produce)
                    order = self.backends.backend_order(base.backend)
                    tg.start_soon(
                        watch_queues, self.backends, [ep for n in order for ep in self.runner.pool(n)]
                    )
                    try:
                        yield _Results(recv, window, ordered)
                    finally:
                        tg.cancel_scope.cancel()
        finally:
            if on_event:
                self.listeners.remove(on_event)
        if failure:
            raise failure[0]

    async def _run_item(
        self,
        item: Any,
        seq: int,
        base: Request,
        budget: int,
        threads: anyio.CapacityLimiter,
        on_event: OnEvent | None,
        on_chunk: OnChunk | None = None,
    ) -> Result:
        rid = _identity(item, seq)
        priority = next(self._priority)
        if on_event:
            on_event(Event("queued", rid))
        try:
            request = await self._to_request(item, base, budget, threads)
        except ImageWorksError as exc:
            result = Result(
                backend=base.backend or self.backends.settings.backend, id=rid, error=exc, item=item
            )
            if on_event:
                on_event(Event("failed", rid, backend=result.backend, error=exc, result=result))
            return result
        return await self.run_one(
            request, item_id=rid, item=item, on_event=on_event, on_chunk=on_chunk, seq=priority
        )

    async def _to_request(
        self, item: Any, base: Request, budget: int, threads: anyio.CapacityLimiter
    ) -> Request:
        if isinstance(item, ImageWorksError):
            raise item
        if isinstance(item, Request):
            if all(isinstance(i, PreparedImage) for i in item.images):
                return item
            images = [await self._prepare(i, budget, threads) for i in item.images]
            return attrs.evolve(item, images=tuple(images))
        return attrs.evolve(base, images=(await self._prepare(item, budget, threads),))

    @staticmethod
    async def _prepare(item: Any, budget: int, threads: anyio.CapacityLimiter) -> PreparedImage:
        """A ``PreparedImage`` from a path or bytes (decoded and resized in a worker thread)."""
        if isinstance(item, PreparedImage):
            return item
        if isinstance(item, str | os.PathLike | bytes | bytearray):
            from .images import aprepare_image

            src = bytes(item) if isinstance(item, bytearray) else item
            return await aprepare_image(src, max_pixels=budget, limiter=threads)
        raise InputError(
            f"cannot use an item of type {type(item).__name__}",
            hint="pass image paths, bytes, PreparedImage or Request objects",
        )


@contextlib.contextmanager
def ungrouped() -> Iterator[None]:
    """Re-raise an exception group that holds (nested) one exception as that exception."""
    try:
        yield
    except BaseExceptionGroup as group:
        inner = unwrap_group(group)
        if inner is group:
            raise
        raise inner from None


def unwrap_group(group: BaseExceptionGroup) -> BaseException:
    """The one exception inside nested single-exception groups, else the group itself."""
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner


def _identity(item: Any, seq: int) -> str:
    if isinstance(item, Request) and item.id:
        return item.id
    if isinstance(item, str | Path):
        return os.fspath(item)
    if isinstance(item, os.PathLike):
        return os.fsdecode(item)
    if isinstance(item, PreparedImage) and item.source != "<bytes>":
        return item.source
    if isinstance(item, InputError) and item.source:
        return item.source
    return f"#{seq}"


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncGenerator[Any, None]:
    if isinstance(items, AsyncIterable):
        async for x in items:
            yield x
    else:
        for x in items:
            yield x
            await anyio.lowlevel.checkpoint()


class _Results:
    """The async iterator ``map`` yields: frees a slot as each result is taken."""

    def __init__(self, recv: Any, window: anyio.Semaphore, ordered: bool) -> None:
        self._recv = recv
        self._window = window
        self._ordered = ordered
        self._next = 0
        self._held: dict[int, Result] = {}

    def __aiter__(self) -> _Results:
        return self

    async def __anext__(self) -> Result:
        if not self._ordered:
            try:
                _, result = await self._recv.receive()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            self._window.release()
            return result
        while self._next not in self._held:
            try:
                seq, result = await self._recv.receive()
            except anyio.EndOfStream:
                raise StopAsyncIteration from None
            self._held[seq] = result
        result = self._held.pop(self._next)
        self._next += 1
        self._window.release()
        return result
