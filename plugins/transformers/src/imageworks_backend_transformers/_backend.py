"""``TransformersBackend``: a Hugging Face vision-language model run inside this process.

No server: the model is loaded lazily, once per client (``ctx.state``), on
the first request.  Work is kept off the event loop: loading, image decoding
and ``generate`` run in worker threads; a stream is fed by transformers'
``TextIteratorStreamer`` from the generating thread and read back through
short thread hops, so the loop never blocks.  One lock per client serialises
generations (one model, one generation at a time: concurrent requests queue
instead of thrashing the CPU or the GPU).  A cancelled or timed-out request
stops its generation at the next token (a stopping criterion watches an
event) and the lock is only released once that thread has ended.  Closing
the client unloads the model (references dropped, ``gc``, CUDA cache
emptied).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio

from imageworks_core.plugin import (
    BackendBase,
    BackendContext,
    BackendTimeout,
    Capabilities,
    Chunk,
    HealthReport,
    ImageWorksError,
    Request,
    Result,
    hookimpl,
    sampling,
)

from ._engine import Engine, Generation, StopTrimmer
from ._locate import ModelLocation, locate, model_ref
from ._runtime import (
    closing_error,
    heavy_modules_loaded,
    loaded_versions,
    not_available_error,
    process_rss_bytes,
)
from ._settings import DEFAULT_MODEL, TransformersSettings

__all__ = ["TransformersBackend"]

_STATE_KEY = "transformers"
#: Seconds a failed model load is remembered: the items after it fail at once with the same error.
LOAD_FAILURE_TTL = 60.0
_END = object()


class _State:
    """Per-client state: the engine, the lock, and counters for health."""

    def __init__(self) -> None:
        # A semaphore, not a Lock: a stream's generator may be finalised (and its turn
        # handed back) by another task than the one that took it; a Lock refuses that.
        self.turn = anyio.Semaphore(1)
        self.engine: Engine | None = None
        self.waiting = 0
        self.running = 0
        self.requests = 0
        self.cancelled = 0
        self.stops: set[threading.Event] = set()
        self.threads: set[threading.Thread] = set()
        self.guard = threading.Lock()  # engine / closed, shared with the loading thread
        self.closed = False
        self.load_failure: tuple[float, ImageWorksError] | None = None

    def track(self, stop: threading.Event, thread: threading.Thread) -> None:
        """Register a generation so that closing the client can stop it and wait for it."""
        self.stops.add(stop)
        self.threads.add(thread)
        if self.closed:
            stop.set()


class TransformersBackend(BackendBase):
    """Hugging Face transformers, in-process (no server)."""

    name = "transformers"
    description = "A Hugging Face transformers vision-language model run in-process (no server; CPU or CUDA)"
    #: No server: a reserved name that never resolves (RFC 2606), shown where other backends show a URL.
    default_base_url = "http://in-process.invalid"
    capabilities = Capabilities(
        vision=True,
        streaming=True,
        max_images=None,
        model_switch=False,
        structured_output=False,
        kinds=("vision", "text"),
    )
    settings_cls = TransformersSettings
    launch_hints = (
        "nothing to start: the model loads inside this process on the first request",
        f"default model {DEFAULT_MODEL} (~0.5 GB download); "
        "offline: --vlm-model /path/to/model-folder or backends.transformers.model",
    )
    docs_url = "plugins/transformers/README.md"

    # ------------------------------------------------------------ hooks

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        return await self._health(ctx)

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        st = self._state(ctx)
        async with self._turn(ctx, st):
            engine = await self._engine(ctx, st)
            prepared = await anyio.to_thread.run_sync(self._prepare, ctx, engine, request)
            stop = threading.Event()
            timeout = request.timeout or ctx.settings.timeout
            gen = await self._run(
                ctx, st, stop, lambda: engine.generate(ctx.name, prepared, stop), timeout, "generation"
            )
        return Result(
            text=gen.text,
            backend=ctx.name,
            model=engine.ref,
            usage=gen.usage,
            finish_reason=gen.finish_reason,
        )

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
        st = self._state(ctx)
        async with self._turn(ctx, st):
            engine = await self._engine(ctx, st)
            prepared = await anyio.to_thread.run_sync(self._prepare, ctx, engine, request)
            streamer = engine.new_streamer()
            stop = threading.Event()
            box: dict[str, Any] = {}
            done = threading.Event()

            def work() -> None:
                try:
                    box["value"] = engine.generate(ctx.name, prepared, stop, streamer)
                except BaseException as exc:
                    box["error"] = exc
                    streamer.end()  # wake the reader
                finally:
                    done.set()

            thread = threading.Thread(target=work, name="imageworks-transformers-stream", daemon=True)
            trimmer = StopTrimmer(prepared.stops)
            idle = ctx.settings.stream_idle_timeout
            st.track(stop, thread)
            thread.start()
            ended = False  # read to the end (or to a stop string): nothing to cancel
            try:
                while True:
                    with anyio.fail_after(idle):
                        piece = await anyio.to_thread.run_sync(_next_piece, streamer, abandon_on_cancel=True)
                    if piece is _END:
                        ended = True
                        break
                    text = trimmer.feed(piece)
                    if text:
                        yield Chunk(text=text, model=engine.ref)
                    if trimmer.hit:
                        ended = True
                        stop.set()  # the stop string is in: no need to generate further
                        break
            except TimeoutError:
                raise BackendTimeout(
                    f"{ctx.name}: no new text from {engine.ref!r} for {idle:g} s",
                    backend=ctx.name,
                    hint=f"raise backends.{ctx.name}.stream_idle_timeout, or lower max_tokens / max_pixels",
                ) from None
            finally:
                await _stop_and_join(st, stop, done, thread, cancel=not ended)
            if "error" in box:
                raise box["error"]
            st.requests += 1
            gen: Generation = box["value"]
            tail = trimmer.flush()
            yield Chunk(text=tail, finish_reason=gen.finish_reason, usage=gen.usage, model=engine.ref)

    # ------------------------------------------------------------ pieces

    def _state(self, ctx: BackendContext) -> _State:
        st = ctx.state.get(_STATE_KEY)
        if st is None:
            st = ctx.state[_STATE_KEY] = _State()

            async def unload() -> None:
                await self._unload(ctx, st)

            ctx.on_close(unload)
        return st

    @contextlib.asynccontextmanager
    async def _turn(self, ctx: BackendContext, st: _State) -> AsyncIterator[None]:
        """Wait for the model (one generation at a time), then hold it."""
        if st.closed:
            raise closing_error(ctx.name)
        st.waiting += 1
        try:
            await st.turn.acquire()
        finally:
            st.waiting -= 1
        st.running = 1
        try:
            yield
        finally:
            st.running = 0
            st.turn.release()

    async def _engine(self, ctx: BackendContext, st: _State) -> Engine:
        """The loaded engine; loads it (in a worker thread) on first use.  Call with the lock held."""
        if st.engine is not None:
            return st.engine
        if st.closed:
            raise closing_error(ctx.name)
        if st.load_failure is not None:
            when, failure = st.load_failure
            if time.monotonic() - when < LOAD_FAILURE_TTL:  # don't hammer the hub / disk item after item
                raise copy.copy(failure)
            st.load_failure = None
        settings = ctx.settings_as(TransformersSettings)
        location = await anyio.to_thread.run_sync(locate, settings)
        if not location.loadable:
            raise not_available_error(ctx.name, location)
        if not location.local:
            ctx.log.warning(
                "%s: %s is %s; downloading it from the Hugging Face Hub now",
                ctx.name,
                location.ref,
                location.why,
            )

        def load() -> None:
            # Stored from the thread, so a load that finishes after its caller was
            # cancelled is kept for the next request rather than thrown away.
            engine = Engine.load(ctx.name, settings, location)
            with st.guard:
                if not st.closed:
                    st.engine = engine
                    return
            engine.close()  # the client closed while we were loading
            raise closing_error(ctx.name)

        try:
            await anyio.to_thread.run_sync(load)
        except ImageWorksError as exc:
            if not st.closed:
                st.load_failure = (time.monotonic(), exc)
            raise
        assert st.engine is not None
        ctx.log.info(
            "%s: loaded %s on %s (%s) in %.1f s",
            ctx.name,
            st.engine.ref,
            st.engine.device,
            st.engine.dtype,
            st.engine.load_seconds,
        )
        return st.engine

    @staticmethod
    def _prepare(ctx: BackendContext, engine: Engine, request: Request) -> Any:
        asked = sampling(ctx, request)
        return engine.prepare(
            ctx.name,
            request,
            max_tokens=asked.max_tokens,
            temperature=asked.temperature,
            settings=ctx.settings_as(TransformersSettings),
        )

    async def _run(
        self,
        ctx: BackendContext,
        st: _State,
        stop: threading.Event,
        fn: Callable[[], Generation],
        timeout: float | None,
        what: str,
    ) -> Generation:
        """Run *fn* in its own thread; on cancel or timeout set *stop* and wait for the thread."""
        box: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            finally:
                done.set()

        thread = threading.Thread(target=work, name="imageworks-transformers-generate", daemon=True)
        st.track(stop, thread)
        thread.start()
        try:
            with anyio.fail_after(timeout):
                await anyio.to_thread.run_sync(done.wait, abandon_on_cancel=True)
        except TimeoutError:
            model = model_ref(ctx.settings_as(TransformersSettings))
            raise BackendTimeout(
                f"{ctx.name}: {what} with {model!r} took longer than {timeout:g} s",
                backend=ctx.name,
                hint=f"raise backends.{ctx.name}.timeout (or Request.timeout), or lower max_tokens",
            ) from None
        finally:
            await _stop_and_join(st, stop, done, thread, cancel=True)
        if "error" in box:
            raise box["error"]
        st.requests += 1
        return box["value"]

    async def _unload(self, ctx: BackendContext, st: _State) -> None:
        # Not through st.turn: a stream abandoned without aclose() may hold it in this very task.
        with st.guard:
            st.closed = True
            engine, st.engine = st.engine, None
        for stop in list(st.stops):
            stop.set()
        for thread in list(st.threads):  # each stops within a token
            await anyio.to_thread.run_sync(thread.join)
            st.threads.discard(thread)
        if engine is not None:
            await anyio.to_thread.run_sync(engine.close)
            ctx.log.info("%s: unloaded %s", ctx.name, engine.ref)

    async def _health(self, ctx: BackendContext) -> HealthReport:
        st = self._state(ctx)
        settings = ctx.settings_as(TransformersSettings)
        ref = model_ref(settings)
        versions = loaded_versions()
        metrics: dict[str, float] = {"running": float(st.running), "waiting": float(st.waiting)}
        rss = process_rss_bytes()
        if rss is not None:
            metrics["rss_bytes"] = float(rss)
        engine = st.engine
        if engine is not None:
            metrics.update(engine.memory())
            metrics.update(
                loaded=1.0,
                model_local=1.0,
                requests=float(st.requests),
                cancelled=float(st.cancelled),
                load_seconds=engine.load_seconds,
            )
            return HealthReport(
                backend=ctx.name,
                url=ctx.base_url,
                reachable=True,
                ready=True,
                models=(engine.ref,),
                version=versions,
                detail=(
                    f"loaded on {engine.device} ({engine.dtype}); "
                    f"{engine.param_bytes / 1e6:.1f} MB of weights"
                    + (f", process RSS {rss / 1e6:.0f} MB" if rss else "")
                ),
                metrics=metrics,
            )
        missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
        if missing:
            return HealthReport(
                backend=ctx.name,
                url=ctx.base_url,
                reachable=False,
                ready=False,
                models=(ref,),
                version=versions,
                detail=f"not loaded: {' and '.join(missing)} not installed",
                hint="pip install imageworks-backend-transformers (it depends on transformers and torch)",
                metrics=metrics,
            )
        location: ModelLocation = await anyio.to_thread.run_sync(locate, settings)
        metrics.update(loaded=0.0, model_local=1.0 if location.local else 0.0)
        target = f"{_device_text(settings)}, dtype {settings.dtype}"
        if location.local:
            detail = f"not loaded yet: {location.why}; loads on the first request ({target})"
        elif location.loadable:
            detail = (
                f"not loaded yet: {location.why}; the first request downloads it from the "
                f"Hugging Face Hub, then loads it ({target})"
            )
        else:
            exc = not_available_error(ctx.name, location)
            return HealthReport(
                backend=ctx.name,
                url=ctx.base_url,
                reachable=location.kind != "missing",
                ready=False,
                models=(ref,),
                version=versions,
                detail=f"not loaded: {exc.message}",
                hint=exc.hint,
                metrics=metrics,
            )
        return HealthReport(
            backend=ctx.name,
            url=ctx.base_url,
            reachable=True,
            ready=True,
            models=(ref,),
            version=versions,
            detail=detail,
            metrics=metrics,
        )


def _device_text(settings: TransformersSettings) -> str:
    if settings.device != "auto":
        return f"device {settings.device}"
    if heavy_modules_loaded():
        import torch

        return f"device auto -> {'cuda' if torch.cuda.is_available() else 'cpu'}"
    return "device auto (CUDA when available, else CPU)"


def _next_piece(streamer: Any) -> Any:
    return next(streamer, _END)


async def _stop_and_join(
    st: _State, stop: threading.Event, done: threading.Event, thread: threading.Thread, *, cancel: bool
) -> None:
    """Stop the generation if *cancel* and it still runs; wait (shielded) until its thread ends.

    The caller holds the lock, so the next generation cannot start before this one has ended.
    """
    if not done.is_set():
        if cancel:
            stop.set()
            st.cancelled += 1
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(thread.join)
    st.stops.discard(stop)
    st.threads.discard(thread)
