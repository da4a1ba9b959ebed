"""The dispatcher: bounded fan-out, retries, fallback order, cooldown.

One item's life: prepare its image (worker thread) -> for each backend in the
fallback order (cooling-down ones skipped unless all are) -> up to
``max_attempts`` tries under the backend's ``CapacityLimiter`` with backoff
honouring ``Retry-After`` -> a ``Result`` (with ``error`` set on failure).
Every try is recorded on the result and logged as one structured line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .errors import (
    BackendError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ImageWorksError,
    InputError,
    PluginError,
)
from .models import Attempt, Chunk, PreparedImage, Request, Result
from .retry import Breaker, backoff_delay, counts_against_backend, ends_item, is_retryable, sleep

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Dispatcher", "Event"]

log = logging.getLogger("imageworks.dispatch")


@attrs.frozen(slots=True)
class Event:
    """Progress of one item, for progress bars and logs.

    Attributes:
        kind: ``queued``, ``started``, ``retry``, ``fallback``, ``done`` or ``failed``.
        id: The item's identity.
        backend: The backend concerned, when there is one.
        attempt: The try number (1-based), when there is one.
        error: The error that caused a retry, fallback or failure.
        result: The final result (``done`` / ``failed``).
    """

    kind: str
    id: str
    backend: str | None = None
    attempt: int | None = None
    error: BaseException | None = None
    result: Result | None = None


OnEvent = Callable[[Event], None]


def _one_line(exc: BaseException) -> str:
    msg = exc.message if isinstance(exc, ImageWorksError) else f"{type(exc).__name__}: {exc}"
    return msg.splitlines()[0] if msg else type(exc).__name__


class Dispatcher:
    """Retries, fallback and fan-out for one ``Client``."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self._limiters: dict[str, anyio.CapacityLimiter] = {}
        self._breakers: dict[str, Breaker] = {}
        self._warned_model: set[str] = set()

    # ------------------------------------------------------------ per backend

    def limiter(self, name: str) -> anyio.CapacityLimiter:
        lim = self._limiters.get(name)
        if lim is None:
            lim = self._limiters[name] = anyio.CapacityLimiter(self.client.concurrency(name))
        return lim

    def breaker(self, name: str) -> Breaker:
        b = self._breakers.get(name)
        if b is None:
            r = self.client.settings.retry
            b = self._breakers[name] = Breaker(threshold=r.cooldown_after, cooldown=r.cooldown)
        return b

    def order(self, request: Request) -> list[str]:
        names = self.client.backend_order(request.backend)
        live = [n for n in names if self.breaker(n).available()]
        return live or names  # all cooling down: still try rather than fail blind

    def _apply_model_policy(self, name: str, request: Request) -> Request:
        if request.model is None:
            return request
        info = self.client.registry.get(name).info
        if info.capabilities.model_switch:
            return request
        if self.client.settings.strict_model:
            raise BackendRejected(
                f"{name} backend cannot switch models per request (asked for {request.model!r})",
                backend=name,
                hint="drop the per-request model, or unset strict_model to let it use its own model",
            )
        if name not in self._warned_model:
            self._warned_model.add(name)
            log.warning(
                "%s cannot switch models per request; using its configured model instead of %r",
                name,
                request.model,
            )
        return attrs.evolve(request, model=None)

    # ------------------------------------------------------------ one item

    async def run_one(
        self,
        request: Request,
        *,
        item_id: str | None = None,
        item: Any = None,
        on_event: OnEvent | None = None,
    ) -> Result:
        """Answer *request* with retries and fallback; never raises for backend/input errors."""
        rid = item_id or request.id or ""
        policy = self.client.settings.retry
        start = time.monotonic()
        deadline = start + policy.deadline
        attempts: list[Attempt] = []
        failures: list[tuple[str, BaseException]] = []
        for name in self.order(request):
            try:
                req = self._apply_model_policy(name, request)
                ctx = self.client.context(name)
                caller = self.client.registry.caller(name, "infer")
            except ImageWorksError as exc:
                return self._failed(rid, item, name, exc, attempts, start, on_event)
            if failures and on_event:
                on_event(Event("fallback", rid, backend=name, error=failures[-1][1]))
            last: BaseException | None = None
            for attempt in range(1, policy.max_attempts + 1):
                t0 = time.monotonic()
                try:
                    with anyio.fail_after(max(0.0, deadline - t0)):
                        async with self.limiter(name):
                            # "started" once the backend's slot is ours: in flight means in flight
                            t0 = time.monotonic()
                            if on_event:
                                kind = "started" if attempt == 1 else "retry"
                                on_event(Event(kind, rid, backend=name, attempt=attempt, error=last))
                            result = await caller(ctx=ctx, request=req)
                except ImageWorksError as exc:
                    last = exc
                except TimeoutError:  # fail_after: the item's deadline ran out mid-try
                    last = BackendTimeout(
                        f"{name}: item {rid or '?'} ran out of its {policy.deadline:g}s deadline",
                        backend=name,
                        hint="raise retry.deadline, or lower the load on the server",
                    )
                except Exception as exc:
                    last = PluginError(f"the {name} plugin raised {type(exc).__name__}: {exc}", plugin=name)
                else:
                    latency = time.monotonic() - t0
                    attempts.append(Attempt(backend=name, latency=latency))
                    self.breaker(name).success()
                    self._log_attempt(rid, name, attempt, latency, None)
                    result = attrs.evolve(
                        result,
                        latency=time.monotonic() - start,
                        attempts=tuple(attempts),
                        id=rid or result.id,
                        item=item,
                    )
                    if on_event:
                        on_event(Event("done", rid, backend=name, attempt=attempt, result=result))
                    return result
                latency = time.monotonic() - t0
                attempts.append(
                    Attempt(
                        backend=name,
                        latency=latency,
                        error=_one_line(last),
                        error_type=type(last).__name__,
                        status=getattr(last, "status", None),
                    )
                )
                self._log_attempt(rid, name, attempt, latency, last)
                if counts_against_backend(last) and self.breaker(name).failure():
                    log.warning(
                        "%s failed %d times in a row; skipping it for %.0fs",
                        name,
                        self.breaker(name).failures,
                        self.breaker(name).cooldown,
                    )
                if ends_item(last):
                    return self._failed(rid, item, name, last, attempts, start, on_event)
                if not is_retryable(last) or attempt == policy.max_attempts:
                    break
                delay = backoff_delay(attempt, policy, last)
                if time.monotonic() + delay > deadline:
                    break
                await sleep(delay)
            assert last is not None
            failures.append((name, last))
            if time.monotonic() >= deadline:
                break
        return self._failed(
            rid, item, failures[-1][0], self._final_error(failures), attempts, start, on_event
        )

    def _failed(
        self,
        rid: str,
        item: Any,
        backend: str,
        exc: BaseException,
        attempts: list[Attempt],
        start: float,
        on_event: OnEvent | None,
    ) -> Result:
        err = exc if isinstance(exc, ImageWorksError) else PluginError(_one_line(exc))
        result = Result(
            backend=backend,
            latency=time.monotonic() - start,
            attempts=tuple(attempts),
            id=rid,
            error=err,
            item=item,
        )
        if on_event:
            on_event(Event("failed", rid, backend=backend, error=err, result=result))
        return result

    def _final_error(self, failures: list[tuple[str, BaseException]]) -> ImageWorksError:
        if len(failures) == 1 and isinstance(failures[0][1], ImageWorksError):
            return failures[0][1]
        lines = []
        hints = []
        for name, exc in failures:
            lines.append(f"  {name}: {_one_line(exc)}")
            if isinstance(exc, ImageWorksError) and exc.hint and exc.hint not in hints:
                hints.append(exc.hint)
        everyone_down = all(isinstance(e, BackendError) and e.retryable for _, e in failures)
        head = "no backend could answer" + (" (all are down or busy)" if everyone_down else "")
        cls = BackendUnavailable if everyone_down else BackendError
        return cls(head + ":\n" + "\n".join(lines), hint="\n".join(hints) or None)

    def _log_attempt(
        self, rid: str, backend: str, attempt: int, latency: float, exc: BaseException | None
    ) -> None:
        if not log.isEnabledFor(logging.INFO if exc is None else logging.WARNING):
            return
        fields = {
            "event": "attempt",
            "item": rid,
            "backend": backend,
            "attempt": attempt,
            "latency_s": round(latency, 4),
            "outcome": "ok" if exc is None else type(exc).__name__,
        }
        if exc is not None:
            fields["error"] = _one_line(exc)
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        log.log(logging.INFO if exc is None else logging.WARNING, text, extra={"imageworks": fields})

    # ------------------------------------------------------------ streaming

    async def stream_one(self, request: Request) -> AsyncIterator[Chunk]:
        """Stream with retries/fallback until the first chunk; after it, errors propagate."""
        policy = self.client.settings.retry
        failures: list[tuple[str, BaseException]] = []
        for name in self.order(request):
            req = self._apply_model_policy(name, request)
            ctx = self.client.context(name)
            caller = self.client.registry.caller(name, "stream")
            last: BaseException | None = None
            for attempt in range(1, policy.max_attempts + 1):
                yielded = False
                # The slot is held across yields, so it is borrowed on behalf of this
                # stream, not of the consumer's task (which may call infer meanwhile).
                limiter, token = self.limiter(name), object()
                await limiter.acquire_on_behalf_of(token)
                try:
                    agen = caller(ctx=ctx, request=req)
                    async with contextlib.aclosing(agen):
                        async for chunk in agen:
                            yielded = True
                            yield chunk
                    self.breaker(name).success()
                    return
                except ImageWorksError as exc:
                    if yielded or ends_item(exc):
                        raise
                    last = exc
                    if counts_against_backend(exc):
                        self.breaker(name).failure()
                    if not is_retryable(exc) or attempt == policy.max_attempts:
                        break
                except Exception as exc:  # a plugin bug: same error type as infer gives
                    raise PluginError(
                        f"the {name} plugin raised {type(exc).__name__}: {exc}", plugin=name
                    ) from exc
                finally:
                    limiter.release_on_behalf_of(token)
                await sleep(backoff_delay(attempt, policy, last))
            if last is not None:
                failures.append((name, last))
        raise self._final_error(failures)

    # ------------------------------------------------------------ preflight

    async def preflight(self, names: Iterable[str] | None = None) -> list[Any]:
        """Health-check the backends in order before a batch.

        A dead primary with a live fallback goes into cooldown with a warning;
        when every backend is down, raise one ``BackendUnavailable`` naming each.
        """
        names = list(names or self.client.backend_order())
        reports = []
        for name in names:
            reports.append(await self.client.health(name))
        live = [r for r in reports if r.ready]
        if not live:
            lines = [f"  {r.backend} at {r.url}: {r.detail or 'not ready'}" for r in reports]
            hints = [r.hint for r in reports if r.hint]
            raise BackendUnavailable(
                "no backend is ready:\n" + "\n".join(lines),
                backend=names[0],
                hint="\n".join(dict.fromkeys(hints)) or None,
            )
        for r in reports:
            if not r.ready:
                self.breaker(r.backend).trip()
                log.warning(
                    "%s at %s is not ready (%s); using %s",
                    r.backend,
                    r.url,
                    r.detail or "no detail",
                    live[0].backend,
                )
        return reports

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
            on_event: Called with each ``Event`` (progress bars, logs).
            preflight: Health-check the backends first (see ``preflight``).
            max_pixels: Pixel budget for images prepared here (default from config).
        """
        if preflight:
            await self.preflight()
        settings = self.client.settings
        base = template or Request()
        if prompt is not None:
            base = attrs.evolve(base, prompt=prompt)
        width = concurrency or 2 * max(
            self.client.concurrency(n) for n in self.client.backend_order(base.backend)
        )
        window = anyio.Semaphore(width)
        send, recv = anyio.create_memory_object_stream[tuple[int, Result]](max_buffer_size=width)
        budget = settings.max_pixels if max_pixels is None else max_pixels
        threads = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))
        failure: list[ImageWorksError] = []

        async def one(seq: int, item: Any) -> None:
            result = await self._run_item(item, seq, base, budget, threads, on_event)
            if fail_fast and result.error is not None and not failure:
                failure.append(result.error)
                tg.cancel_scope.cancel()
            await send.send((seq, result))

        async def produce() -> None:
            async with send, anyio.create_task_group() as workers:
                seq = 0
                async for item in _aiter(items):
                    await window.acquire()
                    workers.start_soon(one, seq, item)
                    seq += 1

        # the consumer's own error (or the item iterator's) comes out as itself, not wrapped
        with ungrouped():
            async with anyio.create_task_group() as tg:
                tg.start_soon(produce)
                try:
                    yield _Results(recv, window, ordered)
                finally:
                    tg.cancel_scope.cancel()
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
    ) -> Result:
        rid = _identity(item, seq)
        if on_event:
            on_event(Event("queued", rid))
        start = time.monotonic()
        try:
            request = await self._to_request(item, base, budget, threads)
        except ImageWorksError as exc:
            return self._failed(
                rid, item, base.backend or self.client.settings.backend, exc, [], start, on_event
            )
        return await self.run_one(request, item_id=rid, item=item, on_event=on_event)

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


async def _aiter(items: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
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
