"""The WebUI's ``/sdapi/v1`` shapes: request bodies, answers, error bodies, checkpoint names.

Checked against AUTOMATIC1111/stable-diffusion-webui (see the README's
"Protocol sources"): ``modules/api/api.py`` (routes, ``text2imgapi``,
``img2imgapi``, ``api_middleware.handle_exception``), ``modules/api/models.py``
(request and answer models) and ``modules/processing.py`` (``Processed.js``,
``process_images``, ``process_images_inner``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any, cast

from imageworks_core import GeneratedImage, ImageRequest, InputError, PreparedImage
from imageworks_core.plugin import (
    BackendError,
    BackendProtocolError,
    error_from_response,
    extract_error_message,
    redact_url,
)

from ._settings import SdWebuiSettings

__all__ = [
    "API_HINT",
    "TXT2IMG",
    "IMG2IMG",
    "build_body",
    "checkpoint_ids",
    "map_error",
    "parse_images",
    "parse_info",
]

TXT2IMG = "/sdapi/v1/txt2img"
IMG2IMG = "/sdapi/v1/img2img"
#: What to do when ``/sdapi/v1/*`` answers 404: the routes exist only with ``--api``.
API_HINT = (
    "start the WebUI with its API on: ./webui.sh --api --listen "
    "(Windows: set COMMANDLINE_ARGS=--api in webui-user.bat)"
)
_OOM_HINT = (
    "the GPU ran out of memory: ask for a smaller size or fewer images (-n), "
    "or start the WebUI with --medvram"
)


def _b64(value: Any, what: str) -> str:
    """An image for the WebUI: bytes become base64; a string (base64 or data URL) is sent as is."""
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, PreparedImage):
        return value.b64()
    if isinstance(value, str) and value:
        return value
    raise InputError(f"{what}: expected image bytes or a base64 string, got {type(value).__name__}")


def build_body(
    settings: SdWebuiSettings, request: ImageRequest, model: str | None
) -> tuple[str, dict[str, Any]]:
    """The route and JSON body: settings, then the request, then ``extra_body`` and ``extras``.

    ``request.init_image`` (or ``extras["init_images"]``: image bytes or base64
    strings) switches to img2img, with ``request.strength`` as the
    ``denoising_strength``; a ``None`` value in ``extras`` drops that field.
    """
    body: dict[str, Any] = {
        "prompt": request.prompt,
        "batch_size": request.n,
        "n_iter": 1,
        "seed": -1 if request.seed is None else request.seed,
        "send_images": True,
        "save_images": False,
    }
    if request.negative_prompt:
        body["negative_prompt"] = request.negative_prompt
    width, height = request.size or (settings.width, settings.height)
    start = request.init_image
    if request.size is None and start is not None and start.width and start.height:
        width, height = start.width, start.height  # img2img keeps the image's size unless told
    if width is not None:
        body["width"] = width
    if height is not None:
        body["height"] = height
    steps = request.steps if request.steps is not None else settings.steps
    if steps is not None:
        body["steps"] = steps
    cfg = request.guidance if request.guidance is not None else settings.cfg_scale
    if cfg is not None:
        body["cfg_scale"] = cfg
    if settings.sampler_name:
        body["sampler_name"] = settings.sampler_name
    if settings.scheduler:
        body["scheduler"] = settings.scheduler
    overrides: dict[str, Any] = {}
    if model:
        overrides["sd_model_checkpoint"] = model
        body["override_settings_restore_afterwards"] = settings.restore_model
    extras = {**settings.extra_body, **request.extras}
    init = extras.pop("init_images", None)
    if request.init_image is not None:
        init = [
            request.init_image.data,
            *([] if init is None else init if isinstance(init, list | tuple) else [init]),
        ]
        if request.strength is not None:
            body["denoising_strength"] = request.strength
    for key, value in extras.items():
        if value is None:
            body.pop(key, None)
        elif key == "override_settings" and isinstance(value, Mapping):
            overrides.update(value)
        else:
            body[key] = value
    if overrides:
        body["override_settings"] = overrides
    if init is None:
        return TXT2IMG, body
    items = init if isinstance(init, list | tuple) else [init]
    if not items:
        raise InputError("extras init_images is empty", hint="give one image or more, or leave it out")
    body["init_images"] = [_b64(v, f"init_images[{i}]") for i, v in enumerate(items)]
    if isinstance(body.get("mask"), bytes | bytearray | memoryview | PreparedImage):
        body["mask"] = _b64(body["mask"], "mask")
    if "denoising_strength" not in body and settings.denoising_strength is not None:
        body["denoising_strength"] = settings.denoising_strength
    return IMG2IMG, body


def parse_info(value: Any) -> dict[str, Any]:
    """The answer's ``info``: ``Processed.js()`` as a JSON string (an object; ``{}`` if unreadable)."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value:
        try:
            obj = json.loads(value)
        except ValueError:
            return {}
        return obj if isinstance(obj, dict) else {}
    return {}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def parse_images(
    backend: str, url: str, data: Any, info: Mapping[str, Any], asked: int
) -> tuple[GeneratedImage, ...]:
    """The generated images of an answer, each with its seed.

    ``images`` holds every picture in ``Processed.images``, which can be more
    than the batch: ``process_images_inner`` puts a grid first when one is
    returned (``index_of_first_image`` is then 1) and may add inpainting masks;
    an extension's ``postprocess`` may append more (ControlNet's detected maps).
    So the ``asked`` images from ``index_of_first_image`` on are kept; the rest
    are dropped.
    """
    shown = redact_url(url)
    images = data.get("images") if isinstance(data, Mapping) else None
    if not isinstance(images, list) or not images:
        raise BackendProtocolError(
            f"{backend} at {shown} answered without images: {str(data)[:200]}",
            backend=backend,
            url=url,
            hint="do not set send_images to false in extras / extra_body",
        )
    first = _int(info.get("index_of_first_image")) or 0
    if first >= len(images):
        first = 0
    kept = images[first : first + asked]
    seeds = info.get("all_seeds")
    seeds = seeds if isinstance(seeds, list) else []
    out = []
    for i, b64 in enumerate(kept):
        what = f"image {first + i} of the answer"
        if not isinstance(b64, str) or not b64:
            raise BackendProtocolError(f"{backend}: {what} is not a base64 string", backend=backend, url=url)
        if b64.startswith("data:"):
            b64 = b64.partition(",")[2]
        try:
            raw = base64.b64decode(b64, validate=True)
            img = PreparedImage.from_bytes(raw, source=f"<{what}>")
        except (binascii.Error, ValueError):
            raise BackendProtocolError(f"{backend}: {what} is not valid base64", backend=backend) from None
        except InputError as exc:
            raise BackendProtocolError(
                f"{backend}: {what} is not an image it can read: {exc.message}", backend=backend
            ) from None
        seed = _int(seeds[i]) if i < len(seeds) else None
        out.append(GeneratedImage(img.data, img.mime, img.width, img.height, seed))
    return tuple(out)


