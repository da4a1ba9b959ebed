"""What each ``imageworks`` command does once its flags are parsed."""

from __future__ import annotations

import argparse
import importlib.metadata as md
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import anyio
import attrs

from .client import Client
from .dispatch import ungrouped
from .errors import InputError
from .hints import for_cli
from .outputs._common import dumps_json
from .plugins import BackendRegistry
from .redact import scrub, scrub_data
from .serialize import to_json_dict
from .terminal import terminal_safe

__all__ = ["backends", "config_show", "describe", "health", "print_versions"]

log = logging.getLogger("imageworks.cli")


def print_versions() -> None:
    for dist in (
        "imageworks-core",
        *sorted(
            {ep.dist.name for ep in md.entry_points(group="imageworks.backends") if ep.dist is not None}
            - {"imageworks-core"}
        ),
    ):
        try:
            print(f"{dist} {md.version(dist)}")
        except md.PackageNotFoundError:  # pragma: no cover
            print(f"{dist} (not installed)")
    from .resizing import resizer_name

    print(f"image resizing: {resizer_name()}")


def _warn_failures(registry: BackendRegistry) -> None:
    for f in registry.failures:  # through logging: a JSON line with --json
        log.warning(
            "backend plugin %r (%s) failed to load: %s — see `imageworks backends`",
            f.name,
            f.distribution or "?",
            f.error,
            extra={"imageworks": {"event": "plugin_load_failed", "plugin": f.name, "error": f.error}},
        )


def backends(args: argparse.Namespace) -> int:
    registry = BackendRegistry()
    rows: list[dict[str, Any]] = []
    for name, b in sorted(registry.backends.items()):
        caps = b.info.capabilities
        rows.append(
            {
                "name": name,
                "distribution": b.distribution,
                "version": b.version,
                "description": b.info.description,
                "default_base_url": b.info.default_base_url,
                "capabilities": attrs.asdict(caps),
                "settings": [f.name for f in attrs.fields(b.info.settings_cls)],
                "default": name == "vllm",
                "error": None,
            }
        )
    for f in registry.failures:
        rows.append(
            {
                "name": f.name,
                "distribution": f.distribution,
                "version": f.version,
                "error": f.error,
                "entry_point": f.value,
            }
        )
    if args.json:
        print(dumps_json(scrub_data(rows), indent=2))
        return 0
    for r in rows:
        if r["error"]:
            _say(f"{r['name']:<12} BROKEN  {r['distribution'] or '?'} {r['version'] or ''}: {r['error']}")
            continue
        caps = r["capabilities"]
        flags = ", ".join(k for k in ("vision", "streaming", "model_switch", "structured_output") if caps[k])
        default = " (default)" if r["default"] else ""
        _say(f"{r['name']:<12} {r['distribution'] or 'in-process'} {r['version'] or ''}{default}")
        _say(f"{'':<12} {r['description']}")  # plugins' own text: controls shown, not obeyed
        _say(f"{'':<12} url {r['default_base_url']}; {flags}")
        print(f"{'':<12} kinds: {', '.join(caps['kinds'])}")
    if not any(r["name"] == "vllm" and not r["error"] for r in rows):
        print("note: the default backend 'vllm' is not installed: pip install imageworks-backend-vllm")
    return 0


def health(args: argparse.Namespace, client: Client) -> int:
    _warn_failures(client.registry)
    names = client.backend_order() if args.all else [client.settings.backend]

    async def check() -> list[Any]:
        async with client:
            deadline = time.monotonic() + args.wait
            delay = 0.5
            while True:
                reports = [await client.health_of(ctx) for n in names for ctx in client.contexts(n)]
                if all(r.ready for r in reports) or time.monotonic() >= deadline:
                    return reports
                await anyio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
                delay = min(delay * 2, 5.0)

    reports = anyio.run(check)
    if args.json:
        print(dumps_json(scrub_data([to_json_dict(r) for r in reports]), indent=2))
    else:
        for r in reports:
            state = "ready" if r.ready else ("reachable, not ready" if r.reachable else "DOWN")
            _say(f"{r.backend}: {state} at {r.url} ({r.latency * 1000:.0f} ms)")
            if r.models:
                _say(f"  models: {', '.join(r.models)}")
            if r.version:
                _say(f"  version: {r.version}")
            if r.max_model_len:
                _say(f"  max_model_len: {r.max_model_len}")
            if r.metrics:
                _say("  load: " + ", ".join(f"{k}={v:g}" for k, v in sorted(r.metrics.items())))
            if r.detail and not r.ready:
                _say(f"  {r.detail}")
            if r.hint and not r.ready:
                _say("  " + (for_cli(r.hint) or "").replace("\n", "\n  "))
    if all(r.ready for r in reports):
        return 0
    return 3 if any(not r.reachable for r in reports) else 1  # 3: nothing answered (as describe)


