"""Every first-party backend plugin runs the plugin-author conformance suite.

vLLM and LMDeploy speak OpenAI's protocol, so the suite's own fake server
(scriptable for every fault) stands in for them.  Triton runs against the
real tritonserver from PyTriton; its fault tests are skipped there (the suite
cannot script that server) and covered by tests/test_triton_quirks.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import IN_CI

from imageworks_core.plugins import installed_backend_names
from imageworks_core.testing.conformance import BackendConformance

installed = set(installed_backend_names())


def needs(backend: str) -> pytest.MarkDecorator:
    """Skip where the plugin is not installed, except in CI (CI=true): there the tests run and fail."""
    return pytest.mark.skipif(
        backend not in installed and not IN_CI, reason=f"imageworks-backend-{backend} is not installed"
    )


@needs("vllm")
class TestVllmConformance(BackendConformance):
    backend = "vllm"


@needs("lmdeploy")
class TestLmdeployConformance(BackendConformance):
    backend = "lmdeploy"


@pytest.mark.server
@needs("triton")
class TestTritonConformance(BackendConformance):
    backend = "triton"
    reports_usage = False  # Triton's generate extension reports no token counts
    client_overrides = {"backends": {"triton": {"model": "tiny_vlm_stream"}}}
    other_model = "tiny_vlm"

    @pytest.fixture
    def server_url(self, triton_server: Any) -> str:
        return str(triton_server.base_url)

    @pytest.fixture
    def faults(self) -> None:
        return None
