"""Output writers: XMP / JSON sidecars, XMP embedded via exiftool, the results JSONL.

Formats are those of ImageWorks' Colour Narrator and must not change:

* ``photo.xmp`` (:func:`write_xmp_sidecar`): ``cn:`` properties in
  ``http://imageworks.ai/color-narrator/1.0/`` plus ``dc:description``; an
  existing sidecar is merged into, not replaced.
* ``photo.jpg.cn_metadata.json`` (:func:`write_json_sidecar`).
* the same XMP inside the image (:func:`embed_xmp`, needs exiftool).
* ``results.jsonl`` (:class:`JsonlWriter`, :func:`completed_images` for resume).

Sidecars are replaced atomically (:func:`atomic_write_bytes`); the JSONL is
append-only.
"""

from imageworks_core.outputs._common import OutputError, dumps_json
from imageworks_core.outputs.atomic import atomic_write_bytes
from imageworks_core.outputs.embed import embed_xmp, find_exiftool
from imageworks_core.outputs.json_sidecar import json_sidecar_path, write_json_sidecar
from imageworks_core.outputs.jsonl import (
    OPTIONAL_KEYS,
    RESULT_KEYS,
    JsonlWriter,
    completed_images,
    iter_results,
    path_keys,
    resolved_key,
    resume_index,
)
from imageworks_core.outputs.record import NarrationRecord
from imageworks_core.outputs.xmp import CN_NAMESPACE, render_xmp, write_xmp_sidecar, xmp_sidecar_path

__all__ = [
    "CN_NAMESPACE",
    "OPTIONAL_KEYS",
    "RESULT_KEYS",
    "JsonlWriter",
    "NarrationRecord",
    "OutputError",
    "atomic_write_bytes",
    "completed_images",
    "dumps_json",
    "embed_xmp",
    "find_exiftool",
    "iter_results",
    "json_sidecar_path",
    "path_keys",
    "render_xmp",
    "resolved_key",
    "resume_index",
    "write_json_sidecar",
    "write_xmp_sidecar",
    "xmp_sidecar_path",
]
