"""The load figures of a Triton server, from its Prometheus page (port 8002 unless configured).

TensorRT-LLM's own gauges come first (``nv_trt_llm_request_metrics`` by
``request_type``: ``waiting`` is its queue, ``scheduled`` what runs;
``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}``), then
Triton's vLLM backend's ``vllm:`` gauges, then Triton's own per-model
``nv_inference_pending_request_count`` ("requests awaiting execution by a
backend") for the configured model only: an ensemble's composing models list
the same request again.
"""

from __future__ import annotations

import urllib.parse

from imageworks_core.plugin import BackendContext, load_metrics

from ._settings import TritonSettings

__all__ = ["METRICS_PORT", "metrics_url", "parse_metrics"]

#: Triton's default ``--metrics-port``.
METRICS_PORT = 8002


def metrics_url(ctx: BackendContext, server_root: str) -> str | None:
    """The configured ``metrics_url`` (``""``: none), else port 8002 on the server's host."""
    configured = ctx.settings_as(TritonSettings).metrics_url
    if configured is not None:
        return configured or None
    parts = urllib.parse.urlsplit(server_root)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme or 'http'}://{host}:{METRICS_PORT}/metrics"


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """``running``, ``waiting`` and ``kv_cache_usage`` (0..1) for *model*; absent ones left out."""
    return load_metrics(
        text,
        running=(
            'nv_trt_llm_request_metrics{request_type="scheduled"}',
            f'vllm:num_requests_running{{model="{model}"}}',
        ),
        waiting=(
            'nv_trt_llm_request_metrics{request_type="waiting"}',
            f'vllm:num_requests_waiting{{model="{model}"}}',
            f'nv_inference_pending_request_count{{model="{model}"}}',
        ),
        kv_cache=(
            'nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}',
            f'vllm:kv_cache_usage_perc{{model="{model}"}}',
            f'vllm:gpu_cache_usage_perc{{model="{model}"}}',
        ),
    )
