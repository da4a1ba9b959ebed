"""Settings of the ``sdwebui`` backend (section ``[tool.imageworks.backends.sdwebui]``)."""

from __future__ import annotations

import attrs

from imageworks_core import BackendSettings

__all__ = ["SdWebuiSettings"]


def _optional_at_least_one(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1, got {value!r}")


def _optional_not_negative(instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and value < 0:
        raise ValueError(f"{attribute.name} must be 0 or more, got {value!r}")


def _optional_fraction(instance: object, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and not 0 <= value <= 1:
        raise ValueError(f"{attribute.name} must be from 0 to 1, got {value!r}")


@attrs.frozen(slots=True)
class SdWebuiSettings(BackendSettings):
    """Settings of the Stable Diffusion WebUI backend.

    ``model`` (common key) is a checkpoint as the WebUI names it (a title such as
    ``v1-5-pruned-emaonly.safetensors [6ce0161689]``, a model name or a hash);
    unset, the checkpoint loaded in the WebUI is used.  ``extra_body`` (common
    key) is merged into every txt2img / img2img body.  A setting left unset is
    not sent, so the WebUI's own default applies.

    Attributes:
        sampler_name: Sampler, e.g. ``Euler a`` or ``DPM++ 2M``.
        scheduler: Scheduler, e.g. ``Karras`` (WebUI 1.9 and later).
        steps: Sampling steps when a request gives none.
        cfg_scale: CFG scale when a request gives no guidance.
        width: Width when a request gives no size.
        height: Height when a request gives no size.
        denoising_strength: img2img strength (0 to 1) when a request gives none.
        restore_model: Put the WebUI's checkpoint back after a request that named
            another one (``override_settings_restore_afterwards``).
    """

    sampler_name: str | None = None
    scheduler: str | None = None
    steps: int | None = attrs.field(default=None, validator=_optional_at_least_one)
    cfg_scale: float | None = attrs.field(default=None, validator=_optional_not_negative)
    width: int | None = attrs.field(default=None, validator=_optional_at_least_one)
    height: int | None = attrs.field(default=None, validator=_optional_at_least_one)
    denoising_strength: float | None = attrs.field(default=None, validator=_optional_fraction)
    restore_model: bool = True
