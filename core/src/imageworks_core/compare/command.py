"""``imageworks compare``: its flags, and what it does with them.

The work is in ``run.py`` (sending), ``stats.py`` (numbers) and ``report.py``
(the page); here flags become options, and the summary table is printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "compare", "summary_table"]


def _concurrency(value: str) -> int | None:
    if value == "auto":
        return None
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected auto or a whole number >= 1") from None
    if n < 1:
        raise argparse.ArgumentTypeError("expected auto or a whole number >= 1")
    return n


def _at_least_one(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected a whole number >= 1") from None
    if n < 1:
        raise argparse.ArgumentTypeError("expected a whole number >= 1")
    return n


def add_parser(sub: Any, epilog: str) -> argparse.ArgumentParser:
    """Add the ``compare`` sub-command to *sub* (the CLI's sub-parsers)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "compare",
        help="run the same images through several backends/models; write results.jsonl + report.html",
        description="Send the same prepared images to each candidate (one at a time, after a warm-up) "
        "and compare speed and answers side by side.",
        epilog=epilog,
    )
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (recursive) or globs")
    p.add_argument(
        "--candidates",
        action="append",
        metavar="C1,C2",
        help="backend, backend/model, or a name from [tool.imageworks.candidates.NAME]",
    )
    p.add_argument(
        "--out", type=Path, default=Path("imageworks-compare"), metavar="DIR", help="output folder"
    )
    p.add_argument(
        "--from",
        dest="from_files",
        nargs="+",
        metavar="RESULTS",
        help="rebuild the report from results JSONL files (compare's or describe's; LABEL=FILE names one); "
        "sends nothing",
    )
    p.add_argument("--prompt", help="a custom prompt (overrides --template)")
    p.add_argument("--template", default="describe", help="built-in prompt (default: describe)")
    p.add_argument("--repeat", type=_at_least_one, default=1, metavar="N", help="send each image N times")
    p.add_argument(
        "--concurrency",
        type=_concurrency,
        default=None,
        metavar="auto|N",
        help="images in flight per candidate (default: auto, the backend's own limit)",
    )
    p.add_argument("--parallel", action="store_true", help="run the candidates at the same time")
    p.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stream answers where the backend can, to time the first token (default: yes)",
    )
    p.add_argument("--no-warmup", action="store_true", help="skip the uncounted warm-up request")
    p.add_argument("--no-preflight", action="store_true", help="skip each candidate's health check")
    p.add_argument("--overwrite", action="store_true", help="replace the results of an earlier run in --out")
    p.add_argument("--title", default="ImageWorks comparison", help="the report's title")
    p.add_argument("--max-tokens", type=int, metavar="N", help="generation cap (default: 512)")
    p.add_argument("--temperature", type=float, metavar="T", help="sampling temperature")
    p.add_argument("--max-pixels", type=int, metavar="N", help="downscale images to this many pixels")
    p.add_argument("--vlm-timeout", dest="timeout", type=float, metavar="SECONDS", help="read timeout")
    p.add_argument("--config", dest="config_file", metavar="FILE", help="user config file to read")
    p.add_argument("--quiet", "-q", action="store_true", help="no per-candidate progress lines")
    p.add_argument("--json", dest="json_out", action="store_true", help="print the summary as JSON")
    return p


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for key in ("max_tokens", "temperature", "max_pixels"):
        value = getattr(args, key, None)
        if value is not None:
            flags[key] = value
    if args.concurrency is not None:
        flags["concurrency"] = args.concurrency
    if args.timeout is not None:
        flags["selected"] = {"timeout": args.timeout}
    return flags


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(stats: Sequence[Any]) -> str:
    """The per-candidate summary as aligned text."""
    head = (
        "candidate",
        "ok",
        "failed",
        "wall s",
        "img/s",
        "tok/s",
        "p50 s",
        "p95 s",
        "ttft50",
        "words",
        "errors",
    )
    rows = [head]
    for s in stats:
        rows.append(
            (
                s.name,
                str(s.ok),
                str(s.failed),
                _fmt(s.wall_s, ".1f"),
                _fmt(s.images_per_s),
                _fmt(s.tokens_per_s, ".1f"),
                _fmt(s.latency_p50.value if s.latency_p50 else None, ".3f"),
                _fmt(s.latency_p95.value if s.latency_p95 else None, ".3f"),
                _fmt(s.ttft_p50.value if s.ttft_p50 else None, ".3f"),
                _fmt(s.mean_words, ".1f"),
                ", ".join(f"{k} x{v}" for k, v in s.errors.items()) or "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
    lines = []
    for r in rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:-1], widths[1:], strict=True)]
        lines.append("  ".join([*cells, r[-1]]))
    return "\n".join(lines)


