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

import contextlib
import importlib.metadata as md
import os
import socket
import struct
import time
import types
import typing
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Mapping
from typing import Any, ClassVar, Protocol, runtime_checkable

import anyio
import attrs
import pytest

from ..client import Client
from ..errors import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    InputError,
)
from ..models import BackendInfo, Capabilities, Chunk, HealthReport, PreparedImage, Request, Result
from ..plugins import ENTRY_POINT_GROUP, BackendRegistry
from ..retry import testing
from ..settings import BackendSettings, Secret, normalise_base_url

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

# ---------------------------------------------------------------- faults a FaultInjector knows

#: Health: the server answers but cannot serve yet (loading, engine dead, no model).
NOT_READY = "not_ready"
#: Every request fails to connect (for backends without a ``down_url``).
DOWN = "down"
#: Inference answers "busy" (HTTP 429 / 503) asking to retry after ``RETRY_AFTER`` seconds.
OVERLOADED = "overloaded"
#: Inference is refused as a bad request (HTTP 4xx) saying ``REJECT_MESSAGE``.
REJECTED = "rejected"
#: Inference answers HTTP 200 with a body that cannot be parsed.
MALFORMED = "malformed"
#: Streaming answers HTTP 200, sends some text, then reports ``STREAM_ERROR_MESSAGE`` in-band.
STREAM_ERROR = "stream_error"
#: Inference never answers (until the client gives up or goes away).
HANG = "hang"
FAULTS = frozenset({NOT_READY, DOWN, OVERLOADED, REJECTED, MALFORMED, STREAM_ERROR, HANG})

RETRY_AFTER = 7.0
REJECT_MESSAGE = "imageworks conformance: this request is rejected on purpose"
STREAM_ERROR_MESSAGE = "imageworks conformance: failure inside the stream"
_SECRET_KEY = "sk-imageworks-conformance-secret"  # noqa: S105 - a canary, not a credential
_SECRET_PASSWORD = "conformance-pw-7f3a"  # noqa: S105 - a canary, not a credential


@runtime_checkable
class FaultInjector(Protocol):
    """Makes a backend's server (or an in-process backend) misbehave on request."""

    def inject(self, fault: str) -> bool:
        """Make every later request fail as *fault* (one of ``FAULTS``); ``False`` if unsupported."""

    def clear(self) -> None:
        """Back to normal answers."""

    def in_flight(self) -> int | None:
        """Requests the server is still handling (``None``: cannot tell)."""

    def images_received(self) -> int | None:
        """Images in the last inference request the server received (``None``: cannot tell)."""


class OpenAIServerFaults:
    """``FaultInjector`` for the kit's ``FakeOpenAIServer`` (OpenAI-compatible shapes).

    ``NOT_READY`` covers the probes of every OpenAI-style server at once:
    ``/health`` 503 (vLLM, LMDeploy, trtllm-serve), ``/health/ready`` and
    ``/v2/health/ready`` 400 (Triton) and an empty ``/v1/models`` (generic).
    Subclass and override ``inject`` for a server with other shapes.
    """

    def __init__(self, server: Any) -> None:
        self.server = server

    def inject(self, fault: str) -> bool:
        from . import fake_server as fs

        s = self.server
        if fault == NOT_READY:
            s.always(
                fs.status(503, {"status": "initializing", "message": "loading the model"}), path="/health"
            )
            s.always(fs.status(400, ""), path="/health/ready")
            s.always(fs.status(400, ""), path="/v2/health/ready")
            s.always(fs.status(200, {"object": "list", "data": []}), path="/v1/models")
            return True
        if fault == OVERLOADED:
            body = {
                "error": {"message": "imageworks conformance: server busy", "type": "rate_limit", "code": 429}
            }
            s.always(fs.status(429, body, headers={"Retry-After": f"{RETRY_AFTER:g}"}))
            return True
        if fault == REJECTED:
            s.always(fs.status(400, {"error": {"message": REJECT_MESSAGE, "type": "invalid_request_error"}}))
            return True
        if fault == MALFORMED:
            s.always(fs.malformed())
            return True
        if fault == STREAM_ERROR:
            s.always(fs.stream_error(STREAM_ERROR_MESSAGE, code=500, after=2))
            return True
        if fault == HANG:
            s.always(fs.hang())
            return True
        return False  # DOWN: the suite uses down_url instead

    def clear(self) -> None:
        self.server.reset()

    def in_flight(self) -> int | None:
        return int(self.server.in_flight())

    def images_received(self) -> int | None:
        chats = self.server.requests("/v1/chat/completions")
        return int(chats[-1]["images"]) if chats else None


