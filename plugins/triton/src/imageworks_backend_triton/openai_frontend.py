"""``mode = "openai"``: Triton's OpenAI-compatible frontend (port 9000), text only.

The frontend rejects image parts (400 "only text message is supported") and
any field outside its schema (422: ``top_k``, ``repetition_penalty``, and on
older releases ``stream_options``), so images fail here before anything is
sent and the body carries standard OpenAI fields only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any

from imageworks_core.plugin import (
    BackendContext,
    BackendError,
    BackendRejected,
    Capabilities,
    Chunk,
    HealthReport,
    OpenAICompatBackend,
    Request,
    Result,
    drop_fields,
    redact_url,
)

from ._settings import OPENAI_DEFAULT_URL, TritonSettings

__all__ = ["ALLOWED_FIELDS", "TEXT_ONLY", "TritonOpenAIFrontend"]

TEXT_ONLY = (
    'Triton\'s OpenAI frontend accepts text only; use mode = "kserve" with a multimodal ensemble, '
    "or the vllm backend"
)
#: Chat-completion fields the frontend's schema accepts (it forbids every other key).
ALLOWED_FIELDS = frozenset(
    {
        "model",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "n",
        "stop",
        "stream",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "top_logprobs",
        "user",
        "response_format",
        "tools",
        "tool_choice",
        "min_tokens",
        "ignore_eos",
    }
)


def _has_images(request: Request) -> bool:
    if request.images:
        return True
    for message in request.messages or ():
        content = message.get("content")
        if isinstance(content, list) and any(
            isinstance(p, Mapping) and p.get("type") not in (None, "text") for p in content
        ):
            return True
    return False


class TritonOpenAIFrontend(OpenAICompatBackend):
    """The OpenAI-compatible base with Triton's frontend quirks; used by the triton plugin, not registered."""

    name = "triton"
    description = "Triton's OpenAI-compatible frontend (text only)"
    default_base_url = OPENAI_DEFAULT_URL
    capabilities = Capabilities(
        vision=False, streaming=True, max_images=0, model_switch=True, kinds=("text",)
    )
    settings_cls = TritonSettings
    force_v1 = True

    def check_text_only(self, ctx: BackendContext, request: Request) -> None:
        if _has_images(request):
            raise BackendRejected(
                f"{ctx.name} at {redact_url(ctx.base_url)}: {TEXT_ONLY}",
                backend=ctx.name,
                hint=(
                    'set backends.triton.mode = "kserve" and point base_url at Triton\'s HTTP port (8000) '
                    "serving the TensorRT-LLM multimodal ensemble, or use --vlm-backend vllm"
                ),
            )

    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        self.check_text_only(ctx, request)
        return await super().infer(ctx, request)

    async def stream(self, ctx: BackendContext, request: Request) -> AsyncGenerator[Chunk, None]:
        self.check_text_only(ctx, request)
        chunks = super().stream(ctx, request)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                yield chunk

    async def check_health(self, ctx: BackendContext) -> HealthReport:
        url = self.root(ctx, "health/ready")
        resp = await ctx.http.request("GET", url, timeout=10.0)
        base = redact_url(ctx.base_url)
        if resp.status != 200:
            if resp.status == 400:
                detail = "Triton's OpenAI frontend is up but not ready (HTTP 400 from /health/ready)"
                hint = "wait for the models to load (imageworks health --wait 300), or read the server log"
            else:
                detail = f"no Triton OpenAI frontend at {base} (HTTP {resp.status} from /health/ready)"
                hint = (
                    'for Triton\'s KServe API (port 8000) set backends.triton.mode = "kserve"; '
                    "the OpenAI frontend listens on port 9000 by default"
                )
            return HealthReport(
                backend=ctx.name, url=base, reachable=True, ready=False, detail=detail, hint=hint
            )
        try:
            models, _raw = await self.list_models(ctx)
        except BackendError as exc:
            return HealthReport(
                backend=ctx.name, url=base, reachable=True, ready=True, detail=f"ready; {exc.message}"
            )
        return HealthReport(
            backend=ctx.name,
            url=base,
            reachable=True,
            ready=True,
            models=tuple(models),
            detail="Triton OpenAI frontend ready (text only)",
        )

    def extra_fields(self, ctx: BackendContext, request: Request) -> Mapping[str, Any]:
        settings = ctx.settings_as(TritonSettings)
        fields = dict(settings.parameters)
        stop = [*settings.stop_words, *request.stop]
        if stop:
            fields["stop"] = stop
        return fields

    def build_body(
        self, ctx: BackendContext, request: Request, model: str, *, stream: bool
    ) -> dict[str, Any]:
        body = super().build_body(ctx, request, model, stream=stream)
        body.pop("stream_options", None)  # not sent, without a warning: nothing the user asked for
        drop_fields(
            ctx,
            body,
            sorted(k for k in body if k not in ALLOWED_FIELDS),
            "Triton's OpenAI frontend rejects them (HTTP 422)",
        )
        return body
