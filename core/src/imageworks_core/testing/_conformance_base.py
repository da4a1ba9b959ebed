"""The conformance suite's base: its settings, fixtures, hooks and internals, and the helpers."""

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
from typing import Any, ClassVar

import anyio
import attrs
import pytest

from ..client import Client
from ..errors import BackendError
from ..models import BackendInfo, Capabilities, Chunk, HealthReport, PreparedImage, Request
from ..plugins import ENTRY_POINT_GROUP
from ..retry import testing
from ..settings import Secret
from ._conformance_faults import _SECRET_KEY, _SECRET_PASSWORD, DOWN, FaultInjector, OpenAIServerFaults

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


class SuiteBase:
    """What every conformance test uses (documented on ``BackendConformance``)."""

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
