"""``TritonSettings``: the ``[tool.imageworks.backends.triton]`` keys on top of the common ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from imageworks_core import BackendSettings

__all__ = [
    "ENDPOINTS",
    "IMAGE_INPUTS",
    "KSERVE_DEFAULT_URL",
    "MODES",
    "OPENAI_DEFAULT_URL",
    "TritonSettings",
]

MODES = ("kserve", "openai")
ENDPOINTS = ("auto", "generate", "infer")
IMAGE_INPUTS = ("auto", "image_url_input", "image", "none")
#: Triton's KServe v2 HTTP port.
KSERVE_DEFAULT_URL = "http://localhost:8000"
#: Triton's OpenAI-compatible frontend.
OPENAI_DEFAULT_URL = "http://localhost:9000/v1"


def _one_of(choices: tuple[str, ...]) -> Any:
    def check(instance: object, attribute: attrs.Attribute, value: str) -> None:
        if value not in choices:
            shown = ", ".join(repr(c) for c in choices)
            raise ValueError(f"{attribute.name} must be one of {shown}, got {value!r}")

    return check


def _name(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not value or not value.strip():
        raise ValueError(f"{attribute.name} must name a model input/output, got {value!r}")


def _template(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and "{prompt}" not in value:
        raise ValueError(
            "chat_template must contain {prompt} (where the user text goes), e.g. "
            "'<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n'"
        )


@attrs.frozen(slots=True)
class TritonSettings(BackendSettings):
    """Settings of the Triton / TensorRT-LLM backend.

    Attributes:
        mode: ``kserve`` (default): Triton's KServe v2 HTTP API (port 8000),
            which serves TensorRT-LLM ensembles, Triton's vLLM backend and any
            other model, with images.  ``openai``: Triton's OpenAI-compatible
            frontend (port 9000), text only.
        endpoint: ``auto`` (default): the generate extension when the server
            has it, else ``/infer``; ``generate``: always the generate
            extension; ``infer``: always ``/v2/models/{m}/infer`` (decoupled,
            i.e. streaming, models still go through ``generate_stream``,
            because Triton's HTTP ``/infer`` cannot serve them).
        text_input_name: The model input that takes the prompt.
        text_output_name: The model output that holds the answer.
        image_input: Where images go: ``auto`` (the model's
            ``image_url_input``, else its ``image`` input), ``image_url_input``
            (``data:`` URLs, the TensorRT-LLM multimodal ensemble),
            ``image`` (plain base64, Triton's vLLM backend) or ``none`` (the
            model takes no images).
        chat_template: Format applied to the prompt before sending, with
            ``{prompt}`` (and optionally ``{system}``) in it.  The TensorRT-LLM
            ensemble applies no chat template, so set the model's own, e.g.
            ``"<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n"``.
        parameters: Extra sampling inputs (``top_k``, ``repetition_penalty``,
            ``seed``, ``end_id`` ...), each sent only when the model declares
            that input, converted to its declared datatype; for Triton's vLLM
            backend they go into ``sampling_parameters``.
        stop_words: Stop strings sent with every request (the model's
            ``stop_words`` input, or ``stop`` in ``sampling_parameters``).
        metrics_url: Triton's Prometheus page, read by health checks and,
            during a batch, by the adaptive concurrency limit (its waiting
            queue).  Default: port 8002 on the server's host
            (``http://host:8002/metrics``); ``""``: do not read metrics.
    """

    mode: str = attrs.field(default="kserve", validator=_one_of(MODES))
    endpoint: str = attrs.field(default="auto", validator=_one_of(ENDPOINTS))
    text_input_name: str = attrs.field(default="text_input", validator=_name)
    text_output_name: str = attrs.field(default="text_output", validator=_name)
    image_input: str = attrs.field(default="auto", validator=_one_of(IMAGE_INPUTS))
    chat_template: str | None = attrs.field(default=None, validator=_template)
    parameters: Mapping[str, Any] = attrs.field(factory=dict)
    stop_words: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    metrics_url: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.mode == "openai" and self.base_url is None:
            object.__setattr__(self, "base_url", OPENAI_DEFAULT_URL)
