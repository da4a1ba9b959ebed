"""Opt-in: run a plugin's async tests under asyncio *and* trio.

The core's transport differs between the two loops (aiohttp under asyncio,
httpx under trio), so a plugin should pass under both.  anyio's pytest plugin
reads the ``anyio_backend`` fixture; import this one into your ``conftest.py``::

    from imageworks_core.testing.loops import anyio_backend  # noqa: F401

It is not registered by the ``pytest11`` plugin, so projects that choose their
own loops are not affected.  Without trio installed, the trio runs are skipped.
"""

from __future__ import annotations

import pytest

__all__ = ["LOOPS", "anyio_backend"]

LOOPS = ("asyncio", "trio")


@pytest.fixture(params=LOOPS)
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Each test once per event loop."""
    if request.param == "trio":
        pytest.importorskip("trio", reason="trio is not installed (pip install trio)")
    return str(request.param)
