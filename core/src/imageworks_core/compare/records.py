"""The comparison's result records: written one per image x candidate x repeat, read back for reports.

A record is the usual ``describe`` record (``outputs.RESULT_KEYS``) plus::

    candidate    the candidate's name
    repeat       0-based repeat number (--repeat N)
    ttft         seconds from the answering try's start to the first text (streamed answers), or null
    queue_time   seconds the image waited for a slot or for its backend
    elapsed      seconds from the start of the candidate's measured run to this answer
    error_type   the error's class name, or null

``load_results`` reads results files of ``compare`` or ``describe`` (those
have no ``candidate``: it is ``backend/model``, or ``LABEL`` from
``LABEL=FILE``) and groups the records by candidate, in order of appearance.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from ..errors import ImageWorksError, InputError
from ..models import Result
from ..outputs import iter_results, path_keys

__all__ = ["error_record", "load_results", "one_line", "result_record", "split_label"]


def one_line(exc: BaseException) -> str:
    """The error's message on one line (no hint: that goes to the summary)."""
    text = exc.message if isinstance(exc, ImageWorksError) else str(exc)
    return " ".join(text.split())


def result_record(
    result: Result,
    *,
    candidate: str,
    image: str,
    repeat: int,
    prompt: str,
    template: str,
    ttft: float | None,
    elapsed: float,
) -> dict[str, Any]:
    """The record of one answer (or failure) of *candidate* for *image*."""
    error = result.error
    if error is None and not result.text.strip():
        error = _empty_answer(result)
    sent = bool(result.attempts)
    return {
        "image": image,
        **_paths(image),
        "prompt": prompt,
        "template": template,
        "backend": (result.backend or None) if sent else None,
        "model": (result.model or None) if sent else None,
        "base_url": result.base_url if sent else None,
        "description": result.text.strip() if error is None else None,
        "processing_time": round(result.latency, 4),
        "usage": attrs.asdict(result.usage) if error is None else None,
        "attempts": [attrs.asdict(a) for a in result.attempts],
        "error": None if error is None else one_line(error),
        "candidate": candidate,
        "repeat": repeat,
        "ttft": None if ttft is None or error is not None else round(ttft, 4),
        "queue_time": round(result.queue_time, 4),
        "elapsed": round(elapsed, 4),
        "error_type": None if error is None else type(error).__name__,
    }


def error_record(
    error: BaseException, *, candidate: str, image: str, repeat: int, prompt: str | None, template: str
) -> dict[str, Any]:
    """The record of an image that *candidate* could not be asked about (input error, candidate down)."""
    return {
        "image": image,
        **_paths(image),
        "prompt": prompt,
        "template": template,
        "backend": None,
        "model": None,
        "base_url": None,
        "description": None,
        "processing_time": 0.0,
        "usage": None,
        "attempts": [],
        "error": one_line(error),
        "candidate": candidate,
        "repeat": repeat,
        "ttft": None,
        "queue_time": 0.0,
        "elapsed": 0.0,
        "error_type": type(error).__name__,
    }


def _paths(image: str) -> dict[str, Any]:
    """``resolved_path`` (and the bytes of a non-UTF-8 name), as ``describe`` records have."""
    return path_keys(image) if image and not image.startswith("#") else {"resolved_path": None}


def _empty_answer(result: Result) -> ImageWorksError:
    from ..errors import BackendProtocolError

    return BackendProtocolError(
        f"{result.backend} ({result.model}) answered with an empty description",
        backend=result.backend,
        hint="check the model and the prompt; raise --max-tokens if the answer was cut at the start",
    )


def split_label(spec: str) -> tuple[str | None, Path]:
    """``(label, path)`` of a ``--from`` argument: ``LABEL=FILE`` or ``FILE`` (label ``None``)."""
    label, sep, path = spec.partition("=")
    if sep and label and not os.path.exists(spec):
        return label, Path(path)
    return None, Path(spec)


def load_results(specs: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Records of the results files *specs* (``FILE`` or ``LABEL=FILE``), grouped by candidate.

    Raises:
        InputError: A file is missing, unreadable, or holds no records.
    """
    grouped: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        label, path = split_label(spec)
        if not path.is_file():
            raise InputError(
                f"{path}: no such results file", source=str(path), hint="--from takes results JSONL files"
            )
        try:
            records = list(iter_results(path))
        except OSError as exc:
            raise InputError(f"{path}: cannot read: {exc.strerror or exc}", source=str(path)) from None
        records = [r for r in records if isinstance(r.get("image"), str)]
        if not records:
            raise InputError(
                f"{path}: no result records in it",
                source=str(path),
                hint="give the results.jsonl of `imageworks compare` or the --output of "
                "`imageworks describe`",
            )
        fallback = label or _file_label(records, path)
        for record in records:
            name = record.get("candidate")
            if label or not isinstance(name, str) or not name:
                name = fallback
            grouped.setdefault(name, []).append(record)
    return grouped


def _file_label(records: list[dict[str, Any]], path: Path) -> str:
    """A ``describe`` file's candidate: its most frequent ``backend/model`` (else the file's name)."""
    counts = Counter(
        f"{r['backend']}/{r['model']}" if r.get("model") else str(r["backend"])
        for r in records
        if r.get("backend")
    )
    return counts.most_common(1)[0][0] if counts else path.stem
