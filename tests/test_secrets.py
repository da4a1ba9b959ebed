"""API keys never reach a repr, a log line, an error message or `config show`."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from imageworks_core import Client, Request, Secret
from imageworks_core.serialize import to_json_dict

KEY = "sk-test-SECRET-7f3a9c"


def test_secret_hides_itself() -> None:
    s = Secret(KEY)
    assert KEY not in repr(s) and KEY not in str(s) and KEY not in f"{s}" and KEY not in f"{s!r}"
    assert s.reveal() == KEY
    assert to_json_dict(s) == "***" or KEY not in str(to_json_dict(s))


@pytest.mark.anyio
async def test_key_from_env_is_sent_but_never_shown(
    faulty, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("MY_VLM_KEY", KEY)
    faulty.script(
        [
            {
                "match": {"headers": {"Authorization": f"Bearer {KEY}"}},
                "fault": "status",
                "status": 401,
                "body": {"error": {"message": "Unauthorized: key accepted but model locked"}},
            },
        ]
    )
    caplog.set_level(logging.DEBUG, logger="imageworks")
    overrides = {
        "backends": {"openai": {"base_url": faulty.v1, "model": "fake-vlm", "api_key_env": "MY_VLM_KEY"}}
    }
    async with Client(backend="openai", overrides=overrides, user_file=False, project_file=False) as client:
        with pytest.raises(Exception) as err:
            await client.infer(Request(prompt="hello"))
        # the key was sent (the server's rule matched on it) ...
        assert "key accepted" in str(err.value)
        # ... and shows nowhere
        texts = [
            str(err.value),
            repr(err.value),
            repr(client),
            repr(client.settings),
            repr(client.config),
            caplog.text,
            str(client.config.rows()),
        ]
        assert all(KEY not in t for t in texts)


@pytest.mark.anyio
async def test_key_in_config_file_is_redacted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.imageworks.color_narrator]\nvlm_backend = "openai"\nvlm_api_key = "{KEY}"\n'
        'vlm_base_url = "http://127.0.0.1:9"\n'
    )
    client = Client.from_config(cwd=tmp_path, user_file=False)
    assert isinstance(client.settings.backends["openai"].api_key, Secret)
    rows = client.config.rows()
    assert ("backends.openai.api_key", "***") in [(k, v) for k, v, _ in rows]
    assert KEY not in repr(client.settings) and KEY not in str(rows)
    async with client:
        with pytest.raises(Exception) as err:
            await client.infer(Request(prompt="x"))
    assert KEY not in str(err.value) and KEY not in caplog.text


def test_config_show_never_prints_the_key(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(f'[tool.imageworks.backends.openai]\napi_key = "{KEY}"\n')
    env = {"PATH": "/usr/bin:/bin", "MY_VLM_KEY": KEY, "IMAGEWORKS_CONFIG_FILE": str(tmp_path / "none.toml")}
    for args in (
        ["config", "show"],
        ["config", "show", "--json"],
        ["config", "show", "--vlm-backend", "openai", "--vlm-api-key-env", "MY_VLM_KEY"],
    ):
        proc = subprocess.run(
            [sys.executable, "-m", "imageworks_core.cli", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert KEY not in proc.stdout and KEY not in proc.stderr
        assert "***" in proc.stdout or "MY_VLM_KEY (set)" in proc.stdout


def test_bad_key_type_error_does_not_echo_it(tmp_path: Path) -> None:
    from imageworks_core import ConfigError

    (tmp_path / "pyproject.toml").write_text("[tool.imageworks.backends.openai]\napi_key = 12345678\n")
    with pytest.raises(ConfigError) as err:
        Client.from_config(cwd=tmp_path, user_file=False).config  # noqa: B018
    assert "12345678" not in str(err.value)
