"""The plugin-author API: one public namespace, plugins that import only it, and its helpers."""

from __future__ import annotations

import ast
import importlib
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import imageworks_core
import imageworks_core.plugin as plugin_api
from imageworks_core import BackendRejected, Client, HealthReport, PluginError, PreparedImage, Request
from imageworks_core.plugin import (
    BackendBase,
    BackendContext,
    BackendProtocolError,
    Capabilities,
    Chunk,
    Usage,
    drop_fields,
    first_time,
    hookimpl,
    iter_message_parts,
    iter_ndjson,
    max_model_len,
    resolve_model,
    sampling,
    set_fields,
)
from imageworks_core.testing.conformance import BackendConformance

ROOT = Path(__file__).resolve().parents[1]
#: Public modules a plugin may import from, each limited to its ``__all__``.
PUBLIC_MODULES = (
    "imageworks_core",
    "imageworks_core.plugin",
    "imageworks_core.testing",
    "imageworks_core.testing.conformance",
    "imageworks_core.testing.fake",
    "imageworks_core.testing.fake_server",
    "imageworks_core.testing.loops",
)


def _plugin_sources() -> list[Path]:
    files = [
        *ROOT.glob("plugins/*/src/**/*.py"),
        *ROOT.glob("plugins/*/tests/**/*.py"),
        *ROOT.glob("examples/*/src/**/*.py"),
        *ROOT.glob("examples/*/tests/**/*.py"),
    ]
    assert len(files) > 10, "the plugins and examples were not found"
    return sorted(files)


