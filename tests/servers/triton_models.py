"""Tiny deterministic Python models served by the real Triton Inference Server (PyTriton).

Run as a script::

    python tests/servers/triton_models.py --http-port 18000 --grpc-port 18001 --metrics-port 18002

It starts the ``tritonserver`` 2.51 binary shipped in the ``nvidia-pytriton`` wheel, bound to
127.0.0.1 only, loads the models below and serves until SIGTERM or SIGINT.  No ML is involved: the
models emulate the *interfaces* of a TensorRT-LLM ensemble and of Triton's vLLM backend so that a
KServe v2 client (``/infer``, ``/generate``, ``/generate_stream``) can be tested against real Triton.

Models (see ``TRITON_NOTES.md`` for the verified wire shapes):

``tiny_vlm``           not decoupled, max_batch_size 0.  ``text_input`` BYTES [1] (required),
                       ``image_url_input`` BYTES [-1] (``data:`` URLs), ``max_tokens`` INT32 [1],
                       ``temperature`` FP32 [1] -> ``text_output`` BYTES [1].
``tiny_vlm_stream``    the same interface, decoupled: one response per word (text deltas).
``tiny_vlm_batched``   the ``tiny_vlm`` interface with max_batch_size 4 (leading batch dimension).
``vllm_style``         Triton vLLM-backend convention, decoupled: ``text_input`` BYTES [1],
                       ``image`` BYTES [-1] (plain base64), ``stream`` BOOL [1],
                       ``sampling_parameters`` BYTES [1] (JSON), ``exclude_input_in_output`` BOOL [1].
``text_only``          ``text_input`` BYTES [1] + ``max_tokens`` INT32 [1] -> ``text_output``.

Magic words in the prompt, for tests:

``RAISE_ERROR``      the model raises (Triton answers with an error carrying the Python traceback).
``FAIL_MIDSTREAM``   streaming models raise after sending two chunks.
``ECHO_PARAMS``      the answer is ``params: {...}`` (JSON of what the model received), not truncated.
``SLOW``             0.3 s pause before each chunk (streaming) or 2 s before the answer (others).

A missing ``text_input`` raises in the model (Triton only checks the number of inputs).  Do not send an
empty BYTES tensor (shape ``[0]``): PyTriton's proxy cannot serialize it.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pytriton.model_config import ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

LOG = logging.getLogger("triton_models")

MODEL_NAMES: tuple[str, ...] = ("tiny_vlm", "tiny_vlm_stream", "tiny_vlm_batched", "vllm_style", "text_only")
PROMPT_PREFIX_CHARS = 40
VLLM_DEFAULT_MAX_TOKENS = 16
SLOW_CHUNK_S = 0.3
SLOW_ANSWER_S = 2.0

Reply = dict[str, np.ndarray]


# --------------------------------------------------------------------------- helpers


def _text(value: Any) -> str:
    """A BYTES tensor element as text (PyTriton hands BYTES in as ``bytes`` or ``np.bytes_``)."""
    if isinstance(value, bytes | np.bytes_):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _scalar(request: Request, name: str) -> Any | None:
    """First element of an optional input, or ``None`` when the client did not send it."""
    if name not in request.data:
        return None
    arr = np.asarray(request.data[name]).reshape(-1)
    return arr[0] if arr.size else None


def _required_text(request: Request, name: str = "text_input") -> str:
    """A required BYTES input.

    Triton 2.51 only checks the *number* of inputs against the required ones, so a request sending
    one optional input instead of the required ``text_input`` reaches the model: reject it here.
    """
    value = _scalar(request, name)
    if value is None:
        raise ValueError(f"missing required input '{name}'")
    return _text(value)


def _strings(request: Request, name: str) -> list[str]:
    if name not in request.data:
        return []
    return [_text(v) for v in np.asarray(request.data[name]).reshape(-1)]


def _describe_image(raw: bytes, label: str) -> str:
    """``WxH mean=(r,g,b)`` of an encoded image; ``ValueError`` when it cannot be decoded."""
    try:
        with Image.open(io.BytesIO(raw)) as img:
            rgb = np.asarray(img.convert("RGB"), dtype=np.float64)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"cannot decode image {label}: {exc}") from exc
    height, width = rgb.shape[:2]
    r, g, b = (round(float(c)) for c in rgb.reshape(-1, 3).mean(axis=0))
    return f"{width}x{height} mean=({r},{g},{b})"


def _decode_data_url(url: str, index: int) -> bytes:
    if not url.startswith("data:") or "," not in url:
        raise ValueError(f"image_url_input[{index}] is not a data: URL: {url[:40]!r}")
    header, payload = url.split(",", 1)
    if not header.endswith(";base64"):
        raise ValueError(f"image_url_input[{index}] is not base64-encoded: {header!r}")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image_url_input[{index}] has invalid base64: {exc}") from exc


def _decode_plain_b64(data: str, index: int) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"image[{index}] has invalid base64: {exc}") from exc


def _truncate(text: str, max_tokens: int | None) -> str:
    if max_tokens is None or max_tokens <= 0:
        return text
    return " ".join(text.split(" ")[:max_tokens])


def _answer(
    prompt: str,
    image_descriptions: Sequence[str],
    max_tokens: int | None,
    params: dict[str, Any],
    lead: str | None = None,
) -> str:
    """The deterministic "generation" shared by all models."""
    if "RAISE_ERROR" in prompt:
        raise RuntimeError("RAISE_ERROR requested by the prompt")
    if "ECHO_PARAMS" in prompt:
        return "params: " + json.dumps(params, sort_keys=True)
    details = "".join(f" [{d}]" for d in image_descriptions)
    if lead is None:
        lead = f"described {len(image_descriptions)} image(s){details}"
    full = f"{lead} for prompt: {prompt[:PROMPT_PREFIX_CHARS]}"
    return _truncate(full, max_tokens)


def _chunks(text: str) -> list[str]:
    """Word deltas whose concatenation is *text*."""
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _bytes_out(values: Sequence[str], shape: tuple[int, ...]) -> np.ndarray:
    return np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(shape)


# --------------------------------------------------------------------------- TRT-LLM-like models


def _tiny_vlm_answer(prompt: str, urls: Sequence[str], max_tokens: Any, temperature: Any) -> str:
    descriptions = [
        _describe_image(_decode_data_url(url, i), f"image_url_input[{i}]") for i, url in enumerate(urls)
    ]
    mt = None if max_tokens is None else int(max_tokens)
    params = {
        "max_tokens": mt,
        "temperature": None if temperature is None else round(float(temperature), 6),
        "images": len(urls),
    }
    return _answer(prompt, descriptions, mt, params)


def _tiny_vlm_request(request: Request) -> str:
    prompt = _required_text(request)
    return _tiny_vlm_answer(
        prompt,
        _strings(request, "image_url_input"),
        _scalar(request, "max_tokens"),
        _scalar(request, "temperature"),
    )


def infer_tiny_vlm(requests: list[Request]) -> list[Reply]:
    replies: list[Reply] = []
    for request in requests:
        text = _tiny_vlm_request(request)
        if "SLOW" in _required_text(request):
            time.sleep(SLOW_ANSWER_S)
        replies.append({"text_output": _bytes_out([text], (1,))})
    return replies


def infer_tiny_vlm_stream(requests: list[Request]) -> Iterator[list[Reply]]:
    answers = [_tiny_vlm_request(r) for r in requests]
    yield from _stream_answers(answers, [_required_text(r) for r in requests])


def _stream_answers(answers: Sequence[str], prompts: Sequence[str]) -> Iterator[list[Reply]]:
    """Yield word deltas for every request in lockstep (finished requests get empty deltas)."""
    chunked = [_chunks(a) for a in answers]
    for step in range(max(len(c) for c in chunked)):
        if step == 2 and any("FAIL_MIDSTREAM" in p for p in prompts):
            raise RuntimeError("FAIL_MIDSTREAM requested by the prompt")
        if any("SLOW" in p for p in prompts):
            time.sleep(SLOW_CHUNK_S)
        yield [{"text_output": _bytes_out([c[step] if step < len(c) else ""], (1,))} for c in chunked]


def _row(request: Request, name: str, index: int) -> np.ndarray | None:
    """Row *index* of a batched input, flattened, or ``None`` when the input was not sent."""
    if name not in request.data:
        return None
    return np.asarray(request.data[name])[index].reshape(-1)


def infer_tiny_vlm_batched(requests: list[Request]) -> list[Reply]:
    """Batched variant: every input has a leading batch dimension, rows are independent."""
    replies: list[Reply] = []
    for request in requests:
        batch = np.asarray(request.data["text_input"]).shape[0]
        rows: list[str] = []
        prompts: list[str] = []
        for i in range(batch):
            prompt_row, urls_row = _row(request, "text_input", i), _row(request, "image_url_input", i)
            mt_row, temp_row = _row(request, "max_tokens", i), _row(request, "temperature", i)
            prompts.append(_text(prompt_row[0]) if prompt_row is not None else "")
            urls = [] if urls_row is None else [_text(v) for v in urls_row]
            rows.append(
                _tiny_vlm_answer(
                    prompts[-1],
                    urls,
                    None if mt_row is None else mt_row[0],
                    None if temp_row is None else temp_row[0],
                )
            )
        if any("SLOW" in p for p in prompts):
            time.sleep(SLOW_ANSWER_S)
        replies.append({"text_output": _bytes_out(rows, (batch, 1))})
    return replies


# --------------------------------------------------------------------------- vLLM-backend-like model


def _vllm_request(request: Request) -> tuple[str, bool, str]:
    """(answer, stream, prompt) following the vLLM backend's input conventions."""
    prompt = _required_text(request)
    stream_value = _scalar(request, "stream")
    stream = bool(stream_value) if stream_value is not None else False
    exclude_value = _scalar(request, "exclude_input_in_output")
    # vLLM backend: the prompt is prepended unless excluded; streaming defaults to excluding it.
    prepend_input = not bool(exclude_value) if exclude_value is not None else not stream
    if prepend_input and stream:
        raise ValueError("When streaming, `exclude_input_in_output` = False is not allowed.")

    raw_params = _scalar(request, "sampling_parameters")
    source = "sampling_parameters"
    if raw_params is not None:
        try:
            sampling = json.loads(_text(raw_params))
        except json.JSONDecodeError as exc:
            raise ValueError(f"sampling_parameters is not valid JSON: {exc}") from exc
        if not isinstance(sampling, dict):
            raise ValueError("sampling_parameters must be a JSON object")
    else:
        sampling = dict(request.parameters or {})
        source = "request.parameters"

    images = _strings(request, "image")
    descriptions = [_describe_image(_decode_plain_b64(b64, i), f"image[{i}]") for i, b64 in enumerate(images)]
    max_tokens = int(sampling.get("max_tokens", VLLM_DEFAULT_MAX_TOKENS))
    params = {"stream": stream, "images": len(descriptions), "sampling": sampling, "source": source}
    text = _answer(prompt, descriptions, max_tokens, params)
    if prepend_input:
        text = prompt + text
    return text, stream, prompt


