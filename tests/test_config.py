"""Configuration: every layer, per-backend isolation, legacy Colour Narrator keys, bad config."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from imageworks_core import Client, ConfigError, Request
from imageworks_core.backends.openai import OpenAIBackend
from imageworks_core.settings import split_api_base
from imageworks_core.testing import FakeBackend


def _client(tmp_path: Path, **kwargs: Any) -> Client:
    kwargs.setdefault("plugins", [FakeBackend("vllm"), FakeBackend("lmdeploy"), OpenAIBackend()])
    kwargs.setdefault("entry_points", False)
    kwargs.setdefault("cwd", tmp_path)
    return Client.from_config(**kwargs)


def _pyproject(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "pyproject.toml"
    path.write_text(textwrap.dedent(body))
    return path


def _user_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, body: str) -> Path:
    path = tmp_path / "user" / "config.toml"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(body))
    monkeypatch.setenv("IMAGEWORKS_CONFIG_FILE", str(path))
    return path


def test_defaults(tmp_path: Path) -> None:
    cfg = _client(tmp_path).config
    assert cfg.settings.backend == "vllm"
    assert cfg.settings.max_tokens == 512
    assert cfg.sources.get("backend") is None  # came from the built-in default
    assert dict(cfg.settings.backends)["vllm"].timeout == 120.0


def test_every_layer_in_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = _user_file(
        monkeypatch,
        tmp_path,
        """
        max_tokens = 100
        temperature = 0.1
        max_pixels = 111
        concurrency = 2
        transport = "httpx"
    """,
    )
    project = _pyproject(
        tmp_path,
        """
        [tool.imageworks]
        temperature = 0.2
        max_pixels = 222
        concurrency = 3
        transport = "auto"
    """,
    )
    monkeypatch.setenv("IMAGEWORKS_MAX_PIXELS", "333")
    monkeypatch.setenv("IMAGEWORKS_CONCURRENCY", "4")
    monkeypatch.setenv("IMAGEWORKS_TRANSPORT", "httpx")
    client = _client(tmp_path, overrides={"transport": "auto"})
    s, src = client.settings, client.config.sources
    assert (s.max_tokens, s.temperature, s.max_pixels, s.concurrency, s.transport) == (
        100,
        0.2,
        333,
        4,
        "auto",
    )
    assert src["max_tokens"] == str(user)
    assert src["temperature"].startswith(str(project))
    assert src["max_pixels"] == "env IMAGEWORKS_MAX_PIXELS"
    assert src["concurrency"] == "env IMAGEWORKS_CONCURRENCY"
    assert src["transport"] == "code"
    assert client.config.files == (user, project)


@pytest.mark.anyio
async def test_per_request_values_beat_config(tmp_path: Path) -> None:
    async with _client(
        tmp_path, backend="openai", overrides={"max_tokens": 64, "temperature": 0.5}
    ) as client:
        ctx = client.context("openai")
        plugin = client.registry.get("openai").plugin
        body = plugin.build_body(ctx, Request(prompt="x"), "m", stream=False)
        assert (body["max_tokens"], body["temperature"]) == (64, 0.5)
        body = plugin.build_body(ctx, Request(prompt="x", max_tokens=7, temperature=0.0), "m", stream=False)
        assert (body["max_tokens"], body["temperature"]) == (7, 0.0)


def test_pyproject_is_found_upward(tmp_path: Path) -> None:
    _pyproject(
        tmp_path,
        """
        [tool.imageworks]
        backend = "lmdeploy"
    """,
    )
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    assert _client(deep).settings.backend == "lmdeploy"


def test_per_backend_settings_stay_in_their_backend(tmp_path: Path) -> None:
    _pyproject(
        tmp_path,
        """
        [tool.imageworks]
        backend = "lmdeploy"
        [tool.imageworks.backends.lmdeploy]
        base_url = "http://gpu:23333/v1"
        model = "qwen"
        timeout = 30
    """,
    )
    client = _client(tmp_path, overrides={"selected": {"model": "from-flag"}})
    backends = client.settings.backends
    assert backends["lmdeploy"].base_url == "http://gpu:23333/v1"
    assert backends["lmdeploy"].model == "from-flag"  # --vlm-model goes to the selected backend only
    assert backends["lmdeploy"].timeout == 30.0
    assert backends["vllm"].base_url is None and backends["vllm"].model is None
    assert backends["vllm"].timeout == 120.0
    assert backends["openai"].model is None


def test_env_per_backend_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__LMDEPLOY__CONCURRENCY", "12")
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__OPENAI__PRESET", "ollama")
    client = _client(tmp_path)
    assert client.settings.backends["lmdeploy"].concurrency == 12
    assert client.settings.backends["vllm"].concurrency == "auto"
    assert client.settings.backends["openai"].base_url == "http://localhost:11434/v1"
    assert (
        client.config.sources["backends.lmdeploy.concurrency"]
        == "env IMAGEWORKS_BACKENDS__LMDEPLOY__CONCURRENCY"
    )


def test_legacy_colour_narrator_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pyproject(
        tmp_path,
        """
        [tool.imageworks.color_narrator]
        vlm_backend = "lmdeploy"
        vlm_base_url = "http://old:23333"
        vlm_model = "Qwen2.5-VL-7B-AWQ"
        vlm_timeout = 45
        vlm_max_tokens = 200
        vlm_temperature = 0.3
        vlm_vllm_base_url = "http://old-vllm:8000/v1"
        mono_threshold = 0.5     # Colour Narrator's own key: not ours, ignored
    """,
    )
    monkeypatch.setenv("IMAGEWORKS_COLOR_NARRATOR__VLM_MODEL", "from-env")
    s = _client(tmp_path).settings
    assert s.backend == "lmdeploy"
    assert (s.max_tokens, s.temperature) == (200, 0.3)
    lm = s.backends["lmdeploy"]
    assert (lm.base_url, lm.timeout, lm.model) == ("http://old:23333", 45.0, "from-env")
    assert s.backends["vllm"].base_url == "http://old-vllm:8000/v1"
    assert s.backends["vllm"].model is None  # legacy generic keys go to vlm_backend's backend only


def test_new_keys_win_over_legacy_keys_in_the_same_file(tmp_path: Path) -> None:
    _pyproject(
        tmp_path,
        """
        [tool.imageworks]
        backend = "vllm"
        max_tokens = 50
        [tool.imageworks.backends.lmdeploy]
        model = "new-model"
        [tool.imageworks.color_narrator]
        vlm_backend = "lmdeploy"
        vlm_model = "old-model"
        vlm_max_tokens = 999
    """,
    )
    s = _client(tmp_path).settings
    assert (s.backend, s.max_tokens) == ("vllm", 50)
    assert s.backends["lmdeploy"].model == "new-model"


@pytest.mark.parametrize(
    ("url", "root", "api"),
    [
        ("http://h:8000", "http://h:8000", "http://h:8000/v1"),
        ("http://h:8000/", "http://h:8000", "http://h:8000/v1"),
        ("http://h:8000/v1", "http://h:8000", "http://h:8000/v1"),
        ("http://h:8000/v1/", "http://h:8000", "http://h:8000/v1"),
        ("h:8000", "http://h:8000", "http://h:8000/v1"),
        ("https://openrouter.ai/api/v1", "https://openrouter.ai/api", "https://openrouter.ai/api/v1"),
    ],
)
def test_base_urls_are_normalised(url: str, root: str, api: str) -> None:
    assert split_api_base(url) == (root, api)


# ---------------------------------------------------------------- bad configuration


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        ("[tool.imageworks]\nmax_token = 3\n", ["unknown key 'max_token'", "pyproject.toml", "max_tokens"]),
        ('[tool.imageworks]\nmax_tokens = "many"\n', ["expected an integer for max_tokens", "'many'"]),
        ("[tool.imageworks]\ntemperature = true\n", ["expected a number for temperature"]),
        (
            '[tool.imageworks]\nbackend = "vlm"\n',
            ["backend 'vlm' unknown", "installed backends", "key 'backend'"],
        ),
        ('[tool.imageworks]\nfallback = "lmdeploy"\n', ["expected a list of strings for fallback"]),
        (
            '[tool.imageworks.backends.vllm]\nbase_ur = "x"\n',
            ["unknown key 'backends.vllm.base_ur'", "base_url"],
        ),
        (
            '[tool.imageworks.backends.vllm]\ntimeout = "slow"\n',
            ["expected a number for backends.vllm.timeout"],
        ),
        (
            '[tool.imageworks.backends.vlm]\nmodel = "x"\n',
            ["settings for unknown backend 'vlm'", "installed"],
        ),
        (
            '[tool.imageworks.backends.vllm]\nbase_url = "ftp://x"\n',
            ["not an http(s) URL", "backends.vllm.base_url"],
        ),
        ('[tool.imageworks.backends.openai]\npreset = "nope"\n', ["unknown preset 'nope'", "ollama"]),
        ("[tool.imageworks]\nmax_tokens = 0\n", ["max_tokens must be a whole number >= 1, got 0"]),
        ('[tool.imageworks]\ntransport = "curl"\n', ["transport must be auto, httpx or aiohttp"]),
        ("[tool.imageworks\nbackend = 1\n", ["malformed TOML", "pyproject.toml"]),
    ],
)
def test_bad_config_names_file_key_and_expectation(tmp_path: Path, body: str, needles: list[str]) -> None:
    _pyproject(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        _client(tmp_path).config  # noqa: B018
    text = str(err.value)
    for needle in needles:
        assert needle in text, text


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("IMAGEWORKS_MAX_TOKENS", "lots", "expected an integer for max_tokens"),
        ("IMAGEWORKS_BACKNED", "vllm", "did you mean IMAGEWORKS_BACKEND"),
        ("IMAGEWORKS_BACKENDS__VLLM__HEADERS", "not json", "JSON objects"),
        ("IMAGEWORKS_STRICT_MODEL", "maybe", "expected true or false"),
    ],
)
def test_bad_env_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as err:
        _client(tmp_path).config  # noqa: B018
    assert needle in str(err.value)
    assert f"env {var}" in str(err.value)


def test_other_tools_sections_and_env_are_left_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _pyproject(
        tmp_path,
        """
        [tool.imageworks.personal_tagger]
        threshold = 3
    """,
    )
    monkeypatch.setenv("IMAGEWORKS_PERSONAL_TAGGER__THRESHOLD", "3")
    monkeypatch.setenv("IMAGEWORKS_HOME", "/somewhere")  # another tool's variable, not a typo of ours
    assert _client(tmp_path).settings.backend == "vllm"


def test_cli_reports_bad_config_without_a_traceback(tmp_path: Path) -> None:
    _pyproject(tmp_path, '[tool.imageworks]\nmax_tokens = "many"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "imageworks_core.cli", "config", "show"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "expected an integer for max_tokens" in proc.stderr
    assert "pyproject.toml" in proc.stderr


def test_config_show_lists_sources(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from imageworks_core.cli import main

    _pyproject(tmp_path, "[tool.imageworks]\nmax_tokens = 99\n")
    monkeypatch.chdir(tmp_path)
    assert main(["config", "show", "--vlm-backend", "openai", "--vlm-timeout", "7"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("max_tokens "))
    assert "99" in line and "pyproject.toml" in line
    line = next(x for x in out.splitlines() if x.startswith("backends.openai.timeout "))
    assert "7.0" in line and "[flag]" in line
    line = next(x for x in out.splitlines() if x.startswith("backend "))
    assert "openai" in line and "[flag]" in line


def test_selected_flags_wait_for_the_backend_auto_picks(tmp_path: Path) -> None:
    client = _client(tmp_path, overrides={"backend": "auto", "selected": {"timeout": 33, "model": "m"}})
    assert client.settings.backend == "auto"
    assert all(b.timeout == 120.0 for b in client.settings.backends.values())
    client.use_backend("lmdeploy")
    s = client.settings
    assert s.backend == "lmdeploy"
    assert (s.backends["lmdeploy"].timeout, s.backends["lmdeploy"].model) == (33.0, "m")
    assert s.backends["vllm"].timeout == 120.0