def _private_imports(path: Path) -> list[str]:
    """``file:line: what`` for each import of a name outside the public modules' ``__all__``."""
    bad: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        where = f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("imageworks_core") and alias.name not in PUBLIC_MODULES:
                    bad.append(f"{where}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if not node.module.startswith("imageworks_core"):
                continue
            if node.module not in PUBLIC_MODULES:
                bad.append(f"{where}: from {node.module} import ... (not a public module)")
                continue
            exported = set(importlib.import_module(node.module).__all__)
            bad += [
                f"{where}: from {node.module} import {a.name} (not in its __all__)"
                for a in node.names
                if a.name not in exported
            ]
    return bad


def test_plugins_and_examples_import_only_public_names() -> None:
    bad = [line for path in _plugin_sources() for line in _private_imports(path)]
    assert not bad, "plugins must import only public names:\n" + "\n".join(bad)


def test_the_import_check_catches_private_imports(tmp_path: Path) -> None:
    probe = ROOT / "plugins" / "_probe_private_import.py"
    probe.write_text(
        "import imageworks_core.http\n"
        "from imageworks_core.errors import redact_url\n"
        "from imageworks_core.plugin import _WHERE, redact_url as ok\n"
        "from imageworks_core import Client\n"
    )
    try:
        bad = _private_imports(probe)
    finally:
        probe.unlink()
    assert len(bad) == 3, bad
    assert any("import imageworks_core.http" in b for b in bad)
    assert any("imageworks_core.errors" in b for b in bad)
    assert any("_WHERE" in b for b in bad)


def test_plugin_namespace_all_is_sorted_complete_and_resolves() -> None:
    assert plugin_api.__all__ == sorted(plugin_api.__all__)
    assert {n for n in dir(plugin_api) if not n.startswith("_")} == set(plugin_api.__all__)
    for name in plugin_api.__all__:
        value = getattr(plugin_api, name)
        if name in imageworks_core.__all__:
            assert value is getattr(imageworks_core, name), name  # one object, two doors
    with pytest.raises(AttributeError):
        plugin_api.not_a_name  # noqa: B018


def test_plugin_namespace_import_is_light() -> None:
    code = (
        "import sys; from imageworks_core.plugin import BackendBase, hookimpl; "
        "print(','.join(m for m in ('PIL', 'aiohttp', 'httpx', 'cattrs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---------------------------------------------------------------- helpers


def _client(*plugins: Any, **kw: Any) -> Client:
    return Client(
        plugins=plugins,
        entry_points=False,
        user_file=False,
        project_file=False,
        backend=plugins[0].name,
        **kw,
    )


class _OnlyStream(BackendBase):
    """A plugin that writes only ``stream``: ``infer`` comes from ``BackendBase``."""

    name = "onlystream"
    default_base_url = "http://localhost/none"
    capabilities = Capabilities(vision=True, streaming=True)

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        return HealthReport.up(ctx, models=("m-1",), version="1")

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
        asked = sampling(ctx, request)
        words = f"{request.prompt} max={asked.max_tokens} images={len(request.images)}".split(" ")
        for i, word in enumerate(words):
            yield Chunk(text=word if i == 0 else " " + word, model=request.model or "m-1")
        yield Chunk(finish_reason="stop", usage=Usage(prompt_tokens=1, completion_tokens=len(words)))


class _OnlyInfer(BackendBase):
    name = "onlyinfer"
    default_base_url = "http://localhost/none"
    capabilities = Capabilities(streaming=False)

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        return HealthReport.not_ready(ctx, "loading", hint="wait")

    @hookimpl
    async def infer(self, ctx: BackendContext, request: Request) -> Any:
        from imageworks_core import Result

        return Result(text="whole answer", backend=ctx.name, model="m", usage=Usage(), finish_reason="stop")


class _Neither(BackendBase):
    name = "neither"
    default_base_url = "http://localhost/none"

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        return HealthReport.down(ctx, "nothing")


@pytest.mark.anyio
async def test_default_infer_from_stream_and_stream_from_infer() -> None:
    async with _client(_OnlyStream(), max_tokens=77) as client:
        result = await client.infer(Request(prompt="hello"))
        assert result.text == "hello max=77 images=0"
        assert (result.finish_reason, result.model, result.usage.completion_tokens) == ("stop", "m-1", 3)
        report = await client.health()
        assert report.ready and report.models == ("m-1",) and report.url == "http://localhost/none"
    async with _client(_OnlyInfer()) as client:
        chunks = [c async for c in client.stream(Request(prompt="x"))]
        assert "".join(c.text for c in chunks) == "whole answer" and chunks[-1].finish_reason == "stop"
        report = await client.health()
        assert report.reachable and not report.ready and (report.detail, report.hint) == ("loading", "wait")


@pytest.mark.anyio
async def test_a_plugin_writing_neither_infer_nor_stream_gets_a_plugin_error() -> None:
    ctx: Any = type("Ctx", (), {"name": "neither", "settings": None})()
    with pytest.raises(PluginError, match="neither 'infer' nor 'stream'"):
        await _Neither().infer(ctx, Request(prompt="x"))
    with pytest.raises(PluginError, match="neither 'infer' nor 'stream'"):
        async for _ in _Neither().stream(ctx, Request(prompt="x")):
            pass


@pytest.mark.anyio
async def test_health_report_down_uses_the_launch_hint_and_hides_credentials() -> None:
    overrides = {"backends": {"neither": {"base_url": "http://user:s3cr3t-pw@gpu:9/v1"}}}
    async with _client(_Neither(), overrides=overrides) as client:
        report = HealthReport.down(client.context("neither"), "refused")
    assert not report.reachable and not report.ready and report.hint
    assert "s3cr3t-pw" not in report.url and "gpu:9" in report.url


def test_with_hint_replaces_the_hint_in_place() -> None:
    exc = BackendRejected("too long", backend="b", hint="old")
    assert exc.with_hint("use fewer tokens") is exc
    assert exc.hint == "use fewer tokens" and str(exc) == "too long\n  hint: use fewer tokens"
    assert str(exc.with_hint(None)) == "too long"


def test_set_fields_and_max_model_len() -> None:
    settings = type("S", (), {"top_k": 5, "seed": None, "kwargs": {"a": 1}})()
    assert set_fields(settings, ("top_k", "seed", "kwargs", "absent")) == {"top_k": 5, "kwargs": {"a": 1}}
    entries = [{"id": "lora", "parent": "base", "max_model_len": 1}, {"id": "base", "max_model_len": 8192}]
    assert max_model_len(entries) == 8192
    assert max_model_len([{"id": "x", "max_model_len": True}]) is None


@pytest.mark.anyio
async def test_first_time_and_drop_fields_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="imageworks")
    async with _client(_OnlyStream()) as client:
        ctx = client.context("onlystream")
        assert first_time(ctx, "t", ["a", "b", "a"]) == ["a", "b"]
        assert first_time(ctx, "t", ["b", "c"]) == ["c"]
        for _ in range(3):
            body = {"model": "m", "seed": 1, "user": "u"}
            assert drop_fields(ctx, body, ("seed", "logprobs"), "the server rejects it") == ["seed"]
            assert body == {"model": "m", "user": "u"}
    warnings = [r.getMessage() for r in caplog.records if "seed" in r.getMessage()]
    assert warnings == ["onlystream: not sending seed: the server rejects it"]


@pytest.mark.anyio
async def test_resolve_model() -> None:
    async with _client(_OnlyStream()) as client:
        ctx = client.context("onlystream")
        calls: list[int] = []

        async def one() -> list[str]:
            calls.append(1)
            return ["only-model"]

        assert await resolve_model(ctx, Request(model="asked"), one) == "asked"
        assert await resolve_model(ctx, Request(), one) == "only-model"
        assert await resolve_model(ctx, Request(), one) == "only-model" and len(calls) == 1

    async with _client(_OnlyStream()) as client:

        async def several() -> list[str]:
            return ["a", "b"]

        with pytest.raises(BackendRejected) as excinfo:
            await resolve_model(client.context("onlystream"), Request(), several)
        assert "a, b" in excinfo.value.message and "backends.onlystream.model" in str(excinfo.value.hint)

        async def none() -> list[str]:
            return []

        with pytest.raises(BackendRejected, match="serves no model"):
            await resolve_model(client.context("onlystream"), Request(), none)


def test_iter_message_parts() -> None:
    image = PreparedImage(data=b"\x89PNG-bytes", mime="image/png", width=2, height=2)
    simple = list(iter_message_parts(Request(prompt="hi", system="be brief", images=(image,))))
    assert simple == [("system", "be brief", ()), ("user", "hi", (image,))]
    messages = (
        {"role": "system", "content": "sys"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": image.data_url()}},
                {"type": "image_url", "image_url": image.data_url()},
            ],
        },
    )
    parts = list(iter_message_parts(Request(messages=messages)))
    assert [(r, t, len(i)) for r, t, i in parts] == [("system", "sys", 0), ("user", "look", 2)]
    assert parts[1][2][0].data == image.data and parts[1][2][0].mime == "image/png"
    bad = ({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]},)
    with pytest.raises(BackendRejected, match="data: URL"):
        list(iter_message_parts(Request(messages=bad)))


