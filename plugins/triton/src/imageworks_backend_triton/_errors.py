"""Triton's error bodies onto the core error tree.

Triton always answers ``{"error": "<string>"}`` (sometimes labelled
``text/plain``; before the first event of ``generate_stream`` as an SSE
``data:`` line); model exceptions carry a whole Python traceback, of which
only the last ``ExceptionType: message`` line is worth showing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from imageworks_core.plugin import (
    BackendContext,
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendUnavailable,
    error_from_response,
    extract_error_message,
    parse_retry_after,
    redact_url,
)

__all__ = [
    "error_text",
    "is_decoupled_on_infer",
    "is_unknown_model",
    "needs_stream",
    "one_line",
    "triton_error",
    "unknown_model_error",
]

_MAX = 300
_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\]\s*")
_TRACEBACK_MARKERS = ("Traceback (most recent call last)", "TritonModelException", "Model execute error")
_INPUT_PROBLEMS = (
    "missing required input",
    "data-type",
    "unexpected shape",
    "unexpected inference input",
    "expected number of inputs",
    "can not convert input",
    "unable to parse",
)


def error_text(body: bytes | str | Any) -> str:
    """The whole error string of a Triton error body (JSON, plain text or one SSE event)."""
    if isinstance(body, bytes | str):
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        stripped = text.strip()
        if stripped.startswith("data:"):  # generate_stream failed before its first event
            payloads = [ln[5:].strip() for ln in stripped.splitlines() if ln.startswith("data:")]
            stripped = payloads[0] if payloads else ""
        try:
            obj: Any = json.loads(stripped)
        except ValueError:
            return stripped or "(empty body)"
    else:
        obj = body
    if isinstance(obj, Mapping):
        err = obj.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            return err["message"]
    return extract_error_message(obj)


def _is_traceback(text: str) -> bool:
    return any(m in text for m in _TRACEBACK_MARKERS)


def one_line(text: str) -> str:
    """The useful line of *text*: a traceback's last ``Type: message`` line, else the text on one line."""
    if _is_traceback(text):
        head = text.split("\nAt:\n", 1)[0]  # the Python backend appends the C++ call site
        lines = [ln.strip() for ln in head.splitlines() if ln.strip()]
        text = lines[-1] if lines else text
        text = text.removeprefix("c_python_backend_utils.TritonModelException: ")
    text = _REQUEST_ID.sub("", " ".join(text.split()))
    return text if len(text) <= _MAX else text[: _MAX - 1] + "…"


def is_unknown_model(text: str) -> bool:
    lower = text.lower()
    return "unknown model" in lower or ("model" in lower and "is not found" in lower)


def is_decoupled_on_infer(text: str) -> bool:
    return "decoupled" in text.lower()


def needs_stream(text: str) -> bool:
    """Triton's in-band answer of ``/generate`` for a model that sent several responses."""
    lower = text.lower()
    return "exactly 1 response" in lower or "use generate stream" in lower


def unknown_model_error(
    ctx: BackendContext, model: str, url: str, status: int | None, detail: str, *, defaulted: bool = False
) -> BackendRejected:
    root = ctx.state.get("triton_root", ctx.base_url)
    why = (
        " (backends.triton.model is unset, so the TensorRT-LLM default 'ensemble' was tried)"
        if defaulted
        else ""
    )
    return BackendRejected(
        f"{ctx.name} at {redact_url(url)}: Triton serves no model named {model!r}{why} "
        f"(HTTP {status}: {one_line(detail)})",
        backend=ctx.name,
        url=url,
        status=status,
        hint=(
            f"list the loaded models with `curl -X POST {redact_url(root)}/v2/repository/index` (or read the "
            f'server log), then choose one: backends.triton.model = "NAME" or --vlm-model NAME'
        ),
    )


def triton_error(
    ctx: BackendContext,
    status: int | None,
    headers: Mapping[str, str],
    body: bytes | str | Any,
    *,
    url: str,
    model: str | None = None,
    inputs: str | None = None,
    inband: str = "",
) -> BackendError:
    """Map one Triton error answer onto the error tree.

    *status* is ``None`` (or 200) for an error inside a successful answer (a
    ``generate_stream`` event, an HTTP-200 ``{"error": ...}`` body); *inband*
    then says where (default: "reported inside an HTTP 200 answer").
    *inputs* names the model's inputs for the hint of input errors.
    """
    full = error_text(body)
    short = one_line(full)
    lower = full.lower()
    where = f"{ctx.name} at {redact_url(url)}"
    shown_status = status if status is not None and status >= 400 else None
    inside = f" ({inband or 'reported inside an HTTP 200 answer'})" if shown_status is None else ""
    if status in (429, 503) or "exceeds maximum queue size" in lower:
        return BackendOverloaded(
            f"{where} is busy{f' (HTTP {status})' if shown_status else ''}: {short}{inside}",
            retry_after=parse_retry_after(headers.get("retry-after")),
            backend=ctx.name,
            url=url,
            status=shown_status,
            hint=(
                "lower --concurrency, or raise the model's queue in its config.pbtxt "
                "(dynamic_batching { default_queue_policy { max_queue_size: N } })"
            ),
        )
    if _is_traceback(full):
        what = f"model {model!r}" if model else "the model"
        return BackendProtocolError(
            f"{where}: {what} raised {short}{inside}",
            backend=ctx.name,
            url=url,
            status=shown_status,
            retryable=False,
            hint="the full traceback is in the Triton server log",
        )
    if status == 404 and model and is_unknown_model(full):
        return unknown_model_error(ctx, model, url, status, full)
    if shown_status is None:
        return BackendProtocolError(
            f"{where} reported an error{inside}: {short}",
            backend=ctx.name,
            url=url,
            retryable=False,
        )
    if any(p in lower for p in _INPUT_PROBLEMS):
        hint = (
            f"model {model!r} takes: {inputs}; " if model and inputs else ""
        ) + "check backends.triton.text_input_name / image_input / parameters against the model's inputs"
        # Not retryable either way: the same request would fail the same way.
        cls = BackendRejected if shown_status < 500 else BackendProtocolError
        return cls(
            f"{where} rejected the request (HTTP {status}): {short}",
            backend=ctx.name,
            url=url,
            status=status,
            hint=hint,
        )
    if status == 501:
        return BackendRejected(
            f"{where} does not support this (HTTP 501): {short}", backend=ctx.name, url=url, status=status
        )
    mapped = error_from_response(shown_status, headers, {"error": short}, backend=ctx.name, url=url)
    if isinstance(mapped, BackendUnavailable) and mapped.hint is None:
        mapped.hint = ctx.hint
    return mapped
