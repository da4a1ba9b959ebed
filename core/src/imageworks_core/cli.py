"""The ``imageworks`` command: argument parsing and exit codes only.

Heavy modules are imported inside the command functions so ``imageworks
--help`` stays fast; the work itself lives in ``describe.py`` and the client.

Exit codes: 0 success; 1 some images failed (or a backend is not ready, for
``health``); 2 bad usage or configuration; 3 no backend could be reached (at
the start, or it stayed down past ``--wait-for-backend``); 70 internal error (a
bug: one line on stderr, the traceback with ``-vv`` or
``IMAGEWORKS_LOG_LEVEL=debug``); 130 interrupted.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_INTERNAL = 70  # sysexits' EX_SOFTWARE


def _installed() -> str:
    from .plugins import installed_backend_names

    names = installed_backend_names()
    return ", ".join(names) if names else "none"


def _concurrency(text: str) -> int | str:
    """``--concurrency``: ``auto`` or a whole number >= 1."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)  # below 1: refused with the other settings, naming the flag
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto or a whole number >= 1, got {text!r}") from None


def _backend_flags(p: argparse.ArgumentParser, *, legacy: bool = False) -> None:
    g = p.add_argument_group("backend (override config; see `imageworks config show`)")
    g.add_argument(
        "--vlm-backend",
        "--backend",
        dest="backend",
        metavar="NAME",
        help="backend to use (default: vllm; 'auto' picks the first healthy one)",
    )
    g.add_argument("--vlm-base-url", dest="base_url", metavar="URL", help="server URL, with or without /v1")
    g.add_argument(
        "--vlm-model", dest="model", metavar="MODEL", help="model name (default: the server's only model)"
    )
    g.add_argument(
        "--vlm-timeout", dest="timeout", type=float, metavar="SECONDS", help="read timeout (default: 120)"
    )
    g.add_argument(
        "--vlm-api-key-env", dest="api_key_env", metavar="VAR", help="environment variable with the API key"
    )
    if legacy:
        g.add_argument(
            "--vlm-api-key",
            dest="api_key",
            metavar="KEY",
            help="API key (prefer --vlm-api-key-env: a key on the command line is visible to other users)",
        )
    g.add_argument("--fallback", metavar="A,B", help="backends to try in order when the first is down")
    g.add_argument(
        "--concurrency",
        type=_concurrency,
        metavar="auto|N",
        help="requests in flight per backend endpoint: auto (default: found from the server's latencies, "
        "up to max_concurrency) or a fixed number",
    )
    g.add_argument(
        "--wait-for-backend",
        dest="wait_for_backend",
        type=float,
        metavar="SECONDS",
        help="how long a batch waits for a backend that went down or is loading (default: 600; 0: fail fast)",
    )
    g.add_argument("--max-tokens", type=int, metavar="N", help="generation cap (default: 512)")
    g.add_argument(
        "--temperature", type=float, metavar="T", help="sampling temperature (default: the server's)"
    )
    g.add_argument(
        "--max-pixels", type=int, metavar="N", help="downscale images to this many pixels (default: 1000000)"
    )
    g.add_argument(
        "--config", dest="config_file", metavar="FILE", help="user config file to read instead of the default"
    )


