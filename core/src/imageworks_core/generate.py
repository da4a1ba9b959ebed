"""``imageworks generate``: one prompt in, PNG files with their parameters out.

names checked (never overwrite) -> ``Client.generate_image`` (routing, retries,
fallback) -> each image re-encoded as PNG with the WebUI ``parameters`` chunk and
XMP ``dc:description`` -> written atomically -> one results-JSONL line per image
(one line with ``error`` when the request failed).  The CLI only parses flags
into ``GenerateOptions`` and calls ``run_generate``.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
from pathlib import Path
from typing import Any

import anyio
import attrs

from .client import Client
from .errors import ConfigError, ImageWorksError, redact_url
from .events import Event, OnEvent
from .image_models import ImageRequest, ImageResult
from .imagefiles import file_names, infotext, parameter_pairs, png_with_metadata, write_image
from .outputs import JsonlWriter

__all__ = ["GenerateOptions", "generate_record", "run_generate"]


@attrs.frozen(slots=True)
class GenerateOptions:
    """What ``imageworks generate`` was asked to do.

    Attributes:
        request: The image request (prompt, n, size, seed ...).
        out: Folder for the PNG files.
        output: Results JSONL, appended.
        overwrite: Replace existing files of the same names.
    """

    request: ImageRequest
    out: Path = Path(".")
    output: Path = Path("imageworks-generated.jsonl")
    overwrite: bool = False


def _version() -> str:
    try:
        return f"imageworks {md.version('imageworks-core')}"
    except md.PackageNotFoundError:  # pragma: no cover - a source checkout without metadata
        return "imageworks"


def generate_record(
    request: ImageRequest,
    result: ImageResult | None,
    *,
    index: int | None = None,
    path: Path | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """One line of the results JSONL: one image of *result*, or the request's failure."""
    img = result.images[index] if result is not None and index is not None else None
    attempts = list(getattr(error, "attempts", ()) or (result.attempts if result else ()))
    return {
        "image": str(path) if path is not None else None,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "backend": (result.backend or None) if result else (attempts[-1].backend if attempts else None),
        "model": (result.model or None) if result else None,
        "base_url": redact_url(result.base_url) if result and result.base_url else None,
        "seed": (img.seed if img and img.seed is not None else result.seed) if result else None,
        "size": f"{img.width}x{img.height}" if img and img.width else None,
        "parameters": dict(result.parameters) if result else None,
        "revised_prompt": result.revised_prompt if result else None,
        "processing_time": round(result.latency, 4) if result else None,
        "queue_time": round(result.queue_time, 4) if result else None,
        "timings": {k: round(v, 4) for k, v in result.timings.items()} if result else None,
        "attempts": [attrs.asdict(a) for a in attempts],
        "error": None if error is None else _one_line(error),
    }


def _one_line(exc: BaseException) -> str:
    text = exc.message if isinstance(exc, ImageWorksError) else str(exc)
    return " ".join(text.split())


async def run_generate(client: Client, opts: GenerateOptions, on_event: OnEvent | None = None) -> list[Path]:
    """Generate, write the files and the JSONL lines; the paths written.

    *on_event* gets the request's events, ``progress`` included (the server's steps).

    Raises:
        InputError: an output name is taken (without ``overwrite``): checked before sending.
        ImageWorksError: the request failed (its JSONL line is written first).
    """
    request = opts.request
    paths = file_names(opts.out, request.prompt, request.n, overwrite=opts.overwrite)
    from .generation import route

    route(client, request)  # a usage error (no image backend) fails here, before any output
    with JsonlWriter(opts.output) as writer:
        try:
            result = await client.generate_image(request, on_event=on_event)
        except ImageWorksError as exc:
            writer.write(generate_record(request, None, error=exc))
            raise
        written: list[Path] = []
        version = _version()
        for i, img in enumerate(result.images[: len(paths)]):
            seed = img.seed if img.seed is not None else (result.seed if i == 0 else None)
            pairs = parameter_pairs(
                result.parameters,
                seed=seed,
                width=img.width,
                height=img.height,
                model=result.model,
                backend=result.backend,
                revised_prompt=result.revised_prompt,
                version=version,
            )
            text = infotext(request.prompt, request.negative_prompt, pairs)
            try:
                data = await anyio.to_thread.run_sync(
                    functools.partial(
                        png_with_metadata, img.data, parameters=text, description=request.prompt
                    )
                )
                await anyio.to_thread.run_sync(
                    functools.partial(write_image, paths[i], data, overwrite=opts.overwrite)
                )
            except ImageWorksError as exc:
                writer.write(generate_record(request, result, index=i, error=exc))
                raise
            writer.write(generate_record(request, result, index=i, path=paths[i]))
            written.append(paths[i])
    return written


