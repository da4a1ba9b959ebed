"""Progress events: what happens to items and to backends, for progress bars, logs and hosts.

Item events (``id`` is the item's identity): ``queued``, ``started``, ``retry``,
``requeued`` (its backend failed, the item waits for it without using an
attempt), ``fallback``, ``progress`` (the server reported how far it is:
``step`` of ``total``, e.g. denoising steps; from backends that can tell),
``done``, ``failed``.

Backend events (``id`` is ``""``; ``backend`` and ``url`` say which):
``outage`` (it stopped answering), ``loading`` (it answers but is not ready),
``probe`` (a health probe failed; ``seconds`` until the next one), ``paused``
(it asked us to wait: 429 / 503, ``seconds`` long), ``recovered`` (it answers
again; ``seconds`` it was out), ``down`` (out for longer than
``wait_for_backend``: its waiting items fail), ``limit`` (the adaptive
concurrency limit moved by a meaningful step; ``detail`` is the new limit).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import attrs

from .models import Result

__all__ = ["BACKEND_EVENTS", "Event", "Listeners", "OnEvent"]

log = logging.getLogger("imageworks.dispatch")

BACKEND_EVENTS = frozenset({"outage", "loading", "probe", "paused", "recovered", "down", "limit"})


@attrs.frozen(slots=True)
class Event:
    """Progress of one item, or a change in a backend's state.

    Attributes:
        kind: See the module docstring for the kinds.
        id: The item's identity (``""`` for backend events).
        backend: The backend concerned, when there is one.
        attempt: The try number (1-based), when there is one.
        error: The error that caused a retry, fallback, failure or outage.
        result: The final result (``done`` / ``failed``).
        url: The endpoint concerned (credentials removed), for backend events.
        seconds: ``probe``: until the next probe; ``paused``: the pause;
            ``recovered`` / ``down``: how long the backend was out.
        detail: One line on what was seen (a health probe's finding, a progress note).
        step: ``progress``: how far the request is.
        total: ``progress``: the step count it will reach.
    """

    kind: str
    id: str
    backend: str | None = None
    attempt: int | None = None
    error: BaseException | None = None
    result: Result | None = None
    url: str | None = None
    seconds: float | None = None
    detail: str | None = None
    step: int | None = None
    total: int | None = None


OnEvent = Callable[[Event], None]


class Listeners:
    """The callbacks that want events; a failing callback is logged, never raised into the dispatcher."""

    def __init__(self) -> None:
        self._callbacks: list[OnEvent] = []

    def add(self, callback: OnEvent) -> None:
        self._callbacks.append(callback)

    def remove(self, callback: OnEvent) -> None:
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def emit(self, event: Event) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                log.exception("an event callback raised on %s; ignored", event.kind)


def structured(level: int, text: str, fields: dict[str, Any]) -> None:
    """Log one structured line (``record.imageworks`` holds the fields)."""
    if log.isEnabledFor(level):
        log.log(level, text, extra={"imageworks": fields})
