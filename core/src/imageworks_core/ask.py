"""``imageworks ask``: one prompt (and optional images) to a text or vision backend, the answer printed.

The answer streams to a terminal as it is generated (``--no-stream`` waits for
it whole; output to a pipe or file is never streamed, so it is written once).
Model text is printed with control characters made visible: an answer cannot
move the cursor or retitle the terminal.  ``--json`` prints one record
(``text``, ``backend``, ``model``, ``base_url``, ``finish_reason``, ``usage``,
``latency``) instead.  Same backends, retries, fallback and exit codes as
``describe``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import anyio

from .models import Request, Result

__all__ = ["add_parser", "command"]


def add_parser(sub: Any, epilog: str, backend_flags: Any) -> None:
    """The ``ask`` subcommand's flags (*backend_flags* adds the shared backend group)."""
    p = sub.add_parser(
        "ask",
        help="send a prompt (and optional images) to a text or vision backend; print the answer",
        epilog=epilog,
    )
    p.add_argument("prompt", metavar="PROMPT", help="what to ask")
    p.add_argument(
        "--image",
        dest="images",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="an image to send with the prompt (repeatable; needs a vision backend)",
    )
    p.add_argument("--system", metavar="TEXT", help="a system prompt")
    p.add_argument(
        "--no-stream",
        dest="stream",
        action="store_false",
        help="wait for the whole answer (default: stream it to a terminal as it comes)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON record instead of the text")
    backend_flags(p)


def _record(result: Result) -> dict[str, Any]:
    from .errors import redact_url

    usage = result.usage
    return {
        "text": result.text,
        "backend": result.backend or None,
        "model": result.model or None,
        "base_url": redact_url(result.base_url) if result.base_url else None,
        "finish_reason": result.finish_reason,
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
        "latency": round(result.latency, 4),
    }


def command(args: argparse.Namespace, make_client: Any) -> int:
    """Run ``imageworks ask``; the exit code (errors propagate to the CLI's mapping)."""
    from .outputs._common import dumps_json
    from .redact import StreamScrubber, scrub, scrub_data
    from .terminal import terminal_safe

    request = Request(prompt=args.prompt, images=tuple(args.images), system=args.system)
    stream = args.stream and not args.json and sys.stdout.isatty()
    client = make_client(args)
    out = sys.stdout

    async def job() -> Result | None:
        async with client:
            from .auto import settle_backend

            await settle_backend(client)
            if not stream:
                return await client.infer(request)
            from contextlib import aclosing

            shown = StreamScrubber()  # a key the model repeats may be split across chunks
            async with aclosing(client.stream(request)) as chunks:
                async for chunk in chunks:  # retried only before the first text
                    if chunk.text:
                        out.write(terminal_safe(shown.feed(chunk.text)))
                        out.flush()
            out.write(terminal_safe(shown.flush()) + "\n")
            return None

    result = anyio.run(job)
    if result is None:
        return 0
    if args.json:
        print(dumps_json(scrub_data(_record(result))))  # valid UTF-8, secrets scrubbed
    else:
        print(terminal_safe(scrub(result.text)))  # a key the server echoed stays hidden
    return 0
