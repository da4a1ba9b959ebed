"""``VllmSettings``: the ``[tool.imageworks.backends.vllm]`` keys on top of the common ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from imageworks_core.plugin import BackendSettings, set_fields

__all__ = ["VllmSettings"]

#: Scalar sampling extras vLLM accepts in the request body, sent only when set.
SCALAR_FIELDS = ("top_k", "min_p", "repetition_penalty", "seed", "min_tokens")
#: Object-valued extras, sent only when set.
MAPPING_FIELDS = ("structured_outputs", "response_format", "chat_template_kwargs")


def _positive(instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value!r}")


def _non_negative(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more, got {value!r}")


def _unit_interval(instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def _top_k(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < -1:
        raise ValueError(f"top_k must be -1 (off), 0 (off) or a positive count, got {value!r}")


@attrs.frozen(slots=True)
class VllmSettings(BackendSettings):
    """Settings of the vLLM backend; every vLLM option is sent only when set.

    Per-request values (``Request.extra``) win over these, and these win over
    ``extra_body``.

    Attributes:
        structured_outputs: vLLM's constraint object, e.g. ``{"json": SCHEMA}``,
            ``{"regex": "..."}``, ``{"choice": [...]}`` or ``{"grammar": "..."}``.
            (The old ``guided_*`` fields, removed in vLLM 0.12, are translated
            into this when found in ``extra_body`` or ``Request.extra``.)
        response_format: OpenAI ``response_format`` (``json_schema`` / ``json_object``).
        mm_processor_kwargs: Multimodal processor options sent per request,
            e.g. ``{"max_pixels": 1003520}`` for Qwen2-VL.
        max_pixels: Shortcut for ``mm_processor_kwargs.max_pixels``: the
            server-side image budget (caps visual tokens on small GPUs).
        top_k: Top-k sampling (``-1`` or ``0``: off).
        min_p: Min-p sampling, between 0 and 1.
        repetition_penalty: Repetition penalty (1.0: none).
        seed: Sampling seed, for repeatable output.
        min_tokens: Tokens to generate before a stop may end the answer.
        chat_template_kwargs: Extra variables for the model's chat template
            (e.g. ``{"enable_thinking": false}``).
    """

    structured_outputs: Mapping[str, Any] | None = None
    response_format: Mapping[str, Any] | None = None
    mm_processor_kwargs: Mapping[str, Any] | None = None
    max_pixels: int | None = attrs.field(default=None, validator=_positive)
    top_k: int | None = attrs.field(default=None, validator=_top_k)
    min_p: float | None = attrs.field(default=None, validator=_unit_interval)
    repetition_penalty: float | None = attrs.field(default=None, validator=_positive)
    seed: int | None = None
    min_tokens: int | None = attrs.field(default=None, validator=_non_negative)
    chat_template_kwargs: Mapping[str, Any] | None = None

    def body_fields(self) -> dict[str, Any]:
        """The request-body fields these settings add (only those that are set)."""
        out = set_fields(self, (*SCALAR_FIELDS, *MAPPING_FIELDS))
        mm = dict(self.mm_processor_kwargs or {})
        if self.max_pixels is not None:
            mm["max_pixels"] = self.max_pixels
        if mm:
            out["mm_processor_kwargs"] = mm
        return out
