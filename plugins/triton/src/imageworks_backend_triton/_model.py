"""What a Triton model takes and gives, learned from its metadata and config."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["ModelInfo", "TensorSpec", "model_info_from"]

#: Config ``data_type`` -> KServe v2 datatype.
_CONFIG_TYPES = {"STRING": "BYTES"}


def _kserve_type(config_type: Any) -> str | None:
    if not isinstance(config_type, str):
        return None
    name = config_type.removeprefix("TYPE_")
    return _CONFIG_TYPES.get(name, name)


def _dims(value: Any) -> tuple[int, ...] | None:
    if isinstance(value, list | tuple) and all(isinstance(d, int) and not isinstance(d, bool) for d in value):
        return tuple(value)
    if isinstance(value, list | tuple):  # some servers send dims as strings ("-1")
        try:
            return tuple(int(d) for d in value)
        except (TypeError, ValueError):
            return None
    return None


@attrs.frozen(slots=True)
class TensorSpec:
    """One model input or output.

    Attributes:
        name: Tensor name.
        datatype: KServe v2 datatype (``BYTES``, ``INT32``, ``FP32``, ``BOOL`` ...).
        dims: Shape without the batch dimension (``-1``: variable).
        optional: Whether the model may be called without it (``None``: unknown,
            the server gave no model config).
    """

    name: str
    datatype: str
    dims: tuple[int, ...] = (1,)
    optional: bool | None = None

    def describe(self) -> str:
        shape = ",".join(str(d) for d in self.dims)
        return f"{self.name} ({self.datatype} [{shape}]{', optional' if self.optional else ''})"


@attrs.frozen(slots=True)
class ModelInfo:
    """A Triton model as discovered from ``/v2/models/{m}`` (+ ``/config``).

    Attributes:
        name: Model name.
        versions: Versions the server lists.
        platform: ``ensemble``, ``python``, ``tensorrt_llm`` ... when given.
        inputs: Its inputs.
        outputs: Its outputs.
        max_batch_size: ``> 0``: every tensor carries a leading batch dimension.
        decoupled: The model may send several responses per request (streams);
            Triton's HTTP ``/infer`` cannot serve it, ``generate_stream`` can.
        has_config: The server answered ``/config`` (optional flags, batching and
            decoupling are known rather than guessed).
    """

    name: str
    versions: tuple[str, ...] = ()
    platform: str | None = None
    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()
    max_batch_size: int = 0
    decoupled: bool = False
    has_config: bool = False

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    def input(self, name: str) -> TensorSpec | None:
        return next((t for t in self.inputs if t.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((t for t in self.outputs if t.name == name), None)

    def describe_inputs(self) -> str:
        return ", ".join(t.name for t in self.inputs) or "none"


def model_info_from(name: str, metadata: Mapping[str, Any], config: Mapping[str, Any] | None) -> ModelInfo:
    """Merge ``GET /v2/models/{m}`` (*metadata*) with ``GET /v2/models/{m}/config`` (*config*).

    Metadata gives names, datatypes and shapes (batch dimension included for
    batching models); only the config says which inputs are optional, the
    batch size and whether the model is decoupled.  Without a config (other
    KServe v2 servers), batching is guessed from the shapes and every input
    but the required ones is treated as optional-unknown.
    """
    conf_inputs: dict[str, Mapping[str, Any]] = {}
    max_batch = 0
    decoupled = False
    if config is not None:
        for entry in config.get("input") or ():
            if isinstance(entry, Mapping) and isinstance(entry.get("name"), str):
                conf_inputs[entry["name"]] = entry
        mbs = config.get("max_batch_size", 0)
        max_batch = mbs if isinstance(mbs, int) and not isinstance(mbs, bool) else 0
        policy = config.get("model_transaction_policy")
        decoupled = bool(isinstance(policy, Mapping) and policy.get("decoupled"))

    meta_inputs = [e for e in metadata.get("inputs") or () if isinstance(e, Mapping) and e.get("name")]
    meta_outputs = [e for e in metadata.get("outputs") or () if isinstance(e, Mapping) and e.get("name")]
    if config is None:
        shapes = [_dims(e.get("shape")) or () for e in meta_inputs]
        if shapes and all(len(s) >= 2 and s[0] == -1 for s in shapes):
            max_batch = 1  # batching model, size unknown: send one row

    def spec(entry: Mapping[str, Any], conf: Mapping[str, Any] | None) -> TensorSpec:
        shape = _dims(entry.get("shape")) or (1,)
        dims = _dims(conf.get("dims")) if conf is not None else None
        if dims is None:
            dims = shape[1:] if max_batch > 0 and len(shape) > 1 else shape
        datatype = str(
            entry.get("datatype") or (_kserve_type(conf.get("data_type")) if conf else None) or "BYTES"
        )
        optional = bool(conf.get("optional", False)) if conf is not None else None
        return TensorSpec(
            name=str(entry["name"]), datatype=datatype.upper(), dims=dims or (1,), optional=optional
        )

    inputs = tuple(spec(e, conf_inputs.get(str(e["name"]))) for e in meta_inputs)
    outputs = tuple(spec(e, None) for e in meta_outputs)
    versions = metadata.get("versions") or ()
    platform = metadata.get("platform") or (config.get("backend") if config else None)
    return ModelInfo(
        name=str(metadata.get("name") or name),
        versions=tuple(str(v) for v in versions) if isinstance(versions, list) else (),
        platform=str(platform) if platform else None,
        inputs=inputs,
        outputs=outputs,
        max_batch_size=max_batch,
        decoupled=decoupled,
        has_config=config is not None,
    )
