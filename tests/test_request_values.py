"""A Request refuses values no server would take, when it is made (not as a 400 later)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from imageworks_core import InputError, Request

BAD = [
    ("max_tokens", 0),
    ("max_tokens", -5),
    ("max_tokens", 2.5),
    ("max_tokens", True),
    ("max_tokens", "300"),
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "hot"),
    ("top_p", 0),
    ("top_p", 1.01),
    ("top_p", False),
    ("timeout", 0),
    ("timeout", -1),
    ("timeout", math.inf),
]


@pytest.mark.parametrize(("field", "value"), BAD, ids=[f"{f}={v!r}" for f, v in BAD])
def test_a_value_out_of_range_is_an_input_error_naming_it(field: str, value: Any) -> None:
    with pytest.raises(InputError) as info:
        Request(prompt="p", **{field: value})
    assert f"{field}={value!r} is out of range" in info.value.message and info.value.hint


GOOD = [
    ("max_tokens", 1),
    ("temperature", 0),
    ("temperature", 2.5),
    ("top_p", 1),
    ("top_p", 0.05),
    ("timeout", 0.5),
]


@pytest.mark.parametrize(("field", "value"), GOOD, ids=[f"{f}={v!r}" for f, v in GOOD])
def test_values_in_range_are_kept(field: str, value: Any) -> None:
    assert getattr(Request(prompt="p", **{field: value}), field) == value
