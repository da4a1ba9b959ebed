"""Workflows in ComfyUI's API format: the built-in txt2img graph, loading, placeholders.

API format (what "Save (API format)" writes, what ``POST /prompt`` takes):
``{node_id: {"class_type": str, "inputs": {name: value | [node_id, output_index]}}}``.
A string value that is exactly ``"{{name}}"`` becomes the typed value
(``"{{seed}}"`` -> ``42``); a placeholder inside a longer string is replaced by
its text (``"masterpiece, {{prompt}}"``).
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping
from typing import Any

import anyio

from imageworks_core.plugin import ConfigError, InputError

__all__ = [
    "PLACEHOLDERS",
    "WorkflowError",
    "check_workflow",
    "default_workflow",
    "fill",
    "load_workflow",
    "placeholders_in",
    "request_workflow",
]

#: Placeholder name -> what it becomes.
PLACEHOLDERS: Mapping[str, str] = {
    "prompt": "the request's prompt (string)",
    "negative_prompt": 'the negative prompt (string; "" when none)',
    "seed": "the seed (integer; drawn at random when the request has none)",
    "width": "image width (integer)",
    "height": "image height (integer)",
    "steps": "sampling steps (integer)",
    "cfg": "guidance scale (float)",
    "batch_size": "images per request, the request's n (integer)",
    "model": "checkpoint file name (string)",
    "sampler_name": "KSampler sampler name (string)",
    "scheduler": "KSampler scheduler (string)",
}

_TOKEN = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class WorkflowError(ValueError):
    """A workflow that cannot be used (turned into ConfigError or InputError by the caller)."""


def _known() -> str:
    return ", ".join("{{" + name + "}}" for name in PLACEHOLDERS)


def default_workflow(values: Mapping[str, Any], filename_prefix: str) -> dict[str, Any]:
    """The built-in txt2img graph, its inputs filled from *values* (no placeholders)."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": values["model"]}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": values["prompt"], "clip": ["1", 1]}},
        "3": {
            "class_type": "CLIPTextEncode",
            "inputs": {"text": values["negative_prompt"], "clip": ["1", 1]},
        },
        "4": {
            "class_type": "EmptyLatentImage",
            "inputs": {
                "width": values["width"],
                "height": values["height"],
                "batch_size": values["batch_size"],
            },
        },
        "5": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "positive": ["2", 0],
                "negative": ["3", 0],
                "latent_image": ["4", 0],
                "seed": values["seed"],
                "steps": values["steps"],
                "cfg": values["cfg"],
                "sampler_name": values["sampler_name"],
                "scheduler": values["scheduler"],
                "denoise": 1.0,
            },
        },
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": filename_prefix}},
    }


def check_workflow(data: Any) -> dict[str, Any]:
    """*data* as an API-format workflow.

    Raises:
        WorkflowError: Not a mapping of nodes, the UI format, or no prompt placeholder.
    """
    if isinstance(data, Mapping) and "nodes" in data and "links" in data:
        raise WorkflowError(
            "this is ComfyUI's UI format (it has 'nodes' and 'links'); export the workflow "
            'with "Save (API format)" instead'
        )
    if not isinstance(data, Mapping) or not data:
        raise WorkflowError("a workflow must be a non-empty JSON object of nodes {id: {class_type, inputs}}")
    for node_id, node in data.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            raise WorkflowError(f"node {node_id!r} has no class_type: not an API-format workflow")
        if not isinstance(node.get("inputs", {}), Mapping):
            raise WorkflowError(f"node {node_id!r} ({node['class_type']}): 'inputs' is not an object")
    used = placeholders_in(data)
    if "prompt" not in used:
        raise WorkflowError(
            "the workflow has no {{prompt}} placeholder, so the prompt would go nowhere; put "
            f'"{{{{prompt}}}}" in the positive text input. Placeholders: {_known()}'
        )
    return dict(data)


def placeholders_in(data: Any) -> set[str]:
    """The placeholder names used in *data*.

    Raises:
        WorkflowError: An unknown ``{{name}}`` (naming the known ones).
    """
    found: set[str] = set()
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.update(_TOKEN.findall(item))
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    unknown = sorted(found - set(PLACEHOLDERS))
    if unknown:
        names = ", ".join("{{" + n + "}}" for n in unknown)
        raise WorkflowError(f"unknown placeholder {names}; the placeholders are: {_known()}")
    return found


def fill(data: dict[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of *data* with every placeholder replaced from *values*."""

    def sub(item: Any) -> Any:
        if isinstance(item, str):
            whole = _TOKEN.fullmatch(item.strip())
            if whole:
                return values[whole.group(1)]
            return _TOKEN.sub(lambda m: str(values[m.group(1)]), item)
        if isinstance(item, Mapping):
            return {k: sub(v) for k, v in item.items()}
        if isinstance(item, list):
            return [sub(v) for v in item]
        return item

    filled: dict[str, Any] = sub(copy.deepcopy(data))
    return filled


async def load_workflow(path: str, backend: str) -> dict[str, Any]:
    """The API-format workflow in the file *path* (the ``workflow`` setting).

    Raises:
        ConfigError: Unreadable, not JSON, or not a usable workflow.
    """
    key = f"backends.{backend}.workflow"
    try:
        text = await (await anyio.Path(path).expanduser()).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{key}: cannot read {path!r}: {exc.strerror or exc}", key=key) from None
    try:
        return check_workflow(json.loads(text))
    except ValueError as exc:  # json.JSONDecodeError and WorkflowError
        raise ConfigError(f"{key}: {path!r}: {exc}", key=key) from None


def request_workflow(data: Any) -> dict[str, Any]:
    """``ImageRequest.extras["workflow"]`` checked.

    Raises:
        InputError: Not a usable API-format workflow.
    """
    try:
        return check_workflow(data)
    except WorkflowError as exc:
        raise InputError(f'extras["workflow"]: {exc}', hint="pass an API-format workflow dict") from None
