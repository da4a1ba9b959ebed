"""One item's tries: which backend, the hook call, who is to blame, retry or fall back.

For each try the item picks (``routing``) the first backend in its order whose endpoint
accepts requests (one that is out is skipped while a later one is up, so the
fallback takes the work during an outage and the primary gets it back once it
recovers), waits for a slot there, calls the plugin, and classifies a failure
by the error's class (``errors.py``):

* ``outage`` errors (refused, reset, 502/503/504, 429, loading) are the
  backend's: the endpoint is paused or taken out, and the item waits for it
  (or a fallback) without using an attempt — bounded by ``wait_for_backend``;
* every other error is the item's: a retryable one uses an attempt and is
  retried after a backoff; after ``max_attempts`` the next backend is tried;
  a 4xx or an input error ends the item at once.

Each try is recorded on the result (``Attempt``) and logged as one structured
line.  A streamed try feeds ``on_chunk`` as it goes; its result is assembled
from the chunks and is otherwise identical to a non-streamed one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any

import anyio
import attrs

from .context import Report, reporting
from .endpoint import Endpoint
from .errors import (
    BackendDown,
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    ImageWorksError,
    PluginError,
    redact_url,
)
from .events import Event, OnEvent, structured
from .models import Attempt, Chunk, Request, Result, Usage
from .retry import backoff_delay, ends_item, sleep
from .routing import Backends, Routing

__all__ = ["Backends", "ItemRunner", "OnChunk", "one_line"]

log = logging.getLogger("imageworks.dispatch")

#: ``on_chunk(item_id, chunk)``; ``chunk`` is ``None`` when a streamed try failed after
#: some text and the item starts again (whatever was shown for it is void).
OnChunk = Callable[[str, Chunk | None], None]


def one_line(exc: BaseException) -> str:
    msg = exc.message if isinstance(exc, ImageWorksError) else f"{type(exc).__name__}: {exc}"
    return msg.splitlines()[0] if msg else type(exc).__name__


@attrs.define
class _Item:
    """The running state of one item."""

    rid: str
    seq: int
    item: Any
    start: float
    attempts: list[Attempt] = attrs.Factory(list)
    failures: list[tuple[str, BaseException]] = attrs.Factory(list)
    tries: dict[str, int] = attrs.Factory(dict)
    spent: float = 0.0  # seconds trying and backing off (the deadline's clock)
    queued: float = 0.0  # seconds waiting for a slot or for a backend to come back
    used: list[str] = attrs.Factory(list)  # backends that got a try, in order
    last_error: BaseException | None = None
    outage_marks: dict[str, int] = attrs.Factory(dict)  # endpoint's success count at our last outage
    last_url: str | None = None  # the endpoint of the last try

    def poisoned(self, key: str, ep: Endpoint, error: ImageWorksError) -> bool:
        """This item's connection failed again after the endpoint served others: the item's fault.

        (A request that kills the connection each time must not pause the batch
        for ever; a busy server's 429 / 503 always stays the backend's.)
        """
        if isinstance(error, BackendOverloaded):
            return False
        before = self.outage_marks.get(key)
        self.outage_marks[key] = ep.successes
        return before is not None and ep.successes > before


class ItemRunner(Routing):
    """Runs items against the backends of one client (their endpoints and breakers: ``Routing``)."""

    # ------------------------------------------------------------ one item

    async def run(
        self,
        request: Request,
        *,
        item_id: str | None = None,
        item: Any = None,
        seq: int = 0,
        on_event: OnEvent | None = None,
        on_chunk: OnChunk | None = None,
        hook: str | None = None,
    ) -> Result:
        """Answer *request* with retries, outages and fallback; never raises for backend/input errors.

        *hook* names another hook than ``infer`` / ``stream`` (``generate_image``): its request
        carries ``backend``, ``model``, ``fallback``, ``timeout`` and ``id`` as ``Request`` does, and
        its result has ``Result``'s ``latency``, ``queue_time``, ``attempts``, ``id``, ``item`` and
        ``base_url`` (a failure still comes back as a ``Result`` with ``error`` set).
        """
        rid = item_id or request.id or ""
        policy = self.backends.settings.retry
        st = _Item(rid=rid, seq=seq, item=item, start=time.monotonic())
        names = self.order(request)
        while True:
            picked = await self._pick(names, {f for f, _ in st.failures})
            if picked is None:
                return self._failed(st, st.failures[-1][0], self._final_error(st.failures), on_event)
            name, ep = picked
            ctx = ep.context
            try:
                req = self.apply_model_policy(name, request)
                caller = self.backends.hook(name, hook or ("stream" if on_chunk else "infer"))
            except ImageWorksError as exc:
                return self._failed(st, name, exc, on_event)
            pool = self.pool(name)
            waited = time.monotonic()
            try:
                got = await ep.acquire(
                    seq,
                    patience=self._patience(names, name, ep),
                    leave_if_out=len(names) > 1 or len(pool) > 1,
                )
            except BackendDown as exc:
                st.queued += time.monotonic() - waited
                if all(e.is_down() for e in pool):  # the whole pool is gone: try the next backend
                    st.failures.append((name, exc))
                continue
            st.queued += time.monotonic() - waited
            if not got:
                continue
            if name not in st.used:
                if st.used and on_event:
                    on_event(Event("fallback", rid, backend=name, error=st.last_error))
                st.used.append(name)
            tries = st.tries.get(name, 0)
            sends = sum(1 for a in st.attempts if a.backend == name)  # outages included
            if on_event:
                kind = "retry" if sends else "started"
                on_event(Event(kind, rid, backend=name, attempt=sends + 1, error=st.last_error))
            t0 = time.monotonic()
            st.last_url = ep.url
            error: BaseException | None = None
            result: Result | None = None
            blamed = False  # the endpoint took the blame (outage / pause): the item waits
            try:
                with reporting(_progress_to(on_event, rid, name, sends + 1)):
                    result = await self._try(caller, ctx, req, st, name, policy.deadline, on_chunk)
            except BaseException as exc:
                error = exc if isinstance(exc, ImageWorksError) else None
                if error is None:
                    if not isinstance(exc, Exception):
                        raise  # cancellation and friends
                    error = PluginError.raised_by(name, exc)
                elif error.outage and ep.tracking and not st.poisoned(ep.url, ep, error):
                    blamed = ep.failure(error)  # before the slot is freed: no one else goes in
                elif isinstance(error, BackendTimeout):
                    ep.timed_out()
            finally:
                ep.release()
            took = time.monotonic() - t0
            st.spent += took
            if result is not None:
                ep.success(took)
                self.breaker(name).success()
                st.attempts.append(Attempt(backend=name, latency=took))
                _log_attempt(rid, name, sends + 1, took, None)
                result = attrs.evolve(
                    result,
                    latency=took,
                    queue_time=st.queued,
                    attempts=tuple(st.attempts),
                    id=rid or result.id,
                    item=item,
                    base_url=ep.url,
                )
                if on_event:
                    on_event(Event("done", rid, backend=name, attempt=sends + 1, result=result))
                return result
            assert error is not None
            st.last_error = error
            st.attempts.append(
                Attempt(
                    backend=name,
                    latency=took,
                    error=one_line(error),
                    error_type=type(error).__name__,
                    status=getattr(error, "status", None),
                )
            )
            if blamed:  # the backend's failure: it pauses or goes out, the item waits (no attempt used)
                _log_attempt(rid, name, sends + 1, took, error, level=logging.INFO)
                if on_chunk:
                    on_chunk(rid, None)
                if on_event:
                    on_event(Event("requeued", rid, backend=name, attempt=sends + 1, error=error))
                continue
            st.tries[name] = tries = tries + 1
            if ends_item(error):
                _log_attempt(rid, name, tries, took, error, level=logging.WARNING)
                return self._failed(st, name, error, on_event)
            retry_here = getattr(error, "retryable", False) and tries < policy.max_attempts
            _log_attempt(rid, name, tries, took, error, level=logging.INFO if retry_here else logging.WARNING)
            if isinstance(error, BackendError) and getattr(error, "retryable", False):
                b = self.breaker(name)
                if b.failure():
                    log.warning(
                        "%s failed %d times in a row; skipping it for %.0fs", name, b.failures, b.cooldown
                    )
            if on_chunk:
                on_chunk(rid, None)
            if retry_here:
                delay = backoff_delay(tries, policy, error)
                if st.spent + delay <= policy.deadline:
                    await sleep(delay)
                    st.spent += delay
                    continue
            st.failures.append((name, error))
            if st.spent >= policy.deadline:
                return self._failed(st, name, self._final_error(st.failures), on_event)

    async def _try(
        self,
        caller: Any,
        ctx: Any,
        req: Request,
        st: _Item,
        name: str,
        deadline: float,
        on_chunk: OnChunk | None,
    ) -> Result:
        """One try under the item's remaining deadline and (non-streamed) the try's total limit."""
        left = max(0.0, deadline - st.spent)
        total = req.timeout if req.timeout is not None else ctx.settings.timeout
        limit = left if on_chunk else min(left, total)
        scope = anyio.move_on_after(limit)
        with scope:
            if on_chunk is None:
                return await caller(ctx=ctx, request=req)
            return await self._collect(caller, ctx, req, st.rid, on_chunk)
        if limit >= left:
            raise BackendTimeout(
                f"{name}: item {st.rid or '?'} ran out of its {deadline:g}s deadline",
                backend=name,
                hint="raise retry.deadline, or lower the load on the server",
            )
        raise BackendTimeout(
            f"{name} at {redact_url(ctx.base_url)} took longer than {total:g}s for one try",
            backend=name,
            url=ctx.base_url,
            hint=f"raise backends.{name}.timeout (Client(timeout=...)), or lower Request(max_tokens=...)",
        )

    @staticmethod
    async def _collect(caller: Any, ctx: Any, req: Request, rid: str, on_chunk: OnChunk) -> Result:
        text: list[str] = []
        model, usage, finish = "", None, None
        agen = caller(ctx=ctx, request=req)
        async with contextlib.aclosing(agen):
            async for chunk in agen:
                text.append(chunk.text)
                model = chunk.model or model
                usage = chunk.usage or usage
                finish = chunk.finish_reason or finish
                on_chunk(rid, chunk)
        return Result(
            text="".join(text), backend=ctx.name, model=model, usage=usage or Usage(), finish_reason=finish
        )

    def _failed(self, st: _Item, backend: str, exc: BaseException, on_event: OnEvent | None) -> Result:
        err = exc if isinstance(exc, ImageWorksError) else PluginError(one_line(exc))
        result = Result(
            backend=backend,
            latency=st.attempts[-1].latency if st.attempts else 0.0,
            queue_time=st.queued,
            attempts=tuple(st.attempts),
            id=st.rid,
            error=err,
            item=st.item,
            base_url=st.last_url,
        )
        if on_event:
            on_event(Event("failed", st.rid, backend=backend, error=err, result=result))
        return result

    @staticmethod
    def _final_error(failures: list[tuple[str, BaseException]]) -> ImageWorksError:
        if len(failures) == 1 and isinstance(failures[0][1], ImageWorksError):
            return failures[0][1]
        downs = [e for _, e in failures if isinstance(e, BackendDown)]
        if downs and len(downs) == len(failures):
            return downs[0] if len(downs) == 1 else _joined(failures, BackendDown)
        busy = [e for _, e in failures if isinstance(e, BackendOverloaded)]
        if len(busy) == len(failures):  # every backend busy: 503 + the soonest Retry-After
            joined = _joined(failures, BackendOverloaded, everyone_down=True)
            waits = [e.retry_after for e in busy if e.retry_after is not None]
            joined.retry_after = min(waits) if waits else None  # type: ignore[attr-defined]
            return joined
        everyone_down = all(
            isinstance(e, BackendUnavailable) or (isinstance(e, BackendError) and e.retryable)
            for _, e in failures
        )
        return _joined(failures, BackendUnavailable if everyone_down else BackendError, everyone_down)

    # ------------------------------------------------------------ streaming (Client.stream)

    async def stream(self, request: Request) -> AsyncGenerator[Chunk, None]:
        """Stream one answer; outages, retries and fallback apply until the first chunk, then errors raise."""
        policy = self.backends.settings.retry
        st = _Item(rid=request.id or "", seq=0, item=None, start=time.monotonic())
        names = self.order(request)
        while True:
            picked = await self._pick(names, {f for f, _ in st.failures})
            if picked is None:
                raise self._final_error(st.failures)
            name, ep = picked
            req = self.apply_model_policy(name, request)
            ctx = ep.context
            caller = self.backends.hook(name, "stream")
            pool = self.pool(name)
            try:
                got = await ep.acquire(
                    0, patience=self._patience(names, name, ep), leave_if_out=len(names) > 1 or len(pool) > 1
                )
            except BackendDown as exc:
                if all(e.is_down() for e in pool):
                    st.failures.append((name, exc))
                continue
            if not got:
                continue
            yielded = False
            error: ImageWorksError | None = None
            blamed = False
            try:
                agen = caller(ctx=ctx, request=req)
                async with contextlib.aclosing(agen):
                    async for chunk in agen:
                        yielded = True
                        yield chunk
                ep.success()
                self.breaker(name).success()
                return
            except ImageWorksError as exc:
                if yielded:
                    raise
                error = exc
                if exc.outage and ep.tracking:
                    blamed = ep.failure(exc)
            except Exception as exc:  # a plugin bug: same error type as infer gives
                raise PluginError.raised_by(name, exc) from exc
            finally:
                ep.release()
            if blamed:
                continue
            if ends_item(error):
                raise error
            tries = st.tries[name] = st.tries.get(name, 0) + 1
            if error.retryable:
                self.breaker(name).failure()
                if tries < policy.max_attempts:
                    await sleep(backoff_delay(tries, policy, error))
                    continue
            st.failures.append((name, error))


def _joined(
    failures: list[tuple[str, BaseException]], cls: type[BackendError], everyone_down: bool = False
) -> BackendError:
    lines = []
    hints: list[str] = []
    for name, exc in failures:
        lines.append(f"  {name}: {one_line(exc)}")
        if isinstance(exc, ImageWorksError) and exc.hint and exc.hint not in hints:
            hints.append(exc.hint)
    head = "no backend could answer" + (" (all are down or busy)" if everyone_down else "")
    return cls(head + ":\n" + "\n".join(lines), hint="\n".join(hints) or None)


def _progress_to(on_event: OnEvent | None, rid: str, backend: str, attempt: int) -> Report | None:
    """Where ``ctx.progress`` of this try goes: a ``progress`` event, when anyone listens."""
    if on_event is None:
        return None

    def emit(step: int, total: int, detail: str | None) -> None:
        on_event(
            Event("progress", rid, backend=backend, attempt=attempt, step=step, total=total, detail=detail)
        )

    return emit


def _log_attempt(
    rid: str,
    backend: str,
    attempt: int,
    latency: float,
    exc: BaseException | None,
    *,
    level: int = logging.INFO,
) -> None:
    fields: dict[str, Any] = {
        "event": "attempt",
        "item": rid,
        "backend": backend,
        "attempt": attempt,
        "latency_s": round(latency, 4),
        "outcome": "ok" if exc is None else type(exc).__name__,
    }
    if exc is not None:
        fields["error"] = one_line(exc)
    structured(level, " ".join(f"{k}={v}" for k, v in fields.items()), fields)
