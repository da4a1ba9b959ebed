"""Read the few load figures ImageWorks shows from vLLM's Prometheus ``/metrics`` text."""

from __future__ import annotations

import math

__all__ = ["parse_metrics"]

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = "vllm:kv_cache_usage_perc"
_KV_OLD = "vllm:gpu_cache_usage_perc"  # the name before vLLM's V1 engine
_WANTED = frozenset({_RUNNING, _WAITING, _KV, _KV_OLD})


def _samples(text: str) -> dict[str, list[float]]:
    """Values of the wanted metrics, one per label set, from the exposition text."""
    found: dict[str, list[float]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("vllm:"):  # also skips "# HELP" / "# TYPE" and other servers' metrics
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            rest = line[line.rfind("}") + 1 :]
        elif space != -1:
            name = line[:space]
            rest = line[space:]
        else:
            continue
        if name not in _WANTED:
            continue
        fields = rest.split()  # value, then an optional timestamp
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isfinite(value):
            found.setdefault(name, []).append(value)
    return found


def parse_metrics(text: str) -> dict[str, float]:
    """``running``, ``waiting`` and ``kv_cache_usage`` (0..1) from vLLM's ``/metrics``; absent ones left out.

    Request counts are summed over label sets (one per model name / engine).
    The KV-cache usage is a fraction per engine, so several engines (data
    parallel) are averaged rather than summed.  Older servers name it
    ``vllm:gpu_cache_usage_perc``.
    """
    samples = _samples(text)
    out: dict[str, float] = {}
    if _RUNNING in samples:
        out["running"] = sum(samples[_RUNNING])
    if _WAITING in samples:
        out["waiting"] = sum(samples[_WAITING])
    kv = samples.get(_KV) or samples.get(_KV_OLD)
    if kv:
        out["kv_cache_usage"] = sum(kv) / len(kv)
    return out
