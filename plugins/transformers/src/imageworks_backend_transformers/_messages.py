"""A ``Request`` as the chat messages and PIL images a transformers processor takes.

Parts keep their order inside a message (a processor places each image where
its ``{"type": "image"}`` part stands); images arrive as ``PreparedImage`` or
as ``data:`` URLs in OpenAI-shaped messages.  A part that cannot be decoded is
the request's ``InputError``.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from imageworks_core import InputError, PreparedImage, Request

from ._runtime import first_line

__all__ = ["hf_messages"]


def hf_messages(request: Request) -> tuple[list[dict[str, Any]], list[Any]]:
    """Chat messages in the processors' format (``{"type": "image"}`` parts) and the PIL images."""
    images: list[Any] = []
    messages: list[dict[str, Any]] = []
    if request.messages is None:
        if request.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        content: list[dict[str, Any]] = []
        for img in request.images:
            images.append(_prepared_image(img))
            content.append({"type": "image"})
        content.append({"type": "text", "text": request.prompt or ""})
        messages.append({"role": "user", "content": content})
        return messages, images
    for i, message in enumerate(request.messages):
        role = str(message.get("role", "user"))
        raw = message.get("content")
        parts: list[dict[str, Any]] = []
        if isinstance(raw, str):
            parts.append({"type": "text", "text": raw})
        elif isinstance(raw, Sequence):
            for part in raw:
                if not isinstance(part, Mapping):
                    continue
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind in ("image_url", "image"):
                    url = part.get("image_url", part.get("image"))
                    if isinstance(url, Mapping):
                        url = url.get("url")
                    if not isinstance(url, str):
                        raise InputError(
                            f"messages[{i}]: an image part without a URL", source=f"messages[{i}]"
                        )
                    images.append(_data_url_image(url, f"messages[{i}]"))
                    parts.append({"type": "image"})
        messages.append({"role": role, "content": parts})
    for img in request.images:  # images given beside full messages join the last user turn
        images.append(_prepared_image(img))
        if messages:
            messages[-1]["content"].insert(0, {"type": "image"})
    return messages, images


def _prepared_image(img: PreparedImage) -> Any:
    return _decode_image(img.data, img.source)


def _data_url_image(url: str, source: str) -> Any:
    if not url.startswith("data:") or "," not in url:
        raise InputError(
            f"{source}: the in-process transformers backend takes images as data: URLs only, "
            f"got {url[:40]!r}",
            source=source,
            hint="pass the image in Request.images, or as a data:<mime>;base64,... URL",
        )
    head, _, payload = url.partition(",")
    try:
        data = base64.b64decode(payload, validate=False) if head.endswith(";base64") else payload.encode()
    except ValueError as exc:
        raise InputError(f"{source}: invalid base64 in an image data URL", source=source) from exc
    return _decode_image(data, source)


def _decode_image(data: bytes, source: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(
            f"{source}: the image cannot be decoded: {first_line(exc)}",
            source=source,
            hint="check the file; prepare images with imageworks_core.prepare_image",
        ) from exc
