"""``--vlm-backend auto``: use the first backend that is healthy now.

Opt-in (``backend = "auto"``; ``vllm`` stays the default).  The candidates
are ``fallback`` when it is set, else the installed ones of
``vllm, lmdeploy, triton, openai``, in that order; the in-process
``transformers`` backend, when installed, comes last.  Each is
health-checked in turn and the first one that is ready wins.  A backend
that runs its model in-process (it reports ``model_local`` in its health
metrics) counts as healthy only when the model is loaded or on local disk:
``auto`` never starts a multi-gigabyte download.

The generic ``openai`` backend, when its ``base_url`` and ``preset`` are not
configured, is tried at its default URL and then at the default URL of each
local server in ``LOCAL_PRESETS`` (Ollama, llama.cpp's server, LM Studio); the
first one that answers is used with that preset.

The choice and the reasons the others were skipped are logged on the
``imageworks.auto`` logger at warning level, so the command line shows them.
When nothing is usable, ``BackendUnavailable`` lists every candidate with
what was seen and what to do.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import attrs

from .errors import BackendUnavailable, ImageWorksError
from .models import HealthReport

if TYPE_CHECKING:
    from .client import Client

__all__ = ["DEFAULT_ORDER", "LAST_RESORT", "LOCAL_PRESETS", "choose_backend", "settle_backend", "usable"]

log = logging.getLogger("imageworks.auto")

#: Server backends tried in this order when ``fallback`` is not set.
DEFAULT_ORDER: tuple[str, ...] = ("vllm", "lmdeploy", "triton", "openai")
#: Tried after everything else: runs the model in this process (slow on CPU, but needs no server).
LAST_RESORT = "transformers"
#: Presets of the ``openai`` backend tried at their default URLs when it is not configured.
LOCAL_PRESETS: tuple[str, ...] = ("ollama", "llamacpp", "lmstudio")


def candidates(client: Client) -> list[str]:
    """The backends ``auto`` considers, in order."""
    settings = client.settings
    installed = client.registry.backends
    if settings.fallback:
        order = [n for n in settings.fallback if n != "auto"]
    else:
        order = [n for n in DEFAULT_ORDER if n in installed]
    if LAST_RESORT in installed and LAST_RESORT not in order:
        order.append(LAST_RESORT)
    return list(dict.fromkeys(order))


def usable(report: HealthReport) -> str | None:
    """``None`` when *report* says the backend can take work now, else why not (one line)."""
    if not report.ready:
        state = "reachable but not ready" if report.reachable else "down"
        return f"{state} at {report.url}: {_first_line(report.detail) or 'no detail'}"
    metrics = report.metrics
    if metrics.get("model_local") == 0.0 and metrics.get("loaded") != 1.0:
        model = report.models[0] if report.models else "its model"
        return f"{model} is not on local disk (auto never downloads a model)"
    return None


async def settle_backend(client: Client) -> None:
    """With ``backend = "auto"`` (``--vlm-backend auto``), pick the backend now; otherwise nothing."""
    if client.settings.backend == "auto":
        await choose_backend(client)


async def choose_backend(client: Client) -> str:
    """Health-check the candidates in order, make *client* use the first usable one, return its name.

    Raises:
        BackendUnavailable: No candidate is usable; the message names each one and why.
    """
    order = candidates(client)
    skipped: list[tuple[str, str, str | None]] = []  # (name, why, hint)
    for name in order:
        if name not in client.registry.backends:
            skipped.append((name, client.registry.unknown_message(name), client.registry.install_hint(name)))
            continue
        for label, preset in _variants(client, name):
            snapshot = client._snapshot()
            if preset is not None:
                client.use_backend(name, preset=preset)
            try:
                report = await client.health(name)
            except ImageWorksError as exc:  # e.g. a context that cannot be built
                client._restore(snapshot)
                skipped.append((label, _first_line(exc.message), exc.hint))
                continue
            why = usable(report)
            if why is None:
                _use(client, name)
                _say_chosen(label, report, order, skipped)
                return name
            client._restore(snapshot)
            # the launch lines once per backend, not once per preset URL
            skipped.append((label, why, report.hint if preset is None else None))
    if not order:
        raise BackendUnavailable(
            "backend auto: no backend is installed to choose from",
            hint="pip install imageworks-backend-vllm (or -lmdeploy, -triton, -transformers)",
        )
    lines = "\n".join(f"  {n}: {w}" for n, w, _ in skipped)
    hints = "\n".join(dict.fromkeys(f"{n}: {h}" for n, _, h in skipped if h))
    raise BackendUnavailable(
        f"backend auto: none of {', '.join(order)} is usable:\n{lines}",
        backend=order[0],
        hint=hints or "start one of the servers, or choose a backend with --vlm-backend NAME",
    )


def _variants(client: Client, name: str) -> list[tuple[str, str | None]]:
    """``(label, preset)`` to try for *name*: as configured, then each local preset when that applies."""
    variants: list[tuple[str, str | None]] = [(name, None)]
    settings = client.settings.backend_settings(name)
    if name != "openai" or not attrs.has(type(settings)) or "preset" not in attrs.fields_dict(type(settings)):
        return variants
    sources = client.settings_sources()
    if any(sources.get(f"backends.{name}.{key}", "default") != "default" for key in ("base_url", "preset")):
        return variants  # the user said where it is
    return variants + [(f"{name} (preset {p})", p) for p in LOCAL_PRESETS]


def _say_chosen(
    label: str, report: HealthReport, order: list[str], skipped: list[tuple[str, str, str | None]]
) -> None:
    what = f"{report.models[0]} at {report.url}" if report.models else report.url
    if skipped:
        lines = "\n".join(f"  skipped {n}: {w}" for n, w, _ in skipped)
        log.warning("backend auto: using %s (%s); the ones before it are unusable:\n%s", label, what, lines)
    else:
        log.warning("backend auto: using %s (%s), the first healthy one of %s", label, what, ", ".join(order))


def _use(client: Client, name: str) -> None:
    """Make *name* the client's backend; ``--vlm-*`` flags then apply to it."""
    client.use_backend(name)


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0] if text and text.strip() else ""
