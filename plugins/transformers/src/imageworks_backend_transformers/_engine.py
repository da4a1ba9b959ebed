"""The loaded model: load, turn a ``Request`` into tensors, generate, unload.

Everything here is synchronous and runs in worker threads; torch and
transformers are imported inside the functions, never at module import.
``_messages`` builds the chat messages, ``_runtime`` resolves the device and
dtype and says why a model cannot be loaded.
"""

from __future__ import annotations

import functools
import gc
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from imageworks_core import (
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    ConfigError,
    ImageWorksError,
    Request,
    Usage,
)

from ._locate import ModelLocation, hub_cache_dir
from ._messages import hf_messages
from ._runtime import (
    auto_model_class,
    closing_error,
    dtype_kwarg,
    first_line,
    model_hint,
    not_available_error,
    probe_hub,
    resolve_device,
    resolve_dtype,
    unavailable,
)
from ._settings import DEFAULT_MODEL, TransformersSettings

__all__ = ["Engine", "Generation", "Prepared", "StopTrimmer", "cut_at_stop"]


@attrs.frozen(slots=True)
class Prepared:
    """A request turned into model inputs.

    Attributes:
        inputs: The processor's output, on the model's device.
        gen_kwargs: Keyword arguments for ``generate``.
        stops: Stop strings (cut from the answer).
        prompt_tokens: Tokens in the prompt, image tokens included.
        max_new_tokens: The generation cap.
        seed: Seed torch with this first, when set.
    """

    inputs: Any = attrs.field(repr=False)
    gen_kwargs: Mapping[str, Any]
    stops: tuple[str, ...]
    prompt_tokens: int
    max_new_tokens: int
    seed: int | None = None


@attrs.frozen(slots=True)
class Generation:
    """One finished generation.

    Attributes:
        text: The answer (stop string removed).
        finish_reason: ``stop`` (end of sequence or a stop string) or ``length``.
        usage: Token counts.
        stopped: Ended early because the caller stopped it (cancel, timeout, close).
    """

    text: str
    finish_reason: str
    usage: Usage
    stopped: bool = False


