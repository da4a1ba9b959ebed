"""Candidates: what ``imageworks compare`` runs the images through, one client each.

A candidate is named on the command line as

* a backend name (``vllm``): that backend as configured;
* ``backend/model`` (``vllm/Qwen/Qwen2-VL-2B-Instruct``): that backend, asking for that model
  (split at the first ``/``, so model ids may hold slashes);
* a named candidate from configuration::

      [tool.imageworks.candidates.vllm-7B-awq]     # or [candidates.NAME] in the user file
      backend = "vllm"
      base_url = "http://gpu2:8000/v1"
      model = "Qwen/Qwen2.5-VL-7B-Instruct-AWQ"
      options = { max_tokens = 300, timeout = 60, extra_body = { top_k = 20 } }

``options`` holds top-level settings (``max_tokens``, ``temperature``,
``concurrency`` ...) and the backend's own keys (``timeout``, ``extra_body``,
``api_key_env`` ...); they beat the command line's flags for that candidate.
Every candidate gets its own ``Client`` with no fallback, so one candidate's
answers always come from its own backend.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from ..client import Client
from ..config import tool_sections
from ..errors import ConfigError
from ..settings import Settings

__all__ = ["Candidate", "candidate_client", "configured_candidates", "parse_candidates"]

_KEYS = frozenset({"backend", "base_url", "model", "options"})
_TOP_LEVEL = frozenset(f.name for f in attrs.fields(Settings)) - {"backend", "fallback", "backends", "retry"}


@attrs.frozen(slots=True)
class Candidate:
    """One serving stack and model to compare.

    Attributes:
        name: How the report and the results name it.
        backend: The backend plugin's name.
        base_url: Its server (``None``: the backend's configured or default URL).
        model: The model to ask for (``None``: the configured one, or the server's only model).
        options: More settings for this candidate only (see the module docstring).
        source: Where it was defined (a config file, or ``command line``).
    """

    name: str
    backend: str
    base_url: str | None = None
    model: str | None = None
    options: Mapping[str, Any] = attrs.field(factory=dict, repr=lambda o: _shown_options(o))
    source: str = "command line"

    def overrides(self, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``Client(overrides=...)`` for this candidate on top of the command line's *flags*."""
        out: dict[str, Any] = {k: v for k, v in (flags or {}).items() if k not in ("selected", "backends")}
        selected = dict((flags or {}).get("selected") or {})
        backend_keys: dict[str, Any] = {}
        for key, value in self.options.items():
            if key == "max_pixels":
                raise ConfigError(
                    f"candidate {self.name!r}: max_pixels cannot differ between candidates",
                    source=self.source,
                    key="options.max_pixels",
                    hint="images are prepared once for every candidate: use --max-pixels",
                )
            if key in _TOP_LEVEL:
                out[key] = value
            else:
                backend_keys[key] = value
        if self.base_url is not None:
            selected["base_url"] = self.base_url
        if self.model is not None:
            selected["model"] = self.model
        out.update(backend=self.backend, fallback=())
        if selected:
            out["selected"] = selected
        if backend_keys:
            out["backends"] = {self.backend: backend_keys}
        return out


def _shown_options(options: Mapping[str, Any]) -> str:
    """``options`` for ``repr``: keys and headers hidden (they may hold credentials)."""
    shown = {k: "***" if "key" in k.lower() or k == "headers" else v for k, v in options.items()}
    return repr(shown)


def _from_table(name: str, table: Any, source: str) -> Candidate:
    where = f"candidates.{name}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table", source=source, key=where)
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r} in {where}",
            source=source,
            key=f"{where}.{unknown[0]}",
            hint="a candidate has backend, base_url, model and options (a table)",
        )
    backend = table.get("backend")
    if not isinstance(backend, str) or not backend:
        raise ConfigError(f'{where} needs backend = "NAME"', source=source, key=f"{where}.backend")
    for key in ("base_url", "model"):
        if table.get(key) is not None and not isinstance(table[key], str):
            raise ConfigError(f"{where}.{key} must be a string", source=source, key=f"{where}.{key}")
    options = table.get("options", {})
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}.options must be a table", source=source, key=f"{where}.options")
    return Candidate(
        name=name,
        backend=backend,
        base_url=table.get("base_url"),
        model=table.get("model"),
        options=dict(options),
        source=source,
    )


def configured_candidates(
    *, cwd: str | os.PathLike[str] | None = None, user_file: str | os.PathLike[str] | bool = True
) -> dict[str, Candidate]:
    """The named candidates of the config files (the project file's win over the user file's)."""
    found: dict[str, Candidate] = {}
    for source, section in tool_sections(cwd=cwd, user_file=user_file):
        tables = section.get("candidates", {})
        if not isinstance(tables, Mapping):
            raise ConfigError("candidates must be a table of tables", source=source, key="candidates")
        for name, table in tables.items():
            found[name] = _from_table(name, table, source)
    return found


def parse_candidates(
    specs: Iterable[str], *, configured: Mapping[str, Candidate], installed: Iterable[str]
) -> list[Candidate]:
    """Candidates for the comma-separated *specs*, in order.

    Raises:
        ConfigError: A spec names neither a configured candidate nor an installed
            backend, or two candidates have the same name.
    """
    backends = set(installed)
    out: list[Candidate] = []
    for raw in specs:
        for spec in (s.strip() for s in raw.split(",")):
            if not spec:
                continue
            if spec in configured:
                out.append(configured[spec])
                continue
            backend, _, model = spec.partition("/")
            if backend not in backends:
                named = ", ".join(sorted(configured)) or "none"
                raise ConfigError(
                    f"candidate {spec!r} is neither a configured candidate nor an installed backend",
                    source="--candidates",
                    hint=f"installed backends: {', '.join(sorted(backends)) or 'none'}; "
                    f"configured candidates: {named} ([tool.imageworks.candidates.NAME])",
                )
            out.append(Candidate(name=spec, backend=backend, model=model or None))
    if not out:
        raise ConfigError("no candidates given", source="--candidates", hint="--candidates vllm,lmdeploy")
    names = [c.name for c in out]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(
            f"candidate {twice[0]!r} is named twice",
            source="--candidates",
            hint="to run one candidate several times, use --repeat N",
        )
    return out


def candidate_client(
    candidate: Candidate, *, flags: Mapping[str, Any] | None = None, **client_args: Any
) -> Client:
    """A client for *candidate*, its configuration resolved (and checked) now.

    Raises:
        ConfigError: The candidate's settings are invalid (named, with where it was defined).
    """
    try:
        client = Client.from_config(overrides=candidate.overrides(flags), **client_args)
        client.config  # noqa: B018 - resolve and validate before anything is sent
    except ConfigError as exc:
        where = ", ".join(p for p in (exc.source, f"key {exc.key!r}" if exc.key else None) if p)
        message = exc.message.removesuffix(f" ({where})") if where else exc.message
        raise ConfigError(
            f"candidate {candidate.name!r}: {message}", source=candidate.source, key=exc.key, hint=exc.hint
        ) from None
    return client
