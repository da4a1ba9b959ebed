"""The progress bar of ``imageworks describe``: done / failed / in flight, rate, ETA.

Drawn with rich on stderr, only when stderr is a terminal and not ``--quiet``.
While a backend is out the bar says so, live: ``vllm down for 0:42, retrying
in 5s, 812 waiting`` (the state comes from the dispatcher's backend events).
"""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

from .events import Event

__all__ = ["Progress"]


class _Outage:
    """What the bar shows about one backend that is not answering."""

    __slots__ = ("kind", "next_probe", "since")

    def __init__(self, kind: str, since: float) -> None:
        self.kind = kind  # "outage", "loading", "paused" or "down"
        self.since = since
        self.next_probe: float | None = None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(max(0.0, seconds)), 60)
    return f"{minutes}:{secs:02d}"


class Progress:
    """Counts dispatcher events and draws them; a no-op when disabled."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self._active: set[str] = set()
        self._waiting: set[str] = set()
        self.outages: dict[str, _Outage] = {}
        #: Each backend's concurrency limit, as its ``limit`` events report it.
        self.limits: dict[str, int] = {}
        self.total: int | None = None
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("[bold]describing"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"),
                _backend_column(self),
                TextColumn("[cyan]{task.fields[rate]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("describe", total=None, status="", rate="")
        return self

    def __exit__(self, *exc: object | TracebackType | None) -> None:
        if self._bar is not None:
            self._refresh()
            self._bar.__exit__(None, None, None)
            self._bar = None

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    @property
    def waiting(self) -> int:
        """Items waiting for a backend to come back."""
        return len(self._waiting)

    def on_event(self, event: Event) -> None:
        if not event.id:
            self._on_backend_event(event)
            return
        if event.kind in ("started", "retry", "fallback"):
            self._active.add(event.id)
            self._waiting.discard(event.id)
        elif event.kind == "requeued":
            self._active.discard(event.id)
            self._waiting.add(event.id)
        elif event.kind in ("done", "failed"):
            if event.kind == "done":
                self.done += 1
            else:
                self.failed += 1
            self._active.discard(event.id)
            self._waiting.discard(event.id)
        else:
            return
        self.in_flight = len(self._active)
        if self._bar is not None:
            self._refresh()

    def _on_backend_event(self, event: Event) -> None:
        name = event.backend or "?"
        now = time.monotonic()
        if event.kind in ("outage", "loading", "paused"):
            known = self.outages.get(name)
            if known is None or known.kind == "paused":
                self.outages[name] = _Outage(event.kind, now)
            else:
                known.kind = event.kind if event.kind != "paused" else known.kind
            if event.kind == "paused" and event.seconds is not None:
                self.outages[name].next_probe = now + event.seconds
        elif event.kind == "probe" and name in self.outages:
            self.outages[name].next_probe = now + (event.seconds or 0.0)
        elif event.kind == "down" and name in self.outages:
            self.outages[name].kind = "down"
        elif event.kind == "recovered":
            self.outages.pop(name, None)
        elif event.kind == "limit" and event.detail:
            self.limits[name] = int(event.detail)
        if self._bar is not None:
            self._refresh()

    def backend_status(self, now: float | None = None) -> str:
        """One line on the backends that are not answering ("" when all are)."""
        now = time.monotonic() if now is None else now
        parts = []
        for name, o in self.outages.items():
            if o.kind == "paused":
                if o.next_probe is not None and o.next_probe <= now:
                    continue  # the pause is over
                text = f"{name} asked us to wait"
            elif o.kind == "down":
                text = f"gave up on {name} after {_clock(now - o.since)}"
            else:
                state = "loading" if o.kind == "loading" else "down"
                text = f"{name} {state} for {_clock(now - o.since)}"
            if o.next_probe is not None and o.kind != "down":
                text += f", retrying in {max(0.0, o.next_probe - now):.0f}s"
            parts.append(text)
        if parts and self._waiting:
            parts.append(f"{len(self._waiting)} waiting")
        return ", ".join(parts)

    def _refresh(self) -> None:
        finished = self.done + self.failed
        elapsed = self._bar.tasks[0].elapsed or 0.0
        rate = f"{finished / elapsed:.1f} img/s" if elapsed > 0 else ""
        status = (
            f"[green]{self.done} ok[/] [red]{self.failed} failed[/] [yellow]{self.in_flight} in flight[/]"
        )
        if self.limits:
            status += " [dim](limit " + ", ".join(f"{n} {v}" for n, v in self.limits.items()) + ")[/]"
        self._bar.update(self._task, completed=finished, status=status, rate=rate)


def _backend_column(progress: Progress) -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class BackendColumn(ProgressColumn):
        """Recomputed at each redraw, so the outage clock and countdown tick."""

        def render(self, task: object) -> Text:
            line = progress.backend_status()
            return Text(line, style="bold red") if line else Text("")

    return BackendColumn()
