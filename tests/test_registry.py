"""Backend discovery: the factory, in-process plugins, broken distributions, strict mode, allow/deny."""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import pytest

from imageworks_core import BackendInfo, Client, PluginError, hookimpl
from imageworks_core.backends.openai import OpenAIBackend
from imageworks_core.plugins import BackendRegistry, installed_backend_names
from imageworks_core.testing import FakeBackend


def _first_party() -> dict[str, str]:
    """Installed first-party backends and the class each must resolve to."""
    expected = {"openai": "imageworks_core.backends.openai:OpenAIBackend"}
    for name, target in {
        "vllm": "imageworks_backend_vllm:VllmBackend",
        "lmdeploy": "imageworks_backend_lmdeploy:LmdeployBackend",
        "triton": "imageworks_backend_triton:TritonBackend",
    }.items():
        if name in installed_backend_names():
            expected[name] = target
    return expected


@pytest.mark.parametrize("name", sorted(_first_party()))
def test_factory_returns_the_right_class_for_each_name(name: str) -> None:
    module, _, cls_name = _first_party()[name].partition(":")
    registry = BackendRegistry()
    loaded = registry.get(name)
    cls = getattr(importlib.import_module(module), cls_name, None)
    if cls is None:  # the plugin names its class differently: the entry point's object is the reference
        cls = type(loaded.plugin)
    assert isinstance(loaded.plugin, cls)
    assert loaded.info.name == name
    assert loaded.distribution is not None and loaded.version


def test_default_backend_is_vllm_and_its_absence_fails_only_when_used() -> None:
    import anyio

    from imageworks_core import Request

    client = Client(user_file=False, project_file=False, deny=["vllm"])
    assert client.settings.backend == "vllm"

    async def main() -> None:
        async with client:
            await client.infer(Request(prompt="x"))

    with pytest.raises(PluginError) as err:
        anyio.run(main)
    # left out by the deny list: the hint says so instead of "pip install" (issue 20)
    assert "excluded by the allow/deny lists" in str(err.value)
    assert "deny" in (err.value.hint or "") and "pip install" not in str(err.value)


def test_in_process_plugin_is_found_by_name() -> None:
    fake = FakeBackend("mine")
    client = Client(plugins=[fake], entry_points=False, user_file=False, project_file=False, backend="mine")
    assert client.registry.get("mine").plugin is fake
    assert client.settings.backend == "mine"
    assert isinstance(
        Client(entry_points=True, user_file=False, project_file=False).registry.get("openai").plugin,
        OpenAIBackend,
    )


def test_unknown_backend_names_installed_ones() -> None:
    registry = BackendRegistry(entry_points=False)
    registry.register(FakeBackend("a"))
    with pytest.raises(PluginError) as err:
        registry.get("nope")
    assert "unknown backend 'nope'" in str(err.value)
    assert "installed: a" in str(err.value)
    assert "pip install imageworks-backend-nope" in str(err.value)


def test_each_request_reaches_exactly_one_backend() -> None:
    a, b = FakeBackend("a", reply="from a"), FakeBackend("b", reply="from b")
    import anyio

    from imageworks_core import Request

    async def main() -> tuple[str, str]:
        async with Client(
            plugins=[a, b], entry_points=False, user_file=False, project_file=False, backend="a"
        ) as client:
            ra = await client.infer(Request(prompt="x"))
            rb = await client.infer(Request(prompt="x", backend="b"))
            return ra.text, rb.text

    assert anyio.run(main) == ("from a", "from b")
    assert len(a.calls) == 1 and len(b.calls) == 1


def test_wrapper_plugin_sees_calls_but_does_not_answer() -> None:
    import anyio

    from imageworks_core import Request

    seen: list[str] = []

    class Observer:
        @hookimpl(wrapper=True)
        def infer(self, ctx, request):  # type: ignore[no-untyped-def]
            seen.append(ctx.name)
            return (yield)

    fake = FakeBackend("a")

    async def main() -> str:
        client = Client(plugins=[fake], entry_points=False, user_file=False, project_file=False, backend="a")
        client.registry.register_wrapper(Observer())
        async with client:
            return (await client.infer(Request(prompt="x"))).text

    assert anyio.run(main) == fake.reply
    assert seen == ["a"]


# ---------------------------------------------------------------- broken installed distributions


def _fake_distribution(root: Path, name: str, entry_points: str, modules: dict[str, str]) -> None:
    dist = root / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for mod, source in modules.items():
        (root / f"{mod}.py").write_text(textwrap.dedent(source))


