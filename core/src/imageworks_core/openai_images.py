"""Image generation over the OpenAI images API (``POST /v1/images/generations``).

A mixin for OpenAI-compatible backends: it adds the ``generate_image`` hook.
Request and response shapes follow the OpenAI API reference ("Images: create
image", https://platform.openai.com/docs/api-reference/images/create) as
encoded in ``openai/openai-python`` ``src/openai/types/image_generate_params.py``,
``images_response.py`` and ``image.py``: body ``prompt`` (required), ``model``,
``n``, ``size`` (``WxH`` or ``auto``), ``response_format`` (``url`` default,
``b64_json``; not accepted by ``gpt-image-*``, which always answer base64);
answer ``{"created", "data": [{"b64_json" | "url", "revised_prompt"?}]}``
(``gpt-image-*`` add ``size``, ``quality``, ``output_format``, ``background``,
``usage``).  The API has no seed, steps, guidance or negative prompt: those are
not sent (pass them in ``extras`` for a compatible server that takes them).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import urlsplit

from .context import BackendContext
from .errors import BackendProtocolError, BackendRejected, InputError, redact_url
from .hookspecs import hookimpl
from .image_models import GeneratedImage, ImageRequest, ImageResult
from .settings import split_api_base

__all__ = ["MAX_IMAGE_BYTES", "OpenAIImagesMixin"]

#: Largest image accepted from a returned URL (a 4096x4096 PNG is ~50 MB at worst).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
#: Parameters the OpenAI images API lacks (ignored here, with one warning per backend).
_NOT_IN_API = ("negative_prompt", "seed", "steps", "guidance")
#: Answer fields of gpt-image-* models that say what was actually used.
_USED_FIELDS = ("size", "quality", "output_format", "background")


class OpenAIImagesMixin:
    """``generate_image`` over ``/v1/images/generations``; mixed into an ``OpenAICompatBackend``."""

    #: Append ``/v1`` to a base URL given without it (as ``OpenAICompatBackend.force_v1``).
    force_v1: ClassVar[bool] = True

    @hookimpl
    async def generate_image(self, ctx: BackendContext, request: ImageRequest) -> ImageResult:
        url = f"{split_api_base(ctx.base_url, force_v1=self.force_v1)[1]}/images/generations"
        model = request.model or getattr(ctx.settings, "image_model", None)
        body = self.image_body(ctx, request, model)
        started = time.perf_counter()
        data = await ctx.http.post_json(url, json.dumps(body).encode(), timeout=request.timeout)
        generated = time.perf_counter()
        if not isinstance(data, Mapping):
            raise BackendProtocolError(f"{ctx.name}: images answer is not a JSON object", backend=ctx.name)
        if "error" in data:
            from .openai_compat import _inband_error

            raise _inband_error(data, backend=ctx.name, url=url, where="in an HTTP 200 answer")
        entries = data.get("data")
        if not isinstance(entries, list) or not entries:
            raise BackendProtocolError(
                f"{ctx.name} at {redact_url(url)} answered without images: {str(data)[:200]}",
                backend=ctx.name,
                url=url,
            )
        images: list[GeneratedImage] = []
        revised: str | None = None
        for i, entry in enumerate(entries):
            if not isinstance(entry, Mapping):
                raise BackendProtocolError(
                    f"{ctx.name}: image {i} of the answer is not an object", backend=ctx.name
                )
            images.append(await self._image(ctx, entry, i, request.timeout))
            if revised is None and isinstance(entry.get("revised_prompt"), str):
                revised = entry["revised_prompt"]
        done = time.perf_counter()
        used: dict[str, Any] = {k: v for k, v in body.items() if k != "prompt"}
        used.update({k: data[k] for k in _USED_FIELDS if isinstance(data.get(k), str)})
        return ImageResult(
            images=tuple(images),
            backend=ctx.name,
            model=str(model or data.get("model") or ""),
            parameters=used,
            revised_prompt=revised,
            timings={"generate": generated - started, "download": done - generated},
        )

    def image_body(self, ctx: BackendContext, request: ImageRequest, model: str | None) -> dict[str, Any]:
        """The JSON body: the API's fields, then ``extras`` (a ``None`` value there drops a field)."""
        body: dict[str, Any] = {"prompt": request.prompt, "n": request.n}
        if model:
            body["model"] = model
        if request.size is not None:
            body["size"] = f"{request.size[0]}x{request.size[1]}"
        if not (model or "").startswith("gpt-image"):  # gpt-image-* refuse it and answer base64 anyway
            body["response_format"] = "b64_json"
        ignored = [k for k in _NOT_IN_API if getattr(request, k) is not None]
        if ignored and not ctx.state.get("images_warned"):
            ctx.state["images_warned"] = True
            ctx.log.warning(
                "%s: the OpenAI images API has no %s; not sent "
                "(give them in extras for a server that takes them)",
                ctx.name,
                ", ".join(ignored),
            )
        for key, value in request.extras.items():
            if value is None:
                body.pop(key, None)
            else:
                body[key] = value
        return body

    async def _image(
        self, ctx: BackendContext, entry: Mapping[str, Any], index: int, timeout: float | None
    ) -> GeneratedImage:
        b64 = entry.get("b64_json")
        if isinstance(b64, str) and b64:
            return _decode(ctx, b64, f"image {index}")
        url = entry.get("url")
        if not isinstance(url, str) or not url:
            raise BackendProtocolError(
                f"{ctx.name}: image {index} of the answer has neither b64_json nor url", backend=ctx.name
            )
        if url.startswith("data:"):
            head, _, payload = url.partition(",")
            if ";base64" not in head:
                raise BackendProtocolError(
                    f"{ctx.name}: image {index} is a data URL without base64", backend=ctx.name
                )
            return _decode(ctx, payload, f"image {index}")
        return await fetch_image(ctx, url, timeout=timeout, what=f"image {index}")


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


