"""The OpenAI-compatible backend that vLLM, LMDeploy and the generic plugin share.

A plugin subclasses ``OpenAICompatBackend``, sets its metadata as class
attributes and overrides only its server's quirks (health, extra body
fields, result checks).  An instance is the pluggy plugin object: its
``backend_info`` / ``health`` / ``infer`` / ``stream`` methods are the hookimpls.

The hot path builds each body once as a plain dict, encodes it once, and
reads the answer without per-request model validation.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from typing import Any, ClassVar

from .base import BackendBase
from .context import BackendContext
from .errors import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    redact_url,
)
from .helpers import max_model_len, sampling
from .hookspecs import hookimpl
from .http_errors import error_from_response, extract_error_message
from .jsonbody import encode_body
from .models import Chunk, HealthReport, PreparedImage, Request, Result, Usage
from .settings import split_api_base
from .sse import iter_sse_data

__all__ = ["OpenAICompatBackend", "usage_from"]


def usage_from(obj: Any) -> Usage | None:
    """``Usage`` from an OpenAI-style ``usage`` object, or ``None``."""
    if not isinstance(obj, Mapping):
        return None
    return Usage(
        prompt_tokens=obj.get("prompt_tokens"),
        completion_tokens=obj.get("completion_tokens"),
        total_tokens=obj.get("total_tokens"),
    )


def _merge_final(first: Chunk, second: Chunk) -> Chunk:
    """One chunk from two text-less final ones: *first*'s text, each field from whichever has it.

    Usage is cumulative, so the later report wins; the first finish reason wins.
    """
    return Chunk(
        text=first.text + second.text,
        finish_reason=first.finish_reason if first.finish_reason is not None else second.finish_reason,
        usage=second.usage if second.usage is not None else first.usage,
        model=first.model or second.model,
    )


def _inband_error(obj: Mapping[str, Any], *, backend: str, url: str, where: str) -> BackendError:
    """An error the server put in a 200 answer (*where*: "inside the stream" / "in a 200 answer")."""
    err = obj.get("error")
    code = err.get("code") if isinstance(err, Mapping) else obj.get("code")
    if isinstance(code, str) and code.isdigit():
        code = int(code)
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    exc = error_from_response(status, {}, obj, backend=backend, url=url)
    if isinstance(exc, BackendOverloaded | BackendRejected):
        exc.message = f"{exc.message} (reported {where})"
        exc.args = (str(exc) if exc.hint is None else f"{exc.message}\n  hint: {exc.hint}",)
        return exc
    cls = BackendServerError if status >= 500 else BackendProtocolError
    return cls(
        f"{backend} at {redact_url(url)} reported an error {where}: {extract_error_message(obj)}",
        backend=backend,
        url=url,
        status=status,
    )


class OpenAICompatBackend(BackendBase):
    """Base class of OpenAI-compatible backends (chat completions with data-URL images)."""

    name: ClassVar[str] = "openai"
    description: ClassVar[str] = "Any OpenAI-compatible server"
    default_base_url: ClassVar[str] = "http://localhost:8000/v1"
    #: Append ``/v1`` to a base URL given without it (servers known to serve ``/v1``).
    force_v1: ClassVar[bool] = True

    # ------------------------------------------------------------ hooks

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        return await self.check_health(ctx)

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Result:
        model = await self.resolve_model(ctx, request)
        body = self.build_body(ctx, request, model, stream=False)
        data = await ctx.http.post_json(
            self.api(ctx, "chat/completions"), encode_body(body), timeout=request.timeout
        )
        return self.parse_completion(ctx, data, model)

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncGenerator[Chunk, None]:
        model = await self.resolve_model(ctx, request)
        body = self.build_body(ctx, request, model, stream=True)
        url = self.api(ctx, "chat/completions")
        finished = False
        got_text = False
        # A chunk without text (the finish chunk, a usage-only chunk) is held back and
        # merged with the text-less chunks that follow it: servers send finish_reason and
        # usage in one final chunk or in two, in either order (vLLM, LMDeploy and
        # transformers serve with include_usage), and the caller's last chunk carries both.
        held: Chunk | None = None
        async with ctx.http.stream("POST", url, body=encode_body(body), timeout=request.timeout) as resp:
            async for obj in iter_sse_data(resp, backend=ctx.name, url=url):
                if not isinstance(obj, Mapping):
                    raise BackendProtocolError(f"{ctx.name}: stream event is not an object: {obj!r:.200}")
                if "error" in obj or obj.get("object") == "error":
                    raise _inband_error(obj, backend=ctx.name, url=url, where="inside the stream")
                chunk = self.parse_chunk(ctx, obj)
                if chunk is None:
                    continue
                got_text = got_text or bool(chunk.text)
                if chunk.finish_reason is not None and not finished:
                    self.check_finish(ctx, chunk.finish_reason, got_text, model)
                    finished = True
                if held is not None:
                    if not chunk.text:
                        held = _merge_final(held, chunk)
                        continue
                    yield held
                    held = None
                if chunk.text and chunk.finish_reason is None:
                    yield chunk
                else:
                    held = chunk
            if held is not None:
                yield held
        if not finished:
            raise BackendProtocolError(
                f"{ctx.name} at {redact_url(url)}: the stream ended before the answer finished",
                backend=ctx.name,
                url=url,
                retryable=True,
            )

    # ------------------------------------------------------------ overridable pieces

    def api(self, ctx: BackendContext, path: str) -> str:
        """Absolute URL of *path* under the API base (``.../v1``)."""
        base = ctx.state.get("api_base")
        if base is None:
            base = ctx.state["api_base"] = split_api_base(ctx.base_url, force_v1=self.force_v1)[1]
        return f"{base}/{path}"

    def root(self, ctx: BackendContext, path: str) -> str:
        """Absolute URL of *path* under the server root (``/health``, ``/metrics``)."""
        return f"{split_api_base(ctx.base_url, force_v1=self.force_v1)[0]}/{path}"

    async def check_health(self, ctx: BackendContext) -> HealthReport:
        """Default: ``GET /v1/models``; ready when it lists at least one model."""
        models, raw = await self.list_models(ctx)
        return HealthReport(
            backend=ctx.name,
            url=redact_url(ctx.base_url),
            reachable=True,
            ready=bool(models),
            models=tuple(models),
            max_model_len=max_model_len(raw),
            detail=None if models else "the server lists no models",
        )

    async def list_models(self, ctx: BackendContext) -> tuple[list[str], list[Mapping[str, Any]]]:
        data = await ctx.http.get_json(self.api(ctx, "models"))
        entries = data.get("data") if isinstance(data, Mapping) else None
        if not isinstance(entries, list):
            raise BackendProtocolError(
                f"{ctx.name}: /models answered without a 'data' list: {str(data)[:200]}", backend=ctx.name
            )
        entries = [e for e in entries if isinstance(e, Mapping) and isinstance(e.get("id"), str)]
        return [e["id"] for e in entries], entries

    async def resolve_model(self, ctx: BackendContext, request: Request) -> str:
        """The request's model, else the configured one, else ``choose_model`` over the served ones (once)."""
        model = request.model or ctx.settings.model or ctx.state.get("served_model")
        if model:
            return str(model)
        import anyio

        lock = ctx.state.setdefault("model_lock", anyio.Lock())
        async with lock:
            if "served_model" not in ctx.state:
                _, entries = await self.list_models(ctx)
                if not entries:
                    raise BackendRejected(
                        f"{ctx.name} at {redact_url(ctx.base_url)} serves no model",
                        backend=ctx.name,
                        hint="load a model in the server, or set the model explicitly",
                    )
                ctx.state["served_model"] = self.choose_model(ctx, entries)
        return str(ctx.state["served_model"])

    def choose_model(self, ctx: BackendContext, entries: list[Mapping[str, Any]]) -> str:
        """The model to use when none is configured: the only base model served.

        Entries with ``parent`` set are adapters (vLLM's LoRA convention), so one
        base model plus its adapters still counts as one model.
        """
        ids = [str(e["id"]) for e in entries]
        bases = [i for i, e in zip(ids, entries, strict=True) if not e.get("parent")]
        if len(bases) == 1:
            return bases[0]
        raise BackendRejected(
            f"{ctx.name} at {redact_url(ctx.base_url)} serves several models: " + ", ".join(ids),
            backend=ctx.name,
            hint=f'choose one: Client(model=...) or backends.{ctx.name}.model = "{ids[0]}"',
        )

    def image_part(self, ctx: BackendContext, image: PreparedImage) -> dict[str, Any]:
        return {"type": "image_url", "image_url": {"url": image.data_url()}}

    def build_messages(self, ctx: BackendContext, request: Request) -> list[Any]:
        if request.messages is not None:
            return list(request.messages)
        content: list[dict[str, Any]] = [self.image_part(ctx, img) for img in request.images]
        content.append({"type": "text", "text": request.prompt or ""})
        messages: list[Any] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content if request.images else (request.prompt or "")})
        return messages

    def extra_fields(self, ctx: BackendContext, request: Request) -> Mapping[str, Any]:
        """Backend-specific body fields from its settings (overridden by plugins)."""
        return {}

    def build_body(
        self, ctx: BackendContext, request: Request, model: str, *, stream: bool
    ) -> dict[str, Any]:
        asked = sampling(ctx, request)
        body: dict[str, Any] = {
            "model": model,
            "messages": self.build_messages(ctx, request),
            "max_tokens": asked.max_tokens,
        }
        if asked.temperature is not None:
            body["temperature"] = asked.temperature
        if asked.top_p is not None:
            body["top_p"] = asked.top_p
        if asked.stop:
            body["stop"] = list(asked.stop)
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        body.update(ctx.settings.extra_body)
        body.update(self.extra_fields(ctx, request))
        body.update(request.extra)
        return body

    def parse_completion(self, ctx: BackendContext, data: Any, model: str) -> Result:
        url = self.api(ctx, "chat/completions")
        if not isinstance(data, Mapping):
            raise BackendProtocolError(f"{ctx.name}: answer is not a JSON object", backend=ctx.name, url=url)
        if "error" in data or data.get("object") == "error":
            raise _inband_error(data, backend=ctx.name, url=url, where="in an HTTP 200 answer")
        try:
            choice = data["choices"][0]
            message = choice.get("message") or {}
            text = message.get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise BackendProtocolError(
                f"{ctx.name} at {redact_url(url)} answered without choices: {str(data)[:200]}",
                backend=ctx.name,
                url=url,
            ) from None
        if not isinstance(text, str):  # some servers send content parts
            text = "".join(p.get("text", "") for p in text if isinstance(p, Mapping))
        finish = choice.get("finish_reason")
        self.check_finish(ctx, finish, bool(text), model)
        return Result(
            text=text,
            backend=ctx.name,
            model=str(data.get("model") or model),
            usage=usage_from(data.get("usage")) or Usage(),
            finish_reason=finish,
        )

    def parse_chunk(self, ctx: BackendContext, obj: Mapping[str, Any]) -> Chunk | None:
        usage = usage_from(obj.get("usage"))
        choices = obj.get("choices") or []
        if not choices:
            return Chunk(usage=usage, model=obj.get("model")) if usage else None
        choice = choices[0]
        delta = choice.get("delta") or {}
        text = delta.get("content") or ""
        finish = choice.get("finish_reason")
        if not text and finish is None and usage is None:
            return None
        return Chunk(text=text, finish_reason=finish, usage=usage, model=obj.get("model"))

    def check_finish(
        self, ctx: BackendContext, finish_reason: str | None, has_text: bool, model: str
    ) -> None:
        """Raise when the server signalled failure in-band (``finish_reason: "error"``)."""
        if finish_reason == "error":
            raise BackendProtocolError(
                f"{ctx.name}: the server ended generation with finish_reason 'error' (model {model})",
                backend=ctx.name,
                hint="see the server log; the image or prompt may be too large for the session length",
            )
