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


def test_a_name_with_labels_keeps_only_those_series() -> None:
    page = (
        "# TYPE nv_inference_pending_request_count gauge\n"
        'nv_inference_pending_request_count{model="tiny_vlm_batched",version="1"} 7\n'
        'nv_inference_pending_request_count{model="tiny_vlm",version="1"} 3\n'
        'nv_inference_pending_request_count{version="2", model="tiny_vlm"} 2 1700000000\n'
        'nv_trt_llm_request_metrics{model="ensemble",request_type="waiting",version="1"} 5\n'
        'nv_trt_llm_request_metrics{model="ensemble",request_type="scheduled",version="1"} 9\n'
    )
    from imageworks_core.plugin import prometheus_samples

    one = 'nv_inference_pending_request_count{model="tiny_vlm"}'
    waiting = 'nv_trt_llm_request_metrics{request_type="waiting"}'
    found = prometheus_samples(page, [one, waiting, "nv_inference_pending_request_count"])
    assert found[one] == [3.0, 2.0]  # not tiny_vlm_batched's 7
    assert found[waiting] == [5.0]
    assert found["nv_inference_pending_request_count"] == [7.0, 3.0, 2.0]
    assert load_metrics(page, waiting=(waiting, one)) == {"waiting": 5.0}
    assert load_metrics(page, waiting=('nv_trt_llm_request_metrics{request_type="nope"}', one)) == {
        "waiting": 5.0
    }
