"""Preflight: check (and optionally warm) every backend before a batch.

A backend that answers but is still loading its model is waited for, within
``wait_for_backend``, when no other one is ready; a dead or loading one with a
live one beside it is taken out of service (probed until it answers); when
none is ready, one ``BackendUnavailable`` names each.  The endpoints of one
backend must serve the same model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

import anyio
import attrs

from .attempts import Backends, ItemRunner
from .endpoint import Endpoint
from .errors import BackendUnavailable, ConfigError, ImageWorksError, PluginError
from .events import Listeners, OnEvent
from .models import HealthReport

__all__ = ["preflight"]

log = logging.getLogger("imageworks.dispatch")


async def preflight(
    backends: Backends,
    runner: ItemRunner,
    listeners: Listeners,
    names: Iterable[str] | None = None,
    *,
    on_event: OnEvent | None = None,
    warmup: bool = False,
) -> list[HealthReport]:
    """Health-check the backends (concurrently) before a batch.

    A backend that answers but is not ready (still loading its model) is
    waited for, within ``wait_for_backend``, when no other one is ready.  A
    dead or loading backend with a live one beside it is taken out of
    service (probed until it answers) with a warning.  When none is ready,
    raise one ``BackendUnavailable`` naming each.

    With *warmup*, each backend found ready then gets one tiny request
    (``Client.warmup``), all of them concurrently; a failed warm-up counts
    as a failed health check, with the error's own message.
    """
    names = list(names or backends.backend_order())
    eps = [ep for name in names for ep in runner.pool(name)]
    reports: list[HealthReport | None] = [None] * len(eps)

    async def check(i: int, ep: Endpoint) -> None:
        report = await backends.health_of(ep.context)
        if report.ready and warmup:
            report = await _warm(backends, report, ep)
        reports[i] = report

    async with anyio.create_task_group() as tg:
        for i, ep in enumerate(eps):
            tg.start_soon(check, i, ep)
    done = [r for r in reports if r is not None]
    pairs = list(zip(eps, done, strict=True))
    live = [r for r in done if r.ready]
    loading = [(ep, r) for ep, r in pairs if r.reachable and not r.ready and not r.rejected]
    wait = backends.settings.wait_for_backend
    if not live and loading and wait > 0:
        if on_event:
            listeners.add(on_event)
        try:
            live = await _wait_loading(backends, loading)
        finally:
            if on_event:
                listeners.remove(on_event)
        ready = {r.url: r for r in live}
        pairs = [(ep, ready.get(r.url, r)) for ep, r in pairs]
        done = [r for _, r in pairs]
    if not live:
        lines = [f"  {r.backend} at {r.url}: {r.detail or 'not ready'}" for r in done]
        hints = [r.hint for r in done if r.hint]
        waited = any(ep.is_down() for ep, _ in loading)
        raise BackendUnavailable(
            "no backend is ready"
            + (f" (waited {wait:g}s for loading ones)" if waited else "")
            + ":\n"
            + "\n".join(lines),
            backend=names[0],
            hint="\n".join(dict.fromkeys(hints)) or None,
        )
    _check_pool_models(pairs)
    for ep, r in pairs:
        if r.ready:
            ep.mark_up()
            continue
        if ep.tracking:
            ep.mark_out(BackendUnavailable(r.detail or "not ready", backend=r.backend), loading=r.reachable)
        elif len(runner.pool(r.backend)) == 1:
            runner.breaker(r.backend).trip()
        log.warning(
            "%s at %s is not ready (%s); using %s at %s",
            r.backend,
            r.url,
            r.detail or "no detail",
            live[0].backend,
            live[0].url,
        )
    return done


async def _warm(backends: Backends, report: HealthReport, ep: Endpoint) -> HealthReport:
    """Warm a ready backend up; a failure turns its report into a failed health check, same message."""
    name = report.backend
    start = time.monotonic()
    try:
        await backends.warmup(name, context=ep.context)
    except ImageWorksError as exc:
        return attrs.evolve(
            report, ready=False, reachable=False, detail=exc.message, hint=exc.hint or report.hint
        )
    except Exception as exc:  # a plugin bug: reported like health reports one
        bug = PluginError.raised_by(name, exc)
        return attrs.evolve(report, ready=False, reachable=False, detail=bug.message, hint=bug.hint)
    log.info("%s at %s warmed up in %.2fs", name, report.url, time.monotonic() - start)
    return report


async def _wait_loading(
    backends: Backends, loading: list[tuple[Endpoint, HealthReport]]
) -> list[HealthReport]:
    """Probe the loading endpoints until one is ready or all gave up; the ready ones' reports."""
    for ep, r in loading:
        ep.mark_out(BackendUnavailable(r.detail or "not ready", backend=r.backend), loading=True)
    eps = [ep for ep, _ in loading]
    while True:
        ready = [ep for ep in eps if ep.accepting()]
        if ready:
            return [await backends.health_of(ep.context) for ep in ready]
        if all(ep.is_down() for ep in eps):
            return []
        for ep in eps:
            if ep.probe_due():
                await ep.probe()
        await anyio.sleep(0.05)


def _check_pool_models(pairs: list[tuple[Endpoint, HealthReport]]) -> None:
    """All ready endpoints of one backend must serve the same models (else answers would mix models)."""
    by_backend: dict[str, list[HealthReport]] = {}
    for ep, r in pairs:
        if r.ready and r.models:
            by_backend.setdefault(ep.backend, []).append(r)
    for name, reports in by_backend.items():
        if len(reports) < 2:
            continue
        model = _configured_model(pairs, name)
        if model:  # on all or on none (a server may accept a name it does not list)
            has = {model in r.models for r in reports}
            if len(has) == 1:
                continue
        elif len({frozenset(r.models) for r in reports}) == 1:
            continue
        lines = "\n".join(f"  {r.url}: {', '.join(r.models)}" for r in reports)
        raise ConfigError(
            f"the endpoints of {name} do not serve the same model"
            + (f" ({model!r} is missing on some)" if model else "")
            + f":\n{lines}",
            key=f"backends.{name}.base_url",
            hint=f"point backends.{name}.base_url at servers of one model, or set backends.{name}.model",
        )


def _configured_model(pairs: list[tuple[Endpoint, HealthReport]], name: str) -> str | None:
    for ep, _ in pairs:
        if ep.backend == name and ep.context is not None:
            model = ep.context.settings.model
            return model if isinstance(model, str) else None
    return None
