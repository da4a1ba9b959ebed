"""``/metrics`` parsing, in one place in core (``load_metrics``), used by the vLLM and LMDeploy plugins.

``data/vllm_metrics_dp2.txt`` is a vLLM V1 page written by hand (no GPU here to
record one) from vLLM's current metric names, help texts and labels
(``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc``, one series per ``engine`` label under data
parallelism), with the usual counters, histograms and process metrics around
them.  Engine 0 is nearly full while engine 1 is not: the figure must say so.
"""

from __future__ import annotations

from pathlib import Path

from imageworks_backend_lmdeploy import parse_metrics as lmdeploy_metrics
from imageworks_backend_vllm import parse_metrics as vllm_metrics
from imageworks_core import load_metrics

PAGE = (Path(__file__).parent / "data" / "vllm_metrics_dp2.txt").read_text()


def test_vllm_page_sums_requests_and_takes_the_fullest_engine() -> None:
    assert vllm_metrics(PAGE) == {"running": 79.0, "waiting": 6.0, "kv_cache_usage": 0.9921875}


def test_the_old_kv_name_is_read_and_the_new_one_wins() -> None:
    old = PAGE.replace("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
    assert vllm_metrics(old)["kv_cache_usage"] == 0.9921875
    both = PAGE + 'vllm:gpu_cache_usage_perc{engine="0",model_name="m"} 0.1\n'
    assert vllm_metrics(both)["kv_cache_usage"] == 0.9921875


def test_lmdeploy_uses_the_same_aggregation() -> None:
    page = PAGE.replace("vllm:", "lmdeploy:").replace(
        "lmdeploy:kv_cache_usage_perc", "lmdeploy:gpu_cache_usage_perc"
    )
    assert lmdeploy_metrics(page) == vllm_metrics(PAGE)


def test_absent_figures_are_left_out() -> None:
    assert load_metrics(PAGE, running=("nope",), kv_cache=("vllm:kv_cache_usage_perc",)) == {
        "kv_cache_usage": 0.9921875
    }
    assert load_metrics("", running=("vllm:num_requests_running",)) == {}