def _say(text: str) -> None:
    """Print a line that may hold server- or model-provided text: secrets scrubbed, controls escaped."""
    print(terminal_safe(scrub(text)))


def config_show(args: argparse.Namespace, client: Client) -> int:
    _warn_failures(client.registry)
    cfg = client.config
    rows = cfg.rows()
    if args.json:
        print(
            dumps_json(
                scrub_data(
                    {
                        "files": [str(f) for f in cfg.files],
                        "settings": [{"key": k, "value": v, "source": s} for k, v, s in rows],
                    }
                ),
                indent=2,
            )
        )
        return 0
    _say("files read: " + (", ".join(str(f) for f in cfg.files) or "none"))
    width = max(len(k) for k, _, _ in rows)
    for key, value, source in rows:
        _say(f"{key:<{width}}  {value:<40}  [{source}]")
    return 0


async def _count_images(paths: tuple[str, ...], progress: Any) -> None:
    from .discovery import iter_image_paths

    def count() -> int:
        return sum(1 for _ in iter_image_paths(paths))

    progress.set_total(await anyio.to_thread.run_sync(count, abandon_on_cancel=True))


def describe(args: argparse.Namespace, make_client: Callable[[argparse.Namespace], Client]) -> int:
    from .describe import DescribeOptions, run_describe
    from .progress import Progress
    from .templates import TEMPLATES

    if args.list_templates:
        for t in TEMPLATES.values():
            print(f"{t.name:<18} {t.summary}")
        return 0
    paths = list(args.paths)
    if getattr(args, "images_dir", None):
        paths.append(args.images_dir)
    if not paths:
        raise InputError("no images given", hint="imageworks describe PATH... (files, folders or globs)")
    if getattr(args, "api_key", None):
        log.warning("--vlm-api-key puts the key on the command line; prefer --vlm-api-key-env VAR")
    template = args.template or ("colour-narration" if args.command == "narrate" else "describe")
    opts = DescribeOptions(
        paths=tuple(paths),
        prompt=args.prompt,
        template=template,
        mono_jsonl=args.mono_jsonl,
        output=args.output,
        xmp=args.xmp,
        keep_backup=not args.no_backup,
        json_sidecar=args.json_sidecar,
        resume=args.resume,
        overwrite=args.overwrite,
        dry_run=args.dry_run,
        stream=args.stream,
        preflight=not args.no_preflight,
    )
    client = make_client(args)
    _warn_failures(client.registry)
    progress = Progress(enabled=not (args.quiet or args.json_logs or args.stream or args.dry_run))

    async def job() -> Any:
        async with client:
            from .auto import settle_backend

            await settle_backend(client)
            with progress:
                if not progress.enabled:
                    return await run_describe(client, opts, on_event=progress.on_event)
                with ungrouped():
                    async with anyio.create_task_group() as tg:
                        # count the images beside the run, for the bar's total and ETA
                        tg.start_soon(_count_images, opts.paths, progress)
                        summary = await run_describe(client, opts, on_event=progress.on_event)
                        tg.cancel_scope.cancel()
                return summary

    summary = anyio.run(job)
    if args.json_logs:  # valid UTF-8 JSON (no lone surrogates), secrets scrubbed
        print(dumps_json(scrub_data(summary.as_dict()), indent=2))
    else:
        print(summary.render(verbose=args.verbose), file=sys.stderr if args.stream else sys.stdout)
    if summary.no_backend:  # down past --wait-for-backend, or never reached: nothing more could be done
        return 3
    return 1 if summary.failed else 0