def infer_vllm_style(requests: list[Request]) -> Iterator[list[Reply]]:
    parsed = [_vllm_request(r) for r in requests]
    if all(stream for _, stream, _ in parsed):
        yield from _stream_answers([a for a, _, _ in parsed], [p for _, _, p in parsed])
        return
    if any("SLOW" in p for _, _, p in parsed):
        time.sleep(SLOW_ANSWER_S)
    # Non-streaming requests get their whole text in one response (as the vLLM backend does).
    yield [{"text_output": _bytes_out([a], (1,))} for a, _, _ in parsed]


# --------------------------------------------------------------------------- text-only model


def infer_text_only(requests: list[Request]) -> list[Reply]:
    replies: list[Reply] = []
    for request in requests:
        prompt = _required_text(request)
        max_tokens = _scalar(request, "max_tokens")
        mt = None if max_tokens is None else int(max_tokens)
        text = _answer(prompt, [], mt, {"max_tokens": mt}, lead="text-only answer")
        replies.append({"text_output": _bytes_out([text], (1,))})
    return replies


# --------------------------------------------------------------------------- serving


def _vlm_inputs() -> list[Tensor]:
    one: tuple[int, ...] = (1,)
    return [
        Tensor(name="text_input", dtype=np.bytes_, shape=one),
        Tensor(name="image_url_input", dtype=np.bytes_, shape=(-1,), optional=True),
        Tensor(name="max_tokens", dtype=np.int32, shape=one, optional=True),
        Tensor(name="temperature", dtype=np.float32, shape=one, optional=True),
    ]