GOOD = """
    from imageworks_core import BackendInfo, hookimpl
    from imageworks_core.testing import FakeBackend

    plugin = FakeBackend("goodone")
"""


@pytest.fixture
def broken_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    _fake_distribution(
        tmp_path,
        "imageworks-backend-broken",
        """
        [imageworks.backends]
        importfail = iw_importfail:plugin
        nohooks = iw_nohooks:plugin
        wrongname = iw_wrongname:plugin
        syncinfer = iw_syncinfer:plugin
        goodone = iw_good:plugin
        """,
        {
            "iw_importfail": "import this_module_does_not_exist_anywhere\n",
            "iw_nohooks": "plugin = object()\n",
            "iw_wrongname": GOOD.replace('FakeBackend("goodone")', 'FakeBackend("othername")'),
            "iw_syncinfer": textwrap.dedent(GOOD)
            + textwrap.dedent(
                """
                class Sync(FakeBackend):
                    @hookimpl
                    def infer(self, ctx, request):
                        return None

                plugin = Sync("syncinfer")
                """
            ),
            "iw_good": GOOD,
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    for mod in ("iw_importfail", "iw_nohooks", "iw_wrongname", "iw_syncinfer", "iw_good"):
        sys.modules.pop(mod, None)
    importlib.invalidate_caches()
    return tmp_path


def test_broken_entry_points_are_recorded_and_the_rest_work(broken_site: Path) -> None:
    registry = BackendRegistry()
    failures = {f.name: f for f in registry.failures}
    assert set(failures) == {"importfail", "nohooks", "wrongname", "syncinfer"}
    assert "ModuleNotFoundError" in failures["importfail"].error
    assert "does not implement" in failures["nohooks"].error
    assert "must equal the entry-point name" in failures["wrongname"].error
    assert "must be an async def" in failures["syncinfer"].error
    assert all(f.distribution == "imageworks-backend-broken" for f in failures.values())
    assert "goodone" in registry.backends and "openai" in registry.backends
    with pytest.raises(PluginError, match="failed to load"):
        registry.get("importfail")


def test_strict_mode_fails_on_a_broken_plugin(broken_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginError, match="failed to load"):
        BackendRegistry(strict=True)
    monkeypatch.setenv("IMAGEWORKS_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        BackendRegistry()


def test_allow_and_deny_lists(broken_site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = BackendRegistry(allow=["goodone", "openai"], strict=True)  # broken ones are never loaded
    assert set(registry.backends) == {"goodone", "openai"}
    registry = BackendRegistry(deny=["importfail", "nohooks", "wrongname", "syncinfer"], strict=True)
    assert "goodone" in registry.backends
    monkeypatch.setenv("IMAGEWORKS_BACKENDS_DENY", "goodone,importfail,nohooks,wrongname,syncinfer")
    assert "goodone" not in BackendRegistry(strict=True).backends
    monkeypatch.setenv("IMAGEWORKS_BACKENDS_ALLOW", "openai")
    monkeypatch.delenv("IMAGEWORKS_BACKENDS_DENY")
    assert set(BackendRegistry(strict=True).backends) == {"openai"}


def test_cli_lists_broken_plugins_and_keeps_working(
    broken_site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from imageworks_core.cli import main

    assert main(["backends", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["importfail"]["error"] and rows["goodone"]["error"] is None
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "importfail" in out and "BROKEN" in out


def test_registering_a_duplicate_name_is_refused() -> None:
    registry = BackendRegistry(entry_points=False)
    registry.register(FakeBackend("a"))
    with pytest.raises(PluginError, match="already registered"):
        registry.register(FakeBackend("a"))


def test_plugin_info_must_be_backendinfo() -> None:
    class Bad(FakeBackend):
        @hookimpl
        def backend_info(self) -> BackendInfo:
            return "not info"  # type: ignore[return-value]

    registry = BackendRegistry(entry_points=False)
    with pytest.raises(PluginError, match="not BackendInfo"):
        registry.register(Bad("bad"), name="bad")
    assert "bad" not in registry.backends


def test_plugin_capabilities_must_be_capabilities() -> None:
    class Bad(FakeBackend):
        @hookimpl
        def backend_info(self) -> BackendInfo:
            return BackendInfo(
                name="bad",
                description="x",
                default_base_url="http://127.0.0.1:9",
                capabilities=None,  # type: ignore[arg-type]
            )

    registry = BackendRegistry(entry_points=False)
    with pytest.raises(PluginError, match=r"capabilities is NoneType, not imageworks_core\.Capabilities"):
        registry.register(Bad("bad"), name="bad")
    assert "bad" not in registry.backends