class OnMockOpenAIServer:
    """Mix in before ``BackendConformance``: the server tests run on an in-process ``MockOpenAIServer``.

    ::

        class TestMineInProcess(OnMockOpenAIServer, BackendConformance):
            backend = "mine"
    """

    @pytest.fixture
    def mock_openai_server(self) -> Any:
        from .mock_server import MockOpenAIServer

        return MockOpenAIServer()

    @pytest.fixture
    def transport(self, mock_openai_server: Any) -> Any:
        return mock_openai_server.transport

    @pytest.fixture
    def server_url(self, mock_openai_server: Any) -> str:
        return str(mock_openai_server.base_url)

    @pytest.fixture
    def faults(self, mock_openai_server: Any) -> FaultInjector:
        return OpenAIServerFaults(mock_openai_server)


class FakeBackendFaults:
    """``FaultInjector`` for an in-process ``FakeBackend``."""

    def __init__(self, fake: Any) -> None:
        self.fake = fake

    def inject(self, fault: str) -> bool:
        from ..errors import BackendRejected as Rejected
        from .fake import Delay, FailAfter

        fake, name = self.fake, self.fake.name
        if fault == NOT_READY:
            fake.healthy, fake.reachable = False, True
        elif fault == DOWN:
            fake.healthy, fake.reachable = False, False
            fake.always(
                BackendUnavailable(
                    f"{name} backend: cannot connect (scripted as down)",
                    backend=name,
                    hint="fake.healthy = True",
                )
            )
        elif fault == OVERLOADED:
            fake.always(
                BackendOverloaded(
                    f"{name} backend: busy (scripted)", retry_after=RETRY_AFTER, backend=name, status=429
                )
            )
        elif fault == REJECTED:
            fake.always(
                Rejected(f"{name} backend answered HTTP 400: {REJECT_MESSAGE}", backend=name, status=400)
            )
        elif fault == MALFORMED:
            fake.always(BackendProtocolError(f"{name} backend: malformed answer (scripted)", backend=name))
        elif fault == STREAM_ERROR:
            err = BackendProtocolError(f"{name} backend: {STREAM_ERROR_MESSAGE}", backend=name, status=500)
            fake.always(FailAfter("A partial", err))
        elif fault == HANG:
            fake.always(Delay(3600.0))
        else:
            return False
        return True

    def clear(self) -> None:
        self.fake.healthy, self.fake.reachable = True, None
        self.fake.always(None)

    def in_flight(self) -> int | None:
        return int(self.fake.in_flight)

    def images_received(self) -> int | None:
        return len(self.fake.calls[-1].images) if self.fake.calls else None


# ---------------------------------------------------------------- helpers


