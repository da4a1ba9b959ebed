"""Statistics of a comparison, computed from the result records alone.

Working from the records (not from in-memory results) means a live run and a
report rebuilt later with ``--from`` give the same numbers.  Percentiles are
interpolated between order statistics (the "inclusive" method); their 95 %
confidence intervals are distribution-free: the order statistics whose ranks
bound the binomial count of samples below the quantile (normal approximation),
given from 8 samples up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import attrs

__all__ = ["CandidateStats", "Quantile", "candidate_stats", "error_kind", "quantile"]

_Z95 = 1.959964
_MIN_FOR_CI = 8


@attrs.frozen(slots=True)
class Quantile:
    """A percentile of some samples with its 95 % confidence interval.

    Attributes:
        value: The percentile (interpolated).
        low: Lower bound of the interval (``None`` with too few samples).
        high: Upper bound of the interval (``None`` with too few samples).
    """

    value: float
    low: float | None = None
    high: float | None = None

    def as_dict(self) -> dict[str, float | None]:
        return {"value": _r(self.value), "ci_low": _r(self.low), "ci_high": _r(self.high)}


def quantile(samples: Sequence[float], q: float) -> Quantile | None:
    """The *q* quantile (0..1) of *samples*, with its confidence interval; ``None`` when empty."""
    if not samples:
        return None
    xs = sorted(samples)
    n = len(xs)
    pos = (n - 1) * q
    lo_i = math.floor(pos)
    hi_i = min(lo_i + 1, n - 1)
    value = xs[lo_i] + (xs[hi_i] - xs[lo_i]) * (pos - lo_i)
    if n < _MIN_FOR_CI:
        return Quantile(value)
    spread = _Z95 * math.sqrt(n * q * (1 - q))
    low_rank = max(1, math.floor(n * q - spread))
    high_rank = min(n, math.ceil(n * q + spread) + 1)
    return Quantile(value, xs[low_rank - 1], xs[high_rank - 1])


def error_kind(record: Mapping[str, Any]) -> str | None:
    """The failed record's error class name (``None`` on success)."""
    if record.get("error") is None:
        return None
    kind = record.get("error_type")
    if isinstance(kind, str) and kind:
        return kind
    attempts = record.get("attempts") or []
    last = attempts[-1] if attempts and isinstance(attempts[-1], Mapping) else {}
    return str(last.get("error_type") or "error")


@attrs.frozen(slots=True)
class CandidateStats:
    """What one candidate did.

    Attributes:
        name: The candidate.
        backend: Its backend (the most frequent one in its records).
        model: The model that answered (the most frequent one).
        base_url: Its server.
        sent: Records (images x repeats).
        ok: Answers received.
        failed: Records with an error.
        wall_s: Seconds from the start of the measured run to its last answer
            (``None`` when unknown).
        wall_estimated: ``wall_s`` was estimated from the records' timestamps
            (``describe`` results).
        images_per_s: Answers per second of wall time.
        tokens_per_s: Output tokens per second of wall time (``None`` without usage).
        latency_p50: Median server latency of the answers (the answering try's time).
        latency_p95: Its 95th percentile.
        ttft_p50: Median time to first token (streamed answers only).
        ttft_p95: Its 95th percentile.
        mean_words: Mean answer length in words.
        mean_tokens: Mean output tokens per answer (``None`` without usage).
        errors: Failures by error class.
        first_error: The first failure's message.
        latencies: Every answer's latency (seconds), for the charts.
        ttfts: Every streamed answer's time to first token.
    """

    name: str
    backend: str | None
    model: str | None
    base_url: str | None
    sent: int
    ok: int
    failed: int
    wall_s: float | None
    wall_estimated: bool
    images_per_s: float | None
    tokens_per_s: float | None
    latency_p50: Quantile | None
    latency_p95: Quantile | None
    ttft_p50: Quantile | None
    ttft_p95: Quantile | None
    mean_words: float | None
    mean_tokens: float | None
    errors: Mapping[str, int]
    first_error: str | None
    latencies: tuple[float, ...]
    ttfts: tuple[float, ...]

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable form (``summary.json``, ``--json``)."""
        out: dict[str, Any] = {}
        for f in attrs.fields(CandidateStats):
            if f.name in ("latencies", "ttfts"):
                continue
            value = getattr(self, f.name)
            if isinstance(value, Quantile):
                value = value.as_dict()
            elif isinstance(value, float):
                value = _r(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out


def candidate_stats(name: str, records: Sequence[Mapping[str, Any]]) -> CandidateStats:
    """Statistics of one candidate's *records*."""
    good = [r for r in records if r.get("error") is None]
    bad = [r for r in records if r.get("error") is not None]
    latencies = tuple(float(r.get("processing_time") or 0.0) for r in good)
    ttfts = tuple(float(r["ttft"]) for r in good if isinstance(r.get("ttft"), int | float))
    tokens = [_completion_tokens(r) for r in good]
    known_tokens = [t for t in tokens if t is not None]
    wall, estimated = _wall(records)
    rate = (lambda x: x / wall) if wall else (lambda x: None)
    words = [len(str(r.get("description") or "").split()) for r in good]
    return CandidateStats(
        name=name,
        backend=_most_common(r.get("backend") for r in records),
        model=_most_common(r.get("model") for r in good) or _most_common(r.get("model") for r in records),
        base_url=_most_common(r.get("base_url") for r in records),
        sent=len(records),
        ok=len(good),
        failed=len(bad),
        wall_s=wall,
        wall_estimated=estimated,
        images_per_s=rate(len(good)),
        tokens_per_s=rate(sum(known_tokens)) if known_tokens else None,
        latency_p50=quantile(latencies, 0.5),
        latency_p95=quantile(latencies, 0.95),
        ttft_p50=quantile(ttfts, 0.5),
        ttft_p95=quantile(ttfts, 0.95),
        mean_words=sum(words) / len(words) if words else None,
        mean_tokens=sum(known_tokens) / len(known_tokens) if known_tokens else None,
        errors=dict(sorted(Counter(error_kind(r) or "error" for r in bad).items())),
        first_error=str(bad[0]["error"]) if bad else None,
        latencies=latencies,
        ttfts=ttfts,
    )


def _completion_tokens(record: Mapping[str, Any]) -> int | None:
    usage = record.get("usage")
    if isinstance(usage, Mapping):
        value = usage.get("completion_tokens")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _wall(records: Sequence[Mapping[str, Any]]) -> tuple[float | None, bool]:
    """The run's wall time: from compare's ``elapsed``, else estimated from the timestamps."""
    elapsed = [float(r["elapsed"]) for r in records if isinstance(r.get("elapsed"), int | float)]
    if elapsed:
        return (max(elapsed) or None), False
    ends: list[float] = []
    starts: list[float] = []
    for r in records:
        try:
            end = datetime.fromisoformat(str(r.get("timestamp"))).timestamp()
        except ValueError:
            continue
        ends.append(end)
        starts.append(end - float(r.get("processing_time") or 0.0) - float(r.get("queue_time") or 0.0))
    if not ends:
        return None, False
    return (max(ends) - min(starts)) or None, True


def _most_common(values: Iterable[Any]) -> str | None:
    counts = Counter(v for v in values if isinstance(v, str) and v)
    return counts.most_common(1)[0][0] if counts else None


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
