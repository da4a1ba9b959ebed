"""Reading a server's Prometheus ``/metrics`` text, for health reports."""

from __future__ import annotations

import math
from collections.abc import Collection

__all__ = ["prometheus_samples"]


def prometheus_samples(text: str, names: Collection[str]) -> dict[str, list[float]]:
    """Finite values of the metrics named in *names*, one per label set, from exposition text.

    Comments, other metrics and unparseable lines are skipped; a trailing
    timestamp is ignored.  Aggregating (sum, mean, max) is the caller's choice.
    """
    found: dict[str, list[float]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        brace, space = line.find("{"), line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name, rest = line[:brace], line[line.rfind("}") + 1 :]
        elif space != -1:
            name, rest = line[:space], line[space:]
        else:
            continue
        if name not in names:
            continue
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isfinite(value):
            found.setdefault(name, []).append(value)
    return found