class _Lines:
    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines
        self.status, self.headers = 200, {}

    async def read(self) -> bytes:
        return b""

    async def lines(self) -> AsyncIterator[bytes]:
        for line in self._lines:
            yield line


@pytest.mark.anyio
async def test_iter_ndjson() -> None:
    resp = _Lines([b'{"a": 1}', b"", b'  {"b": 2}  ', b"[3]"])
    assert [v async for v in iter_ndjson(resp, backend="b", url="http://u:pw@h/api")] == [
        {"a": 1},
        {"b": 2},
        [3],
    ]
    broken = _Lines([b'{"a": 1}', b"<html>oops"])
    with pytest.raises(BackendProtocolError) as excinfo:
        _ = [v async for v in iter_ndjson(broken, backend="b", url="http://u:pw@h/api")]
    assert excinfo.value.retryable and "oops" in excinfo.value.message and "pw" not in excinfo.value.message


# ---------------------------------------------------------------- the conformance suite's own rules


@pytest.mark.anyio
async def test_conformance_health_rule_backend_error_ok_other_exceptions_fail() -> None:
    """One rule (docs/plugin-authoring.md): health returns a report or raises a BackendError."""
    from imageworks_core import BackendUnavailable

    class Raises(_OnlyStream):
        name = "raises"
        error: BaseException = BackendUnavailable("nothing listens", backend="raises")

        @hookimpl
        async def health(self, ctx: BackendContext) -> HealthReport:
            raise self.error

    plugin = Raises()
    async with _client(plugin) as client:
        report = await BackendConformance._health(client, "raises")
        assert not report.reachable and not report.ready and "nothing listens" in str(report.detail)
        plugin.error = RuntimeError("a bug")
        with pytest.raises(RuntimeError, match="a bug"):
            await BackendConformance._health(client, "raises")


def test_conformance_other_model_none_skips_the_model_override_test(tmp_path: Path) -> None:
    test_file = tmp_path / "test_one_model.py"
    test_file.write_text(
        textwrap.dedent(
            """
            from imageworks_core.testing.conformance import BackendConformance
            from test_plugin_api import _OnlyStream


            class TestOneModel(BackendConformance):
                backend = "onlystream"
                plugin = _OnlyStream()
                needs_server = False
                other_model = None
            """
        )
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test_file),
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-k",
            "model_override or infer_text_only",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent)},
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "TypeError" not in out.stdout
    assert "2 passed, 2 skipped" in out.stdout, out.stdout
    assert "other_model = None" in out.stdout