def _webui_message(obj: Any) -> str | None:
    """The message of the WebUI's own error body ``{"error", "detail", "body", "errors"}``.

    ``handle_exception`` fills ``error`` with the exception's class name,
    ``detail`` with an ``HTTPException``'s detail (``""`` otherwise) and
    ``errors`` with ``str(exception)``.
    """
    if not isinstance(obj, Mapping) or "errors" not in obj or "error" not in obj:
        return None
    kind, detail, errors = obj.get("error"), obj.get("detail"), obj.get("errors")
    text = detail if isinstance(detail, str) and detail else None
    if text is None and isinstance(errors, str) and errors:
        text = errors
    if text is None:
        return str(kind) if kind else None
    return f"{kind}: {text}" if isinstance(kind, str) and kind and kind != "HTTPException" else text


def map_error(
    backend: str, status: int, headers: Mapping[str, str], body: bytes, url: str, hint: str | None
) -> BackendError:
    """An error answer onto the core's tree (4xx rejected, 5xx retryable), with WebUI hints."""
    try:
        obj: Any = json.loads(body)
    except ValueError:
        obj = None
    message = _webui_message(obj) or extract_error_message(body)
    exc = error_from_response(status, headers, {"detail": message}, backend=backend, url=url, hint=hint)
    if status == 404 and message.strip().lower() == "not found":
        return exc.with_hint(f"no /sdapi/v1 routes: the WebUI was started without --api; {API_HINT}")
    low = message.lower()
    if "out of memory" in low:
        return exc.with_hint(_OOM_HINT)
    return exc


def checkpoint_ids(entry: Mapping[str, Any]) -> set[str]:
    """The names a ``/sdapi/v1/sd-models`` entry answers to as ``sd_model_checkpoint``.

    As ``CheckpointInfo.ids`` (``modules/sd_models.py``): the title, the name
    (title without ``[hash]``), the model name, the file's stem, the hashes.
    """
    ids: set[str] = set()
    for key in ("title", "model_name", "hash", "sha256"):
        value = entry.get(key)
        if isinstance(value, str) and value:
            ids.add(value)
    title = entry.get("title")
    if isinstance(title, str) and title.endswith("]") and " [" in title:
        ids.add(title.rsplit(" [", 1)[0])
    filename = entry.get("filename")
    if isinstance(filename, str) and filename:
        stem = filename.replace("\\", "/").rsplit("/", 1)[-1]
        ids.add(stem)
        ids.add(stem.rsplit(".", 1)[0])
    return ids


def parse_progress(data: Any) -> tuple[int, int, str | None] | None:
    """``(step, total, detail)`` from a ``GET /sdapi/v1/progress`` answer, or ``None`` when idle.

    The answer's ``state`` is the WebUI's ``State.dict()`` (``modules/shared_state.py``):
    ``job_no`` of ``job_count`` jobs, ``sampling_step`` of ``sampling_steps`` in the
    current one.  Steps are counted across the jobs, as the WebUI's own progress
    does.  The WebUI reports the job it is running: while a request waits behind
    another client's job, that job's progress is what it shows.
    """
    state = data.get("state") if isinstance(data, Mapping) else None
    if not isinstance(state, Mapping):
        return None
    numbers = [state.get(k) for k in ("job_no", "job_count", "sampling_step", "sampling_steps")]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
        return None
    job_no, job_count, step, steps = cast("list[int]", numbers)
    if job_count <= 0 or steps <= 0:
        return None
    job_no = min(max(job_no, 0), job_count - 1)
    detail = f"job {job_no + 1}/{job_count}" if job_count > 1 else None
    return job_no * steps + min(max(step, 0), steps), job_count * steps, detail
