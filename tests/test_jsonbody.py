"""Request bodies (issue 18): orjson where it can, the standard library for what orjson
refuses; the server reads the same JSON either way."""

from __future__ import annotations

import importlib.util
import json
from typing import Any

import pytest
from conftest import require

from imageworks_core import jsonbody
from imageworks_core.jsonbody import encode_body

BODIES: list[Any] = [
    {"model": "m", "messages": [{"role": "user", "content": 'héllo \U0001f308 \u2028 "q" \\ </script>'}]},
    {"max_tokens": 16, "temperature": 0.1, "top_p": 1.0, "stop": ["\n\n"], "x": None, "y": [True, False]},
    {"big": 2**63 - 1, "neg": -(2**63), "float": 1e-300, "nested": {"a": [{"b": []}]}},
]


@pytest.mark.parametrize("body", BODIES)
def test_same_json_as_the_standard_library(body: Any) -> None:
    out = encode_body(body)
    assert isinstance(out, bytes)
    assert json.loads(out) == json.loads(json.dumps(body)) == body


@pytest.mark.parametrize(
    "body",
    [
        {"prompt": "lone \ud800 surrogate"},  # orjson refuses; the server gets the stdlib escape
        {"seed": 2**70},  # beyond 64 bits
        {1: "non-string key"},
    ],
)
def test_what_orjson_refuses_is_encoded_by_the_standard_library(body: Any) -> None:
    assert encode_body(body) == json.dumps(body).encode()


def test_orjson_is_used_when_installed() -> None:
    require(
        importlib.util.find_spec("orjson") is not None, "orjson is not installed (scripts/install.sh --dev)"
    )
    text = {"t": "é"}
    # orjson writes UTF-8, the standard library writes \u00e9: tells which one ran.
    assert encode_body(text) == '{"t":"é"}'.encode()


def test_without_orjson(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jsonbody, "orjson", None)
    assert encode_body({"t": "é"}) == b'{"t": "\\u00e9"}'