@pytest.mark.anyio
async def test_the_core_enforces_request_timeout_on_a_plugin_that_ignores_it() -> None:
    """docs/plugin-authoring.md: a plugin need not pass Request.timeout on; the core cancels the try."""
    import time

    import anyio

    from imageworks_core import BackendTimeout, Result

    class Hangs(_OnlyInfer):
        name = "hangs"

        @hookimpl
        async def infer(self, ctx: BackendContext, request: Request) -> Result:
            await anyio.sleep_forever()
            raise AssertionError("unreachable")

    async with _client(Hangs()) as client:
        start = time.monotonic()
        with pytest.raises(BackendTimeout) as excinfo:
            await client.infer(Request(prompt="x", timeout=0.3))
    assert time.monotonic() - start < 10
    assert "longer than 0.3s" in excinfo.value.message and excinfo.value.attempts


# ---------------------------------------------------------------- a non-OpenAI plugin over ctx.http


class _OllamaLike(BackendBase):
    """The sketch in docs/plugin-authoring.md: Ollama's native /api/chat, NDJSON, only ``stream`` written."""

    name = "ollamalike"
    default_base_url = "http://localhost:11434"
    capabilities = Capabilities(vision=True, streaming=True)

    @hookimpl
    async def health(self, ctx: BackendContext) -> HealthReport:
        tags = await ctx.http.get_json("/api/tags")
        return HealthReport.up(ctx, models=[m["name"] for m in tags.get("models", [])])

    @hookimpl
    async def stream(self, ctx: BackendContext, request: Request) -> AsyncIterator[Chunk]:
        import json

        async def names() -> list[str]:
            return [m["name"] for m in (await ctx.http.get_json("/api/tags")).get("models", [])]

        body = {
            "model": await resolve_model(ctx, request, names),
            "messages": [
                {"role": role, "content": text, "images": [i.b64() for i in images]}
                for role, text, images in iter_message_parts(request)
            ],
            "options": {"num_predict": sampling(ctx, request).max_tokens},
        }
        url = ctx.http.url("/api/chat")
        async with ctx.http.stream("POST", url, body=json.dumps(body).encode()) as resp:
            async for event in iter_ndjson(resp, backend=ctx.name, url=url):
                done = bool(event.get("done"))
                yield Chunk(
                    text=event.get("message", {}).get("content", ""),
                    finish_reason=event.get("done_reason", "stop") if done else None,
                )


@pytest.fixture(scope="module")
def ndjson_server() -> Any:
    """A tiny NDJSON chat server (stdlib, own thread): /api/tags and streamed /api/chat."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, lines: list[bytes]) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/x-ndjson")
            self.send_header("Content-Length", str(sum(len(ln) for ln in lines)))
            self.end_headers()
            for line in lines:
                self.wfile.write(line)

        def do_GET(self) -> None:
            self._send([json.dumps({"models": [{"name": "llava:7b"}]}).encode()])

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append(body)
            words = ["A ", "red ", "square."]
            lines = [json.dumps({"message": {"content": w}, "done": False}).encode() + b"\n" for w in words]
            lines.append(
                json.dumps({"message": {"content": ""}, "done": True, "done_reason": "stop"}).encode()
            )
            self._send(lines)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


@pytest.mark.anyio
async def test_a_native_ndjson_plugin_written_from_the_docs(ndjson_server: Any) -> None:
    url, seen = ndjson_server
    image = PreparedImage(data=b"\x89PNG-bytes", mime="image/png", width=2, height=2)
    overrides = {"backends": {"ollamalike": {"base_url": url}}}
    async with _client(_OllamaLike(), overrides=overrides, max_tokens=21) as client:
        assert (await client.health()).models == ("llava:7b",)
        result = await client.infer(Request(prompt="What is it?", images=(image,)))
        chunks = [c async for c in client.stream(Request(prompt="again"))]
    assert (result.text, result.finish_reason) == ("A red square.", "stop")
    assert "".join(c.text for c in chunks) == "A red square." and chunks[-1].finish_reason == "stop"
    assert seen[0]["model"] == "llava:7b" and seen[0]["options"] == {"num_predict": 21}
    assert seen[0]["messages"] == [{"role": "user", "content": "What is it?", "images": [image.b64()]}]
