"""The progress bar of ``imageworks describe``: done / failed / in flight, rate, ETA.

Drawn with rich on stderr, only when stderr is a terminal and not ``--quiet``.
"""

from __future__ import annotations

import sys
from types import TracebackType
from typing import Any

from .events import Event

__all__ = ["Progress"]


class Progress:
    """Counts dispatcher events and draws them; a no-op when disabled."""

    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.done = 0
        self.failed = 0
        self.in_flight = 0
        self._active: set[str] = set()
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

    def on_event(self, event: Event) -> None:
        if event.kind in ("started", "retry", "fallback"):
            self._active.add(event.id)
        elif event.kind == "done":
            self.done += 1
            self._active.discard(event.id)
        elif event.kind == "failed":
            self.failed += 1
            self._active.discard(event.id)
        else:
            return
        self.in_flight = len(self._active)
        if self._bar is not None:
            self._refresh()

    def _refresh(self) -> None:
        finished = self.done + self.failed
        elapsed = self._bar.tasks[0].elapsed or 0.0
        rate = f"{finished / elapsed:.1f} img/s" if elapsed > 0 else ""
        status = (
            f"[green]{self.done} ok[/] [red]{self.failed} failed[/] [yellow]{self.in_flight} in flight[/]"
        )
        self._bar.update(self._task, completed=finished, status=status, rate=rate)