async def fetch_image(ctx: BackendContext, url: str, *, timeout: float | None, what: str) -> GeneratedImage:
    """GET an image the server pointed at, through the backend's own pool and timeouts.

    The backend's credentials go only to its own origin: a URL elsewhere (a
    storage bucket with a signed URL) is fetched without them.
    """
    shown = redact_url(url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise BackendProtocolError(f"{ctx.name}: {what} has an unusable URL {shown!r}", backend=ctx.name)
    if _same_origin(url, ctx.base_url):
        resp = await ctx.http.request("GET", url, timeout=timeout)
    else:
        from .transport import Timeouts

        t = ctx.http.timeouts
        resp = await ctx.http.transport.request(
            "GET",
            url,
            headers={},
            body=None,
            timeouts=Timeouts(connect=t.connect, read=timeout or t.read, idle=t.idle),
        )
    if resp.status >= 400:
        from .http_errors import error_from_response

        exc = error_from_response(resp.status, resp.headers, resp.body, backend=ctx.name, url=url)
        if isinstance(exc, BackendRejected):  # an expired signed URL: asking again gives a new one
            raise BackendProtocolError(
                f"{ctx.name}: {what} at {shown} was refused: {exc.message}",
                retryable=True,
                backend=ctx.name,
                status=resp.status,
            ) from exc
        raise exc
    if 300 <= resp.status < 400:
        raise BackendProtocolError(
            f"{ctx.name}: {what} at {shown} redirects (not followed)", backend=ctx.name
        )
    if len(resp.body) > MAX_IMAGE_BYTES:
        raise BackendProtocolError(
            f"{ctx.name}: {what} at {shown} is {len(resp.body)} bytes, over {MAX_IMAGE_BYTES}",
            backend=ctx.name,
        )
    return _wrap(ctx, resp.body, f"{what} at {shown}")


def _decode(ctx: BackendContext, b64: str, what: str) -> GeneratedImage:
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise BackendProtocolError(f"{ctx.name}: {what} is not valid base64", backend=ctx.name) from None
    return _wrap(ctx, raw, what)


def _wrap(ctx: BackendContext, raw: bytes, what: str) -> GeneratedImage:
    from .images import wrap_encoded

    try:
        img = wrap_encoded(raw, source=f"<{what}>")
    except InputError as exc:
        raise BackendProtocolError(
            f"{ctx.name}: {what} is not an image it can read: {exc.message}", backend=ctx.name
        ) from None
    return GeneratedImage(data=img.data, mime=img.mime, width=img.width, height=img.height)