def unused_port() -> int:
    """A local TCP port nothing listened on a moment ago."""
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def png_bytes(width: int = 32, height: int = 24) -> bytes:
    """A small valid RGB PNG (a two-colour gradient), made without any imaging library."""
    rows = []
    for y in range(height):
        row = bytearray([0])
        for x in range(width):
            row += bytes((200, (x * 255) // max(1, width - 1), (y * 255) // max(1, height - 1)))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def _wrong_value(tp: Any) -> Any:
    """A value of the wrong type for a settings field of type *tp* (as a TOML file could hold it)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _wrong_value(args[0]) if args else 12345
    if tp is str or tp is Secret:
        return 12345
    if tp is bool:
        return "perhaps"
    if tp in (int, float):
        return "not-a-number"
    if origin is tuple:
        return 42
    if origin in (Mapping, dict) or tp is dict:
        return "not-a-table"
    return [["a", "nested", "list"]]


def _open_stream(client: Client, request: Request) -> contextlib.aclosing[AsyncGenerator[Chunk, None]]:
    """``client.stream(request)``, closed on exit even when the loop breaks early."""
    return contextlib.aclosing(typing.cast(AsyncGenerator[Chunk, None], client.stream(request)))


def _one_line(text: str | None) -> bool:
    return bool(text) and "\n" not in str(text)


def _secrets_in(*texts: Any) -> list[str]:
    found = []
    for text in texts:
        for secret in (_SECRET_KEY, _SECRET_PASSWORD):
            if text is not None and secret in str(text):
                found.append(f"{secret!r} in {str(text)[:300]!r}")
    return found


def _with_credentials(url: str) -> str:
    scheme, rest = url.split("://", 1)
    return f"{scheme}://conformance:{_SECRET_PASSWORD}@{rest}"


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


_LOOPS = ["asyncio", "trio"]


# ---------------------------------------------------------------- the suite


class BackendConformance:
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

    backend: ClassVar[str] = ""
    plugin: ClassVar[Any] = None
    needs_server: ClassVar[bool] = True
    reports_usage: ClassVar[bool] = True
    check_entry_point: ClassVar[bool | None] = None
    prompt: ClassVar[str] = "Describe this image in one short sentence."
    max_tokens: ClassVar[int] = 32
    client_overrides: ClassVar[Mapping[str, Any]] = {}
    test_timeout: ClassVar[float] = 60.0
    known_failures: ClassVar[Mapping[str, str]] = {}
    #: A second model the test server serves (for the per-request model override test).
    other_model: ClassVar[str | None] = "conformance-other-model"

    # ------------------------------------------------------------ fixtures (override in a subclass)

    @pytest.fixture(params=_LOOPS)
    def anyio_backend(self, request: pytest.FixtureRequest) -> str:
        """Both event loops: the transport differs (aiohttp under asyncio, httpx under trio)."""
        if request.param == "trio":
            pytest.importorskip("trio", reason="trio is not installed (pip install trio)")
        return str(request.param)

    @pytest.fixture
    def transport(self) -> Any:
        """An in-process transport standing for the server (``None``, the default: real sockets).

        Return ``MockOpenAIServer().transport``, or a ``MockTransport`` over a handler
        that plays your server, to run the server tests without a process; the
        handler answers ``down_url`` by raising ``ConnectionRefusedError``.
        """
        return None

    @pytest.fixture(autouse=True)
    def _conformance_environment(
        self,
        request: pytest.FixtureRequest,
        monkeypatch: pytest.MonkeyPatch,
        tmp_path: Any,
        transport: Any,
    ) -> Iterator[None]:
        """No IMAGEWORKS_* variables from the shell, no user config file, short waits (``set_testing``)."""
        self._transport = transport
        reason = self.known_failures.get(getattr(request.function, "__name__", ""))
        if reason:
            request.node.add_marker(pytest.mark.xfail(reason=reason, strict=False))
        for var in list(os.environ):
            if var.startswith("IMAGEWORKS_") and not var.startswith("IMAGEWORKS_TEST_"):
                monkeypatch.delenv(var)
        monkeypatch.setenv("IMAGEWORKS_CONFIG_FILE", str(tmp_path / "no-user-config.toml"))
        if not self.backend:
            pytest.fail(f"{type(self).__name__}: set the class attribute `backend` to the backend's name")
        with testing():
            yield

    @pytest.fixture
    def backend_plugin(self) -> Any:
        """The plugin under test (``None``: the installed entry point named ``backend``)."""
        return self.plugin

    @pytest.fixture
    def server_url(self, request: pytest.FixtureRequest) -> str | None:
        """Where a working server listens (default: the kit's fake OpenAI-compatible server)."""
        if not self.needs_server:
            return None
        server = request.getfixturevalue("imageworks_openai_server")
        return str(server.base_url)

    @pytest.fixture
    def down_url(self) -> str | None:
        """A URL where nothing listens (``None`` for backends without a server)."""
        return f"http://127.0.0.1:{unused_port()}" if self.needs_server else None

    @pytest.fixture
    def faults(self, server_url: str | None) -> FaultInjector | None:
        """How to make the server misbehave (default: the fake server's scripting, when it is in use)."""
        from .fake_server import FakeOpenAIServer

        server = FakeOpenAIServer.running(server_url)
        return OpenAIServerFaults(server) if server is not None else None

    @pytest.fixture
    def image(self) -> PreparedImage:
        """The image the tests send (a 32x24 PNG)."""
        return attrs.evolve(PreparedImage.from_bytes(png_bytes(32, 24)), width=32, height=24)

    # ------------------------------------------------------------ hooks (override in a subclass)

    def make_client(
        self,
        plugin: Any,
        *,
        base_url: str | None = None,
        settings: Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Client:
        """A client for the backend under test: no config files, two tries per request.

        Args:
            plugin: The in-process plugin, or ``None`` to load the entry point.
            base_url: The server to use (``None``: the backend's default).
            settings: Keys for the backend's own section (``backends.<name>``).
            overrides: Other configuration (``Client(overrides=...)`` shape).
            env: The environment the configuration reads (default: empty).
        """
        section: dict[str, Any] = {}
        if base_url is not None:
            section["base_url"] = base_url
        section.update(settings or {})
        # The suite checks the plugin's error mapping through the dispatcher's retries; waiting out
        # outages (core's job, tested in core) would hide which error the plugin raised.
        config: dict[str, Any] = {
            "retry": {"max_attempts": 2},
            "wait_for_backend": 0,
            "max_tokens": self.max_tokens,
        }
        config = _merge(config, self.client_overrides)
        config = _merge(config, {"backends": {self.backend: section}} if section else {})
        config = _merge(config, overrides or {})
        return Client(
            backend=self.backend,
            plugins=[plugin] if plugin is not None else (),
            entry_points=plugin is None,
            allow=[self.backend] if plugin is None else None,
            deny=(),
            strict_plugins=True,
            overrides=config,
            user_file=False,
            project_file=False,
            env=dict(env or {}),
            transport=getattr(self, "_transport", None),
        )

    def request(self, image: PreparedImage | None, **fields: Any) -> Request:
        """The request the tests send: *image* (or none, or ``images=``), ``prompt`` and ``max_tokens``."""
        fields.setdefault("max_tokens", self.max_tokens)
        fields.setdefault("prompt", self.prompt)
        fields.setdefault("images", (image,) if image is not None else ())
        return Request(**fields)

    # ------------------------------------------------------------ internals

    def _plugin_object(self, plugin: Any) -> Any:
        if plugin is not None:
            return plugin
        eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == self.backend]
        if not eps:
            pytest.fail(
                f"no entry point named {self.backend!r} in group {ENTRY_POINT_GROUP!r}: install the plugin "
                "(pip install -e .) or set `plugin` on the test class"
            )
        return eps[0].load()

    def _info(self, plugin: Any) -> BackendInfo:
        info = self._plugin_object(plugin).backend_info()
        assert isinstance(info, BackendInfo), (
            f"backend_info() returned {type(info).__name__}, not BackendInfo"
        )
        return info

    def _caps(self, plugin: Any) -> Capabilities:
        return self._info(plugin).capabilities

    @contextlib.asynccontextmanager
    async def _client(self, plugin: Any, base_url: str | None = None, **kwargs: Any) -> AsyncIterator[Client]:
        with anyio.fail_after(self.test_timeout):
            async with self.make_client(plugin, base_url=base_url, **kwargs) as client:
                yield client

    @staticmethod
    async def _health(client: Client, name: str) -> HealthReport:
        """``Client.health``, after checking the plugin's own hook keeps the contract.

        The hook returns a ``HealthReport`` or raises a ``BackendError`` (which the
        core reports as not ready); any other exception is a bug and fails the test.
        """
        try:
            own = await client.registry.caller(name, "health")(ctx=client.context(name))
        except BackendError:
            pass
        else:
            assert isinstance(own, HealthReport), f"health() returned {type(own).__name__}, not HealthReport"
        return await client.health(name)

    @staticmethod
    async def _collect(client: Client, request: Request) -> list[Chunk]:
        chunks = []
        async with _open_stream(client, request) as stream:
            async for chunk in stream:
                chunks.append(chunk)
        return chunks

    def _need(self, faults: FaultInjector | None, fault: str) -> FaultInjector:
        if faults is None:
            pytest.skip(
                f"no fault injection for {self.backend!r}: provide a `faults` fixture to test {fault!r}"
            )
        if not faults.inject(fault):
            pytest.skip(f"the `faults` fixture cannot produce {fault!r}")
        return faults

    async def _settle(self, faults: FaultInjector | None, *, within: float = 5.0) -> None:
        """Wait until the server has no request in flight; fail when one stays (a leaked connection)."""
        if faults is None or faults.in_flight() is None:
            return
        deadline = time.monotonic() + within
        while (n := faults.in_flight()) and time.monotonic() < deadline:  # noqa: ASYNC110 - another process
            await anyio.sleep(0.05)
        assert not n, f"{n} request(s) still open on the server {within:g}s after the client gave up on them"

    def _down(self, faults: FaultInjector | None, down_url: str | None) -> str | None:
        """Arrange "nothing answers": returns the URL to use (``None``: the fault injector did it)."""
        if down_url is not None:
            return down_url
        if faults is not None and faults.inject(DOWN):
            return None
        pytest.skip(f"{self.backend!r} has no server to take down and `faults` cannot fake {DOWN!r}")

    # ------------------------------------------------------------ metadata

    def test_backend_info_is_complete(self, backend_plugin: Any) -> None:
        info = self._info(backend_plugin)
        assert info.name == self.backend, (
            f"backend_info().name is {info.name!r}, the backend is {self.backend!r}"
        )
        assert isinstance(info.description, str) and _one_line(info.description.strip()), (
            "description must be one non-empty line (shown by `imageworks backends`)"
        )
        assert len(info.description) <= 200, "description must stay short (<= 200 characters)"
        try:
            normalise_base_url(info.default_base_url)
        except (ValueError, TypeError) as exc:
            pytest.fail(f"default_base_url {info.default_base_url!r} is not an http(s) URL: {exc}")
        assert isinstance(info.capabilities, Capabilities), "capabilities must be a Capabilities"
        mi = info.capabilities.max_images
        assert mi is None or (isinstance(mi, int) and mi >= 1), f"max_images must be None or >= 1, not {mi!r}"
        assert isinstance(info.launch_hints, tuple) and all(
            isinstance(h, str) and h for h in info.launch_hints
        ), "launch_hints must be a tuple of non-empty strings"
        assert info.docs_url is None or isinstance(info.docs_url, str)

    def test_backend_info_is_cheap_and_stable(self, backend_plugin: Any) -> None:
        plugin = self._plugin_object(backend_plugin)
        start = time.perf_counter()
        first, second = plugin.backend_info(), plugin.backend_info()
        elapsed = time.perf_counter() - start
        assert first == second, "backend_info() must return the same metadata every time"
        assert elapsed < 0.5, f"backend_info() took {elapsed:.2f}s; it must do no I/O"

    def test_plugin_registers_under_the_contract_check(self, backend_plugin: Any) -> None:
        registry = BackendRegistry(entry_points=False, strict=True, allow=None, deny=())
        loaded = registry.register(self._plugin_object(backend_plugin), name=self.backend)
        assert loaded.name == self.backend

    def test_entry_point(self, backend_plugin: Any) -> None:
        check = self.check_entry_point if self.check_entry_point is not None else backend_plugin is None
        if not check:
            pytest.skip("an in-process plugin: no entry point to check (set check_entry_point = True)")
        eps = [ep for ep in md.entry_points(group=ENTRY_POINT_GROUP) if ep.name == self.backend]
        assert len(eps) == 1, (
            f"expected one entry point {self.backend!r} in {ENTRY_POINT_GROUP!r}, found {eps}"
        )
        plugin = eps[0].load()
        assert plugin.backend_info().name == self.backend, (
            "backend_info().name must equal the entry-point name"
        )
        registry = BackendRegistry(entry_points=True, strict=True, allow=[self.backend], deny=())
        assert self.backend in registry.backends, registry.failures

    def test_settings_class(self, backend_plugin: Any) -> None:
        cls = self._info(backend_plugin).settings_cls
        assert isinstance(cls, type) and issubclass(cls, BackendSettings), (
            "settings_cls must subclass BackendSettings"
        )
        assert attrs.has(cls), "settings_cls must be an attrs class (@attrs.frozen(slots=True))"
        settings: Any = cls()  # every field has a default
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            settings.timeout = 1.0
        typing.get_type_hints(cls)  # the config loader needs resolvable annotations
        own = [
            f.name for f in attrs.fields(cls) if f.name not in {g.name for g in attrs.fields(BackendSettings)}
        ]
        doc = cls.__doc__ or ""
        if own:
            assert "Attributes:" in doc, f"{cls.__name__}'s docstring needs an 'Attributes:' section"
            missing = [name for name in own if f"{name}:" not in doc]
            assert not missing, f"{cls.__name__}'s docstring does not describe {missing}"

    def test_settings_defaults_load(self, backend_plugin: Any) -> None:
        client = self.make_client(backend_plugin, overrides={})
        settings = client.settings.backend_settings(self.backend)
        assert isinstance(settings, self._info(backend_plugin).settings_cls)

    def test_settings_reject_wrong_types(self, backend_plugin: Any) -> None:
        cls = self._info(backend_plugin).settings_cls
        hints = typing.get_type_hints(cls)
        accepted = []
        for field in attrs.fields(cls):
            if field.name == "base_url":
                continue  # checked as a URL, see test_settings_reject_a_bad_url
            bad = _wrong_value(hints[field.name])
            try:
                self.make_client(backend_plugin, settings={field.name: bad}).config  # noqa: B018
            except ConfigError as exc:
                key = f"backends.{self.backend}.{field.name}"
                assert exc.key == key or key in str(exc), f"the error must name {key!r}: {exc}"
                assert _SECRET_KEY not in str(exc)
            else:
                accepted.append(f"{field.name}={bad!r} ({hints[field.name]})")
        assert not accepted, (
            "the configuration accepted wrong-typed values: " + "; ".join(accepted) + " -- use field types "
            "the loader checks (str, int, float, bool, their | None unions, tuple[str, ...], "
            "Mapping[str, Any]) or an attrs validator"
        )

    def test_settings_reject_unknown_keys(self, backend_plugin: Any) -> None:
        with pytest.raises(ConfigError) as exc_info:
            self.make_client(backend_plugin, settings={"no_such_setting_xyz": 1}).config  # noqa: B018
        assert "no_such_setting_xyz" in str(exc_info.value)

    def test_settings_reject_a_bad_url(self, backend_plugin: Any) -> None:
        with pytest.raises(ConfigError) as exc_info:
            self.make_client(backend_plugin, settings={"base_url": "ftp://example.invalid/x"}).config  # noqa: B018
        assert f"backends.{self.backend}.base_url" in str(exc_info.value)

    def test_settings_from_environment(self, backend_plugin: Any) -> None:
        var = f"IMAGEWORKS_BACKENDS__{self.backend.replace('-', '_').upper()}__TIMEOUT"
        client = self.make_client(backend_plugin, env={var: "12.5"})
        assert client.settings.backend_settings(self.backend).timeout == 12.5
        with pytest.raises(ConfigError) as exc_info:
            self.make_client(backend_plugin, env={var: "soon"}).config  # noqa: B018
        assert var in str(exc_info.value), f"the error must name the variable {var}: {exc_info.value}"

    # ------------------------------------------------------------ health

    @pytest.mark.anyio
    async def test_health_up(self, backend_plugin: Any, server_url: str | None) -> None:
        async with self._client(backend_plugin, server_url) as client:
            report = await self._health(client, self.backend)
        assert report.backend == self.backend
        assert report.reachable and report.ready, f"a working server must report ready: {report}"
        assert isinstance(report.models, tuple) and all(isinstance(m, str) for m in report.models)
        assert isinstance(report.latency, float) and report.latency >= 0
        assert report.version is None or isinstance(report.version, str)
        assert all(isinstance(v, int | float) for v in report.metrics.values()), report.metrics

    @pytest.mark.anyio
    async def test_health_down_is_reported(
        self, backend_plugin: Any, down_url: str | None, faults: FaultInjector | None
    ) -> None:
        url = self._down(faults, down_url)
        async with self._client(backend_plugin, url) as client:
            report = await self._health(client, self.backend)
        assert not report.reachable and not report.ready, f"nothing listens, yet: {report}"
        assert report.detail, "say what was seen (detail), e.g. 'connection refused'"
        assert report.hint, "say what to do (hint), e.g. the command that starts the server"

    @pytest.mark.anyio
    async def test_health_not_ready(self, backend_plugin: Any, server_url: str | None, faults: Any) -> None:
        self._need(faults, NOT_READY)
        async with self._client(backend_plugin, server_url) as client:
            report = await self._health(client, self.backend)
        assert report.reachable, f"the server answered, so it is reachable: {report}"
        assert not report.ready, f"the server cannot serve yet: {report}"
        assert report.detail or report.hint, "say why it is not ready (detail) or what to do (hint)"

    # ------------------------------------------------------------ inference

    def _check_result(self, result: Any) -> None:
        assert isinstance(result, Result), f"infer returned {type(result).__name__}, not Result"
        assert isinstance(result.text, str) and result.text.strip(), f"empty answer: {result}"
        assert result.backend == self.backend
        assert isinstance(result.model, str) and result.model, "name the model that answered"
        assert result.finish_reason, f"say why generation stopped (finish_reason): {result}"
        assert result.error is None and result.ok
        if self.reports_usage:
            u = result.usage
            assert isinstance(u.completion_tokens, int) and u.completion_tokens >= 0, (
                f"usage missing (set reports_usage = False if the backend never reports it): {u}"
            )

    @pytest.mark.anyio
    async def test_infer_with_an_image(
        self, backend_plugin: Any, server_url: str | None, faults: Any, image: PreparedImage
    ) -> None:
        if not self._caps(backend_plugin).vision:
            pytest.skip("the backend declares vision=False")
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(image))
        self._check_result(result)
        assert len(result.attempts) == 1 and result.attempts[0].error is None
        if faults is not None and faults.images_received() is not None:
            assert faults.images_received() == 1, "the image did not reach the server"

    @pytest.mark.anyio
    async def test_infer_with_several_images(
        self, backend_plugin: Any, server_url: str | None, faults: Any, image: PreparedImage
    ) -> None:
        caps = self._caps(backend_plugin)
        if not caps.vision or (caps.max_images is not None and caps.max_images < 2):
            pytest.skip("the backend takes at most one image per request")
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(image, images=(image, image)))
        self._check_result(result)
        if faults is not None and faults.images_received() is not None:
            assert faults.images_received() == 2, "both images must reach the server"

    @pytest.mark.anyio
    async def test_infer_text_only(self, backend_plugin: Any, server_url: str | None) -> None:
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(None))
        self._check_result(result)

    @pytest.mark.anyio
    async def test_too_many_images_are_refused(
        self, backend_plugin: Any, server_url: str | None, image: PreparedImage
    ) -> None:
        caps = self._caps(backend_plugin)
        if not caps.vision or caps.max_images is None:
            pytest.skip("the backend declares no max_images")
        images = (image,) * (caps.max_images + 1)
        async with self._client(backend_plugin, server_url) as client:
            with pytest.raises((BackendRejected, InputError)) as exc_info:
                await client.infer(self.request(image, images=images))
        assert str(caps.max_images) in str(exc_info.value), "say how many images are allowed"

    @pytest.mark.anyio
    async def test_model_override(self, backend_plugin: Any, server_url: str | None) -> None:
        if self.other_model is None:
            pytest.skip("other_model = None: the server answers to no second model name")
        caps = self._caps(backend_plugin)
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(None, model=self.other_model))
        self._check_result(result)
        if caps.model_switch:
            assert result.model.startswith(self.other_model), (
                f"model_switch=True, but the answer came from {result.model!r}"
            )

    @pytest.mark.anyio
    async def test_concurrent_requests(self, backend_plugin: Any, server_url: str | None) -> None:
        results: list[Result] = []
        async with self._client(backend_plugin, server_url) as client:

            async def one(i: int) -> None:
                results.append(await client.infer(self.request(None, id=f"req-{i}")))

            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(one, i)
        assert sorted(r.id or "" for r in results) == [f"req-{i}" for i in range(6)]
        for r in results:
            self._check_result(r)

    # ------------------------------------------------------------ streaming

    @pytest.mark.anyio
    async def test_stream(self, backend_plugin: Any, server_url: str | None, image: PreparedImage) -> None:
        caps = self._caps(backend_plugin)
        async with self._client(backend_plugin, server_url) as client:
            chunks = await self._collect(client, self.request(image if caps.vision else None))
        assert chunks, "the stream yielded nothing"
        assert all(isinstance(c, Chunk) for c in chunks), "stream must yield Chunk objects"
        finals = [i for i, c in enumerate(chunks) if c.finish_reason is not None]
        assert finals, "the last content chunk must carry finish_reason"
        after = chunks[finals[0] + 1 :]
        assert not any(c.text for c in after), "no text may follow the finish_reason chunk"
        assert "".join(c.text for c in chunks).strip(), "the stream carried no text"
        if caps.streaming:
            assert any(c.text for c in chunks[: finals[0] + 1]), "text must come before (or with) the finish"
        if self.reports_usage:
            usage = [c.usage for c in chunks if c.usage is not None]
            assert usage and isinstance(usage[-1].completion_tokens, int), (
                "the stream must end with usage (set reports_usage = False if the backend never reports it)"
            )

    @pytest.mark.anyio
    async def test_stream_closed_early_releases_the_request(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        async with self._client(backend_plugin, server_url) as client:
            async with _open_stream(client, self.request(None)) as stream:
                async for _ in stream:
                    break
            await self._settle(faults)
            self._check_result(await client.infer(self.request(None)))

    # ------------------------------------------------------------ errors

    @pytest.mark.anyio
    async def test_error_unavailable_when_nothing_listens(
        self, backend_plugin: Any, down_url: str | None, faults: Any
    ) -> None:
        url = self._down(faults, down_url)
        async with self._client(backend_plugin, url) as client:
            with pytest.raises(BackendUnavailable) as exc_info:
                await client.infer(self.request(None))
            with pytest.raises(BackendUnavailable):
                await self._collect(client, self.request(None))
        exc = exc_info.value
        assert exc.retryable
        assert self.backend in exc.message, f"name the backend in the message: {exc.message}"
        assert exc.hint, "say what to do (hint): the command that starts the server, the key to set"
        if url is not None:
            host_port = url.split("://", 1)[1].split("/", 1)[0]
            assert host_port in str(exc), f"name where it tried ({host_port}): {exc}"

    @pytest.mark.anyio
    async def test_no_secret_in_errors(self, backend_plugin: Any, down_url: str | None, faults: Any) -> None:
        url = self._down(faults, down_url)
        async with self._client(backend_plugin, url, settings={"api_key": _SECRET_KEY}) as client:
            with pytest.raises(BackendError) as exc_info:
                await client.infer(self.request(None))
            report = await client.health()
        exc = exc_info.value
        leaks = _secrets_in(str(exc), repr(exc), exc.hint, report.detail, report.hint, report.url)
        assert not leaks, f"an API key reached a message: {leaks}"

    @pytest.mark.anyio
    async def test_no_password_from_the_url_in_errors(
        self, backend_plugin: Any, down_url: str | None
    ) -> None:
        if down_url is None:
            pytest.skip("the backend uses no server URL")
        async with self._client(backend_plugin, _with_credentials(down_url)) as client:
            with pytest.raises(BackendError) as exc_info:
                await client.infer(self.request(None))
            report = await client.health()
            own = await self._health(client, self.backend)
        exc = exc_info.value
        texts = (str(exc), exc.hint, exc.url, report.detail, report.hint, report.url, own.url, own.hint)
        leaks = _secrets_in(*texts)
        assert not leaks, f"a password from the base URL reached a message: {leaks}"

    @pytest.mark.anyio
    async def test_error_overloaded_carries_retry_after(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, OVERLOADED)
        async with self._client(backend_plugin, server_url) as client:
            result = await client.dispatcher.run_one(self.request(None))
            with pytest.raises(BackendOverloaded):
                await self._collect(client, self.request(None))
        exc = result.error
        assert isinstance(exc, BackendOverloaded), f"expected BackendOverloaded, got {exc!r}"
        assert exc.retry_after == RETRY_AFTER, f"honour Retry-After: {RETRY_AFTER:g}, got {exc.retry_after!r}"
        assert exc.retryable and len(result.attempts) == 2, "an overloaded server is retried"
        assert self.backend in exc.message

    @pytest.mark.anyio
    async def test_error_rejected_is_not_retried(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, REJECTED)
        async with self._client(backend_plugin, server_url) as client:
            result = await client.dispatcher.run_one(self.request(None))
            with pytest.raises(BackendRejected):
                await self._collect(client, self.request(None))
        exc = result.error
        assert isinstance(exc, BackendRejected), f"expected BackendRejected, got {exc!r}"
        assert REJECT_MESSAGE in exc.message, f"pass the server's own words on: {exc.message}"
        assert self.backend in exc.message, f"name the backend: {exc.message}"
        assert not exc.retryable and len(result.attempts) == 1, "a rejected request must not be retried"
        assert exc.status is None or 400 <= exc.status < 500

    @pytest.mark.anyio
    async def test_error_malformed_answer(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, MALFORMED)
        async with self._client(backend_plugin, server_url) as client:
            with pytest.raises(BackendProtocolError) as exc_info:
                await client.infer(self.request(None))
        assert self.backend in exc_info.value.message

    @pytest.mark.anyio
    async def test_error_inside_the_stream(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, STREAM_ERROR)
        got: list[Chunk] = []
        async with self._client(backend_plugin, server_url) as client:
            with pytest.raises(BackendError) as exc_info:
                async with _open_stream(client, self.request(None)) as stream:
                    async for chunk in stream:
                        got.append(chunk)
        assert STREAM_ERROR_MESSAGE in str(exc_info.value), f"pass the in-band error on: {exc_info.value}"
        assert not any(c.finish_reason for c in got), "a failed stream must not also report a normal finish"

    @pytest.mark.anyio
    async def test_request_timeout(self, backend_plugin: Any, server_url: str | None, faults: Any) -> None:
        self._need(faults, HANG)
        async with self._client(backend_plugin, server_url) as client:
            start = time.monotonic()
            with pytest.raises(BackendTimeout):
                await client.infer(self.request(None, timeout=0.5))
            elapsed = time.monotonic() - start
            assert elapsed < 10, f"Request.timeout=0.5 with two tries took {elapsed:.1f}s"
            faults.clear()
            await self._settle(faults)

    # ------------------------------------------------------------ cancellation

    @pytest.mark.anyio
    async def test_cancel_in_flight_releases_the_connection(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, HANG)
        async with self._client(backend_plugin, server_url) as client:
            with anyio.move_on_after(0.5) as scope:
                await client.infer(self.request(None))
            assert scope.cancelled_caught, "the request should have hung until cancelled"
            await self._settle(faults)
            faults.clear()
            self._check_result(await client.infer(self.request(None)))
            with anyio.move_on_after(0.3):
                faults.inject(HANG)
                async with _open_stream(client, self.request(None)) as stream:
                    async for _ in stream:
                        pass
            await self._settle(faults)
            faults.clear()
        await self._settle(faults)

    @pytest.mark.anyio
    async def test_cancel_at_any_moment_leaves_the_client_usable(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        async with self._client(backend_plugin, server_url) as client:
            for delay in (0.0, 0.001, 0.005, 0.02, 0.05):
                with anyio.move_on_after(delay):
                    await client.infer(self.request(None))
                with anyio.move_on_after(delay):
                    await self._collect(client, self.request(None))
            self._check_result(await client.infer(self.request(None)))
        await self._settle(faults)
