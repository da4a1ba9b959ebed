"""The fake servers' control: one function answers control calls, one class makes them.

The socket server (``fake_server``) reaches ``control`` over HTTP under
``/_imageworks/``; the in-process one (``mock_server``) calls it directly.
Both handles share ``ScriptControl``'s methods.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, MutableMapping, Sequence
from typing import Any, ClassVar
from urllib.parse import parse_qsl

from ._fake_rules import (
    CHAT_PATH,
    DEFAULT_MODEL,
    DEFAULT_REPLY,
    RequestInfo,
    ScriptError,
    State,
    server_settings,
    shorten,
)


def control(state: State, method: str, action: str, payload: Any, query: str) -> tuple[int, Any]:
    """(HTTP status, JSON answer) for one control call."""
    try:
        if action == "push" and method == "POST":
            return 200, {"rules": state.add(payload)}
        if action == "script" and method == "POST":
            state.install(payload)
        if action == "script":
            return 200, state.describe()
        if action == "reset" and method == "POST":
            state.reset()
            return 200, {"reset": True}
        if action == "configure" and method == "POST":
            return 200, state.configure(payload)
    except ScriptError as exc:
        return 400, {"error": {"message": str(exc)}}
    if action == "requests":
        args = dict(parse_qsl(query.lstrip("?")))
        path, warmups = args.get("path"), args.get("warmups") == "1"
        return 200, [
            e for e in state.log if (path is None or e["path"] == path) and (warmups or not e["warmup"])
        ]
    if action == "status":
        return 200, {"in_flight": state.in_flight, "requests": len(state.log)}
    return 404, {"error": {"message": f"unknown control action {method} {action!r}"}}


def begin(state: State, info: RequestInfo) -> tuple[dict[str, Any], dict[str, Any]]:
    """The action that answers *info*, and its log entry (logged, counted in flight)."""
    index, action = state.choose(info)
    body = info.body if isinstance(info.body, dict) else {}
    entry: dict[str, Any] = {
        "seq": len(state.log),
        "time": time.time(),
        "method": info.method,
        "path": info.path,
        "query": info.query,
        "headers": dict(info.headers),
        "json": shorten(info.body),
        "request_id": info.request_id,
        "model": info.model,
        "stream": info.stream,
        "max_tokens": body.get("max_tokens"),
        "warmup": info.warmup,
        "images": 0,
        "mimes": [],
        "prompt": "",
        "fault": action["fault"],
        "answer": action["fault"],
        "rule": index,
        "status": None,
        "completed": False,
        "client_gone": False,
        "duration_s": None,
    }
    state.log.append(entry)
    state.in_flight += 1
    return action, entry


def end(state: State, entry: dict[str, Any], client_gone: bool) -> None:
    entry["client_gone"] = client_gone
    entry["duration_s"] = round(time.time() - entry["time"], 6)
    state.in_flight -= 1


def root_of(url: str) -> str:
    """A server's root URL from its root or its ``/v1`` base."""
    root = url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class ScriptControl:
    """Script a fake server and read what it received (``_call`` reaches its ``control``).

    Attributes:
        base_url: The server's root URL.
    """

    base_url: str
    _running: ClassVar[MutableMapping[str, Any]]

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        reply: str = DEFAULT_REPLY,
        require_max_tokens: bool = True,
        strict: bool = True,
        echo_request_id: bool = False,
    ) -> None:
        self.model = model
        self.reply = reply
        self.require_max_tokens = require_max_tokens
        self.strict = strict
        self.echo_request_id = echo_request_id

    def settings(self) -> dict[str, Any]:
        """The settings the server starts with."""
        return server_settings(
            model=self.model,
            reply=self.reply,
            require_max_tokens=self.require_max_tokens,
            strict=self.strict,
            echo_request_id=self.echo_request_id,
        )

    @property
    def v1(self) -> str:
        """The OpenAI API base, ``<base_url>/v1``."""
        return self.base_url + "/v1"

    @classmethod
    def running(cls, url: str | None) -> Any:
        """The server of this kind whose root or ``/v1`` base is *url*, if any."""
        return cls._running.get(root_of(url)) if url else None

    def _call(self, method: str, action: str, payload: Any = None, query: str = "") -> Any:
        raise NotImplementedError

    def push(
        self,
        answer: Mapping[str, Any],
        *,
        path: str = CHAT_PATH,
        method: str | None = None,
        times: int | None = 1,
    ) -> None:
        """Answer the next *times* requests to *path* (``"*"``: any; ``"/v1/*"``: a prefix) with *answer*.

        Rules are tried in the order pushed; ``times=None`` keeps the rule forever.
        A pushed rule also answers imageworks' warm-up request.
        """
        match: dict[str, Any] = {"warmup": None}
        if path.endswith("*"):
            if path != "*":
                match["path_prefix"] = path[:-1]
        else:
            match["path"] = path
        if method:
            match["method"] = method
        self._call("POST", "push", {**answer, "match": match, "times": times})

    def always(self, answer: Mapping[str, Any], *, path: str = CHAT_PATH, method: str | None = None) -> None:
        """Answer every later request to *path* with *answer* (until ``reset``)."""
        self.push(answer, path=path, method=method, times=None)

    def script(self, rules: Sequence[Mapping[str, Any]], default: Any = "ok") -> dict[str, Any]:
        """Replace every rule with *rules*, and the answer when none fires with *default*; the log is kept.

        Returns the installed script.  A rule is an answer plus ``match``, ``times``
        and ``skip``: see ``imageworks_core.testing._fake_rules`` for the language.
        """
        return dict(self._call("POST", "script", {"rules": list(rules), "default": default}))

    def current_script(self) -> dict[str, Any]:
        """The rules with their ``seen``/``fired`` counters, and the default."""
        return dict(self._call("GET", "script"))

    def configure(
        self,
        *,
        models: Sequence[str] | None = None,
        reply: str | None = None,
        require_max_tokens: bool | None = None,
        max_model_len: int | None = None,
        strict: bool | None = None,
        echo_request_id: bool | None = None,
    ) -> None:
        """Change what the normal answers say (until ``reset``)."""
        values = {
            "models": list(models) if models is not None else None,
            "reply": reply,
            "require_max_tokens": require_max_tokens,
            "max_model_len": max_model_len,
            "strict": strict,
            "echo_request_id": echo_request_id,
        }
        self._call("POST", "configure", {k: v for k, v in values.items() if v is not None})

    def reset(self) -> None:
        """Drop every rule and the request log; back to the constructor's settings."""
        self._call("POST", "reset", {})

    def requests(self, path: str | None = None, *, warmups: bool = True) -> list[dict[str, Any]]:
        """Every request received since the last reset (only *path*'s when given), oldest first.

        Each entry: ``seq``, ``time``, ``method``, ``path``, ``query``, ``headers``,
        ``json`` (data URLs cut short), ``request_id``, ``model``, ``stream``,
        ``max_tokens``, ``warmup``, ``images``, ``mimes``, ``prompt``, ``answer``
        (the fault), ``rule`` (its index; ``None``: the default), ``status``
        (``None``: no answer), ``completed`` (the answer was sent whole),
        ``client_gone`` and ``duration_s``.  ``warmups=False`` leaves out
        imageworks' warm-up requests.
        """
        query = {"path": path} if path is not None else {}
        if warmups:
            query["warmups"] = "1"
        from urllib.parse import urlencode

        return list(self._call("GET", "requests", query="?" + urlencode(query) if query else ""))

    def in_flight(self) -> int:
        """Requests the server is answering right now (a hung one counts until its client leaves)."""
        return int(self._call("GET", "status")["in_flight"])
