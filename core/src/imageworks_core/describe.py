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

import attrs

from .client import Client
from .discovery import iter_image_paths
from .errors import BackendProtocolError, ImageWorksError, InputError, redact_url
from .events import Event
from .models import Chunk, Request, Result
from .outputs import (
    JsonlWriter,
    resolved_key,
    resume_index,
)
from .outputs.exiftool import close_default_pools
from .redact import StreamScrubber
from .sidecars import already_described, extra_keys, open_results, write_sidecars
from .sidecars import restore as restore_sidecars
from .summary import Summary
from .templates import get_template, load_mono_metrics, metrics_for
from .terminal import terminal_safe

__all__ = ["DescribeOptions", "result_record", "run_describe"]


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


SKIP_RESUMED = "already described in the results file (--resume)"
SKIP_SIDECAR = "already described (their sidecar exists); --overwrite to redo"


def _work(
    opts: DescribeOptions,
    summary: Summary,
    done: Mapping[str, dict],
    prompt_for: Callable[[Path], str],
    restore: list[tuple[Path, dict]],
) -> Iterator[Any]:
    """Lazily yield map items: a ``Request`` per image to do, ``InputError`` per bad input.

    With ``--resume`` an image is matched by its resolved path; one whose answer
    is in the results file but whose sidecar could not be written goes to
    *restore* (its sidecar is written from the results file, the model is not asked).
    """
    for entry in iter_image_paths(opts.paths):
        if isinstance(entry, InputError):
            yield entry
            continue
        key = os.fsdecode(entry)
        record = done.get(resolved_key(entry)) if done else None
        if record is not None:
            if record.get("output_error") and isinstance(record.get("description"), str):
                restore.append((entry, record))
            else:
                summary.skip(key, SKIP_RESUMED)
            continue
        if not opts.overwrite and not opts.resume and already_described(entry, opts):
            summary.skip(key, SKIP_SIDECAR)
            continue
        yield Request(prompt=prompt_for(entry), images=(entry,), id=key)


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
    output_error = None if error is not None else await write_sidecars(image, result, opts, metrics)
    prompt = prompt_for(image) if result.id and not result.id.startswith("#") else None
    writer.write(
        result_record(result, prompt=prompt, template=template_name, error=error, output_error=output_error)
    )
    summary.add(
        result
        if error is None and output_error is None
        else attrs.evolve(result, error=error or output_error)
    )


def result_record(
    result: Result,
    *,
    prompt: str | None,
    template: str,
    error: BaseException | None,
    output_error: ImageWorksError | None = None,
    on_disk: bool = True,
) -> dict[str, Any]:
    """One line of the results JSONL for *result* (also the answer of the gateway's ``/v1/describe``).

    *on_disk*: the image is a file (its ``resolved_path`` is recorded); an upload has none.
    """
    sent = bool(result.attempts)  # an input error never reached a backend
    return {
        "image": result.id,
        "prompt": prompt,
        "template": template,
        "backend": (result.backend or None) if sent else None,
        "model": (result.model or None) if sent else None,
        "base_url": redact_url(result.base_url) if sent and result.base_url else None,
        "description": result.text.strip() if error is None else None,
        "processing_time": round(result.latency, 4),
        "queue_time": round(result.queue_time, 4),
        "usage": attrs.asdict(result.usage) if error is None else None,
        "attempts": [attrs.asdict(a) for a in result.attempts],
        "error": None if error is None else _one_line(error),
        **extra_keys(result.id if on_disk else None, output_error),
    }


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

    done = resume_index(opts.output) if opts.resume else {}
    summary = Summary(started=time.monotonic())
    missing_sidecars: list[tuple[Path, dict]] = []
    items = _work(opts, summary, done, prompt_for, missing_sidecars)
    if opts.dry_run:
        order = " -> ".join(client.backend_order())
        print(f"dry run: backends {order}; results would go to {opts.output}", file=out)
        for item in items:
            if isinstance(item, InputError):
                summary.add(Result(id=item.source, error=item))
            else:
                print(f"would describe {terminal_safe(item.id or '', one_line=True)}", file=out)
                summary.planned += 1
        return summary
    writer, created = open_results(opts.output)
    with writer:
        if opts.preflight:
            try:
                await client.dispatcher.preflight(warmup=client.settings.warmup, on_event=on_event)
            except BaseException:  # nothing was sent: leave no empty results file behind
                writer.close()
                if created:
                    opts.output.unlink(missing_ok=True)
                raise
        finish = dict(
            client=client,
            opts=opts,
            writer=writer,
            summary=summary,
            metrics=metrics,
            template_name=template_name,
            prompt_for=prompt_for,
        )
        try:
            if opts.stream:
                await _run_streaming(client, items, out, finish, on_event)
            else:
                async with client.map(items, concurrency=opts.concurrency, on_event=on_event) as results:
                    async for result in results:
                        await _finish(result, **finish)  # type: ignore[arg-type]
            await restore_sidecars(missing_sidecars, opts, writer, summary, metrics)
        finally:  # the run's -stay_open exiftools end with it (also on Ctrl-C)
            close_default_pools()
    summary.finished = time.monotonic()
    summary.limits = client.dispatcher.limits()
    summary.outages = client.dispatcher.outages()
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
    shown = StreamScrubber()  # a key the model repeats may be split across chunks

    def on_chunk(item_id: str, chunk: Chunk | None) -> None:
        nonlocal shown
        if current[0] != item_id:
            current[0] = item_id
            shown = StreamScrubber()
            print(f"\n== {terminal_safe(item_id, one_line=True)}", file=out)
        if chunk is None:  # the try failed after some text: the next one starts over
            print(terminal_safe(shown.flush()), file=out)
            print("[the answer was cut; trying again]", file=out, flush=True)
            shown = StreamScrubber()
        elif chunk.text:
            print(terminal_safe(shown.feed(chunk.text)), end="", file=out, flush=True)

    async with client.map(
        items, concurrency=1, ordered=True, on_event=on_event, on_chunk=on_chunk
    ) as results:
        async for result in results:
            if current[0] == result.id:
                print(terminal_safe(shown.flush()), file=out)
            await _finish(result, **finish)
