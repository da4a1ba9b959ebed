"""The end of an OpenAI-style stream: finish_reason and usage in one final chunk, whatever the order.

With ``stream_options.include_usage`` servers end a stream in several valid ways:
the finish chunk then a usage-only chunk with ``choices: []`` (vLLM, LMDeploy,
transformers serve from 5.25), usage on the finish chunk itself (transformers
serve 5.23), or usage before the finish chunk.  Every OpenAI-style backend must
give the caller a last chunk carrying the finish reason and the usage, and the
same text as a non-streamed answer.  The ``faulty`` server sends each ordering
byte for byte; the real transformers serve is covered in ``test_openai_backend``
and ``test_lmdeploy_real``.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import require

from imageworks_core import BackendProtocolError, Chunk, Client, Request
from imageworks_core.plugins import installed_backend_names

pytestmark = pytest.mark.anyio

USAGE = {"prompt_tokens": 30, "completion_tokens": 4, "total_tokens": 34}


def _chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "{model}",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def _usage_only() -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "{model}",
        "choices": [],
        "usage": USAGE,
    }


TEXT = [_chunk({"role": "assistant", "content": ""}, None), _chunk({"content": "A grey "}, None)]
TEXT += [_chunk({"content": "cat."}, None)]

ORDERINGS = {
    # vLLM / LMDeploy / transformers serve 5.25: finish, then usage with no choices
    "finish-then-usage": [*TEXT, _chunk({}, "stop"), _usage_only()],
    # transformers serve 5.23: usage on the finish chunk
    "usage-on-finish": [*TEXT, _chunk({}, "stop", usage=USAGE)],
    "usage-then-finish": [*TEXT, _usage_only(), _chunk({}, "stop")],
    # the last text arrives on the finish chunk, usage follows
    "text-on-finish-then-usage": [*TEXT[:-1], _chunk({"content": "cat."}, "stop"), _usage_only()],
    # usage repeated on the finish chunk and after it (the later report wins; same here)
    "usage-twice": [*TEXT, _chunk({}, "stop", usage=USAGE), _usage_only()],
}


def _client(backend: str, url: str) -> Client:
    return Client(
        backend=backend,
        overrides={"backends": {backend: {"base_url": url, "model": "fake-vlm"}}},
        user_file=False,
        project_file=False,
        allow=[backend],
    )


def _request() -> Request:
    return Request(prompt="Describe it.", max_tokens=8)


@pytest.mark.parametrize("ordering", sorted(ORDERINGS))
@pytest.mark.parametrize("backend", ["openai", "vllm", "lmdeploy"])
async def test_last_chunk_carries_finish_and_usage(faulty: Any, backend: str, ordering: str) -> None:
    require(backend in installed_backend_names(), f"imageworks-backend-{backend} is not installed")
    faulty.script([{"fault": "sse_events", "events": ORDERINGS[ordering], "match": {"stream": True}}])
    async with _client(backend, faulty.v1) as client:
        chunks: list[Chunk] = [c async for c in client.stream(_request())]
    assert "".join(c.text for c in chunks) == "A grey cat."
    last = chunks[-1]
    assert last.finish_reason == "stop", chunks
    assert last.usage is not None and last.usage.completion_tokens == 4, chunks
    assert last.usage.prompt_tokens == 30
    # exactly one chunk says the answer finished; text chunks came through one by one
    assert [c.finish_reason for c in chunks].count("stop") == 1
    assert len([c for c in chunks if c.text]) >= 2


async def test_stream_without_a_finish_chunk_is_still_an_error(faulty: Any) -> None:
    """Usage alone does not end an answer: a stream with usage but no finish_reason was cut."""

    faulty.script(
        [{"fault": "sse_events", "events": [*TEXT, _usage_only()], "match": {"stream": True}}],
        default="ok",
    )
    async with _client("openai", faulty.v1) as client:
        with pytest.raises(BackendProtocolError, match="ended before the answer finished"):
            _ = [c async for c in client.stream(_request())]
