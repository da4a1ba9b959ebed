"""The report's charts, drawn as inline SVG by hand.

Why not a plotting library: the charts are two simple kinds (a bar per
candidate; a box-and-dots distribution per candidate), and hand-written SVG is
a few dozen lines, adds no dependency (matplotlib would add ~40 MB and
numpy to a small async client), is small in the page, scales with the page
width, and is byte-for-byte deterministic, which lets a report rebuilt with
``--from`` equal the original.  Every text in the charts is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

__all__ = ["bar_chart", "distribution_chart", "nice_ticks"]

_W = 640
_LABEL_W = 150
_RIGHT = 20
_ROW_H = 34
_TOP = 34
_AXIS_H = 30
_PALETTE = ("#3b6fb6", "#d9822b", "#3a9a5b", "#b5495b", "#7d5ba6", "#5a8f8f", "#8c6d31", "#666666")


def colour(i: int) -> str:
    return _PALETTE[i % len(_PALETTE)]


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least *high*."""
    if not math.isfinite(high) or high <= 0:
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    n = math.ceil(high / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _fmt(value: float) -> str:
    return f"{value:g}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"


def _frame(title: str, rows: int, ticks: list[float], unit: str, x: Callable[[float], float]) -> list[str]:
    height = _TOP + rows * _ROW_H + _AXIS_H
    bottom = _TOP + rows * _ROW_H
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {height}" role="img" '
        f'class="chart" aria-label="{escape(title)}">',
        f"<title>{escape(title)}</title>",
        f'<text x="0" y="18" class="chart-title">{escape(title)}</text>',
    ]
    for t in ticks:
        px = x(t)
        parts.append(
            f'<line x1="{px:.1f}" y1="{_TOP - 6}" x2="{px:.1f}" y2="{bottom}" class="grid"/>'
            f'<text x="{px:.1f}" y="{bottom + 16}" text-anchor="middle" class="tick">{_fmt(t)}</text>'
        )
    parts.append(
        f'<text x="{_W - _RIGHT}" y="{bottom + 28}" text-anchor="end" class="tick">{escape(unit)}</text>'
    )
    return parts


def _scale(high: float) -> tuple[list[float], Callable[[float], float]]:
    ticks = nice_ticks(high)
    top = ticks[-1] or 1.0
    span = _W - _LABEL_W - _RIGHT

    def x(v: float) -> float:
        return _LABEL_W + span * max(0.0, min(v, top)) / top

    return ticks, x


def _label(i: int, text: str) -> str:
    y = _TOP + i * _ROW_H + _ROW_H / 2 + 4
    shown = text if len(text) <= 22 else text[:21] + "\u2026"
    return f'<text x="{_LABEL_W - 8}" y="{y:.1f}" text-anchor="end" class="label">{escape(shown)}</text>'


def bar_chart(rows: Sequence[tuple[str, float | None]], *, title: str, unit: str) -> str:
    """One horizontal bar per ``(label, value)``; a missing value is marked "n/a"."""
    values = [v for _, v in rows if v is not None]
    ticks, x = _scale(max(values, default=0.0))
    parts = _frame(title, len(rows), ticks, unit, x)
    for i, (label, value) in enumerate(rows):
        parts.append(_label(i, label))
        y = _TOP + i * _ROW_H + 6
        if value is None:
            parts.append(f'<text x="{_LABEL_W + 4}" y="{y + 15}" class="tick">n/a</text>')
            continue
        width = x(value) - _LABEL_W
        parts.append(
            f'<rect x="{_LABEL_W}" y="{y}" width="{width:.1f}" height="{_ROW_H - 12}" '
            f'fill="{colour(i)}"><title>{escape(label)}: {_fmt(value)} {escape(unit)}</title></rect>'
            f'<text x="{_LABEL_W + width + 4:.1f}" y="{y + 15}" class="value">{value:.3g}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _at(xs: Sequence[float], q: float) -> float:
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution_chart(
    rows: Sequence[tuple[str, Sequence[float]]], *, title: str, unit: str, max_dots: int = 400
) -> str:
    """Per ``(label, samples)``: the samples as dots, a box from p25 to p75, the median, whiskers p5-p95."""
    every = [v for _, vs in rows for v in vs]
    ticks, x = _scale(max(every, default=0.0))
    parts = _frame(title, len(rows), ticks, unit, x)
    for i, (label, samples) in enumerate(rows):
        parts.append(_label(i, label))
        mid = _TOP + i * _ROW_H + _ROW_H / 2
        if not samples:
            parts.append(f'<text x="{_LABEL_W + 4}" y="{mid + 4:.1f}" class="tick">no samples</text>')
            continue
        xs = sorted(samples)
        c = colour(i)
        p5, p25, p50, p75, p95 = (_at(xs, q) for q in (0.05, 0.25, 0.5, 0.75, 0.95))
        stride = max(1, math.ceil(len(xs) / max_dots))
        for k, v in enumerate(xs[::stride]):
            jitter = ((k * 7919) % 17 - 8) * 0.9  # deterministic spread, no randomness
            parts.append(
                f'<circle cx="{x(v):.1f}" cy="{mid + jitter:.1f}" r="2" fill="{c}" fill-opacity="0.45"/>'
            )
        parts.append(
            f'<line x1="{x(p5):.1f}" y1="{mid:.1f}" x2="{x(p95):.1f}" y2="{mid:.1f}" class="whisker"/>'
            f'<rect x="{x(p25):.1f}" y="{mid - 9:.1f}" width="{max(1.0, x(p75) - x(p25)):.1f}" height="18" '
            f'fill="none" stroke="{c}" stroke-width="2"/>'
            f'<line x1="{x(p50):.1f}" y1="{mid - 11:.1f}" x2="{x(p50):.1f}" y2="{mid + 11:.1f}" '
            f'stroke="#111" stroke-width="2.5"><title>{escape(label)}: median {_fmt(p50)} {escape(unit)}'
            f"</title></line>"
        )
    parts.append("</svg>")
    return "".join(parts)
