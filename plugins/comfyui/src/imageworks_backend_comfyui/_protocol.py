"""Reading ComfyUI's answers: ``/prompt`` refusals, ``/history`` entries, ``/queue``, checkpoints.

Shapes (checked against ComfyUI's ``server.py`` and ``execution.py``):

- ``POST /prompt`` 400: ``{"error": {"type", "message", "details", "extra_info"} | str,
  "node_errors": {node_id: {"errors": [{"type", "message", "details",
  "extra_info": {"input_name", ...}}], "dependent_outputs", "class_type"}}}``.
- ``GET /history/{id}``: ``{}`` until the prompt is done, then ``{id: {"prompt",
  "outputs": {node_id: {"images": [{"filename", "subfolder", "type"}]}},
  "status": {"status_str": "success" | "error", "completed", "messages":
  [[event, data], ...]}}}``; an ``execution_error`` message carries ``node_id``,
  ``node_type``, ``exception_type`` and ``exception_message``.
- ``GET /queue``: ``{"queue_running": [item], "queue_pending": [item]}``, each
  item a list whose index 1 is the prompt id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from imageworks_core.plugin import BackendProtocolError, BackendRejected

__all__ = [
    "ImageRef",
    "checkpoints_from_object_info",
    "history_outcome",
    "prompt_refusal",
    "queue_place",
]


@attrs.frozen(slots=True)
class ImageRef:
    """One output image as ``/history`` names it (the ``/view`` query)."""

    filename: str
    subfolder: str = ""
    type: str = "output"

    def query(self) -> dict[str, str]:
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.type}


def _text(error: Any) -> str:
    """One line from a ComfyUI error object ``{"message", "details"}`` (or a plain string)."""
    if isinstance(error, Mapping):
        message = str(error.get("message") or error.get("type") or "error")
        details = error.get("details")
        return f"{message}: {details}" if details else message
    return str(error)


def prompt_refusal(body: Any, *, backend: str, url: str, status: int) -> BackendRejected | None:
    """The ``BackendRejected`` for a ``POST /prompt`` refusal, or ``None`` for another body shape."""
    if not isinstance(body, Mapping) or "error" not in body:
        return None
    parts = []
    node_errors = body.get("node_errors")
    if isinstance(node_errors, Mapping):
        for node_id, node in node_errors.items():
            if not isinstance(node, Mapping):
                continue
            where = f"node {node_id} ({node.get('class_type', '?')})"
            for err in node.get("errors") or ():
                extra = err.get("extra_info") if isinstance(err, Mapping) else None
                name = extra.get("input_name") if isinstance(extra, Mapping) else None
                parts.append(f"{where}{f' input {name}' if name else ''}: {_text(err)}")
    head = _text(body["error"])
    if parts:
        # the overall "details" repeats the node errors: keep the headline only
        err = body["error"]
        head = str(err.get("message") or head) if isinstance(err, Mapping) else head
    message = f"{backend} at {url} refused the workflow (HTTP {status}): {head}"
    if parts:
        message += "; " + "; ".join(parts)
    return BackendRejected(
        message,
        backend=backend,
        url=url,
        status=status,
        hint="fix the named node input (a checkpoint name must be one `imageworks health` lists)",
    )


def _execution_error(messages: Any) -> str | None:
    for item in messages if isinstance(messages, list) else ():
        if not (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[1], Mapping)):
            continue
        event, data = item
        if event == "execution_error":
            kind = data.get("exception_type") or "error"
            return (
                f"node {data.get('node_id', '?')} ({data.get('node_type', '?')}) raised "
                f"{kind}: {data.get('exception_message', '').strip()}"
            )
        if event == "execution_interrupted":
            return f"interrupted at node {data.get('node_id', '?')} ({data.get('node_type', '?')})"
    return None


def history_outcome(data: Any, prompt_id: str, *, backend: str, url: str) -> list[ImageRef] | None:
    """The output images of a finished prompt, or ``None`` while it is not in the history yet.

    Raises:
        BackendProtocolError: The prompt failed on the server (node and exception
            named), or finished without images.
    """
    if not isinstance(data, Mapping):
        raise BackendProtocolError(f"{backend} at {url}: history is not a JSON object", backend=backend)
    entry = data.get(prompt_id)
    if entry is None:
        return None
    if not isinstance(entry, Mapping):
        raise BackendProtocolError(f"{backend} at {url}: history entry is not an object", backend=backend)
    status = entry.get("status")
    if isinstance(status, Mapping) and (
        status.get("status_str") == "error" or status.get("completed") is False
    ):
        what = _execution_error(status.get("messages")) or f"status {status.get('status_str')!r}"
        oom = "outofmemory" in what.lower().replace(" ", "")
        interrupted = what.startswith("interrupted")
        raise BackendProtocolError(
            f"{backend}: prompt {prompt_id} failed on the server: {what}",
            backend=backend,
            url=url,
            retryable=oom or interrupted,
            hint="see the ComfyUI console for the traceback" if not interrupted else None,
        )
    refs: list[ImageRef] = []
    outputs = entry.get("outputs")
    for node in outputs.values() if isinstance(outputs, Mapping) else ():
        for image in (node.get("images") or ()) if isinstance(node, Mapping) else ():
            if isinstance(image, Mapping) and isinstance(image.get("filename"), str):
                refs.append(
                    ImageRef(
                        image["filename"],
                        str(image.get("subfolder") or ""),
                        str(image.get("type") or "output"),
                    )
                )
    saved = [r for r in refs if r.type == "output"]  # SaveImage; PreviewImage writes "temp" copies
    refs = saved or refs
    if not refs:
        raise BackendProtocolError(
            f"{backend} at {url}: prompt {prompt_id} finished without images",
            backend=backend,
            url=url,
            hint="the workflow needs an output node that saves images (SaveImage)",
        )
    return refs


def queue_place(data: Any, prompt_id: str) -> str | None:
    """``"running"``, ``"pending"`` or ``None``: where *prompt_id* is in a ``GET /queue`` answer."""
    if not isinstance(data, Mapping):
        return None
    for place, key in (("running", "queue_running"), ("pending", "queue_pending")):
        for item in data.get(key) or ():
            if isinstance(item, Sequence) and len(item) > 1 and item[1] == prompt_id:
                return place
    return None


def checkpoints_from_object_info(data: Any) -> list[str] | None:
    """``ckpt_name`` choices from ``GET /object_info/CheckpointLoaderSimple`` (old or COMBO form)."""
    try:
        spec = data["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"]
    except (KeyError, TypeError):
        return None
    if isinstance(spec, list) and spec:
        if isinstance(spec[0], list):
            return [str(x) for x in spec[0]]
        if spec[0] == "COMBO" and len(spec) > 1 and isinstance(spec[1], Mapping):
            options = spec[1].get("options")
            if isinstance(options, list):
                return [str(x) for x in options]
    return None
