"""Fallback JSON sidecar: ``photo.jpg`` -> ``photo.jpg.cn_metadata.json``.

Same content as the XMP sidecar, with ImageWorks' snake_case keys::

    {"description": ..., "confidence_score": ..., "processing_timestamp": "...+00:00",
     "mono_contamination_level": ..., "vlm_model": ..., "vlm_processing_time": ...,
     "hue_analysis": ..., "chroma_analysis": ..., "validation_status": ...,
     "color_regions": [...], "source_file": "photo.jpg", "metadata_version": "1.0"}

Every key is always present; unset values (and non-finite numbers) are
``null``.  ``source_file`` is the image path as given, through
:func:`os.fsdecode`.  The file is UTF-8 with non-ASCII text as is; lone
surrogates (undecodable bytes of a non-UTF-8 file name, broken model text)
become U+FFFD, see ``outputs._common.dumps_json``.
"""

from __future__ import annotations

from pathlib import Path

from imageworks_core.outputs._common import dumps_json, finite_or_none, path_text
from imageworks_core.outputs.atomic import atomic_write_bytes
from imageworks_core.outputs.record import NarrationRecord

__all__ = [
    "JSON_SIDECAR_SUFFIX",
    "METADATA_VERSION",
    "json_sidecar_path",
    "narration_to_json",
    "write_json_sidecar",
]

JSON_SIDECAR_SUFFIX = ".cn_metadata.json"
METADATA_VERSION = "1.0"


def json_sidecar_path(image: Path) -> Path:
    """``photo.jpg`` -> ``photo.jpg.cn_metadata.json`` (full image name kept)."""
    image = Path(image)
    return image.with_name(image.name + JSON_SIDECAR_SUFFIX)


def narration_to_json(image: Path, record: NarrationRecord) -> dict[str, object]:
    """The JSON sidecar content for *record* about *image*, as a plain dict."""
    return {
        "description": record.description,
        "confidence_score": finite_or_none(record.confidence_score),
        "processing_timestamp": record.processing_timestamp.isoformat(),
        "mono_contamination_level": finite_or_none(record.mono_contamination_level),
        "vlm_model": record.vlm_model,
        "vlm_processing_time": finite_or_none(record.vlm_processing_time),
        "hue_analysis": record.hue_analysis,
        "chroma_analysis": record.chroma_analysis,
        "validation_status": record.validation_status,
        "color_regions": list(record.color_regions),
        "source_file": path_text(image),
        "metadata_version": METADATA_VERSION,
    }


def write_json_sidecar(image: Path, record: NarrationRecord) -> Path:
    """Atomically (re)write ``json_sidecar_path(image)`` for *record* and return its path.

    Raises:
        OSError: Writing failed; an earlier sidecar is then unchanged.
    """
    target = json_sidecar_path(Path(image))
    text = dumps_json(narration_to_json(image, record), indent=2) + "\n"
    atomic_write_bytes(target, text.encode("utf-8"))
    return target
