"""The generic OpenAI-compatible backend (``openai``), shipped with the core.

Works with any server that speaks ``/v1/chat/completions`` with image parts
(and generates images over ``/v1/images/generations``, see ``openai_images``):
Ollama, llama.cpp's server, LM Studio, KoboldCpp, text-generation-webui,
OpenRouter, OpenAI, Anthropic's, Gemini's, Mistral's and DashScope's
OpenAI-compatible endpoints, Chutes and NanoGPT.  ``preset`` fills in the base
URL and the API-key variable of a known service (an explicit ``base_url`` /
``api_key_env`` still wins) and turns on that service's ``QUIRKS``: body
fields it rejects or names otherwise, and its image limits, checked before
anything is sent.  docs/backends/openai.md lists them with their sources.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

import attrs

from ..context import BackendContext
from ..errors import BackendProtocolError, BackendRejected
from ..helpers import drop_fields
from ..models import Capabilities, Request
from ..openai_compat import OpenAICompatBackend
from ..openai_images import OpenAIImagesMixin
from ..settings import BackendSettings

#: name -> (base URL, API-key environment variable or None)
PRESETS: dict[str, tuple[str, str | None]] = {
    "ollama": ("http://localhost:11434/v1", None),
    "llamacpp": ("http://localhost:8080/v1", None),
    "lmstudio": ("http://localhost:1234/v1", None),
    "koboldcpp": ("http://localhost:5001/v1", None),
    "textgen-webui": ("http://localhost:5000/v1", None),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
    "dashscope": ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "DASHSCOPE_API_KEY"),
    "anthropic": ("https://api.anthropic.com/v1", "ANTHROPIC_API_KEY"),
    "chutes": ("https://llm.chutes.ai/v1", "CHUTES_API_KEY"),
    "nanogpt": ("https://nano-gpt.com/api/v1", "NANOGPT_API_KEY"),
    "mistral": ("https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
}

MB = 1024 * 1024
#: The ``anthropic-version`` header Anthropic's native routes (``/v1/models``) require.
ANTHROPIC_VERSION = "2023-06-01"
#: Anthropic's ``/v1/models`` page size (its most; the default is 20) and the most pages read.
ANTHROPIC_PAGE = 1000
ANTHROPIC_MAX_PAGES = 10


@attrs.frozen(slots=True)
class Quirks:
    """What a hosted service does differently from OpenAI, handled before a request is sent.

    Attributes:
        drop: Body fields the service rejects: removed (with one warning per field).
        rename: Body fields the service names otherwise (OpenAI name -> its name).
        max_images: The most images per request.
        max_image_bytes: The largest image, in bytes of its base64 text (what is sent).
        max_image_side: The longest image side, in pixels.
        many_images: ``(count, side)``: above *count* images, each side at most *side* pixels.
        image_types: The MIME types it accepts (``None``: any).
    """

    drop: tuple[str, ...] = ()
    rename: Mapping[str, str] = attrs.field(factory=dict)
    max_images: int | None = None
    max_image_bytes: int | None = None
    max_image_side: int | None = None
    many_images: tuple[int, int] | None = None
    image_types: frozenset[str] | None = None


_COMMON_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})

#: preset -> its quirks (presets not listed behave like OpenAI).
QUIRKS: dict[str, Quirks] = {
    # Unknown fields are silently ignored (nothing to drop); limits from the vision guide.
    "anthropic": Quirks(
        max_image_bytes=5 * MB, max_image_side=8000, many_images=(20, 2000), image_types=_COMMON_TYPES
    ),
    # The request schema forbids extra fields (HTTP 422 "extra_forbidden"): stream_options,
    # max_completion_tokens, seed and OpenAI-only sampling fields must not be sent.
    "mistral": Quirks(
        drop=(
            "stream_options",
            "logprobs",
            "top_logprobs",
            "logit_bias",
            "user",
            "store",
            "service_tier",
            "top_k",
            "min_p",
            "repetition_penalty",
        ),
        rename={"max_completion_tokens": "max_tokens", "seed": "random_seed"},
        max_images=8,
        max_image_bytes=10 * MB,
        max_image_side=10000,
        image_types=_COMMON_TYPES,
    ),
    "nanogpt": Quirks(image_types=frozenset({"image/jpeg", "image/jpg", "image/png", "image/webp"})),
}


#: Former presets now served by a backend of their own (one implementation of each server).
MOVED = {
    "triton-openai": "the triton backend serves Triton's OpenAI frontend, with its quirks (text only, "
    'no fields outside its schema): backend = "triton" with backends.triton.mode = "openai"',
}


def _check_preset(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value in MOVED:
        raise ValueError(f"preset {value!r} is gone: {MOVED[value]}")
    if value is not None and value not in PRESETS:
        raise ValueError(f"unknown preset {value!r}; known presets: {', '.join(sorted(PRESETS))}")


@attrs.frozen(slots=True)
class OpenAISettings(BackendSettings):
    """Settings of the generic backend.

    Attributes:
        preset: A known service or local server (``ollama``, ``llamacpp``,
            ``lmstudio``, ``koboldcpp``, ``textgen-webui``,
            ``openrouter``, ``openai``, ``gemini``, ``dashscope``, ``anthropic``,
            ``chutes``, ``nanogpt``, ``mistral``): fills in ``base_url`` and
            ``api_key_env`` when those are unset, and applies the service's
            quirks (fields it rejects, image limits).
        image_model: The model for image generation (``dall-e-3``,
            ``gpt-image-1`` ...) when a request names none; unset, the
            server's default (OpenAI: ``dall-e-2``).  ``model`` is the chat model.
    """

    preset: str | None = attrs.field(default=None, validator=_check_preset)
    image_model: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.preset is None:
            return
        url, key_env = PRESETS[self.preset]
        if self.base_url is None:
            object.__setattr__(self, "base_url", url)
        if self.api_key_env is None and key_env is not None:
            object.__setattr__(self, "api_key_env", key_env)


class OpenAIBackend(OpenAICompatBackend, OpenAIImagesMixin):
    name = "openai"
    description = "Any OpenAI-compatible server (Ollama, llama.cpp, LM Studio, OpenRouter, OpenAI, ...)"
    default_base_url = "http://localhost:8000/v1"
    capabilities = Capabilities(
        vision=True,
        streaming=True,
        max_images=None,
        model_switch=True,
        kinds=("vision", "text", "image_generation"),
    )
    settings_cls = OpenAISettings
    launch_hints = (
        'ollama serve   (then: backends.openai.preset = "ollama")',
        'llama-server -m MODEL.gguf --mmproj MMPROJ.gguf --port 8080   (preset "llamacpp")',
        'lms server start   (LM Studio, port 1234; preset "lmstudio")',
    )
    docs_url = "docs/backends/openai.md"
    #: a base URL with a path (``/api/v1``, ``/v1beta/openai``) is used as given
    force_v1 = False

    def build_body(
        self, ctx: BackendContext, request: Request, model: str, *, stream: bool
    ) -> dict[str, Any]:
        preset = getattr(ctx.settings, "preset", None)
        quirks = QUIRKS.get(preset) if preset else None
        if quirks is not None:
            _check_images(ctx, request, quirks, preset)
        body = super().build_body(ctx, request, model, stream=stream)
        if quirks is None:
            return body
        for ours, theirs in quirks.rename.items():
            if ours in body:
                value = body.pop(ours)
                body[theirs] = value  # asked for explicitly (Request.extra, extra_body): it wins
        drop_fields(ctx, body, quirks.drop, f"the {preset} preset's service rejects them")
        return body

    async def list_models(self, ctx: BackendContext) -> tuple[list[str], list[Mapping[str, Any]]]:
        """Anthropic's ``/v1/models`` is its native route: Anthropic's own auth headers, and pages.

        It answers 20 models a page unless asked for up to 1000, newest first, with
        ``has_more``/``last_id`` for the next page (``after_id``): every page is read
        (at most ``ANTHROPIC_MAX_PAGES``), so an older configured model is still found.
        """
        if getattr(ctx.settings, "preset", None) != "anthropic":
            return await super().list_models(ctx)
        url = self.api(ctx, "models")
        settings = ctx.settings
        key = settings.api_key.reveal() if settings.api_key else os.environ.get(settings.api_key_env or "")
        headers = {"anthropic-version": ANTHROPIC_VERSION, **({"x-api-key": key} if key else {})}
        entries: list[Mapping[str, Any]] = []
        after: str | None = None
        for _ in range(ANTHROPIC_MAX_PAGES):
            query = {"limit": str(ANTHROPIC_PAGE), **({"after_id": after} if after else {})}
            page_url = f"{url}?{urlencode(query)}"
            resp = await ctx.http.request("GET", page_url, headers=headers)
            if resp.status >= 400:
                raise ctx.http.error(resp, page_url)
            try:
                page = json.loads(resp.body)
            except ValueError:
                page = None
            data = page.get("data") if isinstance(page, Mapping) else None
            if not isinstance(data, list):
                raise BackendProtocolError(
                    f"{ctx.name}: /models answered without a 'data' list: {resp.body[:200]!r}",
                    backend=ctx.name,
                )
            entries += [e for e in data if isinstance(e, Mapping) and isinstance(e.get("id"), str)]
            last = page.get("last_id")
            if page.get("has_more") is not True or not isinstance(last, str) or not last or last == after:
                break
            after = last
        return [e["id"] for e in entries], entries


def _check_images(ctx: BackendContext, request: Request, quirks: Quirks, preset: str | None) -> None:
    """Refuse, before sending, images the service would refuse (saying which limit and what to change)."""
    images = request.images
    where = f"{ctx.name} (preset {preset})"

    def refuse(what: str, hint: str) -> BackendRejected:
        return BackendRejected(f"{where}: {what}", backend=ctx.name, hint=hint)

    if quirks.max_images is not None and len(images) > quirks.max_images:
        raise refuse(
            f"at most {quirks.max_images} images per request, got {len(images)}",
            f"send at most {quirks.max_images} images per request",
        )
    side, many = quirks.max_image_side, ""
    if quirks.many_images is not None and len(images) > quirks.many_images[0]:
        side, many = quirks.many_images[1], f" with more than {quirks.many_images[0]} images"
    for n, image in enumerate(images, 1):
        if quirks.image_types is not None and image.mime not in quirks.image_types:
            raise refuse(
                f"image {n} is {image.mime}; it accepts {', '.join(sorted(quirks.image_types))}",
                "let imageworks prepare the image (prepare_image re-encodes it as JPEG)",
            )
        if side is not None and max(image.width, image.height) > side:
            raise refuse(
                f"image {n} is {image.width}x{image.height} pixels; at most {side} pixels a side{many}",
                "lower max_pixels (Client(max_pixels=...)) so images are resized before sending",
            )
        size = (len(image.data) + 2) // 3 * 4
        if quirks.max_image_bytes is not None and size > quirks.max_image_bytes:
            raise refuse(
                f"image {n} is {size / MB:.1f} MB as base64; at most {quirks.max_image_bytes / MB:g} MB",
                "lower max_pixels or the JPEG quality so images are smaller",
            )


#: The entry-point target: a stateless plugin object (per-client state lives in the context).
plugin = OpenAIBackend()