class Engine:
    """A model and its processor, loaded once per client.

    Attributes:
        ref: The model as configured (folder or hub id).
        device: Where it runs (``cpu``, ``cuda``, ``cuda:1`` ...).
        dtype: Its weight dtype name (``float32`` ...).
        load_seconds: How long loading took.
    """

    def __init__(
        self,
        *,
        ref: str,
        model: Any,
        processor: Any,
        device: str,
        dtype: str,
        load_seconds: float,
    ) -> None:
        import torch

        self._torch = torch
        self.ref = ref
        self.model = model
        self.processor = processor
        self.device = device
        self.dtype = dtype
        self.load_seconds = load_seconds
        self.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) + sum(
            b.numel() * b.element_size() for b in model.buffers()
        )

    # ------------------------------------------------------------ load / unload

    @classmethod
    def load(cls, backend: str, settings: TransformersSettings, location: ModelLocation) -> Engine:
        """Load the model (runs in a worker thread; may download when allowed)."""
        if not location.loadable:
            raise not_available_error(backend, location)
        start = time.perf_counter()
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise unavailable(
                f"{backend}: cannot import torch/transformers: {exc}",
                backend,
                "pip install imageworks-backend-transformers (it depends on transformers and torch)",
            ) from exc
        device = resolve_device(backend, settings.device, torch)
        dtype_name = resolve_dtype(settings.dtype, device, torch)
        dtype = getattr(torch, dtype_name)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        source = location.path if location.local and location.path else location.ref
        common: dict[str, Any] = {
            "trust_remote_code": settings.trust_remote_code,
            "local_files_only": location.local or location.offline,
        }
        if not location.local:
            common["revision"] = settings.revision
            common["cache_dir"] = hub_cache_dir(settings)
            probe_hub(backend, location.ref)
        ref = location.ref
        try:
            auto_model = auto_model_class(transformers)
            processor = transformers.AutoProcessor.from_pretrained(
                source, **common, **dict(settings.processor_kwargs)
            )
            model = auto_model.from_pretrained(source, **common, **dtype_kwarg(transformers, dtype))
            model = model.to(device).eval()
        except ImageWorksError:
            raise
        except ImportError as exc:
            raise unavailable(
                f"{backend}: loading {ref!r} needs a package that is not installed: {first_line(exc)}",
                backend,
                "install the package named above into this environment",
            ) from exc
        except OSError as exc:  # hub / file errors: not found, no network, gated, not cached
            raise unavailable(
                f"{backend}: cannot load model {ref!r}: {first_line(exc)}", backend, model_hint(ref)
            ) from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ConfigError(
                f"{backend}: {ref!r} is not a vision-language model transformers "
                f"{transformers.__version__} can run: {first_line(exc)}",
                key=f"backends.{backend}.model",
                hint=f"choose an image-text-to-text model (e.g. {DEFAULT_MODEL}), or upgrade transformers",
            ) from exc
        except RuntimeError as exc:  # out of memory, CUDA errors
            raise unavailable(
                f"{backend}: loading {ref!r} on {device} ({dtype_name}) failed: {first_line(exc)}",
                backend,
                'free memory, choose a smaller model, dtype = "bfloat16", or device = "cpu"',
            ) from exc
        return cls(
            ref=ref,
            model=model,
            processor=processor,
            device=device,
            dtype=dtype_name,
            load_seconds=time.perf_counter() - start,
        )

    def close(self) -> None:
        """Drop the model and processor and give their memory back."""
        on_cuda = self.device.startswith("cuda")
        self.model = None
        self.processor = None
        gc.collect()
        if on_cuda:
            self._torch.cuda.empty_cache()

    # ------------------------------------------------------------ figures

    def memory(self) -> dict[str, float]:
        """Memory figures for health: parameters, CUDA allocations when on a GPU."""
        out: dict[str, float] = {"param_bytes": float(self.param_bytes)}
        if self.device.startswith("cuda"):
            cuda = self._torch.cuda
            out["cuda_allocated_bytes"] = float(cuda.memory_allocated(self.device))
            out["cuda_reserved_bytes"] = float(cuda.memory_reserved(self.device))
            out["cuda_peak_allocated_bytes"] = float(cuda.max_memory_allocated(self.device))
        return out

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    # ------------------------------------------------------------ requests

    def prepare(
        self,
        backend: str,
        request: Request,
        *,
        max_tokens: int,
        temperature: float | None,
        settings: TransformersSettings,
    ) -> Prepared:
        """Chat template + processor: the request as tensors on the model's device."""
        if self.processor is None:
            raise closing_error(backend)
        messages, images = hf_messages(request)
        try:
            prompt = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except ValueError as exc:  # no chat template
            raise ConfigError(
                f"{backend}: model {self.ref!r} cannot format a chat prompt: {first_line(exc)}",
                key=f"backends.{backend}.model",
                hint="use an instruction-tuned (chat) vision-language model",
            ) from exc
        try:
            inputs = self.processor(text=prompt, images=images or None, return_tensors="pt")
        except (ValueError, TypeError, IndexError) as exc:
            raise BackendRejected(
                f"{backend}: model {self.ref!r} cannot take this request "
                f"({len(images)} image(s)): {first_line(exc)}",
                backend=backend,
                hint="send fewer images, or a shorter prompt",
            ) from exc
        inputs = inputs.to(self.device, dtype=getattr(self._torch, self.dtype))
        gen: dict[str, Any] = {"max_new_tokens": max_tokens}
        top_p = request.top_p
        if temperature is not None and temperature <= 0:
            gen["do_sample"] = False
        elif temperature is not None or top_p is not None:
            gen["do_sample"] = True
            if temperature is not None:
                gen["temperature"] = temperature
            if top_p is not None:
                gen["top_p"] = top_p
        stops = tuple(s for s in request.stop if s)
        if stops:
            gen["stop_strings"] = list(stops)
            gen["tokenizer"] = self.tokenizer
        extra = {**settings.extra_body, **request.extra}
        seed = extra.pop("seed", settings.seed)
        for key in ("streamer", "stopping_criteria", "inputs", "input_ids", "pixel_values"):
            extra.pop(key, None)
        gen.update(extra)
        return Prepared(
            inputs=inputs,
            gen_kwargs=gen,
            stops=stops,
            prompt_tokens=int(inputs["input_ids"].shape[-1]),
            max_new_tokens=int(gen["max_new_tokens"]),
            seed=int(seed) if seed is not None else None,
        )

    def new_streamer(self) -> Any:
        """A ``TextIteratorStreamer`` that hands over text token by token (see ``_streamer_class``)."""
        return _streamer_class()(self.tokenizer, skip_prompt=True, skip_special_tokens=True)

    def generate(
        self, backend: str, prepared: Prepared, stop: threading.Event, streamer: Any = None
    ) -> Generation:
        """Run ``model.generate`` until done, the cap, a stop string or ``stop`` is set."""
        torch = self._torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        class _StopWhenAsked(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full(
                    (input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device
                )

        model = self.model
        if model is None:
            raise closing_error(backend)
        kwargs = dict(prepared.gen_kwargs)
        if streamer is not None:
            kwargs["streamer"] = streamer
        try:
            if prepared.seed is not None:
                torch.manual_seed(prepared.seed)
            with torch.inference_mode():
                out = model.generate(
                    **prepared.inputs, **kwargs, stopping_criteria=StoppingCriteriaList([_StopWhenAsked()])
                )
        except ImageWorksError:
            raise
        except torch.OutOfMemoryError as exc:
            gc.collect()
            if self.device.startswith("cuda"):
                torch.cuda.empty_cache()
            raise BackendOverloaded(
                f"{backend}: out of memory generating with {self.ref!r} on {self.device}: {first_line(exc)}",
                backend=backend,
                hint="lower max_tokens or max_pixels, use a smaller dtype or model",
            ) from exc
        except (ValueError, TypeError) as exc:
            raise BackendRejected(
                f"{backend}: generate() rejected the request for {self.ref!r}: {first_line(exc)}",
                backend=backend,
                hint="check Request.extra and backends.transformers.extra_body (passed to generate())",
            ) from exc
        except RuntimeError as exc:
            raise BackendProtocolError(
                f"{backend}: generation with {self.ref!r} on {self.device} failed: {first_line(exc)}",
                backend=backend,
            ) from exc
        return self._finish(out, prepared, stop.is_set())

    def _finish(self, out: Any, prepared: Prepared, stopped: bool) -> Generation:
        seq = getattr(out, "sequences", out)[0]
        if not getattr(self.model.config, "is_encoder_decoder", False):
            seq = seq[prepared.prompt_tokens :]
        ids = [int(t) for t in seq.tolist()]
        pad = self.tokenizer.pad_token_id
        eos = _eos_ids(self.model, self.tokenizer)
        while ids and pad is not None and ids[-1] == pad and pad not in eos:
            ids.pop()
        text, hit = cut_at_stop(self.tokenizer.decode(ids, skip_special_tokens=True), prepared.stops)
        ended = hit or (ids and ids[-1] in eos) or len(ids) < prepared.max_new_tokens
        finish = "stop" if ended else "length"
        n = len(ids)
        usage = Usage(
            prompt_tokens=prepared.prompt_tokens, completion_tokens=n, total_tokens=prepared.prompt_tokens + n
        )
        return Generation(text=text, finish_reason=finish, usage=usage, stopped=stopped)


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """``text`` up to the first stop string (excluded), and whether one was found."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class StopTrimmer:
    """Hold back streamed text that may be the start of a stop string; cut at a full one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.hit = False
        self._held = ""

    def feed(self, piece: str) -> str:
        if self.hit:
            return ""
        if not self.stops:
            return piece
        buf = self._held + piece
        text, self.hit = cut_at_stop(buf, self.stops)
        if self.hit:
            self._held = ""
            return text
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(buf)), 0, -1):
                if buf.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        self._held = buf[len(buf) - keep :] if keep else ""
        return buf[: len(buf) - keep]

    def flush(self) -> str:
        held, self._held = self._held, ""
        return "" if self.hit else held


@functools.cache
def _streamer_class() -> type:
    """transformers' ``TextIteratorStreamer``, flushing after every token instead of every word.

    The stock streamer holds text back until a space or a newline, so an answer
    without spaces arrives in one piece at the end.  This one emits whatever
    the decoded text gained, holding back only trailing whitespace (a later
    token may merge with it) and a half-decoded UTF-8 character.
    """
    from transformers import TextIteratorStreamer

    class TokenStreamer(TextIteratorStreamer):
        def put(self, value: Any) -> None:
            if len(value.shape) > 1:
                if value.shape[0] > 1:
                    raise ValueError("the streamer takes one sequence at a time")
                value = value[0]
            if self.skip_prompt and self.next_tokens_are_prompt:
                self.next_tokens_are_prompt = False
                return
            self.token_cache.extend(value.tolist())
            text = str(self.tokenizer.decode(self.token_cache, **self.decode_kwargs)).rstrip()
            if text.endswith("\ufffd") or len(text) <= self.print_len:
                return
            self.on_finalized_text(text[self.print_len :])
            self.print_len = len(text)

    return TokenStreamer


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids
