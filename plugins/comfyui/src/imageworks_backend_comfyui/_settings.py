"""``ComfyUISettings``: the ``[tool.imageworks.backends.comfyui]`` keys on top of the common ones."""

from __future__ import annotations

import attrs

from imageworks_core.plugin import BackendSettings

__all__ = ["ComfyUISettings"]


def _positive(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be greater than 0, got {value!r}")


def _not_blank(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value is not None and not value.strip():
        raise ValueError(f"{attribute.name} must not be empty")


@attrs.frozen(slots=True)
class ComfyUISettings(BackendSettings):
    """Settings of the ComfyUI backend.

    ``model`` (common key) is the checkpoint file name as ComfyUI lists it
    (``GET /models/checkpoints``), e.g. ``"v1-5-pruned-emaonly.safetensors"``.
    ``timeout`` (common key) caps one request, queue wait included.

    Attributes:
        workflow: Path to a workflow saved with "Save (API format)"; unset: the
            built-in txt2img workflow.  ``ImageRequest.extras["workflow"]`` wins.
        width: Image width when a request gives no size.
        height: Image height when a request gives no size.
        steps: Sampling steps when a request gives none.
        cfg: Classifier-free guidance when a request gives none.
        sampler_name: KSampler ``sampler_name`` (e.g. ``euler``, ``dpmpp_2m``).
        scheduler: KSampler ``scheduler`` (e.g. ``normal``, ``karras``).
        filename_prefix: SaveImage ``filename_prefix`` of the built-in workflow.
        poll_interval: Seconds between two ``GET /history/{prompt_id}`` polls.
        cancel_timeout: Seconds allowed to take a cancelled prompt off the server.
    """

    workflow: str | None = attrs.field(default=None, validator=_not_blank)
    width: int = attrs.field(default=512, validator=_positive)
    height: int = attrs.field(default=512, validator=_positive)
    steps: int = attrs.field(default=20, validator=_positive)
    cfg: float = attrs.field(default=7.0, validator=_positive)
    sampler_name: str = attrs.field(default="euler", validator=_not_blank)
    scheduler: str = attrs.field(default="normal", validator=_not_blank)
    filename_prefix: str = attrs.field(default="imageworks", validator=_not_blank)
    poll_interval: float = attrs.field(default=0.25, validator=_positive)
    cancel_timeout: float = attrs.field(default=5.0, validator=_positive)
