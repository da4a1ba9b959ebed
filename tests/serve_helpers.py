"""Starting ``imageworks serve`` (the real command, under uvicorn) on 127.0.0.1 for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cli_helpers import cli_argv, cli_env
from servers._proc import ServerProcess, free_port


def toml_config(settings: Mapping[str, Any]) -> str:
    """A user config file for *settings*: top-level keys, then one ``[backends.X]`` table per backend."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    lines = [f"{k} = {value(v)}" for k, v in settings.items() if k != "backends"]
    for name, table in settings.get("backends", {}).items():
        lines.append(f"\n[backends.{name}]")
        lines += [f"{k} = {value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


class Gateway:
    """A running gateway: ``url`` (root), ``v1``, ``process`` (``log()`` for failure messages)."""

    def __init__(self, url: str, process: ServerProcess, token: str | None) -> None:
        self.url = url
        self.v1 = url + "/v1"
        self.process = process
        self.token = token

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@contextlib.contextmanager
def running_gateway(
    workdir: Path,
    settings: Mapping[str, Any],
    *args: str,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    python: str | None = None,
) -> Iterator[Gateway]:
    """``imageworks serve --port N --config FILE *args`` in *workdir*, ready when ``/livez`` answers."""
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "gateway.toml"
    config.write_text(toml_config(settings))
    port = free_port()
    extra = dict(env or {})
    argv: Sequence[str] = [*cli_argv("serve", "--port", str(port), "--config", str(config), *args)]
    if python:
        argv = [python, *argv[1:]]
    if token:
        extra["IW_GATEWAY_TOKEN"] = token
        argv = [*argv, "--token-env", "IW_GATEWAY_TOKEN"]
    proc = ServerProcess(
        argv,
        ready_url=f"http://127.0.0.1:{port}/livez",
        env=cli_env(workdir, **extra),
        cwd=workdir,
        ready_timeout=60,
        name="gateway",
    )
    with proc:
        yield Gateway(f"http://127.0.0.1:{port}", proc, token)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of *name* whose labels include *labels*, from Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name != name:
            continue
        if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
