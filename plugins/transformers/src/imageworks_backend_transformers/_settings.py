"""``TransformersSettings``: the ``[tool.imageworks.backends.transformers]`` keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from imageworks_core import BackendSettings

__all__ = ["DEFAULT_MODEL", "DEVICES", "DTYPES", "TransformersSettings"]

#: A small instruction-tuned VLM that runs on a laptop CPU (~0.5 GB of bf16 weights on the hub).
DEFAULT_MODEL = "HuggingFaceTB/SmolVLM-256M-Instruct"
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")
_CUDA_INDEX = re.compile(r"cuda:\d+")


def _device(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in DEVICES and not _CUDA_INDEX.fullmatch(value):
        raise ValueError(f"device must be one of {', '.join(DEVICES)} (or cuda:N), got {value!r}")


def _dtype(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if value not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {value!r}")


def _positive(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


@attrs.frozen(slots=True)
class TransformersSettings(BackendSettings):
    """Settings of the in-process transformers backend.

    ``model`` (common key) is a local model folder or a Hugging Face Hub id
    (default ``HuggingFaceTB/SmolVLM-256M-Instruct``).  ``extra_body``
    (common key) and ``Request.extra`` are passed to ``model.generate()`` as
    keyword arguments (e.g. ``{"repetition_penalty": 1.1}``).  ``base_url``,
    ``api_key`` and the HTTP timeouts do not apply; ``timeout`` caps one
    generation and ``stream_idle_timeout`` the silence between streamed pieces.

    Attributes:
        device: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto`` (float32 on CPU; bfloat16 on CUDA where supported, else
            float16), ``float32``, ``bfloat16`` or ``float16``.
        revision: Hub revision (branch, tag or commit) to load.
        cache_dir: Hugging Face cache folder (default: ``HF_HUB_CACHE`` /
            ``HF_HOME``/hub / the library default).
        local_files_only: Never contact the hub; use local folders and the cache only
            (also on when ``HF_HUB_OFFLINE=1``).
        trust_remote_code: Allow models that ship their own Python code (runs that code).
        threads: CPU threads torch may use (process-wide; ``None``: torch's default).
        seed: Seed torch before each generation, for repeatable sampling.
        processor_kwargs: Options for the processor, e.g. ``{"do_image_splitting": false}``
            for SmolVLM (fewer image tokens: much faster on CPU).
    """

    device: str = attrs.field(default="auto", validator=_device)
    dtype: str = attrs.field(default="auto", validator=_dtype)
    revision: str | None = None
    cache_dir: str | None = None
    local_files_only: bool = False
    trust_remote_code: bool = False
    threads: int | None = attrs.field(default=None, validator=_positive)
    seed: int | None = None
    processor_kwargs: Mapping[str, Any] = attrs.field(factory=dict)