def compare(args: argparse.Namespace) -> int:
    """Run ``imageworks compare``; returns the exit code (0 all answered, 1 some failed, 3 none reached)."""
    import anyio

    from ..errors import InputError
    from .records import load_results, split_label
    from .report import Comparison, write_report

    out: Path = args.out
    results = out / "results.jsonl"
    if args.from_files:
        if args.paths or args.candidates:
            raise InputError("--from rebuilds a report from results: give no images or candidates with it")
        grouped = load_results(args.from_files)
    else:
        if not args.paths:
            raise InputError("no images given", hint="imageworks compare PATH... --candidates A,B")
        if not args.candidates:
            raise InputError(
                "no candidates given", hint="--candidates vllm,lmdeploy (see imageworks backends)"
            )
        if results.exists() and results.stat().st_size and not args.overwrite:
            raise InputError(
                f"{results} holds an earlier comparison",
                source=str(results),
                hint="choose another --out, or add --overwrite to replace it",
            )
        anyio.run(_run, args, results)
        grouped = load_results([str(results)])
    comparison = Comparison(grouped)
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    sources = [split_label(f)[1] for f in args.from_files] if args.from_files else [results]
    thumb_dirs = [p.parent / "thumbs" for p in sources]
    html_path, json_path = write_report(
        comparison, out, generated=generated, title=args.title, thumb_dirs=thumb_dirs
    )
    if args.json_out:
        from .report import summary_json

        print(json.dumps(summary_json(comparison, generated=generated), indent=2, ensure_ascii=False))
    else:
        print(summary_table(comparison.stats))
        print(
            f"report: {html_path}\nsummary: {json_path}"
            + ("" if args.from_files else f"\nresults: {results}")
        )
    if all(s.ok == 0 for s in comparison.stats) and not args.from_files:
        return 3
    return 1 if any(s.failed for s in comparison.stats) else 0


async def _run(args: argparse.Namespace, results: Path) -> None:
    from ..client import Client
    from ..plugins import BackendRegistry
    from .candidates import Candidate, candidate_client, configured_candidates, parse_candidates
    from .run import CompareOptions, run_compare

    user_file = args.config_file or True
    registry = BackendRegistry()
    candidates = parse_candidates(
        args.candidates,
        configured=configured_candidates(user_file=user_file),
        installed=registry.backends,
    )
    flags = _flags(args)
    base = Client(overrides={k: v for k, v in flags.items() if k != "selected"}, user_file=user_file)
    opts = CompareOptions(
        paths=tuple(args.paths),
        candidates=tuple(candidates),
        results=results,
        prompt=args.prompt,
        template=args.template,
        repeat=args.repeat,
        concurrency=args.concurrency,
        parallel=args.parallel,
        stream=args.stream,
        warmup=not args.no_warmup,
        preflight=not args.no_preflight,
    )

    def make_client(c: Candidate) -> Client:
        return candidate_client(c, flags=flags, user_file=user_file)

    def progress(c: Candidate, what: str) -> None:
        if not args.quiet:
            print(
                f"imageworks compare: {c.name}: {'running' if what == 'start' else 'done'}", file=sys.stderr
            )

    await run_compare(opts, make_client, max_pixels=base.settings.max_pixels, on_candidate=progress)
