"""Embedding (issue 20): the host program decides its configuration.

``Client(...)`` reads no file, and ``IMAGEWORKS_*`` only while ``trust_env``;
``Client.from_config(...)`` layers defaults < user file < pyproject.toml < env <
code; a value set in code beats every ambient one, whatever its specificity.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from imageworks_core import Client, ConfigError, PluginError, RetrySettings
from imageworks_core.backends.openai import OpenAIBackend
from imageworks_core.testing import FakeBackend

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("error::ResourceWarning")
LAYERS = ["user", "project", "env", "code"]  # lowest first


def _plugins() -> list[Any]:
    return [FakeBackend("vllm"), FakeBackend("lmdeploy"), OpenAIBackend()]


def _hostile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory and environment that try to change the host's client."""
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [tool.imageworks]
            max_tokens = 3
            concurrency = 1
            fallback = ["lmdeploy"]
            [tool.imageworks.backends.vllm]
            model = "from-pyproject"
            """
        )
    )
    user = tmp_path / "user.toml"
    user.write_text('backend = "lmdeploy"\nmax_pixels = 7\n')
    monkeypatch.setenv("IMAGEWORKS_CONFIG_FILE", str(user))
    monkeypatch.setenv("IMAGEWORKS_CONCURRENCY", "64")
    monkeypatch.setenv("IMAGEWORKS_MAX_TOKENS", "5")
    monkeypatch.setenv("IMAGEWORKS_BACKENDS_DENY", "vllm")
    monkeypatch.setenv("IMAGEWORKS_BACKENDS_ALLOW", "lmdeploy")
    monkeypatch.setenv("IMAGEWORKS_STRICT_PLUGINS", "1")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_client_reads_no_file_and_trust_env_false_reads_no_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hostile(tmp_path, monkeypatch)
    monkeypatch.setenv("IMAGEWORKS_MAX_TOKEN", "9")  # a near miss: fails a client that reads the env
    client = Client(
        backend="vllm", concurrency=4, max_tokens=50, plugins=_plugins(), entry_points=False, trust_env=False
    )
    s = client.settings
    assert (s.backend, s.max_tokens, s.max_pixels, s.fallback) == ("vllm", 50, 1_000_000, ())
    assert client.concurrency("vllm") == 4 and s.backends["vllm"].model is None
    assert "vllm" in client.registry.backends  # the env's deny/allow lists were not read
    sources = client.settings_sources()
    assert sources["max_tokens"] == "code" and sources["backends.vllm.concurrency"] == "code"
    assert sources["max_pixels"] == "default" and sources["backends.vllm.model"] == "default"


def test_trust_env_true_reads_the_variables_but_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hostile(tmp_path, monkeypatch)
    monkeypatch.delenv("IMAGEWORKS_BACKENDS_DENY")
    monkeypatch.delenv("IMAGEWORKS_BACKENDS_ALLOW")
    client = Client(backend="vllm", concurrency=4, plugins=_plugins(), entry_points=False)
    s = client.settings
    assert s.max_tokens == 5 and client.settings_sources()["max_tokens"] == "env IMAGEWORKS_MAX_TOKENS"
    # the env's top-level concurrency covers every backend, but the code's per-backend value wins
    assert client.concurrency("vllm") == 4 and client.concurrency("lmdeploy") == 64
    assert s.max_pixels == 1_000_000  # IMAGEWORKS_CONFIG_FILE names a file: Client reads none
    assert s.backends["vllm"].model is None  # nor pyproject.toml

    monkeypatch.setenv("IMAGEWORKS_MAX_TOKEN", "9")
    with pytest.raises(ConfigError) as err:
        Client(backend="vllm", plugins=_plugins(), entry_points=False).config  # noqa: B018
    assert "IMAGEWORKS_MAX_TOKENS" in str(err.value)  # did you mean ...


def test_deny_list_from_the_env_names_itself_not_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEWORKS_BACKENDS_DENY", "vllm")
    client = Client(backend="vllm")  # the installed vllm plugin, left out by the env's deny list
    with pytest.raises(ConfigError) as err:
        client.config  # noqa: B018
    assert "excluded by the allow/deny lists" in str(err.value)
    assert "IMAGEWORKS_BACKENDS_DENY" in (err.value.hint or "") and "pip install" not in str(err.value)
    with pytest.raises(PluginError) as perr:
        client.registry.get("vllm")
    assert "deny" in (perr.value.hint or "") and "pip install" not in str(perr.value)


def test_from_config_layers_as_the_cli_and_code_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _hostile(tmp_path, monkeypatch)
    for var in ("IMAGEWORKS_BACKENDS_DENY", "IMAGEWORKS_BACKENDS_ALLOW"):
        monkeypatch.delenv(var)
    client = Client.from_config(backend="vllm", concurrency=4, plugins=_plugins(), entry_points=False)
    s, src = client.settings, client.settings_sources()
    assert s.max_pixels == 7 and src["max_pixels"] == str(tmp_path / "user.toml")
    assert s.backends["vllm"].model == "from-pyproject" and "pyproject.toml" in src["backends.vllm.model"]
    assert s.max_tokens == 5 and src["max_tokens"] == "env IMAGEWORKS_MAX_TOKENS"
    assert s.fallback == ("lmdeploy",)
    assert client.concurrency("vllm") == 4 and src["backends.vllm.concurrency"] == "code"
    assert client.concurrency("lmdeploy") == 64
    assert src["backends.lmdeploy.concurrency"] == "env IMAGEWORKS_CONCURRENCY"


def _layered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, values: dict[str, dict[str, Any]]) -> Client:
    """A from_config client with *values* per layer: ``{"user": {"max_tokens": 1}, ...}``.

    A key ``vllm.concurrency`` is per backend; other keys are top-level.
    """

    def toml(section: dict[str, Any], prefix: str) -> str:
        top = [f"{k} = {v}" for k, v in section.items() if "." not in k]
        per = [f"{k.split('.')[1]} = {v}" for k, v in section.items() if "." in k]
        text = "\n".join([f"[{prefix}]" if prefix else "", *top])
        if per:
            text += f"\n[{prefix + '.' if prefix else ''}backends.vllm]\n" + "\n".join(per)
        return text + "\n"

    user = tmp_path / "user.toml"
    user.write_text(toml(values.get("user", {}), ""))
    monkeypatch.setenv("IMAGEWORKS_CONFIG_FILE", str(user))
    (tmp_path / "pyproject.toml").write_text(toml(values.get("project", {}), "tool.imageworks"))
    for k, v in values.get("env", {}).items():
        var = "IMAGEWORKS_BACKENDS__VLLM__CONCURRENCY" if "." in k else f"IMAGEWORKS_{k.upper()}"
        monkeypatch.setenv(var, str(v))
    code = values.get("code", {})
    kwargs: dict[str, Any] = {k: v for k, v in code.items() if "." not in k}
    if "vllm.concurrency" in code:
        kwargs["backends"] = {"vllm": {"concurrency": code["vllm.concurrency"]}}
    return Client.from_config(backend="vllm", cwd=tmp_path, plugins=_plugins(), entry_points=False, **kwargs)


@pytest.mark.parametrize(("low", "high"), list(itertools.combinations(LAYERS, 2)))
def test_every_layer_pair_the_higher_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low: str, high: str
) -> None:
    client = _layered(tmp_path, monkeypatch, {low: {"max_tokens": 11}, high: {"max_tokens": 22}})
    assert client.settings.max_tokens == 22
    source = client.settings_sources()["max_tokens"]
    expected = {"user": "user.toml", "project": "pyproject.toml", "env": "env ", "code": "code"}[high]
    assert expected in source


@pytest.mark.parametrize(("low", "high"), list(itertools.combinations(LAYERS, 2)))
@pytest.mark.parametrize("specific_high", [True, False], ids=["per-backend-high", "top-level-high"])
def test_concurrency_the_higher_layer_wins_whatever_its_specificity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, low: str, high: str, specific_high: bool
) -> None:
    hi_key, lo_key = (
        ("vllm.concurrency", "concurrency") if specific_high else ("concurrency", "vllm.concurrency")
    )
    client = _layered(tmp_path, monkeypatch, {low: {lo_key: 3}, high: {hi_key: 9}})
    assert client.concurrency("vllm") == 9


@pytest.mark.about("max_attempts")
def test_bad_values_fail_at_construction() -> None:
    for kwargs, needle in [
        ({"concurrency": 0}, "concurrency"),
        ({"timeout": -1.0}, "timeout"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"transport": "curl"}, "transport must be auto, httpx or aiohttp"),
        ({"retry": {"max_attempts": 2}}, "RetrySettings"),
        ({"concurrency": "4"}, "concurrency"),
    ]:
        with pytest.raises(ConfigError) as err:
            Client(plugins=_plugins(), entry_points=False, **kwargs)
        assert needle in str(err.value), (kwargs, str(err.value))
    client = Client(
        plugins=_plugins(), entry_points=False, retry=RetrySettings(max_attempts=2), api_key="sk-secret-1234"
    )
    assert client.settings.retry.max_attempts == 2
    assert client.settings_sources()["retry.max_attempts"] == "code"
    assert "sk-secret-1234" not in repr(client.settings) and "sk-secret-1234" not in repr(client)


def test_type_checkers_see_the_arguments(tmp_path: Path) -> None:
    """mypy accepts the documented arguments and rejects a wrong type or a misspelt name."""
    good = tmp_path / "good.py"
    good.write_text(
        "from imageworks_core import Client, RetrySettings\n"
        "c = Client(backend='vllm', base_url='http://h:8000', model='m', concurrency=4, timeout=30.0,\n"
        "           retry=RetrySettings(max_attempts=2), trust_env=False)\n"
        "d = Client.from_config(backend='vllm', concurrency=2)\n"
    )
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from imageworks_core import Client\n"
        "c = Client(concurrency='4')\n"
        "d = Client.from_config(concurency=2)\n"
    )
    cmd = [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent"]
    env = {**os.environ, "MYPYPATH": ""}
    ok = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    no = subprocess.run([*cmd, str(bad)], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert no.returncode == 1, no.stdout + no.stderr
    assert "bad.py:2" in no.stdout and "bad.py:3" in no.stdout, no.stdout
