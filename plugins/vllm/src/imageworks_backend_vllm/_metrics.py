"""Read the few load figures ImageWorks shows from vLLM's Prometheus ``/metrics`` text."""

from __future__ import annotations

from imageworks_core import load_metrics

__all__ = ["parse_metrics"]

_RUNNING = ("vllm:num_requests_running",)
_WAITING = ("vllm:num_requests_waiting",)
#: ``vllm:gpu_cache_usage_perc`` is the name before vLLM's V1 engine; the new one wins when both are there.
_KV = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


def parse_metrics(text: str) -> dict[str, float]:
    """``running``, ``waiting`` and ``kv_cache_usage`` (0..1) from vLLM's ``/metrics``; absent ones left out.

    Request counts are summed over label sets (one per engine / model name);
    KV-cache usage is the fullest engine's (see ``imageworks_core.load_metrics``).
    """
    return load_metrics(text, running=_RUNNING, waiting=_WAITING, kv_cache=_KV)
