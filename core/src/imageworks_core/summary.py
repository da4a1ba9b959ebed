"""The end-of-run summary: counts, rates, latency percentiles, per backend, failures."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import Any

import attrs

from .errors import BackendDown, BackendUnavailable, ImageWorksError
from .hints import for_cli
from .models import Result
from .redact import scrub
from .terminal import terminal_safe

__all__ = ["Summary"]


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def _reason(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    text = exc.message if isinstance(exc, ImageWorksError) else str(exc)
    return " ".join(text.split())


@attrs.define
class Summary:
    """What a run did.

    Attributes:
        started: ``time.monotonic()`` at the start.
        finished: ``time.monotonic()`` at the end (``None`` while running).
        ok: Results that succeeded.
        failed: ``(image, one-line reason)`` for each failure.
        skipped: ``(image, why)`` for each image not sent.
        planned: Images a dry run would send.
        hints: What to do about the failures (each distinct hint once).
        outages: ``(backend, url, seconds)`` for each outage seen during the run.
        down: Images that failed because their backend stayed down past
            ``wait_for_backend`` (also in *failed*).
        unreachable: Images that failed because no backend could be reached
            (``BackendUnavailable``, *down* included; also in *failed*).
    """

    started: float = attrs.field(factory=time.monotonic)
    finished: float | None = None
    ok: list[Result] = attrs.Factory(list)
    failed: list[tuple[str, str]] = attrs.Factory(list)
    skipped: list[tuple[str, str]] = attrs.Factory(list)
    planned: int = 0
    hints: list[str] = attrs.Factory(list)
    outages: list[tuple[str, str, float]] = attrs.Factory(list)
    down: list[str] = attrs.Factory(list)
    unreachable: list[str] = attrs.Factory(list)
    #: Each backend's concurrency limit at the end (adaptive or fixed).
    limits: dict[str, int] = attrs.Factory(dict)
    _down_reason: str = ""
    _failed_backends: Counter[str] = attrs.Factory(Counter)

    @property
    def no_backend(self) -> bool:
        """The run could not reach its backend: a backend stayed down past ``wait_for_backend``,
        or nothing succeeded and every failure was an unreachable backend (the CLI's exit code 3)."""
        if self.down:
            return True
        return not self.ok and bool(self.failed) and len(self.unreachable) == len(self.failed)

    def add(self, result: Result) -> None:
        if result.error is None:
            self.ok.append(attrs.evolve(result, item=None))
        else:
            image = result.id or "?"
            if isinstance(result.error, BackendDown):
                self.down.append(image)
                self._down_reason = self._down_reason or _reason(result.error)
            if isinstance(result.error, BackendUnavailable):
                self.unreachable.append(image)
            self.failed.append((image, _reason(result.error).removeprefix(f"{image}: ")))
            hint = for_cli(getattr(result.error, "hint", None))
            if hint and hint not in self.hints:
                self.hints.append(hint)
            # input errors never reached a backend; an item that waited for its backend until it
            # was given up (BackendDown, maybe without a try) is that backend's failure
            if result.backend and (result.attempts or isinstance(result.error, BackendDown)):
                self._failed_backends[result.backend] += 1

    def skip(self, image: str, why: str) -> None:
        self.skipped.append((image, why))

    @property
    def elapsed(self) -> float:
        return max(1e-9, (self.finished or time.monotonic()) - self.started)

    def as_dict(self) -> dict[str, Any]:
        latencies = sorted(r.latency for r in self.ok)
        tokens = sum(r.usage.completion_tokens or 0 for r in self.ok)
        per_backend: dict[str, dict[str, Any]] = {}
        for r in self.ok:
            b = per_backend.setdefault(r.backend, {"ok": 0, "failed": 0, "latencies": []})
            b["ok"] += 1
            b["latencies"].append(r.latency)
        for name, count in self._failed_backends.items():
            per_backend.setdefault(name, {"ok": 0, "failed": 0, "latencies": []})["failed"] += count
        return {
            "ok": len(self.ok),
            "failed": len(self.failed),
            "skipped": len(self.skipped),
            "planned": self.planned,
            "elapsed_s": round(self.elapsed, 3),
            "images_per_s": round(len(self.ok) / self.elapsed, 3),
            "completion_tokens_per_s": round(tokens / self.elapsed, 2),
            "latency_p50_s": _round(_percentile(latencies, 50)),
            "latency_p95_s": _round(_percentile(latencies, 95)),
            "backends": {
                name: {
                    "ok": b["ok"],
                    "failed": b["failed"],
                    "latency_p50_s": _round(_percentile(sorted(b["latencies"]), 50)),
                    "latency_p95_s": _round(_percentile(sorted(b["latencies"]), 95)),
                    "limit": self.limits.get(name),
                }
                for name, b in sorted(per_backend.items())
            },
            "outages": [{"backend": b, "url": u, "seconds": round(sec, 3)} for b, u, sec in self.outages],
            "outage_s": round(sum(sec for _, _, sec in self.outages), 3),
            "backend_down": len(self.down),
            "skip_reasons": dict(Counter(why for _, why in self.skipped)),
            "failures": [{"image": i, "error": e} for i, e in self.failed],
        }

    def render(self, *, verbose: int = 0) -> str:
        """The summary as text for a terminal (``verbose``: list the skipped images too)."""
        return terminal_safe(scrub(self._render(verbose)))

    def _render(self, verbose: int) -> str:
        d = self.as_dict()
        reasons = d["skip_reasons"]
        lines = [
            f"images: {d['ok']} ok, {d['failed']} failed, {d['skipped']} skipped"
            + (f", {d['planned']} planned (dry run)" if d["planned"] else ""),
            *(f"  {count} {why}" for why, count in reasons.items()),
            f"time: {d['elapsed_s']:.1f}s, {d['images_per_s']:.2f} images/s, "
            f"{d['completion_tokens_per_s']:.1f} tokens/s",
        ]
        if d["latency_p50_s"] is not None:
            lines.append(f"latency: p50 {d['latency_p50_s']:.2f}s, p95 {d['latency_p95_s']:.2f}s")
        for name, b in d["backends"].items():
            p50 = "-" if b["latency_p50_s"] is None else f"{b['latency_p50_s']:.2f}s"
            limit = "" if b["limit"] is None else f", concurrency {b['limit']}"
            lines.append(f"  {name}: {b['ok']} ok, {b['failed']} failed, p50 {p50}{limit}")
        if verbose and self.skipped:
            lines.append("skipped images:")
            lines += [f"  {image}: {why}" for image, why in self.skipped]
        elif self.skipped:
            lines.append("  (-v lists the skipped images)")
        if self.outages:
            per: dict[tuple[str, str], list[float]] = {}
            for b, u, sec in self.outages:
                per.setdefault((b, u), []).append(sec)
            for (b, u), secs in per.items():
                lines.append(
                    f"outages: {b} at {u}: {len(secs)}, {_clock(sum(secs))} in all"
                    + (" (waited out)" if not self.down else "")
                )
        down = set(self.down)
        shown = [(image, reason) for image, reason in self.failed if image not in down]
        if down:
            lines.append(f"not described, the backend stayed down: {len(down)} images")
            lines.append(f"  {self._down_reason}")
        if shown:
            lines.append("failed images:")
            lines += [f"  {image}: {reason}" for image, reason in shown[:50]]
            if len(shown) > 50:
                lines.append(f"  ... and {len(shown) - 50} more (see the results JSONL)")
        if self.failed and self.hints:
            lines.append("what to do:")
            lines += ["  - " + hint.replace("\n", "\n    ") for hint in self.hints[:5]]
        return "\n".join(lines)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}:{secs:02d}"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
