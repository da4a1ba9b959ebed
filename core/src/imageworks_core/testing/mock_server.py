"""``MockOpenAIServer``: the fake server's answers in-process, through ``MockTransport``.

The same script, the same answers and the same request log as
``FakeOpenAIServer``, with no process and no socket::

    server = MockOpenAIServer()
    server.push(status(429, headers={"Retry-After": "2"}))
    async with Client(backend="vllm", base_url=server.v1, transport=server.transport) as client:
        ...
    server.requests("/v1/chat/completions")

A request to any other host fails to connect, as where nothing listens.
What only a socket can show is played as the client would see it: ``drop``
and ``reset`` arrive as a failed connection, ``cut`` and ``sse_cut`` as a
stream that broke off, ``hang`` never answers (the client's timeout ends it).
A streamed answer arrives at once: ``chunk_delay`` is not played.
"""

from __future__ import annotations

import itertools
import json
import weakref
from typing import Any, ClassVar
from urllib.parse import urlsplit

import anyio

from ._fake_answers import Plan, delay_of, plan, refusal
from ._fake_control import ScriptControl, begin, control, end
from ._fake_rules import RequestInfo, State
from .mock import MockRequest, MockResponse, MockTransport

__all__ = ["MockOpenAIServer"]

_numbers = itertools.count(1)


class MockOpenAIServer(ScriptControl):
    """An in-process fake OpenAI-compatible server; hand ``transport`` to the ``Client``.

    Args: as ``FakeOpenAIServer``'s.

    Attributes:
        base_url: A root URL of its own (nothing listens there: the transport answers).
        transport: The ``MockTransport`` that answers every request from the script.
    """

    _running: ClassVar[weakref.WeakValueDictionary[str, MockOpenAIServer]] = weakref.WeakValueDictionary()

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.state = State(self.settings())
        self.base_url = f"http://mock-openai-{next(_numbers)}.test"
        self.transport = MockTransport(self._answer)
        MockOpenAIServer._running[self.base_url] = self

    def __repr__(self) -> str:
        return f"<MockOpenAIServer {self.base_url}>"

    def _call(self, method: str, action: str, payload: Any = None, query: str = "") -> Any:
        code, answer = control(self.state, method, action, json.loads(json.dumps(payload)), query)
        if code != 200:
            raise ValueError(f"mock server refused {action}: {json.dumps(answer)}")
        return json.loads(json.dumps(answer))  # a copy, as over the wire

    async def _answer(self, request: MockRequest) -> MockResponse:
        url = urlsplit(request.url)
        if url.hostname != urlsplit(self.base_url).hostname:
            raise ConnectionRefusedError(f"nothing listens at {url.hostname}:{url.port or 80}")
        info = RequestInfo(request.method, url.path, url.query, request.headers, request.body)
        action, entry = begin(self.state, info)
        gone = True
        try:
            answer = refusal(self.state, info, entry)
            if answer is None:
                delay = delay_of(action)
                if delay > 0:
                    await anyio.sleep(delay)
                origin = f"{url.scheme}://{url.hostname}" + (f":{url.port}" if url.port else "")
                answer = plan(self.state, info, action, entry["seq"], origin)
            if answer.status is None and answer.end == "hang":
                await anyio.sleep_forever()  # until the client's timeout cancels it
            response = _render(answer, entry)
            gone = False
            return response
        finally:
            end(self.state, entry, gone)


def _render(answer: Plan, entry: dict[str, Any]) -> MockResponse:
    if answer.status is None:
        entry["completed"] = True
        raise ConnectionResetError("the server closed the connection without answering")
    headers = dict(answer.headers)
    if not any(k.lower() == "content-type" for k in headers):
        headers["Content-Type"] = answer.content_type
    body = answer.body if answer.parts is None else b"".join(part for _, part in answer.parts)
    entry.update(status=answer.status, completed=True)
    return MockResponse(answer.status, headers, body, broken=answer.end in ("close", "rst"))
