"""No secret reaches any output, whatever its source and whatever echoes it back (issue 13.1-3).

A real CLI subprocess against the fault server on 127.0.0.1.  The server echoes
the credentials it received (``echo_auth``: in a 401 error body, or inside the
model's answer), the way careless servers and proxies do.  For each place a
secret can come from, every sink is searched for it: stdout and stderr at
``-vv``, the ``--json`` lines, the results JSONL, the XMP and JSON sidecars,
``health`` (text and JSON), the preflight error and ``config show``.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cli_helpers import read_jsonl, run_cli, show
from PIL import Image

KEY = "sk-live-ECHOED-4b1d9e77c0ffee"
USER = "alice"


@attrs.frozen
class Source:
    """One place a secret can come from: the flags and environment that set it.

    Attributes:
        id: Test id.
        secret: The secret (what must never show).
        flags: Extra CLI flags (after the backend flags).
        env: Extra environment.
        config: Text of a user config file (``--config``), or ``None``.
        url: A function of the fault server's /v1 URL giving the base URL to use.
        echoed: How the server's echo looks once scrubbed (proves the secret was sent).
        forms: Other spellings of the secret that must not show either.
    """

    id: str
    secret: str
    flags: tuple[str, ...] = ()
    env: dict[str, str] = attrs.Factory(dict)
    config: str | None = None
    url: Any = None
    echoed: str = "Bearer ***"
    forms: tuple[str, ...] = ()


def _with_userinfo(v1: str) -> str:
    return v1.replace("http://", f"http://{USER}:{KEY}@")


BASIC = base64.b64encode(f"{USER}:{KEY}".encode()).decode()

SOURCES = [
    Source("env-key", KEY, env={"IMAGEWORKS_BACKENDS__OPENAI__API_KEY": KEY}),
    Source("api-key-env-flag", KEY, flags=("--vlm-api-key-env", "MY_VLM_KEY"), env={"MY_VLM_KEY": KEY}),
    Source("config-file-api-key", KEY, config=f'[backends.openai]\napi_key = "{KEY}"\n'),
    Source("url-credentials", KEY, url=_with_userinfo, echoed="Invalid API key: ***;", forms=(BASIC,)),
    Source("url-query-key", KEY, url=lambda v1: f"{v1}?key={KEY}", echoed="query key=***"),
    Source(
        "config-header",
        KEY,
        config=f'[backends.openai.headers]\napi-key = "{KEY}"\n',
        echoed="api-key ***",
    ),
]


def _jpegs(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"img{i:02d}.jpg"
        Image.new("RGB", (40, 30), (i * 40 % 256, 90, 200)).save(path, "JPEG")
        out.append(path)
    return out


def _args(source: Source, faulty: Any, cwd: Path) -> list[str]:
    url = source.url(faulty.v1) if source.url else faulty.v1
    args = ["--vlm-backend", "openai", "--vlm-base-url", url, "--vlm-model", "fake-vlm", *source.flags]
    if source.config is not None:
        (cwd / "user.toml").write_text(source.config)
        args += ["--config", str(cwd / "user.toml")]
    return args


def _everything(cwd: Path, *texts: str) -> Iterator[tuple[str, bytes]]:
    for text in texts:
        yield "<output>", text.encode("utf-8", "surrogateescape")
    for root, _dirs, files in os.walk(cwd):
        for name in files:
            if name == "user.toml":  # the user's own config file holds the key on purpose
                continue
            path = Path(root, name)
            yield str(path), path.read_bytes()


def _assert_nowhere(source: Source, cwd: Path, *texts: str) -> None:
    forms = {source.secret, *source.forms}
    for where, data in _everything(cwd, *texts):
        for form in forms:
            assert form.encode() not in data, f"{source.id}: secret {form!r} leaked into {where}"


def _server_checks_key(source: Source, faulty: Any) -> None:
    """The key really was sent: the server saw it (header or query)."""
    log = faulty.log()
    assert log, "the server saw no request"
    if source.id == "url-query-key":
        assert all(KEY in entry["query"] for entry in log), log[:3]


@pytest.mark.parametrize("source", SOURCES, ids=[s.id for s in SOURCES])
def test_describe_never_shows_an_echoed_secret(tmp_path: Path, faulty: Any, source: Source) -> None:
    _jpegs(tmp_path / "imgs", 3)
    faulty.script(
        [
            {"match": {"path": "/v1/chat/completions"}, "fault": "echo_auth", "times": 1},
            {"match": {"path": "/v1/chat/completions"}, "fault": "echo_auth", "where": "content", "times": 1},
        ]
    )
    args = _args(source, faulty, tmp_path)
    proc = run_cli(tmp_path, "-vv", "describe", "imgs", "--output", "r.jsonl", *args, **source.env)
    assert proc.returncode == 1, show(proc)  # one image failed with the 401
    _server_checks_key(source, faulty)
    records = read_jsonl(tmp_path / "r.jsonl")
    failed = [r for r in records if r["error"]]
    echoed = [r for r in records if r["description"] and "Invalid API key" in r["description"]]
    assert len(failed) == 1 and len(echoed) == 1, records
    # the echo arrived and was scrubbed everywhere it went: JSONL error, attempts, description, summary
    assert source.echoed in failed[0]["error"], failed[0]
    assert source.echoed in failed[0]["attempts"][0]["error"]
    assert source.echoed in echoed[0]["description"]
    assert source.echoed in proc.stdout, show(proc)
    _assert_nowhere(source, tmp_path, proc.stdout, proc.stderr)

    # the same with --json (JSON log lines on stderr, JSON summary on stdout)
    faulty.reset()
    faulty.script([{"match": {"path": "/v1/chat/completions"}, "fault": "echo_auth", "times": 1}])
    proc = run_cli(
        tmp_path,
        "-vv",
        "describe",
        "imgs",
        "--output",
        "j.jsonl",
        "--json",
        "--overwrite",
        *args,
        **source.env,
    )
    assert proc.returncode == 1, show(proc)
    summary = json.loads(proc.stdout)
    assert source.echoed in summary["failures"][0]["error"]
    for line in proc.stderr.splitlines():
        json.loads(line)  # every stderr line is a JSON object
    _assert_nowhere(source, tmp_path, proc.stdout, proc.stderr)


@pytest.mark.parametrize("source", SOURCES, ids=[s.id for s in SOURCES])
def test_health_preflight_and_config_show_never_show_the_secret(
    tmp_path: Path, faulty: Any, source: Source
) -> None:
    _jpegs(tmp_path / "imgs", 1)
    faulty.script([{"match": {"path": "/v1/models"}, "fault": "echo_auth"}])
    args = _args(source, faulty, tmp_path)
    outputs: list[str] = []
    for extra in ((), ("--json",)):
        proc = run_cli(tmp_path, "-vv", "health", *extra, *args, **source.env)
        assert proc.returncode == 1, show(proc)
        assert source.echoed in proc.stdout, show(proc)
        outputs += [proc.stdout, proc.stderr]
    _server_checks_key(source, faulty)
    # preflight: the batch stops before any image is sent, with the (scrubbed) reason
    # (a 401 from /v1/models is not "loading": it is not waited for, default settings)
    t0 = time.monotonic()
    proc = run_cli(tmp_path, "-vv", "describe", "imgs", "--output", "p.jsonl", *args, **source.env)
    assert time.monotonic() - t0 < 30, "a refused health check was waited for"
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, show(proc)
    assert source.echoed in proc.stderr + proc.stdout, show(proc)
    assert not faulty.log("/v1/chat/completions")
    outputs += [proc.stdout, proc.stderr]
    for extra in ((), ("--json",)):
        proc = run_cli(tmp_path, "-vv", "config", "show", *extra, *args, **source.env)
        assert proc.returncode == 0, show(proc)
        outputs += [proc.stdout, proc.stderr]
    _assert_nowhere(source, tmp_path, *outputs)


def test_config_show_redacts_url_password_query_and_headers(tmp_path: Path) -> None:
    """Issue 13.2: the docs promise redaction; the rest of the URL stays readable."""
    (tmp_path / "user.toml").write_text(
        "[backends.openai]\n"
        f'base_url = "http://bob:{KEY}@gpu1:8000/v1?key={KEY}&api-version=2024"\n'
        f'headers = {{ Authorization = "Bearer {KEY}", api-key = "{KEY}", X-Title = "imageworks-test" }}\n'
    )
    for extra in ((), ("--json",)):
        proc = run_cli(tmp_path, "config", "show", "--config", "user.toml", *extra)
        assert proc.returncode == 0, show(proc)
        assert KEY not in proc.stdout + proc.stderr and "bob" not in proc.stdout, show(proc)
        assert "http://gpu1:8000/v1?key=***&api-version=***" in proc.stdout, show(proc)
        assert "imageworks-test" in proc.stdout  # a header that is no credential stays readable
    data = json.loads(proc.stdout)
    headers = next(s for s in data["settings"] if s["key"] == "backends.openai.headers")
    assert json.loads(headers["value"]) == {
        "Authorization": "***",
        "api-key": "***",
        "X-Title": "imageworks-test",
    }


def test_url_credentials_with_an_authorization_header_is_a_config_error(tmp_path: Path, faulty: Any) -> None:
    """Issue 13.3: not aiohttp's ValueError reported as a plugin bug; nothing is sent."""
    _jpegs(tmp_path / "imgs", 1)
    url = _with_userinfo(faulty.v1)
    proc = run_cli(
        tmp_path,
        "describe",
        "imgs",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        url,
        "--vlm-api-key-env",
        "MY_VLM_KEY",
        MY_VLM_KEY="sk-other-key-123456",
    )
    assert proc.returncode == 2, show(proc)
    first = proc.stderr.splitlines()[0]
    assert "credentials" in first and "base_url" in first and "flag" in first, show(proc)
    assert "plugin" not in proc.stderr and KEY not in proc.stderr + proc.stdout
    assert faulty.log() == []


