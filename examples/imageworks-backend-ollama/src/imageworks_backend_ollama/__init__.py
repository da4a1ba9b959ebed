"""ImageWorks backend ``ollama``: Ollama's native API, the second worked example of a plugin.

Where the echo example needs no server, this one talks to a real protocol
through ``ctx.http``: ``GET /api/tags`` for health, ``POST /api/chat`` with
newline-delimited JSON streaming for inference.  It is built from the
plugin-author API only (``imageworks_core.plugin``):

* ``BackendBase``: metadata as class attributes; ``infer`` comes from ``stream``;
* ``iter_message_parts``: each message as (role, text, images), whatever the request's shape;
* ``sampling``: the request's generation settings with the client's defaults;
* ``resolve_model``: the configured model, else the server's only one;
* ``iter_ndjson``: the stream's JSON objects, one per line.

Ollama's API (https://github.com/ollama/ollama/blob/main/docs/api.md): images
travel as plain base64 strings in a message's ``images`` list; generation
settings go in ``options`` (``num_predict`` is the token cap); the last
streamed object has ``"done": true``, the ``done_reason`` and the token counts
(``prompt_eval_count``, ``eval_count``); errors are ``{"error": "..."}``, as
the answer to a failed request (404 for a model that is not pulled, 503 when
its queue is full) or as a line inside a stream.

The generic ``openai`` backend (preset ``ollama``) reaches Ollama too, through
its OpenAI-compatible endpoint; this plugin uses the native API, which also
takes ``keep_alive`` and Ollama's own options.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import AsyncIterator
from typing import Any

import attrs

from imageworks_core.plugin import (
    BackendBase,
    BackendContext,
    BackendProtocolError,
    BackendRejected,
    BackendSettings,
    Capabilities,
    Chunk,
    HealthReport,
    Request,
    Usage,
    encode_body,
    hookimpl,
    iter_message_parts,
    iter_ndjson,
    redact_url,
    resolve_model,
    sampling,
)

__all__ = ["OllamaBackend", "OllamaSettings", "plugin"]

__version__ = importlib.metadata.version("imageworks-backend-ollama")

#: Keys of ``Request.extra`` that are top-level fields of ``/api/chat``; any other extra is an option.
TOP_LEVEL = frozenset({"format", "keep_alive", "think"})


@attrs.frozen(slots=True)
class OllamaSettings(BackendSettings):
    """Settings of the ollama backend (section ``[tool.imageworks.backends.ollama]``).

    Attributes:
        keep_alive: How long Ollama keeps the model loaded after a request
            (``"5m"``, ``"1h"``, ``"-1"`` for ever); unset: the server's default.
        num_ctx: The context window to load the model with; unset: the model's default.
    """

    keep_alive: str | None = None
    num_ctx: int | None = None


class OllamaBackend(BackendBase):
    """Ollama's native API: health from ``/api/tags``, answers streamed from ``/api/chat``."""

    name = "ollama"
    description = "Ollama's native API (/api/chat, NDJSON streaming): worked example plugin"
    default_base_url = "http://localhost:11434"
    capabilities = Capabilities(vision=True, streaming=True, model_switch=True)
    settings_cls = OllamaSettings
    launch_hints = (
        "ollama serve   (then, once: ollama pull qwen2.5vl:3b)",
        "or with Docker: docker run -d -p 11434:11434 --name ollama ollama/ollama",
    )
    docs_url = "https://github.com/ollama/ollama/blob/main/docs/api.md"

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        models = await _pulled(ctx)  # nothing listening: BackendUnavailable, reported by the core
        wanted = ctx.settings.model
        if wanted and _tagged(wanted) not in {_tagged(m) for m in models}:
            return HealthReport.not_ready(
                ctx,
                f"the model {wanted!r} is not pulled (pulled: {', '.join(models) or 'none'})",
                hint=f"ollama pull {wanted}",
                models=tuple(models),
            )
        if not models:
            return HealthReport.not_ready(ctx, "no model is pulled", hint="ollama pull qwen2.5vl:3b")
        return HealthReport.up(ctx, models=models)

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
        model = await resolve_model(ctx, request, lambda: _pulled(ctx))
        url = ctx.http.url("/api/chat")
        try:
            async with ctx.http.stream("POST", url, body=encode_body(chat_body(ctx, request, model))) as resp:
                done = False
                async for event in iter_ndjson(resp, backend=ctx.name, url=url):
                    if "error" in event:  # a failure after the answer began (a crashed runner ...)
                        raise BackendProtocolError(
                            f"{ctx.name} at {redact_url(url)} failed inside the stream: {event['error']}",
                            backend=ctx.name,
                            url=url,
                            retryable=True,  # a new try may succeed: nothing was said of the input
                        )
                    done = bool(event.get("done"))
                    yield _chunk(event, model, done)
                    if done:
                        break
        except BackendRejected as exc:
            if exc.status == 404:  # {"error": "model \"x\" not found, try pulling it first"}
                raise exc.with_hint(f"ollama pull {model}") from exc
            raise
        if not done:
            raise BackendProtocolError(
                f'{ctx.name} at {redact_url(url)}: the stream ended before its last object ("done": true)',
                backend=ctx.name,
                url=url,
                retryable=True,
            )


def chat_body(ctx: BackendContext, request: Request, model: str) -> dict[str, Any]:
    """The ``/api/chat`` request: messages with base64 images, the settings in ``options``."""
    asked = sampling(ctx, request)
    settings = ctx.settings_as(OllamaSettings)
    options: dict[str, Any] = {"num_predict": asked.max_tokens}
    if asked.temperature is not None:
        options["temperature"] = asked.temperature
    if asked.top_p is not None:
        options["top_p"] = asked.top_p
    if asked.stop:
        options["stop"] = list(asked.stop)
    if settings.num_ctx is not None:
        options["num_ctx"] = settings.num_ctx
    body: dict[str, Any] = {"model": model, "stream": True}
    body["messages"] = [
        {"role": role, "content": text, **({"images": [i.b64() for i in images]} if images else {})}
        for role, text, images in iter_message_parts(request)
    ]
    if settings.keep_alive is not None:
        body["keep_alive"] = settings.keep_alive
    for key, value in request.extra.items():
        (body if key in TOP_LEVEL else options)[key] = value
    body["options"] = options
    return body


def _chunk(event: dict[str, Any], model: str, done: bool) -> Chunk:
    text = str((event.get("message") or {}).get("content") or "")
    if not done:
        return Chunk(text=text, model=event.get("model") or model)
    prompt, completion = event.get("prompt_eval_count"), event.get("eval_count")
    usage = None
    if isinstance(prompt, int) and isinstance(completion, int):
        usage = Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    return Chunk(
        text=text,
        model=event.get("model") or model,
        finish_reason=event.get("done_reason") or "stop",
        usage=usage,
    )


async def _pulled(ctx: BackendContext) -> list[str]:
    tags = await ctx.http.get_json("/api/tags")
    return [str(m.get("name") or m.get("model")) for m in tags.get("models") or [] if isinstance(m, dict)]


def _tagged(model: str) -> str:
    """``llava`` is ``llava:latest`` to Ollama."""
    return model if ":" in model.rsplit("/", 1)[-1] else model + ":latest"


#: The entry-point target.
plugin = OllamaBackend()
