"""The Colour Narrator result that the sidecar writers serialise."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import attrs

from imageworks_core.outputs._common import to_utc

__all__ = ["NarrationRecord"]


def _now_utc() -> datetime:
    return datetime.now(UTC)


def _utc(value: datetime) -> datetime:
    return to_utc(value)


def _optional_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _regions(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):  # a bare string is one region, not a list of letters
        return (value,)
    return tuple(str(v) for v in value)


@attrs.frozen(slots=True)
class NarrationRecord:
    """One image's description plus the Colour Narrator metadata that goes with it.

    The text fields hold the model's answer exactly as received; each writer
    makes it safe for its own format (see ``outputs._common``).

    Attributes:
        description: The model's description of the image.
        vlm_model: Name of the vision-language model that wrote it.
        vlm_processing_time: Seconds the model took for this image.
        processing_timestamp: When the image was processed; stored as aware UTC
            (a naive value is taken to be UTC). Defaults to now.
        confidence_score: Confidence in the description, if one was computed.
        mono_contamination_level: Colour contamination of a monochrome image, if measured.
        hue_analysis: Free-text hue analysis, if any.
        chroma_analysis: Free-text chroma analysis, if any.
        validation_status: Outcome of validating the description, if done.
        color_regions: Names of the coloured regions found (an ``rdf:Bag`` in XMP).
    """

    description: str
    vlm_model: str
    vlm_processing_time: float = attrs.field(converter=float)
    processing_timestamp: datetime = attrs.field(factory=_now_utc, converter=_utc)
    confidence_score: float | None = attrs.field(default=None, converter=_optional_float)
    mono_contamination_level: float | None = attrs.field(default=None, converter=_optional_float)
    hue_analysis: str | None = None
    chroma_analysis: str | None = None
    validation_status: str | None = None
    color_regions: tuple[str, ...] = attrs.field(default=(), converter=_regions)