class StepLine:
    """The request's progress as one line on a terminal: ``sdwebui: step 7/20 (35 %)``, cleared at the end."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._shown = False

    def __call__(self, event: Event) -> None:
        from .terminal import terminal_safe

        if event.kind == "progress" and event.total:
            step = min(max(event.step or 0, 0), event.total)
            text = f"{event.backend}: step {step}/{event.total} ({100 * step // event.total} %)"
            if event.detail:
                text += f", {event.detail}"
            self._stream.write("\r\x1b[2K" + terminal_safe(text))
            self._stream.flush()
            self._shown = True
        elif event.kind in ("retry", "fallback", "done", "failed"):
            self.clear()

    def clear(self) -> None:
        if self._shown:
            self._stream.write("\r\x1b[2K")
            self._stream.flush()
            self._shown = False


def add_parser(sub: Any, epilog: str) -> None:
    """The ``generate`` subcommand's flags."""
    p = sub.add_parser(
        "generate",
        help="generate images from a prompt (backends of kind image_generation), PNGs with metadata",
        epilog=epilog,
    )
    p.add_argument("prompt", metavar="PROMPT", help="what to draw")
    what = p.add_argument_group("what to generate")
    what.add_argument("-n", type=int, default=1, metavar="N", help="images to generate (default: 1)")
    what.add_argument("--size", metavar="WxH", help="image size, e.g. 512x512 (default: the server's)")
    what.add_argument("--seed", type=int, metavar="S", help="seed (backends that take one)")
    what.add_argument("--steps", type=int, metavar="N", help="denoising steps (diffusion backends)")
    what.add_argument("--guidance", type=float, metavar="G", help="guidance (CFG) scale")
    what.add_argument("--negative", metavar="TEXT", help="negative prompt (backends that take one)")
    what.add_argument("--model", dest="image_model", metavar="M", help="image model (default: configured)")
    what.add_argument(
        "--init-image",
        dest="init_image",
        type=Path,
        metavar="FILE",
        help="start from this image (img2img; backends that can: sdwebui, diffusers); "
        "read upright within ~1 MP, which is the output size unless --size is given",
    )
    what.add_argument(
        "--strength",
        type=float,
        metavar="S",
        help="with --init-image: how much to change it, from just above 0 (keep) to 1 (replace)",
    )
    what.add_argument(
        "--workflow",
        type=Path,
        metavar="FILE",
        help="a ComfyUI workflow in API format with {{prompt}} etc. placeholders (the comfyui backend)",
    )
    out = p.add_argument_group("outputs")
    out.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="folder for the PNGs")
    out.add_argument("--overwrite", action="store_true", help="replace files of the same names")
    out.add_argument(
        "--output",
        type=Path,
        default=Path("imageworks-generated.jsonl"),
        metavar="FILE",
        help="results JSONL, appended (default: imageworks-generated.jsonl)",
    )
    g = p.add_argument_group("backend (override config)")
    g.add_argument("--backend", metavar="NAME", help="image backend (default: first configured that can)")
    g.add_argument("--base-url", "--vlm-base-url", dest="base_url", metavar="URL", help="its server URL")
    g.add_argument("--api-key-env", dest="api_key_env", metavar="VAR", help="variable holding the API key")
    g.add_argument("--timeout", type=float, metavar="SECONDS", help="read timeout")
    g.add_argument("--fallback", metavar="A,B", help="image backends to try in order when the first is down")
    g.add_argument(
        "--wait-for-backend",
        dest="wait_for_backend",
        type=float,
        metavar="SECONDS",
        help="how long to wait for a backend that is down or loading (default: 600; 0: fail fast)",
    )
    g.add_argument("--config", dest="config_file", metavar="FILE", help="user config file to read")


def command(args: Any, make_client: Any) -> int:
    """Run ``imageworks generate``; the exit code (errors propagate to the CLI's mapping)."""
    import sys

    from .terminal import terminal_safe

    if args.strength is not None and args.init_image is None:
        raise ConfigError(
            "--strength goes with --init-image", hint="add --init-image FILE, or drop --strength"
        )
    start = None
    if args.init_image is not None:
        from .images import prepare_image

        start = prepare_image(args.init_image)  # an unreadable file: InputError, exit 2, nothing sent
    request = ImageRequest(
        args.prompt,
        init_image=start,
        strength=args.strength,
        negative_prompt=args.negative,
        size=args.size,
        n=args.n,
        seed=args.seed,
        steps=args.steps,
        guidance=args.guidance,
        model=args.image_model,
        backend=args.backend,
        timeout=args.timeout,
    )
    opts = GenerateOptions(request=request, out=args.out, output=args.output, overwrite=args.overwrite)
    client = make_client(args)
    if args.workflow is not None:
        if (args.backend or "comfyui") != "comfyui":
            raise ConfigError(
                f"--workflow is a ComfyUI workflow; the {args.backend} backend cannot run one",
                hint="use --backend comfyui (pip install imageworks-backend-comfyui), or drop --workflow",
            )
        if "comfyui" not in client.registry.backends:
            raise ConfigError(
                "--workflow needs the comfyui backend, which is not installed",
                hint="pip install imageworks-backend-comfyui",
            )
        # the backend's own setting (it reads and checks the file): a fallback never sees it
        client.use_backend("comfyui", workflow=str(args.workflow.absolute()))

    steps = StepLine(sys.stderr) if sys.stderr.isatty() else None

    async def job() -> list[Path]:
        async with client:
            try:
                return await run_generate(client, opts, on_event=steps)
            finally:
                if steps is not None:
                    steps.clear()

    written = anyio.run(job)
    for path in written:
        print(terminal_safe(str(path)))
    print(f"{len(written)} image(s) written; results in {terminal_safe(str(opts.output))}", file=sys.stderr)
    return 0