def bind_models(triton: Triton) -> None:
    text_out = [Tensor(name="text_output", dtype=np.bytes_, shape=(1,))]
    unbatched = ModelConfig(batching=False)
    decoupled = ModelConfig(batching=False, decoupled=True)

    triton.bind("tiny_vlm", infer_tiny_vlm, _vlm_inputs(), text_out, config=unbatched)
    triton.bind("tiny_vlm_stream", infer_tiny_vlm_stream, _vlm_inputs(), text_out, config=decoupled)
    triton.bind(
        "tiny_vlm_batched",
        infer_tiny_vlm_batched,
        _vlm_inputs(),
        text_out,
        config=ModelConfig(batching=True, max_batch_size=4),
    )
    triton.bind(
        "vllm_style",
        infer_vllm_style,
        [
            Tensor(name="text_input", dtype=np.bytes_, shape=(1,)),
            Tensor(name="image", dtype=np.bytes_, shape=(-1,), optional=True),
            Tensor(name="stream", dtype=np.bool_, shape=(1,), optional=True),
            Tensor(name="sampling_parameters", dtype=np.bytes_, shape=(1,), optional=True),
            Tensor(name="exclude_input_in_output", dtype=np.bool_, shape=(1,), optional=True),
        ],
        [Tensor(name="text_output", dtype=np.bytes_, shape=(-1,))],
        config=decoupled,
    )
    triton.bind(
        "text_only",
        infer_text_only,
        [
            Tensor(name="text_input", dtype=np.bytes_, shape=(1,)),
            Tensor(name="max_tokens", dtype=np.int32, shape=(1,), optional=True),
        ],
        text_out,
        config=unbatched,
    )


