"""The backend conformance suite: the plugin contract, checked by tests.

A plugin author subclasses ``BackendConformance`` in a test module; pytest
collects the subclass (its name starts with ``Test``) with every test below::

    from imageworks_core.testing.conformance import BackendConformance

    class TestVllmConformance(BackendConformance):
        backend = "vllm"        # the entry-point name; the installed plugin is loaded

That is all an OpenAI-compatible backend needs: by default the suite points
the backend at the kit's fake OpenAI-compatible server (the
``imageworks_openai_server`` fixture) and scripts faults on it.  Other
backends override the fixtures:

* ``backend_plugin`` -- the plugin object (default: the class attribute
  ``plugin``; ``None`` loads the installed entry point named ``backend``);
* ``server_url`` -- where a working server listens (``None``: the backend needs
  no server, with ``needs_server = False``);
* ``down_url`` -- a URL where nothing listens (default: an unused local port);
* ``faults`` -- a ``FaultInjector`` that makes the server (or the plugin)
  misbehave in the named ways (default: the fake server's, when ``server_url``
  is the fake server; else ``None``);
* ``transport`` -- an in-process transport standing for the server (default
  ``None``: real sockets).  Mix ``OnMockOpenAIServer`` in first to run the
  server tests on a ``MockOpenAIServer``, no process and no socket; a
  ``MockTransport`` over your own handler plays a server of another shape.

Tests that need something the backend does not declare or the subclass does
not provide are *skipped* with the reason (no image test without
``Capabilities.vision``, no fault test without ``faults``), never passed
silently.  Every test runs under asyncio and trio (override the class's
``anyio_backend`` fixture to change that), with retry sleeps off.
"""

from __future__ import annotations

from ._conformance_base import SuiteBase, png_bytes, unused_port
from ._conformance_contract import ContractTests
from ._conformance_faults import (
    DOWN,
    FAULTS,
    HANG,
    MALFORMED,
    NOT_READY,
    OVERLOADED,
    REJECT_MESSAGE,
    REJECTED,
    RETRY_AFTER,
    STREAM_ERROR,
    STREAM_ERROR_MESSAGE,
    FakeBackendFaults,
    FaultInjector,
    OnMockOpenAIServer,
    OpenAIServerFaults,
)
from ._conformance_serving import ServingTests

__all__ = [
    "DOWN",
    "FAULTS",
    "HANG",
    "MALFORMED",
    "NOT_READY",
    "OVERLOADED",
    "REJECTED",
    "REJECT_MESSAGE",
    "RETRY_AFTER",
    "STREAM_ERROR",
    "STREAM_ERROR_MESSAGE",
    "BackendConformance",
    "FakeBackendFaults",
    "FaultInjector",
    "OnMockOpenAIServer",
    "OpenAIServerFaults",
    "png_bytes",
    "unused_port",
]


class BackendConformance(ContractTests, ServingTests, SuiteBase):
    """The contract every backend plugin honours, as tests.  Subclass as ``Test<Something>``.

    Attributes:
        backend: The backend (and entry-point) name.  Required.
        plugin: An in-process plugin object; ``None`` loads the installed entry point.
        needs_server: ``False`` for backends that answer without a server
            (tests about servers going down are then skipped unless ``faults``
            can fake it).
        reports_usage: The backend reports token usage: ``Result.usage`` and
            the last stream chunks must carry it.
        check_entry_point: Check the installed entry point (default: when
            ``plugin`` is ``None``).
        prompt: The prompt the tests send.
        max_tokens: The generation cap the tests send.
        client_overrides: Extra configuration for every test client, in the
            shape of ``Client(overrides=...)`` (e.g. ``{"backends": {"x": {"model": "m"}}}``).
        test_timeout: Seconds one test may take before it fails (a hung plugin fails, never blocks).
        other_model: A model name, other than the configured one, that the
            server answers to (the fake server answers to any name).  ``None``
            skips the model-override test (for a server that serves one model
            and answers 404 to any other name).
        known_failures: Test name -> reason, for failures you know of and have
            reported: those tests are marked ``xfail`` (non-strict) with the
            reason, so they show up in every run instead of being deleted.
    """
