"""Shared fixtures: both event loops, isolated config, and the real test servers.

Servers are session-scoped and started on free 127.0.0.1 ports through the
project's own scripts in ``tests/servers``; each stops at session end.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import faulty_openai
from servers._proc import ServerProcess, free_port, python_argv

from imageworks_core import redact as _redact
from imageworks_core.retry import set_testing, testing

SERVERS = Path(__file__).parent / "servers"
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(params=["asyncio", "trio"], scope="session")
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(autouse=True)
def _isolated_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No user config, no IMAGEWORKS_* from the developer's shell; in-process waits shortened.

    ``set_testing`` shortens only the dispatcher's waits (backoff, pauses, probe
    intervals): attempt counts and every other limit keep their defaults.  CLI
    subprocesses (``cli_helpers``) run with no such switch at all, as users do.
    """
    for var in list(os.environ):
        if var.startswith("IMAGEWORKS_") and not var.startswith("IMAGEWORKS_TEST_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("IMAGEWORKS_CONFIG_FILE", str(tmp_path / "no-user-config.toml"))
    # the secret registry is process-wide by design; a test's keys must not scrub the next test's text
    secrets, pattern = set(_redact._secrets), _redact._pattern
    with testing():
        yield
    with _redact._lock:
        _redact._secrets.clear()
        _redact._secrets.update(secrets)
        _redact._pattern = pattern


@pytest.fixture
def real_sleeps() -> Iterator[None]:
    """Let the dispatcher really wait (tests that time Retry-After, outages and probes)."""
    set_testing(False)
    yield


def require(condition: bool, why: str) -> None:
    """Skip when a local prerequisite is missing; in CI (CI=true) fail instead."""
    if not condition:
        if IN_CI:
            pytest.fail(f"prerequisite missing in CI: {why}")
        pytest.skip(why, allow_module_level=True)


# ------------------------------------------------------------------ no silent skips in CI

# The skips CI accepts: a conformance test that does not apply to the backend under test (it has no
# server, takes one image, has no fault injection for that fault ...), and aiohttp under trio, which
# it cannot run on. Any other skip in CI -- a missing tool, server or extra, whether it came through
# require(), a bare pytest.skip or a module-level importorskip -- fails the session.
NOT_APPLICABLE = (
    "imageworks_core/testing/conformance.py",
    "imageworks_core/testing/_conformance_",
    "aiohttp runs under asyncio only",
)
_skips: list[tuple[str, str]] = []


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        path, line, message = report.longrepr
        return f"{path}:{line}: {message}"
    return str(report.longrepr)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _skips.append((report.nodeid, _skip_reason(report)))


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:
        _skips.append((report.nodeid, _skip_reason(report)))  # type: ignore[arg-type]


def unexpected_skips() -> list[tuple[str, str]]:
    return [(test, why) for test, why in _skips if not any(ok in why for ok in NOT_APPLICABLE)]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if IN_CI and unexpected_skips() and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    skipped = unexpected_skips()
    if IN_CI and skipped:
        terminalreporter.section(
            "skipped in CI: each is a failure (tests/conftest.py NOT_APPLICABLE)", red=True
        )
        for test, why in skipped:
            terminalreporter.line(f"{test}: {why}")


# ------------------------------------------------------------------ faulty OpenAI-compatible server


class Faulty:
    """A handle on the session's fault-injecting server, reset for each test."""

    def __init__(self, base_url: str, process: ServerProcess) -> None:
        self.base_url = base_url  # server root, e.g. http://127.0.0.1:PORT
        self.process = process

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def script(self, rules: list[dict[str, Any]], default: Any = "ok") -> None:
        faulty_openai.script(self.base_url, rules, default)

    def log(self, path: str | None = None, *, warmups: bool = False) -> list[dict[str, Any]]:
        return faulty_openai.request_log(self.base_url, path, warmups=warmups)

    def reset(self) -> None:
        faulty_openai.reset(self.base_url)


@pytest.fixture(scope="session")
def _faulty_session() -> Iterator[Faulty]:
    port = free_port()
    argv = python_argv(SERVERS / "faulty_openai.py", "--port", str(port))
    with ServerProcess(
        argv, ready_url=f"http://127.0.0.1:{port}/health", name="faulty", ready_timeout=30
    ) as proc:
        yield Faulty(f"http://127.0.0.1:{port}", proc)


@pytest.fixture
def faulty(_faulty_session: Faulty) -> Faulty:
    _faulty_session.reset()
    return _faulty_session


# ------------------------------------------------------------------ transformers serve (real VLM server)


@pytest.fixture(scope="session")
def hf_server() -> Iterator[Any]:
    """Hugging Face ``transformers serve`` with a tiny random-weight LLaVA built offline."""
    try:
        from servers.hf_serve import transformers_serve
    except ImportError as exc:  # pragma: no cover - depends on the test install
        require(False, f"transformers serve is not installed: {exc}")
    cache = Path(os.environ.get("IMAGEWORKS_TEST_CACHE", Path(tempfile.gettempdir()) / "imageworks-tests"))
    with transformers_serve(cache / "hf-home") as server:
        yield server


# ------------------------------------------------------------------ Triton (real tritonserver from PyTriton)


@pytest.fixture(scope="session")
def triton_server() -> Iterator[Any]:
    """The real Triton Inference Server shipped in ``nvidia-pytriton``, serving the tiny test models."""
    try:
        import pytriton  # noqa: F401
    except ImportError as exc:  # pragma: no cover
        require(False, f"nvidia-pytriton is not installed: {exc}")
    from servers.triton_serve import triton_serve

    with triton_serve() as server:
        yield server