def test_url_query_key_travels_with_every_request(tmp_path: Path, faulty: Any) -> None:
    """Issue 13.2: a Gemini-style ``?key=`` is kept on real requests (and shown masked)."""
    _jpegs(tmp_path / "imgs", 2)
    url = f"{faulty.v1}?key={KEY}"
    proc = run_cli(
        tmp_path,
        "describe",
        "imgs",
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        url,
        "--vlm-model",
        "fake-vlm",
    )
    assert proc.returncode == 0, show(proc)
    log = faulty.log()
    assert {e["path"] for e in log} >= {"/v1/models", "/v1/chat/completions"}
    assert all(e["query"] == f"key={KEY}" for e in log), log
    records = read_jsonl(tmp_path / "imageworks-results.jsonl")
    assert {r["base_url"] for r in records} == {faulty.v1}  # the endpoint; the key is never written


@pytest.mark.parametrize("source", SOURCES, ids=[s.id for s in SOURCES])
def test_stream_never_prints_a_secret_split_across_chunks(
    tmp_path: Path, faulty: Any, source: Source
) -> None:
    """``--stream`` prints tokens live: a key the model repeats in 3-character chunks is still hidden."""
    _jpegs(tmp_path / "imgs", 1)
    echo = {"fault": "echo_auth", "where": "content", "piece_chars": 3}
    faulty.script([{"match": {"path": "/v1/chat/completions"}, **echo}])
    args = _args(source, faulty, tmp_path)
    proc = run_cli(tmp_path, "describe", "imgs", "--output", "s.jsonl", "--stream", *args, **source.env)
    assert proc.returncode == 0, show(proc)
    assert faulty.log("/v1/chat/completions")[0]["stream"] is True
    assert "Invalid API key" in proc.stdout and source.echoed in proc.stdout, show(proc)
    _assert_nowhere(source, tmp_path, proc.stdout, proc.stderr)


