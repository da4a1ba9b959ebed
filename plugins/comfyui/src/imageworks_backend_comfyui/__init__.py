"""ImageWorks backend ``comfyui``: text-to-image on a ComfyUI server over its HTTP API.

A workflow in ComfyUI's API format (a file, ``ImageRequest.extras["workflow"]``,
or the built-in txt2img graph) is filled in, queued with ``POST /prompt``, polled
with ``GET /history/{prompt_id}`` and its images are fetched from ``GET /view``.
"""

from __future__ import annotations

from ._backend import ComfyUIBackend
from ._settings import ComfyUISettings

__all__ = ["ComfyUIBackend", "ComfyUISettings", "plugin"]

#: The entry-point target.
plugin = ComfyUIBackend()