def _describe_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, folders (recursive) or globs")
    what = p.add_argument_group("what to ask")
    what.add_argument("--prompt", help="a custom prompt (overrides --template)")
    what.add_argument(
        "--template", default=None, help="built-in prompt (default: describe; see --list-templates)"
    )
    what.add_argument("--list-templates", action="store_true", help="list the built-in templates and exit")
    what.add_argument(
        "--mono-jsonl",
        type=Path,
        metavar="FILE",
        help="mono-checker metrics (JSONL) for the colour-narration template",
    )
    out = p.add_argument_group("outputs")
    out.add_argument(
        "--output",
        type=Path,
        default=Path("imageworks-results.jsonl"),
        metavar="FILE",
        help="results JSONL, appended (default: imageworks-results.jsonl)",
    )
    out.add_argument(
        "--xmp",
        choices=("sidecar", "embed", "none"),
        default="sidecar",
        help="XMP sidecar <image>.xmp (default), embedded in the image via exiftool, or none",
    )
    out.add_argument(
        "--no-backup", action="store_true", help="with --xmp embed: do not keep <image>_original"
    )
    out.add_argument(
        "--json-sidecar",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write <image>.cn_metadata.json (default: yes)",
    )
    run = p.add_argument_group("run")
    run.add_argument("--resume", action="store_true", help="skip images with a successful result in --output")
    run.add_argument("--overwrite", action="store_true", help="describe images that already have our sidecar")
    run.add_argument("--dry-run", action="store_true", help="list what would be described; send nothing")
    run.add_argument("--stream", action="store_true", help="print tokens live (one image at a time)")
    run.add_argument("--no-preflight", action="store_true", help="skip the health check before the batch")
    run.add_argument(
        "--warmup",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="send each backend one tiny request with the health check, so the first images do not pay "
        "the cold start (config: warmup; default: on)",
    )
    run.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    run.add_argument(
        "--json",
        dest="json_logs",
        action="store_true",
        help="machine output: JSON log lines on stderr, JSON summary on stdout",
    )


def build_parser() -> argparse.ArgumentParser:
    installed = _installed()
    epilog = (
        f"installed backends: {installed} (default: vllm). "
        "Exit codes: 0 ok, 1 failures, 2 usage/config, 3 no backend reachable, "
        "70 internal error (a bug), 130 interrupted."
    )
    parser = argparse.ArgumentParser(
        prog="imageworks",
        description="Describe images with a vision-language model served by vLLM, LMDeploy, Triton or any "
        "OpenAI-compatible server.",
        epilog=epilog,
    )
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("describe", help="describe images, write JSONL + XMP/JSON sidecars", epilog=epilog)
    _describe_flags(p)
    _backend_flags(p)
    p = sub.add_parser(
        "narrate", epilog=epilog, help="Colour Narrator: describe residual colour in monochrome images"
    )
    _describe_flags(p)
    p.add_argument(
        "--images", dest="images_dir", metavar="DIR", help="folder of images (Colour Narrator's flag)"
    )
    _backend_flags(p, legacy=True)

    p = sub.add_parser("backends", help="list installed backends and plugin load errors", epilog=epilog)
    p.add_argument("--json", action="store_true", help="JSON output")
    p = sub.add_parser("health", help="check the configured backend(s)", epilog=epilog)
    p.add_argument("--json", action="store_true", help="JSON output")
    p.add_argument("--all", action="store_true", help="check the fallbacks too")
    p.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="poll until ready or this many seconds pass (servers refuse connections while loading)",
    )
    _backend_flags(p)
    p = sub.add_parser(
        "serve", help="run the local HTTP gateway (OpenAI-compatible) all tools can share", epilog=epilog
    )
    from .serve.command import add_serve_flags

    add_serve_flags(p)
    _backend_flags(p)
    p = sub.add_parser("config", help="show the effective configuration", epilog=epilog)
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="every setting, its value and where it came from (secrets redacted)")
    show.add_argument("--json", action="store_true", help="JSON output")
    _backend_flags(show)
    from .generate import add_parser as add_generate_parser

    add_generate_parser(sub, epilog)
    from .ask import add_parser as add_ask_parser

    add_ask_parser(sub, epilog, _backend_flags)
    from .compare.command import add_parser as add_compare_parser

    add_compare_parser(sub, epilog)
    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh, fish)",
        description="Print a completion script; e.g. bash: imageworks completion bash > "
        "~/.local/share/bash-completion/completions/imageworks; zsh: imageworks completion zsh > "
        '"${fpath[1]}/_imageworks"; fish: imageworks completion fish > '
        "~/.config/fish/completions/imageworks.fish.  Regenerate it after installing a backend.",
    )
    p.add_argument("shell", choices=("bash", "zsh", "fish"), help="the shell to complete for")
    return parser


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for key in ("backend", "concurrency", "max_tokens", "temperature", "max_pixels", "wait_for_backend"):
        value = getattr(args, key, None)
        if value is not None:
            flags[key] = value
    if getattr(args, "warmup", None) is not None:
        flags["warmup"] = args.warmup
    if getattr(args, "fallback", None):
        flags["fallback"] = tuple(x.strip() for x in args.fallback.split(",") if x.strip())
    selected = {
        k: getattr(args, k)
        for k in ("base_url", "model", "timeout", "api_key_env", "api_key")
        if getattr(args, k, None) is not None
    }
    if selected:
        flags["selected"] = selected
    return flags


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    config_file = getattr(args, "config_file", None)
    return Client.from_config(overrides=_overrides(args), user_file=config_file or True, _flags_source="flag")