@pytest.mark.parametrize("source", SOURCES, ids=[s.id for s in SOURCES])
@pytest.mark.parametrize("json_out", [False, True], ids=["text", "json"])
def test_ask_never_prints_an_echoed_secret(
    tmp_path: Path, faulty: Any, source: Source, json_out: bool
) -> None:
    """``imageworks ask``: a model answer that repeats the key prints it hidden (text and ``--json``)."""
    faulty.script([{"match": {"path": "/v1/chat/completions"}, "fault": "echo_auth", "where": "content"}])
    args = _args(source, faulty, tmp_path)
    proc = run_cli(tmp_path, "ask", "what key?", *args, *(["--json"] if json_out else []), **source.env)
    assert proc.returncode == 0, show(proc)
    assert "Invalid API key" in proc.stdout and source.echoed in proc.stdout, show(proc)
    _server_checks_key(source, faulty)
    _assert_nowhere(source, tmp_path, proc.stdout, proc.stderr)


def test_what_is_not_a_secret_is_never_hidden(tmp_path: Path, faulty: Any) -> None:
    """A base URL's ``?api-version=2024-06-01`` and a placeholder key ``EMPTY`` (vLLM's) are not
    secrets: an answer mentioning 2024 keeps it, the image paths are written exactly (a folder
    named 2024), and ``--resume`` finds every image done."""
    folder = tmp_path / "2024"
    _jpegs(folder, 2)
    answer = "Taken in 2024, an EMPTY frame."
    faulty.script([{"match": {"path": "/v1/chat/completions"}, "fault": "ok", "content": answer}])
    args = [
        "--vlm-backend",
        "openai",
        "--vlm-base-url",
        faulty.v1 + "?api-version=2024-06-01",
        "--vlm-model",
        "fake-vlm",
        "--vlm-api-key-env",
        "PLACEHOLDER_KEY",
    ]
    env = {"PLACEHOLDER_KEY": "EMPTY"}
    proc = run_cli(tmp_path, "describe", "2024", "--output", "r.jsonl", "--xmp", "none", *args, **env)
    assert proc.returncode == 0, show(proc)
    assert all("api-version=2024-06-01" in e["query"] for e in faulty.log("/v1/chat/completions"))
    records = read_jsonl(tmp_path / "r.jsonl")
    assert len(records) == 2 and all("2024" in r["image"] for r in records), records
    for r in records:
        assert r["description"].endswith(answer) and "***" not in json.dumps(r), r
        assert "2024" in r["resolved_path"], r
    faulty.reset()
    again = run_cli(
        tmp_path, "describe", "2024", "--output", "r.jsonl", "--xmp", "none", "--resume", *args, **env
    )
    assert again.returncode == 0, show(again)
    assert faulty.log("/v1/chat/completions") == [], "--resume sent done images again"
