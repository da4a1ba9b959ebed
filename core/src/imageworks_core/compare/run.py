"""Running the comparison: the same prepared images through every candidate, records as they complete.

discovery -> every image prepared once (worker threads) -> per candidate, one
at a time (or all at once with ``parallel``): its own ``Client`` -> preflight
(a candidate that is down becomes records with its error, and the next one
runs) -> one warm-up request, not recorded -> ``Client.map`` over images x
repeats, streamed where the backend streams (for the time to first token) ->
one record per answer, appended to ``results.jsonl`` at once.

The report is made afterwards from that file alone (``report.py``), so a report
rebuilt with ``--from`` is the same report.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import anyio
import attrs

from ..client import Client
from ..discovery import iter_image_paths
from ..errors import ImageWorksError, InputError
from ..events import Event
from ..images import aprepare_image
from ..models import Chunk, PreparedImage, Request
from ..outputs import JsonlWriter
from ..templates import get_template
from .candidates import Candidate
from .records import error_record, result_record
from .thumbs import prepare_with_thumbnail

__all__ = ["CompareOptions", "Prepared", "prepare_all", "run_compare"]

log = logging.getLogger("imageworks.compare")


@attrs.frozen(slots=True)
class CompareOptions:
    """What ``imageworks compare`` was asked to do.

    Attributes:
        paths: Files, folders (recursive) and globs.
        candidates: What to compare, in order.
        results: The results JSONL to write (replaced).
        prompt: A custom prompt (overrides ``template``).
        template: Built-in template name.
        repeat: Times each image is sent to each candidate.
        concurrency: Images in flight per candidate (``None``: the dispatcher's default).
        parallel: Run the candidates at the same time (their timings then disturb each other).
        stream: Stream answers where the backend can (measures the time to first token).
        warmup: Send one request per candidate first, not recorded.
        preflight: Health-check each candidate before its run.
    """

    paths: tuple[str, ...]
    candidates: tuple[Candidate, ...]
    results: Path
    prompt: str | None = None
    template: str = "describe"
    repeat: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    concurrency: int | None = None
    parallel: bool = False
    stream: bool = True
    warmup: bool = True
    preflight: bool = True


@attrs.frozen(slots=True)
class Prepared:
    """One input: its key (the path as given) and the prepared image, or why there is none."""

    key: str
    image: PreparedImage | None = None
    error: InputError | None = None


async def prepare_all(paths: Sequence[str], max_pixels: int, thumbs: Path | None = None) -> list[Prepared]:
    """Every image under *paths*, prepared once (in worker threads), in discovery order.

    With *thumbs*, each image's report thumbnail is written there from its prepared form.
    """
    found = await anyio.to_thread.run_sync(lambda: list(iter_image_paths(paths)))
    out: list[Prepared | None] = [None] * len(found)
    limiter = anyio.CapacityLimiter(max(1, min(4, os.cpu_count() or 1)))

    async def one(i: int, entry: Path | InputError) -> None:
        if isinstance(entry, InputError):
            out[i] = Prepared(key=entry.source or "?", error=entry)
            return
        key = os.fsdecode(entry)
        try:
            if thumbs is None:
                image = await aprepare_image(entry, max_pixels=max_pixels, limiter=limiter)
            else:  # one thread hop: the thumbnail comes from the frame being prepared
                work = functools.partial(prepare_with_thumbnail, entry, max_pixels, thumbs, key)
                image = await anyio.to_thread.run_sync(work, limiter=limiter)
        except InputError as exc:
            out[i] = Prepared(key, error=exc)
            return
        out[i] = Prepared(key, image=image)

    async with anyio.create_task_group() as tg:
        for i, entry in enumerate(found):
            tg.start_soon(one, i, entry)
    return [p for p in out if p is not None]


OnCandidate = Callable[[Candidate, str], None]


async def run_compare(
    opts: CompareOptions,
    make_client: Callable[[Candidate], Client],
    *,
    max_pixels: int,
    on_candidate: OnCandidate | None = None,
) -> int:
    """Run every candidate and write the records; returns how many images were found.

    *on_candidate* is told ``(candidate, "start" | "done")`` as each one runs.

    Raises:
        InputError: No image was found under the paths.
    """
    template = get_template(opts.template)
    prompt = opts.prompt or template.render()
    template_name = "custom" if opts.prompt else template.name
    clients = [(c, make_client(c)) for c in opts.candidates]  # config errors before anything is done
    prepared = await prepare_all(opts.paths, max_pixels, opts.results.parent / "thumbs")
    if not prepared:
        raise InputError("no images found", hint="imageworks compare PATH... (files, folders or globs)")
    opts.results.unlink(missing_ok=True)
    with JsonlWriter(opts.results) as writer:
        job = _Job(opts, prepared, writer, prompt, template_name, on_candidate)
        if opts.parallel:
            async with anyio.create_task_group() as tg:
                for candidate, client in clients:
                    tg.start_soon(job.run, candidate, client)
        else:
            for candidate, client in clients:
                await job.run(candidate, client)
    return len(prepared)


@attrs.define
class _Job:
    opts: CompareOptions
    prepared: list[Prepared]
    writer: JsonlWriter
    prompt: str
    template: str
    on_candidate: OnCandidate | None

    async def run(self, candidate: Candidate, client: Client) -> None:
        if self.on_candidate:
            self.on_candidate(candidate, "start")
        async with client:
            try:
                await self._measure(candidate, client)
            finally:
                if self.on_candidate:
                    self.on_candidate(candidate, "done")

    def _fail_all(self, candidate: Candidate, error: BaseException, only: Sequence[Prepared]) -> None:
        for rep in range(self.opts.repeat):
            for p in only:
                self.writer.write(
                    error_record(
                        p.error or error,
                        candidate=candidate.name,
                        image=p.key,
                        repeat=rep,
                        prompt=self.prompt,
                        template=self.template,
                    )
                )

    async def _measure(self, candidate: Candidate, client: Client) -> None:
        self._fail_all(candidate, InputError("?"), [p for p in self.prepared if p.image is None])
        usable = [(i, p.image) for i, p in enumerate(self.prepared) if p.image is not None]
        if not usable:
            return
        try:
            if self.opts.preflight:
                await client.dispatcher.preflight()
        except ImageWorksError as exc:
            log.warning("candidate %s is not ready: %s", candidate.name, exc.message)
            self._fail_all(candidate, exc, [p for p in self.prepared if p.image is not None])
            return
        streaming = self.opts.stream and client.info(candidate.backend).capabilities.streaming
        if self.opts.warmup:
            await self._warm_up(candidate, client, usable[0][1], streaming)
        timer = _FirstToken()
        items = (
            Request(prompt=self.prompt, images=(image,), id=f"{i}#{rep}")
            for rep in range(self.opts.repeat)
            for i, image in usable
        )
        started = time.monotonic()
        async with client.map(
            items,
            concurrency=self.opts.concurrency,
            on_event=timer.on_event,
            on_chunk=timer.on_chunk if streaming else None,
        ) as results:
            async for result in results:
                index, _, rep = (result.id or "0#0").partition("#")
                self.writer.write(
                    result_record(
                        result,
                        candidate=candidate.name,
                        image=self.prepared[int(index)].key,
                        repeat=int(rep),
                        prompt=self.prompt,
                        template=self.template,
                        ttft=timer.ttft(result.id or "") if streaming else None,
                        elapsed=time.monotonic() - started,
                    )
                )

    async def _warm_up(
        self, candidate: Candidate, client: Client, image: PreparedImage, stream: bool
    ) -> None:
        request = Request(prompt=self.prompt, images=(image,), id="warm-up")
        async with client.map([request], on_chunk=(lambda _id, _c: None) if stream else None) as results:
            async for result in results:
                if result.error is not None:
                    log.warning("candidate %s: the warm-up request failed: %s", candidate.name, result.error)


class _FirstToken:
    """Times from each item's answering try's start to its first text (from the map's events and chunks)."""

    def __init__(self) -> None:
        self._start: dict[str, float] = {}
        self._first: dict[str, float] = {}

    def on_event(self, event: Event) -> None:
        if event.kind in ("started", "retry"):
            self._start[event.id] = time.monotonic()
            self._first.pop(event.id, None)

    def on_chunk(self, rid: str, chunk: Chunk | None) -> None:
        if chunk is None:  # the try failed after some text: the item starts over
            self._first.pop(rid, None)
        elif chunk.text and rid not in self._first:
            self._first[rid] = time.monotonic()

    def ttft(self, rid: str) -> float | None:
        start, first = self._start.pop(rid, None), self._first.pop(rid, None)
        return None if start is None or first is None else max(0.0, first - start)
