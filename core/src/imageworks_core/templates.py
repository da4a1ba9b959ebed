"""Built-in prompt templates for ``imageworks describe --template NAME``.

``colour-narration`` describes residual colour in images meant to be
monochrome; given per-image measurements from a mono checker
(``--mono-jsonl``), it passes them to the model so the narration agrees
with what was measured.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .errors import InputError

__all__ = ["TEMPLATES", "Template", "get_template", "load_mono_metrics"]


@attrs.frozen(slots=True)
class Template:
    """A named prompt.

    Attributes:
        name: What ``--template`` takes.
        summary: One line for ``--list-templates``.
        prompt: The prompt text.
        uses_metrics: Whether mono-checker metrics are added when available.
    """

    name: str
    summary: str
    prompt: str
    uses_metrics: bool = False

    def render(self, metrics: Mapping[str, Any] | None = None) -> str:
        if not (self.uses_metrics and metrics):
            return self.prompt
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(metrics.items()) if k not in _ID_KEYS)
        return (
            f"{self.prompt}\n\nA colour analysis of this image measured: {shown}. "
            "Use these figures; do not contradict them."
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


TEMPLATES: dict[str, Template] = {
    t.name: t
    for t in (
        Template(
            "describe",
            "A 2-3 sentence description for a catalogue: subject, composition, light, mood.",
            "Describe this photograph in two or three sentences for a competition catalogue: "
            "the subject, the composition, the light and the mood. Do not speculate about the photographer.",
        ),
        Template(
            "colour-narration",
            "Residual colour in a monochrome image: where, which hue, how strong (Colour Narrator).",
            "This photograph is entered as monochrome. Describe any residual colour you can see: "
            "which regions show it (e.g. shadows, highlights, skin, sky), its hue, and how strong it is. "
            "If the image is a deliberate single toning (sepia, selenium, cyanotype), say so. "
            "If it has no visible colour at all, answer exactly: No residual colour visible.",
            uses_metrics=True,
        ),
        Template(
            "caption",
            "One short caption (at most 15 words).",
            "Write one short caption for this photograph, at most 15 words, no quotation marks.",
        ),
        Template(
            "keywords",
            "10-15 comma-separated keywords for cataloguing.",
            "List 10 to 15 keywords for cataloguing this photograph, "
            "comma-separated, lower case, no numbering.",
        ),
    )
}
_ALIASES = {"color-narration": "colour-narration", "narration": "colour-narration"}
_ID_KEYS = {"image", "path", "file", "filename", "source_file"}


def get_template(name: str) -> Template:
    key = _ALIASES.get(name, name)
    try:
        return TEMPLATES[key]
    except KeyError:
        raise InputError(
            f"unknown template {name!r}",
            hint=f"choose one of: {', '.join(TEMPLATES)} (imageworks describe --list-templates)",
        ) from None


def _records(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        with path.open(encoding="utf-8", errors="surrogateescape") as fh:
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        yield n, json.loads(line)
                    except ValueError:
                        yield n, None
    except OSError as exc:
        raise InputError(f"cannot read --mono-jsonl file {path}: {exc.strerror}", source=str(path)) from None


def load_mono_metrics(path: Path) -> dict[str, dict[str, Any]]:
    """Per-image metrics from a mono checker's JSONL, keyed by absolute path and by file name.

    Each line is an object naming its image under ``image``, ``path``, ``file``
    or ``source_file``; every other finite scalar is a metric.
    """
    out: dict[str, dict[str, Any]] = {}
    bad = 0
    for _, obj in _records(path):
        if not isinstance(obj, Mapping):
            bad += 1
            continue
        name = next(
            (obj[k] for k in ("image", "path", "file", "source_file") if isinstance(obj.get(k), str)), None
        )
        if name is None:
            bad += 1
            continue
        metrics = {
            k: v
            for k, v in obj.items()
            if isinstance(v, str | int | float | bool) and not (isinstance(v, float) and not math.isfinite(v))
        }
        base = Path(name)
        out[os.path.abspath(base)] = metrics
        out.setdefault(base.name, metrics)
    if not out and bad:
        raise InputError(
            f"--mono-jsonl {path}: no usable line ({bad} without an image path or not JSON objects)",
            source=str(path),
            hint='each line must be a JSON object like {"image": "photo.jpg", "contamination_level": 0.2}',
        )
    return out


def metrics_for(metrics: Mapping[str, dict[str, Any]], image: Path) -> dict[str, Any] | None:
    return metrics.get(os.path.abspath(image)) or metrics.get(image.name)
