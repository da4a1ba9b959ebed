"""Tests of the echo backend: the core's conformance suite, then its own behaviour.

Run them with the plugin installed (``pip install -e .[test]``)::

    pytest
"""

from __future__ import annotations

from typing import Any

import pytest
from imageworks_backend_echo import MAX_IMAGES, plugin

from imageworks_core import BackendRejected, PreparedImage, Request
from imageworks_core.testing.conformance import BackendConformance, png_bytes


class TestEchoConformance(BackendConformance):
    """Every contract test of the suite, pointed at the installed ``echo`` entry point."""

    backend = "echo"
    needs_server = False  # server tests (down, overload ...) are skipped with the reason


@pytest.fixture
def image() -> PreparedImage:
    return PreparedImage(data=png_bytes(32, 24), mime="image/png", width=32, height=24)


@pytest.mark.anyio
async def test_echoes_prompt_and_image(imageworks_client_factory: Any, image: PreparedImage) -> None:
    async with imageworks_client_factory(plugin) as client:
        result = await client.infer(Request(prompt="What is this?", images=(image,)))
    assert result.text == f"echo: What is this? | image 1: image/png, 32x24, {len(image.data)} bytes"
    assert result.model == "echo-1"


@pytest.mark.anyio
async def test_prefix_comes_from_the_settings(imageworks_client_factory: Any) -> None:
    overrides = {"backends": {"echo": {"prefix": "ECHO"}}}
    async with imageworks_client_factory(plugin, overrides=overrides) as client:
        result = await client.infer(Request(prompt="hello"))
    assert result.text == "ECHO: hello"


@pytest.mark.anyio
async def test_too_many_images_are_rejected(imageworks_client_factory: Any, image: PreparedImage) -> None:
    async with imageworks_client_factory(plugin) as client:
        with pytest.raises(BackendRejected, match=f"at most {MAX_IMAGES} images"):
            await client.infer(Request(prompt="hi", images=(image,) * (MAX_IMAGES + 1)))
