"""ImageWorks backend for vLLM's OpenAI-compatible server (``vllm serve``).

Installed, it registers the backend ``vllm`` (entry point group
``imageworks.backends``).  Configure it under ``[tool.imageworks.backends.vllm]``
(keys: ``VllmSettings``) or with ``IMAGEWORKS_BACKENDS__VLLM__<KEY>``.
"""

from __future__ import annotations

from ._backend import GUIDED_FIELDS, VllmBackend
from ._metrics import parse_metrics
from ._settings import VllmSettings

__all__ = ["GUIDED_FIELDS", "VllmBackend", "VllmSettings", "parse_metrics", "plugin"]

#: The entry-point target: a stateless plugin object (per-client state lives in the context).
plugin = VllmBackend()
