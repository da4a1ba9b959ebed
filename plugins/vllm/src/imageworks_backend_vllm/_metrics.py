"""Read the few load figures ImageWorks shows from vLLM's Prometheus ``/metrics`` text."""

from __future__ import annotations

from imageworks_core import prometheus_samples

__all__ = ["parse_metrics"]

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV = "vllm:kv_cache_usage_perc"
_KV_OLD = "vllm:gpu_cache_usage_perc"  # the name before vLLM's V1 engine
_WANTED = frozenset({_RUNNING, _WAITING, _KV, _KV_OLD})


def parse_metrics(text: str) -> dict[str, float]:
    """``running``, ``waiting`` and ``kv_cache_usage`` (0..1) from vLLM's ``/metrics``; absent ones left out.

    Request counts are summed over label sets (one per model name / engine).
    The KV-cache usage is a fraction per engine, so several engines (data
    parallel) are averaged rather than summed.  Older servers name it
    ``vllm:gpu_cache_usage_perc``.
    """
    samples = prometheus_samples(text, _WANTED)
    out: dict[str, float] = {}
    if _RUNNING in samples:
        out["running"] = sum(samples[_RUNNING])
    if _WAITING in samples:
        out["waiting"] = sum(samples[_WAITING])
    kv = samples.get(_KV) or samples.get(_KV_OLD)
    if kv:
        out["kv_cache_usage"] = sum(kv) / len(kv)
    return out
