"""The conformance tests of metadata, settings and health."""

from __future__ import annotations

import importlib.metadata as md
import time
import typing
from typing import Any

import attrs
import pytest

from ..errors import (
    ConfigError,
)
from ..models import Capabilities
from ..plugins import ENTRY_POINT_GROUP, BackendRegistry
from ..settings import BackendSettings, normalise_base_url
from ._conformance_base import SuiteBase, _one_line, _wrong_value
from ._conformance_faults import _SECRET_KEY, NOT_READY, FaultInjector


class ContractTests(SuiteBase):
    """The plugin's metadata, settings and health checks."""

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
