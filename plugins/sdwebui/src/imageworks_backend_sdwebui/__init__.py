"""ImageWorks backend ``sdwebui``: image generation through the Stable Diffusion WebUI API.

AUTOMATIC1111's WebUI (and Forge, SD.Next, which keep its ``/sdapi/v1`` routes)
started with ``--api``: ``txt2img``, ``img2img`` when ``extras["init_images"]``
is given, and a health check from ``sd-models`` and ``options``.
"""

from __future__ import annotations

from ._backend import SdWebuiBackend
from ._settings import SdWebuiSettings

__all__ = ["SdWebuiBackend", "SdWebuiSettings", "plugin"]

#: The entry-point target.
plugin = SdWebuiBackend()
