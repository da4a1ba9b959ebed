"""ImageWorks backend for NVIDIA Triton Inference Server and TensorRT-LLM.

``mode = "kserve"`` (default) speaks Triton's KServe v2 HTTP API on port
8000: the generate extension (``generate`` / ``generate_stream``) when the
server has it, else ``/infer`` with exact tensor shapes.  Each model's
inputs are discovered from its metadata and config, so images go where the
model takes them (``image_url_input`` data URLs for the TensorRT-LLM
multimodal ensemble, plain-base64 ``image`` for Triton's vLLM backend) and
only declared inputs are sent.  ``mode = "openai"`` talks to Triton's
OpenAI-compatible frontend on port 9000 (text only).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from imageworks_core import (
    BackendContext,
    BackendInfo,
    Capabilities,
    Chunk,
    HealthReport,
    Request,
    Result,
    hookimpl,
)

from . import kserve
from ._model import ModelInfo, TensorSpec
from ._settings import KSERVE_DEFAULT_URL, TritonSettings
from .openai_frontend import TritonOpenAIFrontend

__all__ = ["LAUNCH_HINTS", "ModelInfo", "TensorSpec", "TritonBackend", "TritonSettings", "plugin"]

LAUNCH_HINTS = (
    "tritonserver --model-repository=/path/to/triton_model_repo --http-port=8000   "
    "(TensorRT-LLM multimodal ensemble from tensorrtllm_backend all_models/multimodal; "
    'backends.triton.model = "ensemble")',
    "16 GB: trtllm-serve Qwen/Qwen2-VL-2B-Instruct --host 0.0.0.0 --port 8000 --max_batch_size 8 "
    "--max_num_tokens 8192 --kv_cache_free_gpu_memory_fraction 0.6   "
    "(OpenAI API with images: use --vlm-backend openai --vlm-base-url http://HOST:8000/v1)",
    "96 GB: trtllm-serve Qwen/Qwen2.5-VL-7B-Instruct --host 0.0.0.0 --port 8000 --max_batch_size 64 "
    "--max_num_tokens 32768 --kv_cache_free_gpu_memory_fraction 0.85   (same: --vlm-backend openai)",
    'Triton\'s OpenAI frontend (text only, port 9000): backends.triton.mode = "openai"',
)


class TritonBackend:
    """The ``triton`` backend plugin: KServe v2 by default, Triton's OpenAI frontend with ``mode = "openai"``.

    A request may name another Triton model than the configured one
    (``Request.model`` / ``--vlm-model``): it is the model in the URL path, and
    each model's inputs are discovered and cached separately.
    """

    name = "triton"
    capabilities = Capabilities(
        vision=True, streaming=True, max_images=None, model_switch=True, kinds=("vision", "text")
    )

    def __init__(self) -> None:
        self._openai = TritonOpenAIFrontend()

    @hookimpl
    def backend_info(self) -> BackendInfo:
        return BackendInfo(
            name=self.name,
            description="NVIDIA Triton Inference Server / TensorRT-LLM (KServe v2 generate and infer, "
            "or Triton's OpenAI frontend)",
            default_base_url=KSERVE_DEFAULT_URL,
            capabilities=self.capabilities,
            settings_cls=TritonSettings,
            launch_hints=LAUNCH_HINTS,
            docs_url="plugins/triton/README.md",
        )

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        if ctx.settings_as(TritonSettings).mode == "openai":
            return await self._openai.health(ctx)
        return await kserve.check_health(ctx)

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        if ctx.settings_as(TritonSettings).mode == "openai":
            return await self._openai.infer(ctx, request)
        return await kserve.infer(ctx, request)

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
        if ctx.settings_as(TritonSettings).mode == "openai":
            chunks = self._openai.stream(ctx, request)
        else:
            chunks = kserve.stream(ctx, request)
        async with contextlib.aclosing(chunks):  # close the inner stream when the caller stops early
            async for chunk in chunks:
                yield chunk


#: The entry-point target: a stateless plugin object (per-client state lives in the context).
plugin = TritonBackend()
