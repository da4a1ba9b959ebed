"""What a backend's hooks receive: its settings, its HTTP client, its state."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import anyio
import anyio.from_thread

from .errors import PluginError, redact_url
from .models import BackendInfo
from .settings import BackendSettings, Settings

__all__ = ["BackendContext"]

S = TypeVar("S", bound=BackendSettings)
T = TypeVar("T")

#: ``(step, total, detail)`` -> None: where the request being answered reports its progress.
Report = Callable[[int, int, "str | None"], None]


class _Reporter:
    __slots__ = ("emit", "thread")

    def __init__(self, emit: Report) -> None:
        self.emit = emit
        self.thread = threading.get_ident()  # the event loop's thread: callbacks run there


_REPORTER: contextvars.ContextVar[_Reporter | None] = contextvars.ContextVar(
    "imageworks_progress", default=None
)


@contextlib.contextmanager
def reporting(emit: Report | None) -> Iterator[None]:
    """Within this block, ``ctx.progress(...)`` of the hook being called reaches *emit* (core only).

    The value travels with the task's context: into tasks the hook starts and into
    worker threads started with ``anyio.to_thread``.
    """
    token = _REPORTER.set(None if emit is None else _Reporter(emit))
    try:
        yield
    finally:
        _REPORTER.reset(token)


class BackendContext:
    """One backend inside one client.

    Attributes:
        name: The backend name.
        info: Its metadata.
        settings: Its resolved settings (an instance of ``info.settings_cls``).
        client_settings: The client-wide settings (max_tokens, temperature ...).
        base_url: The resolved base URL (the backend's default when unset).
        http: An ``HttpClient`` bound to ``base_url``, sharing the endpoint's pool.
        state: Free space for the plugin, kept for the client's lifetime
            (discovered model id, a loaded in-process model ...).
        log: The backend's logger.
    """

    __slots__ = (
        "_closers",
        "base_url",
        "client_settings",
        "http",
        "info",
        "log",
        "name",
        "settings",
        "state",
    )

    def __init__(
        self,
        *,
        name: str,
        info: BackendInfo,
        settings: BackendSettings,
        client_settings: Settings,
        base_url: str,
        http: Any,
    ) -> None:
        self.name = name
        self.info = info
        self.settings = settings
        self.client_settings = client_settings
        self.base_url = base_url
        self.http = http
        self.state: dict[str, Any] = {}
        self.log = logging.getLogger(f"imageworks.backend.{name}")
        self._closers: list[Callable[[], Awaitable[None]]] = []

    @property
    def hint(self) -> str:
        """How to start this backend's server (for "cannot connect" messages)."""
        lines = [f"start the {self.name} server at {redact_url(self.base_url)}, e.g.:"]
        lines += [f"    {h}" for h in self.info.launch_hints]
        lines.append(f"  or point imageworks elsewhere: Client(base_url=...) / backends.{self.name}.base_url")
        return "\n".join(lines) if self.info.launch_hints else lines[-1].strip()

    def settings_as(self, cls: type[S]) -> S:
        """``settings`` as the backend's own settings class *cls*, typed for checkers.

        Raises:
            PluginError: the settings are not a *cls* (the plugin's ``settings_cls`` is another class).
        """
        if not isinstance(self.settings, cls):
            raise PluginError(
                f"backend {self.name!r}: its settings are {type(self.settings).__name__}, not {cls.__name__}",
                plugin=self.name,
                hint="the plugin's backend_info must return settings_cls=" + cls.__name__,
            )
        return self.settings

    @property
    def progress_wanted(self) -> bool:
        """Whether anyone listens to the current request's progress (skip polling for it if not)."""
        return _REPORTER.get() is not None

    def progress(self, step: int, total: int, detail: str | None = None) -> None:
        """Report how far the current request is: *step* of *total* (e.g. denoising steps).

        Call it from the hook (or a task it started, or a worker thread started with
        ``anyio.to_thread``) while the server works; it becomes a ``progress`` event
        for the caller (a progress bar, a host's UI).  It never raises and costs
        nothing when no one listens (see :attr:`progress_wanted`).
        """
        reporter = _REPORTER.get()
        if reporter is None:
            return
        try:
            if threading.get_ident() == reporter.thread:
                reporter.emit(step, total, detail)
            else:  # a worker thread: the callbacks run on the event loop
                anyio.from_thread.run_sync(reporter.emit, step, total, detail)
        except Exception as exc:  # the loop is gone, a callback failed: progress is never fatal
            self.log.debug("progress report dropped: %s", exc)

    async def polling(self, work: Awaitable[T], poll: Callable[[], Awaitable[None]], every: float = 0.5) -> T:
        """Await *work* while calling *poll* every *every* seconds; *work*'s result, or its exception.

        For servers that report progress on a second endpoint while the first one
        works (the WebUI's ``/sdapi/v1/progress`` beside ``txt2img``): *poll* reads
        it and calls :meth:`progress`.  An exception from *poll* is logged at debug
        level and polling goes on; *work*'s exception is raised as it is (no
        exception group).  Polling stops when *work* ends.
        """

        async def loop() -> None:
            while True:
                await anyio.sleep(every)
                try:
                    await poll()
                except Exception as exc:
                    self.log.debug("progress poll failed: %s", exc)

        value: list[T] = []
        failed: list[Exception] = []
        async with anyio.create_task_group() as tg:
            tg.start_soon(loop)
            try:
                value.append(await work)
            except Exception as exc:  # raised below, outside the task group: not wrapped in a group
                failed.append(exc)
            finally:
                tg.cancel_scope.cancel()
        if failed:
            raise failed[0]
        return value[0]

    def on_close(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run *callback* when the client closes (unload a model, close a session)."""
        self._closers.append(callback)

    async def aclose(self) -> None:
        while self._closers:
            await self._closers.pop()()

    def __repr__(self) -> str:
        return f"<BackendContext {self.name} {self.base_url}>"
