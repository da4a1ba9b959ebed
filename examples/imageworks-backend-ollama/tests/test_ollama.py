"""Tests of the ollama backend: the core's conformance suite, then Ollama's own protocol.

Both run in-process: ``FakeOllama`` answers through a ``MockTransport`` as
``ollama serve`` does.  Run them with the plugin installed
(``pip install -e .[test]``)::

    pytest
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from fake_ollama import BUSY, FakeOllama, OllamaFaults
from imageworks_backend_ollama import plugin

from imageworks_core import (
    BackendProtocolError,
    BackendRejected,
    PreparedImage,
    Request,
)
from imageworks_core.testing.conformance import BackendConformance, png_bytes

MODEL = "qwen2.5vl:3b"


class TestOllamaConformance(BackendConformance):
    """Every contract test of the suite, on the installed ``ollama`` entry point and a fake Ollama."""

    backend = "ollama"
    client_overrides = {"backends": {"ollama": {"model": MODEL}}}
    other_model = "llava:7b"

    @pytest.fixture
    def fake(self) -> FakeOllama:
        return FakeOllama()

    @pytest.fixture
    def transport(self, fake: FakeOllama) -> Any:
        return fake.transport

    @pytest.fixture
    def server_url(self, fake: FakeOllama) -> str:
        return fake.base_url

    @pytest.fixture
    def faults(self, fake: FakeOllama) -> OllamaFaults:
        return OllamaFaults(fake)


@pytest.fixture
def fake() -> FakeOllama:
    return FakeOllama()


@pytest.fixture
def image() -> PreparedImage:
    return PreparedImage(data=png_bytes(32, 24), mime="image/png", width=32, height=24)


def make(factory: Any, fake: FakeOllama, **section: Any) -> Any:
    backend = {"base_url": fake.base_url, "model": MODEL, **section}
    return factory(plugin, transport=fake.transport, overrides={"backends": {"ollama": backend}})


@pytest.mark.anyio
async def test_the_chat_request_is_ollamas_shape(
    imageworks_client_factory: Any, fake: FakeOllama, image: PreparedImage
) -> None:
    request = Request(
        prompt="Which colours?",
        system="Be brief.",
        images=(image,),
        max_tokens=40,
        temperature=0.2,
        top_p=0.9,
        stop=("\n\n",),
        extra={"top_k": 20, "format": "json"},
    )
    async with make(imageworks_client_factory, fake, keep_alive="10m", num_ctx=8192) as client:
        await client.infer(request)
    (body,) = fake.chats
    assert body["model"] == MODEL and body["stream"] is True
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Which colours?", "images": [base64.b64encode(image.data).decode()]},
    ]  # plain base64, not a data: URL
    assert body["options"] == {
        "num_predict": 40,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "num_ctx": 8192,
        "top_k": 20,
    }
    assert body["keep_alive"] == "10m" and body["format"] == "json"


@pytest.mark.anyio
async def test_a_stream_arrives_in_pieces_with_the_counts_of_the_last_object(
    imageworks_client_factory: Any, fake: FakeOllama, image: PreparedImage
) -> None:
    async with make(imageworks_client_factory, fake) as client:
        chunks = [chunk async for chunk in client.stream(Request(prompt="Describe", images=(image,)))]
    assert [c.text for c in chunks if c.text] == ["A", " red", " square", " on", " a", " white", " ground."]
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.usage is not None and (last.usage.prompt_tokens, last.usage.completion_tokens) == (
        12 + 256,
        7,
    )


@pytest.mark.anyio
async def test_the_token_cap_reports_length(imageworks_client_factory: Any, fake: FakeOllama) -> None:
    async with make(imageworks_client_factory, fake) as client:
        result = await client.infer(Request(prompt="Describe", max_tokens=3))
    assert result.text == "A red square" and result.finish_reason == "length"


@pytest.mark.anyio
async def test_a_model_that_is_not_pulled_says_how_to_pull_it(
    imageworks_client_factory: Any, fake: FakeOllama
) -> None:
    async with make(imageworks_client_factory, fake, model="gemma3:4b") as client:
        report = await client.health()
        with pytest.raises(BackendRejected) as exc_info:
            await client.infer(Request(prompt="Describe"))
    assert report.reachable and not report.ready
    assert "not pulled" in (report.detail or "") and report.hint == "ollama pull gemma3:4b"
    assert 'model "gemma3:4b" not found' in exc_info.value.message
    assert exc_info.value.hint == "ollama pull gemma3:4b"
    assert len(fake.chats) == 1, "a missing model is not asked again"


@pytest.mark.anyio
async def test_a_full_queue_is_overloaded_and_tried_again(
    imageworks_client_factory: Any, fake: FakeOllama
) -> None:
    fake.busy_for = 2  # Ollama's 503 when more than OLLAMA_MAX_QUEUE requests wait
    async with make(imageworks_client_factory, fake) as client:
        result = await client.dispatcher.run_one(Request(prompt="Describe"))
    assert result.error is None and result.text == fake.reply
    assert [a.error_type for a in result.attempts] == ["BackendOverloaded", "BackendOverloaded", None]
    assert BUSY in (result.attempts[0].error or "")
    assert len(fake.chats) == 3


@pytest.mark.anyio
async def test_a_stream_without_its_last_object_is_an_error(
    imageworks_client_factory: Any, fake: FakeOllama
) -> None:
    fake.fault = "cut"
    async with make(imageworks_client_factory, fake) as client:
        with pytest.raises(BackendProtocolError, match="ended before its last object"):
            await client.infer(Request(prompt="Describe"))


@pytest.mark.anyio
async def test_no_model_configured_uses_the_only_pulled_one(imageworks_client_factory: Any) -> None:
    fake = FakeOllama(models=("llava:7b",))
    async with make(imageworks_client_factory, fake, model=None) as client:
        result = await client.infer(Request(prompt="Describe"))
    assert result.model == "llava:7b" and fake.chats[-1]["model"] == "llava:7b"


@pytest.mark.anyio
async def test_no_model_configured_and_several_pulled_names_them(
    imageworks_client_factory: Any, fake: FakeOllama
) -> None:
    async with make(imageworks_client_factory, fake, model=None) as client:
        with pytest.raises(BackendRejected) as exc_info:
            await client.infer(Request(prompt="Describe"))
    assert "serves several models: qwen2.5vl:3b, llava:7b" in exc_info.value.message
    assert 'backends.ollama.model = "qwen2.5vl:3b"' in (exc_info.value.hint or "")
    assert fake.chats == []


@pytest.mark.anyio
async def test_images_in_openai_shaped_messages_travel_as_base64(
    imageworks_client_factory: Any, fake: FakeOllama, image: PreparedImage
) -> None:
    data_url = f"data:image/png;base64,{base64.b64encode(image.data).decode()}"
    messages = (
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is it?"},
                {"type": "image_url", "image_url": {"url": data_url}},
            ],
        },
    )
    async with make(imageworks_client_factory, fake) as client:
        await client.infer(Request(messages=messages))
    assert fake.chats[-1]["messages"] == [
        {"role": "user", "content": "What is it?", "images": [base64.b64encode(image.data).decode()]}
    ]


@pytest.mark.anyio
async def test_a_model_name_without_a_tag_is_latest(imageworks_client_factory: Any) -> None:
    fake = FakeOllama(models=("llava:latest",))
    async with make(imageworks_client_factory, fake, model="llava") as client:
        report = await client.health()
    assert report.ready and report.models == ("llava:latest",)
