"""Where the configured model is, without downloading or importing torch.

Health checks and the ``auto`` chooser need to know whether the model can be
loaded from disk (a local folder, or the Hugging Face cache) or would need a
download first.  Only ``huggingface_hub`` (light) is imported here.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

from ._settings import DEFAULT_MODEL, TransformersSettings

__all__ = ["ModelLocation", "hub_cache_dir", "is_offline", "locate", "model_ref"]

_TRUE = ("1", "true", "yes", "on")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@attrs.frozen(slots=True)
class ModelLocation:
    """The configured model and where it can be loaded from.

    Attributes:
        ref: The model as configured: a folder path or a hub id.
        kind: ``folder`` (a local model folder), ``cached`` (a hub id found in
            the local cache), ``remote`` (a hub id that must be downloaded
            first) or ``missing`` (a folder that does not exist, or an invalid id).
        path: The local folder to load from (``folder`` / ``cached``).
        offline: Downloads are off (``local_files_only`` or ``HF_HUB_OFFLINE``).
        why: One line on what was found, for messages.
    """

    ref: str
    kind: str
    path: str | None = None
    offline: bool = False
    why: str = ""

    @property
    def local(self) -> bool:
        """Loadable without any download."""
        return self.kind in ("folder", "cached")

    @property
    def loadable(self) -> bool:
        """Loadable now: from disk, or by downloading when downloads are allowed."""
        return self.local or (self.kind == "remote" and not self.offline)


def model_ref(settings: TransformersSettings) -> str:
    """The configured model, or the default one."""
    return settings.model or DEFAULT_MODEL


def is_offline(settings: TransformersSettings) -> bool:
    """Downloads are off: ``local_files_only``, ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``."""
    if settings.local_files_only:
        return True
    return any(
        os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def hub_cache_dir(settings: TransformersSettings) -> str | None:
    """The hub cache to use, read from the environment now (not at library import time)."""
    if settings.cache_dir:
        return os.path.expanduser(settings.cache_dir)
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def _looks_like_path(ref: str) -> bool:
    return (
        os.path.isabs(ref)
        or ref.startswith((".", "~"))
        or ref.count("/") > 1
        or (os.sep != "/" and os.sep in ref)
    )


def _has_weights(folder: Path) -> bool:
    try:
        return any(p.name.endswith(_WEIGHT_SUFFIXES) for p in folder.iterdir())
    except OSError:
        return False


def locate(settings: TransformersSettings) -> ModelLocation:
    """Find the configured model on disk; never downloads."""
    ref = model_ref(settings)
    offline = is_offline(settings)
    folder = Path(ref).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            return ModelLocation(
                ref, "missing", offline=offline, why=f"{folder} has no config.json (not a model folder)"
            )
        return ModelLocation(ref, "folder", str(folder), offline, f"local folder {folder}")
    if _looks_like_path(ref):
        return ModelLocation(ref, "missing", offline=offline, why=f"no model folder at {folder}")
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir(settings)
    try:
        found = try_to_load_from_cache(ref, "config.json", cache_dir=cache, revision=settings.revision)
    except ValueError as exc:  # HFValidationError: not a valid repo id
        return ModelLocation(
            ref, "missing", offline=offline, why=f"{ref!r} is not a folder or a hub id: {exc}"
        )
    if isinstance(found, str):
        snapshot = Path(found).parent
        if _has_weights(snapshot):
            return ModelLocation(ref, "cached", str(snapshot), offline, f"in the local cache at {snapshot}")
        why = f"only partly in the local cache ({snapshot} has no weights)"
    else:
        where = cache or "the default Hugging Face cache"
        why = f"not in the local cache ({where})"
    return ModelLocation(ref, "remote", offline=offline, why=why)
