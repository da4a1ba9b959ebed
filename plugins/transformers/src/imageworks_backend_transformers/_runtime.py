"""The torch / transformers side of loading a model, and how it fails.

Device and dtype resolution, the model class, a fast check that the Hugging
Face Hub can be reached, the errors of a model that cannot be loaded, the
installed versions and this process's memory.  torch and transformers are
imported inside the functions, never at module import.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from imageworks_core import BackendDown, ConfigError, ImageWorksError

from ._locate import ModelLocation
from ._settings import DEFAULT_MODEL

__all__ = [
    "auto_model_class",
    "closing_error",
    "dtype_kwarg",
    "first_line",
    "heavy_modules_loaded",
    "loaded_versions",
    "model_hint",
    "not_available_error",
    "probe_hub",
    "process_rss_bytes",
    "resolve_device",
    "resolve_dtype",
    "unavailable",
]

_DTYPE_NAMES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def process_rss_bytes() -> int | None:
    """Resident memory of this process now (``None`` where it cannot be read)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil  # optional

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def model_hint(ref: str) -> str:
    return (
        "point the backend at a local model folder: --vlm-model /path/to/folder, or "
        f'backends.transformers.model = "/path/to/folder" in [tool.imageworks]; or download it first '
        f"where the hub is reachable: hf download {ref}"
    )


def not_available_error(backend: str, location: ModelLocation) -> ImageWorksError:
    """The error for a model that cannot be loaded from disk and may not be downloaded."""
    if location.kind == "missing":
        return ConfigError(
            f"{backend}: cannot use model {location.ref!r}: {location.why}",
            key=f"backends.{backend}.model",
            hint=model_hint(DEFAULT_MODEL if location.ref.startswith((".", "/", "~")) else location.ref),
        )
    return BackendDown(  # final: nothing changes on a retry
        f"{backend}: model {location.ref!r} is {location.why}, and downloads are off "
        "(HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / local_files_only)",
        backend=backend,
        hint=model_hint(location.ref),
    )


def probe_hub(backend: str, ref: str, timeout: float = 10.0) -> None:
    """Fail fast when the hub cannot be reached or has no such model.

    Without this, huggingface_hub retries an unreachable hub with backoff for
    minutes before transformers reports it.  Any HTTP answer but 404 counts as
    reachable (401/403: a gated or private model, left to the hub client).
    """
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    url = f"{endpoint}/api/models/{ref}"
    try:
        resp = httpx.head(url, timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise unavailable(
            f"{backend}: model {ref!r} is not on local disk and the Hugging Face Hub at {endpoint} "
            f"cannot be reached to download it: {first_line(exc)}",
            backend,
            model_hint(ref),
        ) from exc
    if resp.status_code == 404:
        raise ConfigError(
            f"{backend}: the Hugging Face Hub at {endpoint} has no model {ref!r}",
            key=f"backends.{backend}.model",
            hint=f"check the id (e.g. {DEFAULT_MODEL}), or " + model_hint(ref),
        )


def closing_error(backend: str) -> BackendDown:
    """The client is closing and the model is gone: final for this request, no retry."""
    return BackendDown(
        f"{backend}: the model was unloaded (the client is closing)",
        backend=backend,
        hint="send requests before closing the client, or use a new client",
    )


def unavailable(message: str, backend: str, hint: str) -> BackendDown:
    # final: the same load fails the same way on an immediate retry, and waiting does not help
    return BackendDown(message, backend=backend, hint=hint)


def resolve_device(backend: str, setting: str, torch: Any) -> str:
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise unavailable(
            f"{backend}: device {setting!r} asked for, but torch {torch.__version__} sees no CUDA GPU",
            backend,
            'set backends.transformers.device = "cpu" (or "auto"), or install a CUDA build of torch',
        )
    return setting


def resolve_dtype(setting: str, device: str, torch: Any) -> str:
    if setting != "auto":
        return _DTYPE_NAMES[setting]
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def auto_model_class(transformers: Any) -> Any:
    for name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq"):
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ImportError("this transformers has neither AutoModelForImageTextToText nor AutoModelForVision2Seq")


def dtype_kwarg(transformers: Any, dtype: Any) -> dict[str, Any]:
    """``dtype=`` (transformers >= 4.56) or the older ``torch_dtype=``."""
    try:
        major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    except ValueError:
        return {"dtype": dtype}
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def loaded_versions() -> str:
    """``transformers X, torch Y`` from the installed metadata (no import)."""
    import importlib.metadata as md

    parts = []
    for dist in ("transformers", "torch"):
        try:
            parts.append(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:
            parts.append(f"{dist} not installed")
    return ", ".join(parts)


def heavy_modules_loaded() -> bool:
    return "torch" in sys.modules and "transformers" in sys.modules