def make_config(http_port: int, grpc_port: int, metrics_port: int, host: str = "127.0.0.1") -> TritonConfig:
    return TritonConfig(
        http_address=host,
        http_port=http_port,
        grpc_address=host,
        grpc_port=grpc_port,
        metrics_address=host,
        metrics_port=metrics_port,
        allow_gpu_metrics=False,
        exit_timeout_secs=2,
    )


def busy_ports(host: str, ports: Sequence[int]) -> list[int]:
    """Ports someone already listens on.

    PyTriton notices a tritonserver that failed to bind only after its 120 s readiness timeout,
    so check first and fail fast (a small race remains).
    """
    busy: list[int] = []
    for port in ports:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy.append(port)
    return busy


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument(
        "--workspace",
        default=None,
        help="PyTriton workspace (must not exist yet); default: a random dir under ~/.cache/pytriton",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    ports = [args.http_port, args.grpc_port, args.metrics_port]
    if len(set(ports)) != len(ports):
        sys.exit(f"triton_models: http, grpc and metrics ports must differ: {ports}")
    if busy := busy_ports("127.0.0.1", ports):
        sys.exit(f"triton_models: port(s) {busy} on 127.0.0.1 already in use")

    # Triton.serve() only stops cleanly (workspace and shared memory removed) on KeyboardInterrupt.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    # PyTriton 0.7 by default puts statistics, model-repository, trace, logging and shared-memory
    # behind a random access token; plain Triton does not, so neither do we (loopback only).
    triton = Triton(
        config=make_config(args.http_port, args.grpc_port, args.metrics_port),
        workspace=args.workspace,
        security_config=TritonSecurityConfig(restricted_endpoints=[]),
    )
    try:
        bind_models(triton)
        LOG.info("serving %s on http://127.0.0.1:%d", ", ".join(MODEL_NAMES), args.http_port)
        triton.serve()
    except KeyboardInterrupt:
        LOG.info("interrupted, stopping")
    finally:
        triton.stop()


if __name__ == "__main__":
    main()