def _err(message: str, hint: str | None = None) -> None:
    from .hints import for_cli
    from .redact import scrub
    from .terminal import terminal_safe

    # a multi-line message (auto's list of what it tried) keeps its lines, indented under the first
    text = terminal_safe(scrub(message.strip())).replace(chr(10), chr(10) + "  ")
    print(f"imageworks: {text}", file=sys.stderr)
    hint = for_cli(hint)
    if hint:
        print(f"  {terminal_safe(scrub(hint)).replace(chr(10), chr(10) + '  ')}", file=sys.stderr)


def _setup_logging(verbose: int, json_logs: bool = False) -> None:
    from .logs import setup_logging

    setup_logging(verbose, json_logs=json_logs)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:  # `imageworks --version | head -1`: the reader had what it wanted
        _quiet_stdout()
        return EXIT_OK


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's last flush cannot fail on a closed pipe."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from .commands import print_versions

        print_versions()
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    _setup_logging(args.verbose, getattr(args, "json_logs", False))
    try:
        return _run(args, parser)
    except BaseException as exc:  # every outcome becomes an exit code and one message
        return _exit_code(_leaf(exc))


def _run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from . import commands

    if args.command in ("describe", "narrate"):
        return commands.describe(args, _client)
    if args.command == "backends":
        return commands.backends(args)
    if args.command == "health":
        return commands.health(args, _client(args))
    if args.command == "generate":
        from .generate import command as generate

        return generate(args, _client)
    if args.command == "ask":
        from .ask import command as ask

        return ask(args, _client)
    if args.command == "compare":
        from .compare.command import compare

        return compare(args)
    if args.command == "serve":
        from .serve.command import run_serve

        return run_serve(args, _client)
    if args.command == "completion":
        from .completion import completion_script
        from .plugins import installed_backend_names

        sys.stdout.write(completion_script(build_parser(), args.shell, list(installed_backend_names())))
        return EXIT_OK
    if args.command == "config":
        if args.config_command != "show":
            parser.parse_args(["config", "--help"])
        return commands.config_show(args, _client(args))
    return EXIT_USAGE  # pragma: no cover


def _leaf(exc: BaseException) -> BaseException:
    """The one error inside (nested) exception groups of one error, else *exc* itself."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _exit_code(exc: BaseException) -> int:
    from .errors import BackendUnavailable, ConfigError, ImageWorksError, InputError, PluginError

    if isinstance(exc, KeyboardInterrupt):
        _err("interrupted; every finished result is in the results file (rerun with --resume)")
        return EXIT_INTERRUPTED
    if isinstance(exc, SystemExit):
        raise exc
    if isinstance(exc, BackendUnavailable):
        _err(exc.message, exc.hint)
        return EXIT_UNAVAILABLE
    if isinstance(exc, ConfigError | PluginError | InputError):
        # per-image input errors never get here: an InputError here is about the arguments
        _err(exc.message, exc.hint)
        return EXIT_USAGE
    if isinstance(exc, BrokenPipeError):  # `imageworks ... | head`: the reader had what it wanted
        _quiet_stdout()
        return EXIT_OK
    if isinstance(exc, ImageWorksError):
        _err(exc.message, exc.hint)
        return EXIT_FAILED
    if not isinstance(exc, Exception):
        raise exc
    # a bug: one line, not a traceback (which -vv or IMAGEWORKS_LOG_LEVEL=debug shows)
    import logging

    logging.getLogger("imageworks.cli").debug("internal error", exc_info=exc)
    _err(
        f"internal error: {type(exc).__name__}: {exc}",
        "this is a bug in imageworks (or a plugin); rerun with -vv for the traceback and report it",
    )
    return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
