"""Run every async test under asyncio and trio (the core's transport differs between them)."""

from imageworks_core.testing.loops import anyio_backend  # noqa: F401
