"""Small pieces every backend plugin needs, so plugins stay small.

Each was written by hand in two to six plugins before: sampling defaults,
"send a setting only when set", warn-once, ``max_model_len`` from a model
list, the ``/metrics`` probe, the model to use when none is configured, and
OpenAI-shaped messages read back as (role, text, images).  Plugins reach them
through ``imageworks_core.plugin``.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from .context import BackendContext
from .errors import BackendError, BackendRejected, redact_url
from .models import PreparedImage, Request

__all__ = [
    "Sampling",
    "drop_fields",
    "first_time",
    "iter_message_parts",
    "max_model_len",
    "probe_metrics",
    "resolve_model",
    "sampling",
    "set_fields",
]


@attrs.frozen(slots=True)
class Sampling:
    """The generation settings of one request, with the client's defaults filled in.

    Attributes:
        max_tokens: Always set: the request's, else the client's ``max_tokens``.
        temperature: The request's, else the client's; ``None``: the server's default.
        top_p: The request's; ``None``: the server's default.
        stop: The request's stop strings.
    """

    max_tokens: int
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...]


def sampling(ctx: BackendContext, request: Request) -> Sampling:
    """*request*'s sampling settings, falling back to the client-wide ones (``ctx.client_settings``)."""
    cs = ctx.client_settings
    return Sampling(
        max_tokens=request.max_tokens or cs.max_tokens,
        temperature=request.temperature if request.temperature is not None else cs.temperature,
        top_p=request.top_p,
        stop=tuple(request.stop),
    )


def set_fields(source: Any, names: Iterable[str]) -> dict[str, Any]:
    """``{name: value}`` for each attribute of *source* in *names* that is not ``None``.

    For settings sent to the server only when the user set them (unset ones
    leave the server's own defaults in force).  Mappings are copied to dicts.
    """
    out: dict[str, Any] = {}
    for name in names:
        value = getattr(source, name, None)
        if value is not None:
            out[name] = dict(value) if isinstance(value, Mapping) else value
    return out


def first_time(ctx: BackendContext, topic: str, keys: Iterable[Hashable]) -> list[Any]:
    """Those of *keys* not seen before under *topic* in this client (for warn-once logging).

    ``if fresh := first_time(ctx, "dropped", keys): ctx.log.warning(...)``.
    """
    seen: set[Any] = ctx.state.setdefault(f"imageworks_seen:{topic}", set())
    fresh = [k for k in dict.fromkeys(keys) if k not in seen]
    seen.update(fresh)
    return fresh


def drop_fields(ctx: BackendContext, body: dict[str, Any], fields: Iterable[str], why: str) -> list[str]:
    """Remove *fields* from a request *body*; warn once per field and client, saying *why*.

    Returns the fields removed from this body.
    """
    dropped = [key for key in fields if key in body]
    for key in dropped:
        del body[key]
    fresh = first_time(ctx, "dropped_fields", dropped)
    if fresh:
        ctx.log.warning("%s: not sending %s: %s", ctx.name, ", ".join(fresh), why)
    return dropped


def max_model_len(entries: Sequence[Mapping[str, Any]]) -> int | None:
    """``max_model_len`` from a ``/v1/models`` list: the first base model's (adapters have ``parent``)."""
    for entry in sorted(entries, key=lambda e: bool(e.get("parent"))):
        value = entry.get("max_model_len")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


async def probe_metrics(
    ctx: BackendContext, url: str, parse: Callable[[str], dict[str, float]], *, timeout: float = 10.0
) -> dict[str, float]:
    """``parse`` applied to a Prometheus ``/metrics`` page; ``{}`` when it is absent or unreachable.

    Health checks call it beside their own probes: a server without metrics
    (or behind a proxy that hides them) is still healthy.
    """
    try:
        resp = await ctx.http.request("GET", url, timeout=min(timeout, ctx.settings.timeout))
    except BackendError as exc:
        ctx.log.debug("no metrics from %s: %s", ctx.name, exc.message)
        return {}
    if resp.status != 200:
        return {}
    return parse(resp.body.decode("utf-8", "replace"))


async def resolve_model(
    ctx: BackendContext,
    request: Request,
    list_models: Callable[[], Awaitable[Sequence[str]]],
) -> str:
    """The model to ask for: the request's, else the configured one, else the server's only model.

    *list_models* is called once per client (the answer is kept in
    ``ctx.state``).  Raises ``BackendRejected`` when the server serves no
    model, or several (naming them and the setting that picks one).
    """
    model = request.model or ctx.settings.model or ctx.state.get("imageworks_served_model")
    if model:
        return str(model)
    import anyio

    lock: anyio.Lock = ctx.state.setdefault("imageworks_model_lock", anyio.Lock())
    async with lock:
        if "imageworks_served_model" not in ctx.state:
            served = [str(m) for m in await list_models()]
            where = redact_url(ctx.base_url)
            if not served:
                raise BackendRejected(
                    f"{ctx.name} at {where} serves no model",
                    backend=ctx.name,
                    hint="load a model in the server, or set the model explicitly",
                )
            if len(served) > 1:
                raise BackendRejected(
                    f"{ctx.name} at {where} serves several models: {', '.join(served)}",
                    backend=ctx.name,
                    hint=f'choose one: Client(model=...) or backends.{ctx.name}.model = "{served[0]}"',
                )
            ctx.state["imageworks_served_model"] = served[0]
    return str(ctx.state["imageworks_served_model"])


def iter_message_parts(request: Request) -> Iterator[tuple[str, str, tuple[PreparedImage, ...]]]:
    """``(role, text, images)`` for each message of *request*, for servers that are not OpenAI-shaped.

    Built from ``prompt`` / ``system`` / ``images`` when ``messages`` is not
    given; otherwise each OpenAI-style message's text parts are joined and its
    ``image_url`` parts (``data:`` URLs) decoded to ``PreparedImage``s (width
    and height 0: not decoded).
    """
    if request.messages is None:
        if request.system:
            yield "system", request.system, ()
        yield "user", request.prompt or "", tuple(request.images)
        return
    for message in request.messages:
        role = str(message.get("role", "user"))
        content = message.get("content")
        if isinstance(content, str) or content is None:
            yield role, content or "", ()
            continue
        texts: list[str] = []
        images: list[PreparedImage] = []
        for part in content:
            if not isinstance(part, Mapping):
                continue
            if part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            elif part.get("type") == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, Mapping) else ref
                images.append(_from_data_url(str(url)))
        yield role, "\n".join(texts), tuple(images)


def _from_data_url(url: str) -> PreparedImage:
    head, sep, data = url.partition(",")
    if not (head.startswith("data:") and head.endswith(";base64") and sep):
        raise BackendRejected(
            f"an image in Request.messages is not a base64 data: URL ({url[:40]}...)",
            hint="send images as data: URLs (PreparedImage.data_url()), or in Request.images",
        )
    try:
        raw = base64.b64decode(data, validate=True)
    except ValueError:
        raise BackendRejected(
            "an image data: URL in Request.messages is not valid base64",
            hint="build it with PreparedImage.data_url()",
        ) from None
    return PreparedImage(data=raw, mime=head[5:-7] or "application/octet-stream", width=0, height=0)
