"""From a ``Request`` to the tensors one Triton model takes.

Everything here is decided from the model's metadata before anything is
sent: only declared inputs, with their declared datatypes (``INT32`` as a
JSON int, ``FP32`` as a number, ``BOOL`` as a boolean), no empty lists, no
``null``; images where the model can take them, or a clear error.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from imageworks_core import BackendRejected, PreparedImage, Request, Settings

from ._model import ModelInfo, TensorSpec
from ._settings import TritonSettings

__all__ = ["Plan", "Tensor", "build_plan", "render_prompt"]

log = logging.getLogger("imageworks.backend.triton")

_INT_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"})
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64", "BF16"})
#: Logical sampling field -> input names that carry it (TensorRT-LLM ensemble, then the llmapi model).
_ALIASES: dict[str, tuple[str, ...]] = {
    "max_tokens": ("max_tokens", "sampling_param_max_tokens"),
    "temperature": ("temperature", "sampling_param_temperature"),
    "top_p": ("top_p", "sampling_param_top_p"),
    "stop": ("stop_words", "sampling_param_stop"),
    "stream": ("stream", "streaming"),
}
_PLACEHOLDER = re.compile(r"\{(prompt|system)\}")


class _Unfit(ValueError):
    pass


@attrs.frozen(slots=True)
class Tensor:
    """One input to send: its declared spec and its flat data.

    Attributes:
        spec: The model's declaration of this input.
        data: The elements, already in the declared datatype.
        shape: The ``/infer`` shape (batch dimension included when the model batches).
    """

    spec: TensorSpec
    data: tuple[Any, ...]
    shape: tuple[int, ...]


@attrs.frozen(slots=True)
class Plan:
    """What one request sends to one model.

    Attributes:
        model: The model.
        tensors: The inputs, in the model's declaration order.
        output: The output that holds the answer.
        dropped: Extra parameters left out because the model does not declare them.
        id: The request id echoed by Triton, when the caller gave one.
    """

    model: ModelInfo
    tensors: tuple[Tensor, ...]
    output: str
    dropped: tuple[str, ...] = ()
    id: str | None = None

    def generate_body(self) -> dict[str, Any]:
        """The flat JSON object of the generate extension (Triton adds the batch dimension itself)."""
        body: dict[str, Any] = {}
        if self.id:
            body["id"] = self.id
        for t in self.tensors:
            body[t.spec.name] = t.data[0] if len(t.data) == 1 else list(t.data)
        return body

    def infer_body(self) -> dict[str, Any]:
        """The KServe v2 ``/infer`` request with exact shapes."""
        body: dict[str, Any] = {}
        if self.id:
            body["id"] = self.id
        body["inputs"] = [
            {"name": t.spec.name, "datatype": t.spec.datatype, "shape": list(t.shape), "data": list(t.data)}
            for t in self.tensors
        ]
        body["outputs"] = [{"name": self.output}]
        return body


def render_prompt(template: str | None, prompt: str, system: str | None) -> str:
    """Apply *template* (``{prompt}``, optional ``{system}``); without one, the system text leads."""
    if template is None:
        return f"{system}\n\n{prompt}" if system else prompt
    if "{system}" not in template and system:
        prompt = f"{system}\n\n{prompt}"
    values = {"prompt": prompt, "system": system or ""}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _one(datatype: str, value: Any) -> Any:
    if datatype == "BOOL":
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise _Unfit
    if datatype in _INT_TYPES:
        if isinstance(value, bool):
            raise _Unfit
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Unfit
    if datatype in _FLOAT_TYPES:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise _Unfit
    if datatype == "BYTES":
        if isinstance(value, str):
            return value
        if isinstance(value, Mapping):
            return json.dumps(dict(value))
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _Unfit
    raise _Unfit


def _infer_shape(spec: TensorSpec, n: int, batched: bool) -> tuple[int, ...]:
    dims = list(spec.dims) or [1]
    variable = [i for i, d in enumerate(dims) if d < 0]
    fixed = math.prod(d for d in dims if d >= 0)
    if not variable:
        if fixed != n:
            raise _Unfit(f"{n} value(s) for an input of fixed size {fixed}")
    else:
        for i in variable[:-1]:
            dims[i] = 1
        if fixed <= 0 or n % fixed:
            raise _Unfit(f"{n} value(s) do not fill an input of shape {list(spec.dims)}")
        dims[variable[-1]] = n // fixed
    return (1, *dims) if batched else tuple(dims)


def _from_messages(messages: Sequence[Mapping[str, Any]], backend: str) -> tuple[str | None, str, list[str]]:
    """(system, prompt, image URLs) of a single-turn chat; KServe has no chat, so no other turns."""
    systems: list[str] = []
    texts: list[str] = []
    urls: list[str] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        parts: Iterable[Any] = [content] if isinstance(content, str) else (content or ())
        if role not in ("system", "user"):
            raise BackendRejected(
                f"{backend}: Triton's KServe API takes one prompt, not a chat with {role!r} turns",
                backend=backend,
                hint='send a single user turn (prompt + images), or use mode = "openai" for chats',
            )
        for part in parts:
            if isinstance(part, str):
                (systems if role == "system" else texts).append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                (systems if role == "system" else texts).append(str(part.get("text", "")))
            elif isinstance(part, Mapping) and part.get("type") == "image_url":
                ref = part.get("image_url")
                url = ref.get("url") if isinstance(ref, Mapping) else ref
                if isinstance(url, str):
                    urls.append(url)
    return ("\n\n".join(systems) or None), "\n\n".join(texts), urls


def _plain_b64(url: str, backend: str) -> str:
    head, sep, data = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise BackendRejected(
            f"{backend}: this model takes images as plain base64; {url[:40]!r}... is not a base64 data: URL",
            backend=backend,
            hint="send the image bytes (PreparedImage) or a data:<mime>;base64 URL",
        )
    return data


def _unsupported_image_inputs(info: ModelInfo) -> list[str]:
    """Image inputs ImageWorks cannot fill: preprocessed features, raw pixels, unknown encodings."""
    out = []
    spec = info.input("image_input")
    if spec is not None:
        if spec.datatype in _FLOAT_TYPES:
            out.append(f"preprocessed {spec.datatype} 'image_input' tensors (vision-encoder features)")
        else:
            out.append(f"'image_input' tensors ({spec.datatype}) in an encoding ImageWorks does not know")
    spec = info.input("image_bytes_input")
    if spec is not None:
        out.append(f"raw {spec.datatype} pixel tensors ('image_bytes_input')")
    return out


def _image_target(info: ModelInfo, setting: str, backend: str) -> tuple[TensorSpec, str]:
    """The input images go to and how they are encoded (``url`` or ``b64``), or a clear error."""
    if setting == "image_url_input" or setting == "image":
        spec = info.input(setting)
        if spec is None:
            raise BackendRejected(
                f"{backend}: backends.triton.image_input = {setting!r}, but model {info.name!r} has no "
                f"such input (its inputs: {info.describe_inputs()})",
                backend=backend,
                hint='set backends.triton.image_input = "auto", or choose a multimodal model',
            )
        return spec, "url" if setting == "image_url_input" else "b64"
    if setting == "auto":
        spec = info.input("image_url_input")
        if spec is not None:
            return spec, "url"
        spec = info.input("image")
        if spec is not None:
            return spec, "b64"
    unsupported = _unsupported_image_inputs(info)
    if unsupported and setting == "auto":
        log.warning(
            "triton model %r takes images only as %s; ImageWorks sends encoded images "
            "(image_url_input / image) and will not fake an answer",
            info.name,
            " or ".join(unsupported),
        )
        raise BackendRejected(
            f"{backend}: model {info.name!r} takes images only as {' or '.join(unsupported)}, "
            f"which ImageWorks does not produce (its inputs: {info.describe_inputs()})",
            backend=backend,
            hint=(
                "serve the TensorRT-LLM multimodal ensemble with an image_url_input input "
                "(tensorrtllm_backend all_models/multimodal), or run trtllm-serve and use "
                "--vlm-backend openai --vlm-base-url http://HOST:8000/v1"
            ),
        )
    why = ' (backends.triton.image_input = "none")' if setting == "none" else ""
    raise BackendRejected(
        f"{backend}: model {info.name!r} takes no images{why} (its inputs: {info.describe_inputs()})",
        backend=backend,
        hint=(
            "send images to a multimodal model (backends.triton.model / --vlm-model): the TensorRT-LLM "
            "multimodal 'ensemble' (image_url_input) or a Triton vLLM-backend model (image)"
        ),
    )


def _declared(info: ModelInfo, logical: str) -> TensorSpec | None:
    return next((s for s in (info.input(n) for n in _ALIASES[logical]) if s is not None), None)


def build_plan(
    settings: TritonSettings,
    client_settings: Settings,
    request: Request,
    info: ModelInfo,
    *,
    stream: bool,
    backend: str = "triton",
) -> Plan:
    """Decide every tensor of *request* for model *info*; raise ``BackendRejected`` before sending."""
    name = info.name
    text_spec = info.input(settings.text_input_name)
    if text_spec is None:
        raise BackendRejected(
            f"{backend}: model {name!r} has no input {settings.text_input_name!r} for the prompt "
            f"(its inputs: {info.describe_inputs()})",
            backend=backend,
            hint="set backends.triton.text_input_name to the model's text input",
        )
    if info.outputs and info.output(settings.text_output_name) is None:
        outputs = ", ".join(t.name for t in info.outputs)
        raise BackendRejected(
            f"{backend}: model {name!r} has no output {settings.text_output_name!r} (its outputs: {outputs})",
            backend=backend,
            hint="set backends.triton.text_output_name to the model's text output",
        )

    # -- prompt and images
    images: list[PreparedImage | str] = list(request.images)
    if request.messages is not None:
        system, prompt, urls = _from_messages(request.messages, backend)
        images += urls
    else:
        system, prompt = request.system, request.prompt or ""
    values: dict[str, tuple[TensorSpec, list[Any]]] = {}
    values[text_spec.name] = (text_spec, [render_prompt(settings.chat_template, prompt, system)])
    if images:
        spec, kind = _image_target(info, settings.image_input, backend)
        if kind == "url":
            data = [img if isinstance(img, str) else img.data_url() for img in images]
        else:
            data = [_plain_b64(img, backend) if isinstance(img, str) else img.b64() for img in images]
        try:
            _infer_shape(spec, len(data), info.batched)
        except _Unfit:
            most = math.prod(d for d in spec.dims if d >= 0)
            raise BackendRejected(
                f"{backend}: model {name!r} takes at most {most} image(s) per request, got {len(data)}",
                backend=backend,
                hint="send fewer images per request",
            ) from None
        values[spec.name] = (spec, data)

    # -- sampling
    cs = client_settings
    max_tokens = request.max_tokens or cs.max_tokens
    temperature = request.temperature if request.temperature is not None else cs.temperature
    stop = [*settings.stop_words, *request.stop]
    sampling_spec = info.input("sampling_parameters")  # Triton's vLLM backend: one JSON string
    sampling: dict[str, Any] = {}
    if sampling_spec is not None:
        sampling["max_tokens"] = max_tokens
        if temperature is not None:
            sampling["temperature"] = temperature
        if request.top_p is not None:
            sampling["top_p"] = request.top_p
        if stop:
            sampling["stop"] = stop
    else:
        for logical, value in (
            ("max_tokens", max_tokens),
            ("temperature", temperature),
            ("top_p", request.top_p),
        ):
            decl = _declared(info, logical)
            if decl is not None and value is not None:
                values[decl.name] = (decl, [value])
        decl = _declared(info, "stop")
        if decl is not None and stop:
            values[decl.name] = (decl, stop)
    decl = _declared(info, "stream")
    if decl is not None and stream and info.decoupled:  # a non-decoupled TRT-LLM model rejects stream=true
        values[decl.name] = (decl, [True])
    decl = info.input("exclude_input_in_output")
    if decl is not None:
        values[decl.name] = (decl, [True])

    # -- extra parameters: only what the model declares
    extras = {**settings.extra_body, **settings.parameters, **request.extra}
    dropped: list[str] = []
    for key, value in extras.items():
        decl = info.input(key)
        if key == text_spec.name or value is None:
            continue
        if decl is not None:
            values[key] = (decl, list(value) if isinstance(value, list | tuple) else [value])
        elif sampling_spec is not None:
            sampling[key] = value
        else:
            dropped.append(key)
    if sampling_spec is not None:
        values[sampling_spec.name] = (sampling_spec, [json.dumps(sampling)])

    # -- every required input filled, every value fits its declaration
    missing = [s.name for s in info.inputs if s.optional is False and s.name not in values]
    if missing:
        raise BackendRejected(
            f"{backend}: model {name!r} requires input(s) {', '.join(missing)} that ImageWorks cannot fill "
            f"(its inputs: {info.describe_inputs()})",
            backend=backend,
            hint=f"give them in backends.triton.parameters, e.g. parameters = {{ {missing[0]} = ... }}",
        )
    tensors: list[Tensor] = []
    order = {s.name: i for i, s in enumerate(info.inputs)}
    for key in sorted(values, key=lambda k: order.get(k, len(order))):
        decl, raw = values[key]
        if not raw:
            continue  # never an empty list: leave the input out
        try:
            elements = tuple(_one(decl.datatype, v) for v in raw)
            shape = _infer_shape(decl, len(elements), info.batched)
        except _Unfit as exc:
            shown = raw[0] if len(raw) == 1 else raw
            raise BackendRejected(
                f"{backend}: {key}={shown!r} does not fit model {name!r}'s input {decl.describe()}"
                + (f": {exc}" if str(exc) else ""),
                backend=backend,
                hint=f"fix {key} in backends.triton.parameters (or Request.extra)",
            ) from None
        tensors.append(Tensor(spec=decl, data=elements, shape=shape))
    return Plan(
        model=info,
        tensors=tuple(tensors),
        output=settings.text_output_name,
        dropped=tuple(dropped),
        id=request.id,
    )
