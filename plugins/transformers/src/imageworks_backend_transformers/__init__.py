"""ImageWorks backend that runs a Hugging Face transformers vision-language model in-process.

Installed, it registers the backend ``transformers`` (entry point group
``imageworks.backends``): no server to start, the model loads inside the
calling process on the first request, on CPU or CUDA.  Configure it under
``[tool.imageworks.backends.transformers]`` (keys: ``TransformersSettings``)
or with ``IMAGEWORKS_BACKENDS__TRANSFORMERS__<KEY>``.

torch and transformers are imported only when a model is loaded, so listing
plugins stays fast.
"""

from __future__ import annotations

from ._backend import TransformersBackend
from ._locate import ModelLocation, locate
from ._settings import DEFAULT_MODEL, TransformersSettings

__all__ = [
    "DEFAULT_MODEL",
    "ModelLocation",
    "TransformersBackend",
    "TransformersSettings",
    "locate",
    "plugin",
]

#: The entry-point target: a stateless plugin object (per-client state lives in the context).
plugin = TransformersBackend()
