"""What ``imageworks describe`` writes beside the results JSONL: the sidecars, and the
results file itself before the first request.

The answer the user paid for always reaches the results JSONL; a sidecar that
cannot be written is that image's ``output_error`` (the description is kept),
and ``--resume`` writes the missing sidecars from the results file later
without asking the model again (``restore``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import attrs

from .errors import ConfigError, ImageWorksError, OutputError
from .images import printable_path
from .models import Result
from .outputs import (
    JsonlWriter,
    NarrationRecord,
    embed_xmp,
    json_sidecar_path,
    path_keys,
    write_json_sidecar,
    write_xmp_sidecar,
    xmp_sidecar_path,
)
from .outputs.xmp import CN_NAMESPACE
from .redact import scrub
from .summary import Summary
from .templates import metrics_for

if TYPE_CHECKING:
    from .describe import DescribeOptions

__all__ = ["already_described", "extra_keys", "narration", "open_results", "restore", "write_sidecars"]


def one_line(exc: BaseException) -> str:
    """*exc*'s message on one line."""
    text = exc.message if isinstance(exc, ImageWorksError) else str(exc)
    return " ".join(text.split())


def already_described(image: Path, opts: DescribeOptions) -> bool:
    if opts.json_sidecar and json_sidecar_path(image).exists():
        return True
    if opts.xmp == "sidecar":
        try:
            with xmp_sidecar_path(image).open("rb") as fh:
                return CN_NAMESPACE.encode() in fh.read(1 << 20)
        except OSError:
            return False
    return False


def narration(result: Result, opts: DescribeOptions, metrics: Mapping[str, Any] | None) -> NarrationRecord:
    level = None
    image_metrics = metrics_for(metrics, Path(result.id or "")) if metrics else None
    if image_metrics:
        for key in ("mono_contamination_level", "contamination_level", "contamination", "level"):
            value = image_metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                level = float(value)
                break
    return NarrationRecord(
        description=scrub(result.text.strip()),
        vlm_model=result.model,
        vlm_processing_time=result.latency,
        mono_contamination_level=level,
    )


def _write_outputs(image: Path, record: NarrationRecord, opts: DescribeOptions) -> None:
    if opts.xmp == "sidecar":
        write_xmp_sidecar(image, record)
    elif opts.xmp == "embed":
        embed_xmp(image, record, keep_backup=opts.keep_backup)
    if opts.json_sidecar:
        write_json_sidecar(image, record)


def extra_keys(image: str | None, output_error: ImageWorksError | None) -> dict[str, Any]:
    """``resolved_path`` (+ ``path_bytes_b64``) for an image; ``output_error`` when a sidecar failed."""
    keys: dict[str, Any] = (
        path_keys(image) if image and not image.startswith("#") else {"resolved_path": None}
    )
    if output_error is not None:
        keys["output_error"] = one_line(output_error)
    return keys


async def write_sidecars(
    image: Path, result: Result, opts: DescribeOptions, metrics: Mapping[str, Any] | None
) -> ImageWorksError | None:
    """Write the sidecars; the error (the answer itself is kept in the JSONL whatever happens)."""
    record = narration(result, opts, metrics)
    try:
        await anyio.to_thread.run_sync(_write_outputs, image, record, opts)
    except ImageWorksError as exc:
        return OutputError(
            f"{exc.message} (the description is kept in the results file)",
            path=getattr(exc, "path", None) or str(image),
            hint=_SIDECAR_HINT,
        )
    except OSError as exc:
        shown = printable_path(os.fsdecode(exc.filename)) if exc.filename else printable_path(str(image))
        return OutputError(
            f"{printable_path(str(image))}: cannot write the sidecar {shown}: {exc.strerror or exc} "
            "(the description is kept in the results file)",
            path=str(image),
            hint=_SIDECAR_HINT,
        )
    return None


_SIDECAR_HINT = (
    "make the image's folder writable (or free disk space), then rerun with --resume: "
    "the missing sidecars are written from the results file without asking the model again"
)


async def restore(
    items: list[tuple[Path, dict]],
    opts: DescribeOptions,
    writer: JsonlWriter,
    summary: Summary,
    metrics: Mapping[str, Any] | None,
) -> None:
    """``--resume``: write the sidecars that failed last time, from the results file."""
    for image, old in items:
        key = os.fsdecode(image)
        result = Result(
            text=str(old["description"]),
            model=str(old.get("model") or ""),
            latency=float(old.get("processing_time") or 0.0),
            id=key,
        )
        failed = await write_sidecars(image, result, opts, metrics)
        if failed is not None:
            summary.add(attrs.evolve(result, error=failed))
            continue
        kept = {k: v for k, v in old.items() if k not in ("timestamp", "output_error")}
        writer.write({**kept, "image": key, **extra_keys(key, None), "output_error": None})
        summary.skip(key, "already described; its missing sidecar was written from the results file")


def open_results(path: Path) -> tuple[JsonlWriter, bool]:
    """The results file, opened for appending before anything is sent (exit 2 when it cannot be),
    and whether it was created now."""
    created = not os.path.lexists(path)
    writer = JsonlWriter(path)
    try:
        return writer.open(), created
    except OSError as exc:
        reason = "is a directory" if os.path.isdir(path) else (exc.strerror or str(exc))
        raise ConfigError(
            f"cannot write the results file {printable_path(os.fsdecode(path))}: {reason}",
            source="--output",
            hint="name a file in a folder you can write to: --output FILE",
        ) from None
