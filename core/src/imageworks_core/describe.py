"""The main job: describe every image under some paths and write the results.

discovery (lazy) -> resume / overwrite filters -> preflight -> ``Client.map``
(images prepared in worker threads) -> per result: results JSONL (append +
flush), XMP sidecar or embedded XMP, JSON sidecar (atomic) -> summary.
The CLI only parses flags into ``DescribeOptions`` and calls ``run_describe``.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

import anyio
import attrs

from .client import Client
from .discovery import iter_image_paths
from .errors import BackendProtocolError, ImageWorksError, InputError, redact_url
from .events import Event
from .models import Chunk, Request, Result
from .outputs import (
    JsonlWriter,
    NarrationRecord,
    completed_images,
    embed_xmp,
    json_sidecar_path,
    write_json_sidecar,
    write_xmp_sidecar,
    xmp_sidecar_path,
)
from .outputs.xmp import CN_NAMESPACE
from .summary import Summary
from .templates import get_template, load_mono_metrics, metrics_for

__all__ = ["DescribeOptions", "run_describe"]


@attrs.frozen(slots=True)
class DescribeOptions:
    """What ``imageworks describe`` was asked to do.

    Attributes:
        paths: Files, folders (recursive) and globs.
        prompt: A custom prompt (overrides ``template``).
        template: Built-in template name.
        mono_jsonl: Mono-checker metrics for the colour-narration template.
        output: Results JSONL path.
        xmp: ``sidecar``, ``embed`` or ``none``.
        keep_backup: With ``xmp="embed"``, keep exiftool's ``_original`` copy.
        json_sidecar: Write ``<image>.cn_metadata.json``.
        resume: Skip images with a successful result in ``output``.
        overwrite: Describe images that already have our sidecar again.
        dry_run: List what would be done, send nothing.
        stream: Print tokens live (one image at a time).
        concurrency: Images in flight (default: from config).
        preflight: Health-check the backends before starting.
    """

    paths: tuple[str, ...]
    prompt: str | None = None
    template: str = "describe"
    mono_jsonl: Path | None = None
    output: Path = Path("imageworks-results.jsonl")
    xmp: str = "sidecar"
    keep_backup: bool = True
    json_sidecar: bool = True
    resume: bool = False
    overwrite: bool = False
    dry_run: bool = False
    stream: bool = False
    concurrency: int | None = None
    preflight: bool = True


def _already_described(image: Path, opts: DescribeOptions) -> bool:
    if opts.json_sidecar and json_sidecar_path(image).exists():
        return True
    if opts.xmp == "sidecar":
        try:
            with xmp_sidecar_path(image).open("rb") as fh:
                return CN_NAMESPACE.encode() in fh.read(1 << 20)
        except OSError:
            return False
    return False


def _work(
    opts: DescribeOptions, summary: Summary, done: set[str], prompt_for: Callable[[Path], str]
) -> Iterator[Any]:
    """Lazily yield map items: a ``Request`` per image to do, ``InputError`` per bad input."""
    for entry in iter_image_paths(opts.paths):
        if isinstance(entry, InputError):
            yield entry
            continue
        key = os.fsdecode(entry)
        if key in done:
            summary.skip(key, "already in the results file (--resume)")
            continue
        if not opts.overwrite and not opts.resume and _already_described(entry, opts):
            summary.skip(key, "already has a description sidecar (use --overwrite)")
            continue
        yield Request(prompt=prompt_for(entry), images=(entry,), id=key)


def _record(result: Result, opts: DescribeOptions, metrics: Mapping[str, Any] | None) -> NarrationRecord:
    level = None
    image_metrics = metrics_for(metrics, Path(result.id or "")) if metrics else None
    if image_metrics:
        for key in ("mono_contamination_level", "contamination_level", "contamination", "level"):
            value = image_metrics.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                level = float(value)
                break
    return NarrationRecord(
        description=result.text.strip(),
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


async def _finish(
    result: Result,
    *,
    client: Client,
    opts: DescribeOptions,
    writer: JsonlWriter,
    summary: Summary,
    metrics: Mapping[str, Any] | None,
    template_name: str,
    prompt_for: Callable[[Path], str],
) -> None:
    image = Path(result.id or "")
    error = result.error
    if error is None and not result.text.strip():
        error = BackendProtocolError(
            f"{result.backend} ({result.model}) answered with an empty description",
            backend=result.backend,
            hint="check the model and the prompt; raise --max-tokens if the answer was cut at the start",
        )
    if error is None:
        record = _record(result, opts, metrics)
        try:
            await anyio.to_thread.run_sync(_write_outputs, image, record, opts)
        except ImageWorksError as exc:
            error = exc
        except OSError as exc:
            error = InputError(
                f"{result.id}: cannot write the sidecar: {exc.strerror or exc}", source=result.id
            )
    sent = bool(result.attempts)  # an input error never reached a backend
    ctx_url = redact_url(result.base_url) if sent and result.base_url else None
    writer.write(
        {
            "image": result.id,
            "prompt": prompt_for(image) if result.id and not result.id.startswith("#") else None,
            "template": template_name,
            "backend": (result.backend or None) if sent else None,
            "model": (result.model or None) if sent else None,
            "base_url": ctx_url,
            "description": result.text.strip() if error is None else None,
            "processing_time": round(result.latency, 4),
            "usage": attrs.asdict(result.usage) if error is None else None,
            "attempts": [attrs.asdict(a) for a in result.attempts],
            "error": None if error is None else _one_line(error),
        }
    )
    summary.add(result if error is None else attrs.evolve(result, error=error))


def _one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, ImageWorksError) else str(exc)
    return " ".join(text.split())


async def run_describe(
    client: Client,
    opts: DescribeOptions,
    *,
    on_event: Callable[[Event], None] | None = None,
    out: TextIO | None = None,
) -> Summary:
    """Run the job; returns the summary.  Raises ``BackendUnavailable`` when preflight finds no backend."""
    out = out or sys.stdout
    template = get_template(opts.template)
    metrics = load_mono_metrics(opts.mono_jsonl) if opts.mono_jsonl else None
    template_name = "custom" if opts.prompt else template.name

    def prompt_for(image: Path) -> str:
        if opts.prompt:
            return opts.prompt
        return template.render(metrics_for(metrics, image) if metrics else None)

    done = completed_images(opts.output) if opts.resume else set()
    summary = Summary(started=time.monotonic())
    items = _work(opts, summary, done, prompt_for)
    if opts.dry_run:
        order = " -> ".join(client.backend_order())
        print(f"dry run: backends {order}; results would go to {opts.output}", file=out)
        for item in items:
            if isinstance(item, InputError):
                summary.add(Result(id=item.source, error=item))
            else:
                print(f"would describe {item.id}", file=out)
                summary.planned += 1
        return summary
    if opts.preflight:
        await client.dispatcher.preflight(warmup=client.settings.warmup)
    with JsonlWriter(opts.output) as writer:
        finish = dict(
            client=client,
            opts=opts,
            writer=writer,
            summary=summary,
            metrics=metrics,
            template_name=template_name,
            prompt_for=prompt_for,
        )
        if opts.stream:
            await _run_streaming(client, items, out, finish, on_event)
        else:
            async with client.map(items, concurrency=opts.concurrency, on_event=on_event) as results:
                async for result in results:
                    await _finish(result, **finish)  # type: ignore[arg-type]
    summary.finished = time.monotonic()
    summary.limits = client.dispatcher.limits()
    return summary


async def _run_streaming(
    client: Client,
    items: Iterator[Any],
    out: TextIO,
    finish: dict[str, Any],
    on_event: Callable[[Event], None] | None,
) -> None:
    """``--stream``: one image at a time, tokens printed as they arrive.

    The same dispatcher path as a batch (``map`` with ``on_chunk``), so a
    stream waits out an outage and falls back exactly as a batch does.
    """
    current: list[str | None] = [None]

    def on_chunk(item_id: str, chunk: Chunk | None) -> None:
        if current[0] != item_id:
            current[0] = item_id
            print(f"\n== {item_id}", file=out)
        if chunk is None:  # the try failed after some text: the next one starts over
            print("\n[the answer was cut; trying again]", file=out, flush=True)
        elif chunk.text:
            print(chunk.text, end="", file=out, flush=True)

    async with client.map(
        items, concurrency=1, ordered=True, on_event=on_event, on_chunk=on_chunk
    ) as results:
        async for result in results:
            if current[0] == result.id:
                print(file=out)
            await _finish(result, **finish)
