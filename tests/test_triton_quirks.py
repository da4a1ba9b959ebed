"""The Triton backend against the fault-injecting server, in-process: every Triton quirk, byte for byte.

The ``faulty`` server (tests/servers/faulty_openai.py) plays Triton: its
"status" fault serves the exact KServe v2 health, metadata, config, generate,
generate_stream and error answers that tritonserver 2.51 sends
(tests/servers/TRITON_NOTES.md), and its request log shows what the plugin
sent and in which order.  What a request *contains* is checked on the plan the
plugin builds (``build_plan``), and again on the wire by tests/test_triton_real.py.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from servers._proc import free_port
from servers.faulty_openai import MockFaulty, transport_for

from imageworks_backend_triton import TritonBackend, TritonSettings, plugin
from imageworks_backend_triton._errors import one_line
from imageworks_backend_triton._inputs import build_plan, render_prompt
from imageworks_backend_triton._model import model_info_from
from imageworks_backend_triton._settings import OPENAI_DEFAULT_URL
from imageworks_core import (
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    Client,
    ConfigError,
    PreparedImage,
    Request,
    Settings,
)
from imageworks_core.plugins import BackendRegistry

pytestmark = pytest.mark.anyio


@pytest.fixture
def faulty() -> MockFaulty:
    """The fault server in-process (``MockOpenAIServer``): these tests check what is sent and how
    the answers are read, which needs no socket."""
    return MockFaulty()


M = "tiny"

# ------------------------------------------------------------------ Triton's shapes (TRITON_NOTES.md)

VLM_INPUTS = [
    {"name": "text_input", "datatype": "BYTES", "shape": [1], "optional": False},
    {"name": "image_url_input", "datatype": "BYTES", "shape": [-1], "optional": True},
    {"name": "max_tokens", "datatype": "INT32", "shape": [1], "optional": True},
    {"name": "temperature", "datatype": "FP32", "shape": [1], "optional": True},
]
TEXT_INPUTS = [
    {"name": "text_input", "datatype": "BYTES", "shape": [1], "optional": False},
    {"name": "max_tokens", "datatype": "INT32", "shape": [1], "optional": True},
]
VLLM_INPUTS = [
    {"name": "text_input", "datatype": "BYTES", "shape": [1], "optional": False},
    {"name": "image", "datatype": "BYTES", "shape": [-1], "optional": True},
    {"name": "stream", "datatype": "BOOL", "shape": [1], "optional": True},
    {"name": "sampling_parameters", "datatype": "BYTES", "shape": [1], "optional": True},
    {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": [1], "optional": True},
]
CONFIG_TYPES = {
    "BYTES": "TYPE_STRING",
    "INT32": "TYPE_INT32",
    "FP32": "TYPE_FP32",
    "FP16": "TYPE_FP16",
    "UINT8": "TYPE_UINT8",
    "BOOL": "TYPE_BOOL",
}
SERVER_META = {
    "name": "triton",
    "version": "2.51.0",
    "extensions": [
        "classification",
        "sequence",
        "model_repository",
        "schedule_policy",
        "model_configuration",
    ],
}
TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/opt/pytriton/proxy/inference.py", line 393, in _handle_requests\n'
    "    async for responses in self._model_callable(requests):\n"
    + "".join(
        f'  File "/srv/models/model.py", line {i}, in helper_{i}\n    return helper_{i + 1}()\n'
        for i in range(12)
    )
    + '  File "/srv/models/model.py", line 150, in _answer\n'
    '    raise RuntimeError("boom requested by the prompt")\n'
    "RuntimeError: boom requested by the prompt\n"
)
MODEL_RAISED = (
    f"Failed to process the request(s) for model '{M}_0_0', message: TritonModelException: "
    f"Model execute error: {TRACEBACK}\n\n\nAt:\n  /tmp/folderX/1/model.py(501): execute\n"
)


def metadata(name: str, inputs: list[dict[str, Any]], *, batched: bool = False) -> dict[str, Any]:
    def shape(i: dict[str, Any]) -> list[int]:
        return [-1, *i["shape"]] if batched else list(i["shape"])

    return {
        "name": name,
        "versions": ["1"],
        "platform": "python",
        "inputs": [{"name": i["name"], "datatype": i["datatype"], "shape": shape(i)} for i in inputs],
        "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1, 1] if batched else [1]}],
    }


def config(
    name: str, inputs: list[dict[str, Any]], *, max_batch_size: int = 0, decoupled: bool = False
) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "name": name,
        "backend": "python",
        "max_batch_size": max_batch_size,
        "input": [
            {
                "name": i["name"],
                "data_type": CONFIG_TYPES[i["datatype"]],
                "dims": i["shape"],
                "optional": i["optional"],
            }
            for i in inputs
        ],
        "output": [{"name": "text_output", "data_type": "TYPE_STRING", "dims": [1]}],
    }
    if decoupled:
        conf["model_transaction_policy"] = {"decoupled": True}
    return conf


def status(path: str, code: int, body: Any = "", method: str | None = None, **extra: Any) -> dict[str, Any]:
    """A rule serving *body* with *code* on *path* (a string body is sent as text/plain)."""
    match: dict[str, Any] = {"path": path}
    if method:
        match["method"] = method
    return {"match": match, "fault": "status", "status": code, "body": body, **extra}


def sse(*events: dict[str, Any]) -> str:
    return "".join(f"data: {json.dumps(e)}\n\n" for e in events)


def triton(
    model: str = M,
    inputs: list[dict[str, Any]] | None = None,
    *,
    first: list[dict[str, Any]] = (),  # type: ignore[assignment]
    server: dict[str, Any] | None = None,
    with_config: bool = True,
    max_batch_size: int = 0,
    decoupled: bool = False,
    answer: str = "a red square",
) -> list[dict[str, Any]]:
    """Rules that make the faulty server answer like tritonserver serving *model*; *first* take precedence."""
    inputs = VLM_INPUTS if inputs is None else inputs
    base = f"/v2/models/{model}"
    rules = [
        *first,
        status("/v2/health/live", 200),
        status("/v2/health/ready", 200),
        status("/v2", 200, server or SERVER_META),
        status(base, 200, metadata(model, inputs, batched=max_batch_size > 0)),
        status(f"{base}/ready", 200),
        status(f"{base}/generate", 200, {"model_name": model, "model_version": "1", "text_output": answer}),
        status(
            f"{base}/generate_stream",
            200,
            sse(
                *(
                    {"model_name": model, "model_version": "1", "text_output": w}
                    for w in ("a", " red", " square")
                )
            ),
            content_type="text/event-stream",
        ),
        status(
            f"{base}/infer",
            200,
            {
                "model_name": model,
                "model_version": "1",
                "outputs": [
                    {"name": "text_output", "datatype": "BYTES", "shape": [1], "data": [f"infer: {answer}"]}
                ],
            },
        ),
    ]
    if with_config:
        rules.append(
            status(
                f"{base}/config",
                200,
                config(model, inputs, max_batch_size=max_batch_size, decoupled=decoupled),
            )
        )
    return rules


def client(base_url: str, **backend: Any) -> Client:
    """A client on the installed triton entry point only, no config files, pointed at *base_url*."""
    top = {k: backend.pop(k) for k in ("max_tokens", "temperature", "wait_for_backend") if k in backend}
    backend.setdefault("model", M)
    return Client(
        backend="triton",
        overrides={**top, "backends": {"triton": {"base_url": base_url, **backend}}},
        user_file=False,
        project_file=False,
        allow=["triton"],
        transport=transport_for(base_url),
    )


def image(size: tuple[int, int] = (16, 16), color: tuple[int, int, int] = (200, 40, 40)) -> PreparedImage:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return PreparedImage.from_bytes(buf.getvalue())


def describe(**kw: Any) -> Request:
    return Request(prompt=kw.pop("prompt", "Describe this image."), images=kw.pop("images", (image(),)), **kw)


def posts(faulty: Any) -> list[str]:
    return [e["path"] for e in faulty.log() if e["method"] == "POST"]


def info_of(
    inputs: list[dict[str, Any]], *, max_batch_size: int = 0, decoupled: bool = False, name: str = M
) -> Any:
    return model_info_from(
        name,
        metadata(name, inputs, batched=max_batch_size > 0),
        config(name, inputs, max_batch_size=max_batch_size, decoupled=decoupled),
    )


# ------------------------------------------------------------------ plugin, settings


def test_entry_point_and_info() -> None:
    reg = BackendRegistry(allow=["triton"])
    loaded = reg.get("triton")
    assert loaded.distribution == "imageworks-backend-triton"
    info = loaded.info
    assert info.default_base_url == "http://localhost:8000"
    assert info.settings_cls is TritonSettings
    caps = info.capabilities
    assert (caps.vision, caps.streaming, caps.max_images, caps.model_switch) == (True, True, None, True)
    hints = "\n".join(info.launch_hints)
    assert "tritonserver --model-repository" in hints
    assert "trtllm-serve" in hints and "--host 0.0.0.0" in hints
    assert isinstance(plugin, TritonBackend)


def test_settings_defaults_and_validation() -> None:
    s = TritonSettings()
    assert (s.mode, s.endpoint, s.image_input, s.base_url) == ("kserve", "auto", "auto", None)
    assert (s.text_input_name, s.text_output_name, s.chat_template, s.stop_words) == (
        "text_input",
        "text_output",
        None,
        (),
    )
    assert TritonSettings(mode="openai").base_url == OPENAI_DEFAULT_URL
    assert TritonSettings(mode="openai", base_url="http://h:9001/v1").base_url == "http://h:9001/v1"
    for bad in (
        {"mode": "grpc"},
        {"endpoint": "stream"},
        {"image_input": "image_input"},
        {"chat_template": "x"},
    ):
        with pytest.raises(ValueError):
            TritonSettings(**bad)


def test_settings_through_the_config_loader(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__TRITON__PARAMETERS", '{"top_k": 20, "seed": 7}')
    monkeypatch.setenv("IMAGEWORKS_BACKENDS__TRITON__STOP_WORDS", "</s>,<|im_end|>")
    c = Client(
        backend="triton",
        overrides={"backends": {"triton": {"mode": "openai"}}},
        user_file=False,
        allow=["triton"],
    )
    s = c.settings.backend_settings("triton")
    assert isinstance(s, TritonSettings)
    assert dict(s.parameters) == {"top_k": 20, "seed": 7}
    assert s.stop_words == ("</s>", "<|im_end|>")
    assert s.base_url == OPENAI_DEFAULT_URL
    bad = Client(
        backend="triton",
        overrides={"backends": {"triton": {"mode": "grpc"}}},
        user_file=False,
        allow=["triton"],
    )
    with pytest.raises(ConfigError, match="mode must be one of"):
        bad.settings  # noqa: B018


# ------------------------------------------------------------------ health


async def test_health_ready(faulty: Any) -> None:
    faulty.script(triton())
    async with client(faulty.base_url) as c:
        r = await c.health()
    assert (r.reachable, r.ready, r.models, r.version) == (True, True, (M,), "2.51.0")
    assert "image_url_input" in (r.detail or "")
    paths = [e["path"] for e in faulty.log()]
    assert paths[:2] == ["/v2/health/live", "/v2/health/ready"]
    assert {"/v2", f"/v2/models/{M}/ready", f"/v2/models/{M}", f"/v2/models/{M}/config"} <= set(paths)


async def test_health_400_means_not_ready_not_down(faulty: Any) -> None:
    faulty.script(triton(first=[status("/v2/health/ready", 400)]))
    async with client(faulty.base_url) as c:
        r = await c.health()
    assert (r.reachable, r.ready) == (True, False)
    assert "not ready" in (r.detail or "") and "400" in (r.detail or "")
    assert r.version == "2.51.0"


async def test_health_model_not_ready(faulty: Any) -> None:
    faulty.script(
        triton(
            first=[status(f"/v2/models/{M}/ready", 400, '{"error":"Model version not ready"}')]
        )  # text/plain
    )
    async with client(faulty.base_url) as c:
        r = await c.health()
    assert (r.reachable, r.ready, r.models) == (True, False, ())
    assert f"model '{M}'" in (r.detail or "") and "Model version not ready" in (r.detail or "")
    assert "/v2/repository/index" in (r.hint or "") and "backends.triton.model" in (r.hint or "")


async def test_health_not_a_kserve_server(faulty: Any) -> None:
    # an OpenAI-only server: every /v2/ path is a 404
    faulty.script([{"match": {"path_prefix": "/v2/"}, "fault": "status", "status": 404}])
    async with client(faulty.base_url) as c:
        r = await c.health()
    assert (r.reachable, r.ready) == (True, False)
    assert "no KServe v2 API" in (r.detail or "")
    assert 'mode = "openai"' in (r.hint or "")


async def test_health_down_names_url_and_launch_lines() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with client(url) as c:
        r = await c.health()
    assert (r.reachable, r.ready) == (False, False)
    assert url in (r.detail or "") and "down or still loading" in (r.detail or "")
    assert "tritonserver" in (r.hint or "") and "trtllm-serve" in (r.hint or "")


async def test_no_model_configured_uses_the_repository_index(faulty: Any) -> None:
    index = [
        {"name": n, "version": "1", "state": "READY"} for n in ("preprocessing", "ensemble", "tensorrt_llm")
    ]
    faulty.script(triton("ensemble", first=[status("/v2/repository/index", 200, index, method="POST")]))
    async with client(faulty.base_url, model=None) as c:
        r = await c.health()
        result = await c.infer(describe())
    assert r.ready and r.models == ("ensemble",)
    assert result.model == "ensemble"


async def test_no_model_configured_several_models(faulty: Any) -> None:
    index = [{"name": n, "version": "1", "state": "READY"} for n in ("llava", "qwen")]
    faulty.script(triton(first=[status("/v2/repository/index", 200, index, method="POST")]))
    async with client(faulty.base_url, model=None) as c:
        with pytest.raises(BackendRejected, match="several models") as info:
            await c.infer(describe())
    assert 'backends.triton.model = "llava"' in (info.value.hint or "")


async def test_no_model_and_no_index_tries_ensemble(faulty: Any) -> None:
    faulty.script(
        triton(
            first=[
                status(
                    "/v2/models/ensemble",
                    404,
                    {"error": "Request for unknown model: 'ensemble' is not found"},
                )
            ]
        )
    )
    async with client(faulty.base_url, model=None) as c:
        with pytest.raises(BackendRejected, match="'ensemble'") as info:
            await c.infer(describe())
    assert "backends.triton.model is unset" in info.value.message


# ------------------------------------------------------------------ discovery


async def test_discovery_is_cached_per_client_and_per_model(faulty: Any) -> None:
    faulty.script(triton() + triton("other", TEXT_INPUTS))
    async with client(faulty.base_url) as c:
        await c.infer(describe())
        await c.infer(describe())
        await c.infer(Request(prompt="text", model="other"))  # a request may name another Triton model
    gets = [e["path"] for e in faulty.log() if e["method"] == "GET"]
    assert gets.count(f"/v2/models/{M}") == 1 and gets.count(f"/v2/models/{M}/config") == 1
    assert gets.count("/v2/models/other") == 1
    assert posts(faulty) == [f"/v2/models/{M}/generate"] * 2 + ["/v2/models/other/generate"]


def test_model_info_from_metadata_and_config() -> None:
    info = info_of(VLM_INPUTS, max_batch_size=4)
    assert info.batched and info.max_batch_size == 4 and not info.decoupled
    spec = info.input("image_url_input")
    assert spec is not None and spec.dims == (-1,) and spec.optional is True and spec.datatype == "BYTES"
    text = info.input("text_input")
    assert text is not None and text.optional is False and text.dims == (1,)
    assert info_of(VLLM_INPUTS, decoupled=True).decoupled


def test_model_info_without_config_guesses_batching() -> None:
    batched = model_info_from(M, metadata(M, VLM_INPUTS, batched=True), None)
    assert batched.batched and batched.input("text_input").dims == (1,)  # type: ignore[union-attr]
    plain = model_info_from(M, metadata(M, VLM_INPUTS), None)
    assert not plain.batched and plain.input("max_tokens").optional is None  # type: ignore[union-attr]


# ------------------------------------------------------------------ what is sent (the plan)


def plan_for(inputs: list[dict[str, Any]], request: Request, *, stream: bool = False, **kw: Any) -> Any:
    settings = TritonSettings(**{k: v for k, v in kw.items() if k not in ("max_batch_size", "decoupled")})
    info = info_of(inputs, max_batch_size=kw.get("max_batch_size", 0), decoupled=kw.get("decoupled", False))
    return build_plan(settings, Settings(max_tokens=64), request, info, stream=stream)


def test_generate_body_types_and_only_declared_inputs() -> None:
    req = describe(temperature=1, extra={"top_k": 5, "seed": 3})
    body = plan_for(
        VLM_INPUTS, req, parameters={"max_tokens": 8.0, "repetition_penalty": 1.1}
    ).generate_body()
    assert set(body) == {"text_input", "image_url_input", "max_tokens", "temperature"}
    assert body["max_tokens"] == 8 and type(body["max_tokens"]) is int  # INT32 as a JSON int
    assert body["temperature"] == 1.0 and type(body["temperature"]) is float
    assert body["image_url_input"].startswith("data:image/png;base64,")
    text_only = plan_for(TEXT_INPUTS, Request(prompt="hi")).generate_body()
    assert text_only == {"text_input": "hi", "max_tokens": 64}  # no temperature: none set, none declared


def test_infer_body_shapes_unbatched_and_batched() -> None:
    req = describe(images=(image(), image((8, 8))))
    flat = plan_for(VLM_INPUTS, req).infer_body()
    shapes = {t["name"]: t["shape"] for t in flat["inputs"]}
    assert shapes == {"text_input": [1], "image_url_input": [2], "max_tokens": [1]}
    assert flat["outputs"] == [{"name": "text_output"}]
    batched = plan_for(VLM_INPUTS, req, max_batch_size=4).infer_body()
    shapes = {t["name"]: t["shape"] for t in batched["inputs"]}
    assert shapes == {"text_input": [1, 1], "image_url_input": [1, 2], "max_tokens": [1, 1]}
    assert all(t["datatype"] in ("BYTES", "INT32") for t in batched["inputs"])


def test_no_images_no_empty_list_no_null() -> None:
    body = plan_for(
        VLM_INPUTS, Request(prompt="hi", stop=()), parameters={"temperature": None}
    ).generate_body()
    assert "image_url_input" not in body and "temperature" not in body
    assert None not in body.values()


def test_vllm_style_plan() -> None:
    req = describe(temperature=0.2, top_p=0.9, stop=("END",), extra={"top_k": 4})
    body = plan_for(VLLM_INPUTS, req, decoupled=True, stop_words=("</s>",)).generate_body()
    assert set(body) == {"text_input", "image", "sampling_parameters", "exclude_input_in_output"}
    assert not body["image"].startswith("data:")  # plain base64
    assert body["exclude_input_in_output"] is True
    sampling = json.loads(body["sampling_parameters"])  # a JSON *string*
    assert sampling == {
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "stop": ["</s>", "END"],
        "top_k": 4,
    }
    streaming = plan_for(VLLM_INPUTS, req, stream=True, decoupled=True).generate_body()
    assert streaming["stream"] is True


def test_stream_flag_only_for_decoupled_models() -> None:
    inputs = [*VLM_INPUTS, {"name": "stream", "datatype": "BOOL", "shape": [1], "optional": True}]
    assert "stream" not in plan_for(inputs, describe(), stream=True).generate_body()
    assert plan_for(inputs, describe(), stream=True, decoupled=True).generate_body()["stream"] is True


def test_trtllm_ensemble_stop_words_and_parameters() -> None:
    inputs = [
        *VLM_INPUTS,
        {"name": "stop_words", "datatype": "BYTES", "shape": [-1], "optional": True},
        {"name": "top_k", "datatype": "INT32", "shape": [1], "optional": True},
        {"name": "end_id", "datatype": "INT32", "shape": [1], "optional": False},
    ]
    with pytest.raises(BackendRejected, match="end_id") as info:
        plan_for(inputs, describe())
    assert "parameters" in (info.value.hint or "")
    body = plan_for(
        inputs, describe(stop=("B",)), stop_words=("A",), parameters={"end_id": 2, "top_k": 20}
    ).generate_body()
    assert body["stop_words"] == ["A", "B"] and body["end_id"] == 2 and body["top_k"] == 20
    with pytest.raises(BackendRejected, match="does not fit"):
        plan_for(inputs, describe(), parameters={"end_id": "two"})


def test_chat_template_and_system_prompt() -> None:
    tpl = "<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"
    body = plan_for(TEXT_INPUTS, Request(prompt="Describe {x}"), chat_template=tpl).generate_body()
    assert body["text_input"] == "<|im_start|>user\nDescribe {x}<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt("[{system}] {prompt}", "p", "s") == "[s] p"
    assert render_prompt("U: {prompt}", "p", "s") == "U: s\n\np"
    assert render_prompt(None, "p", None) == "p"


def test_messages_are_flattened_to_one_turn() -> None:
    url = image().data_url()
    msgs = (
        {"role": "system", "content": "Be brief."},
        {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What?"}],
        },
    )
    body = plan_for(VLLM_INPUTS, Request(messages=msgs), decoupled=True).generate_body()
    assert body["text_input"] == "Be brief.\n\nWhat?" and body["image"] == url.split(",", 1)[1]
    with pytest.raises(BackendRejected, match="'assistant' turns"):
        plan_for(VLM_INPUTS, Request(messages=({"role": "assistant", "content": "x"},)))


def test_too_many_images_for_a_fixed_image_input() -> None:
    inputs = [VLM_INPUTS[0], {"name": "image_url_input", "datatype": "BYTES", "shape": [1], "optional": True}]
    with pytest.raises(BackendRejected, match="at most 1 image"):
        plan_for(inputs, describe(images=(image(), image())))


def test_image_input_setting_must_match_the_model() -> None:
    with pytest.raises(BackendRejected, match="has no such input"):
        plan_for(VLM_INPUTS, describe(), image_input="image")
    with pytest.raises(BackendRejected, match="takes no images"):
        plan_for(VLM_INPUTS, describe(), image_input="none")
    assert (
        plan_for(VLM_INPUTS, Request(prompt="hi"), image_input="none").generate_body()["text_input"] == "hi"
    )


def test_text_input_and_output_names() -> None:
    with pytest.raises(BackendRejected, match="text_input_name"):
        plan_for(VLM_INPUTS, describe(), text_input_name="prompt")
    with pytest.raises(BackendRejected, match="no output 'answer'") as info:
        plan_for(VLM_INPUTS, describe(), text_output_name="answer")
    assert "text_output_name" in (info.value.hint or "")


def test_one_line_keeps_the_last_traceback_line() -> None:
    assert one_line(MODEL_RAISED) == "RuntimeError: boom requested by the prompt"
    assert one_line(TRACEBACK) == "RuntimeError: boom requested by the prompt"
    assert one_line("[request id: <id_unknown>] unexpected shape for input 'text_input'") == (
        "unexpected shape for input 'text_input'"
    )


# ------------------------------------------------------------------ generate, infer, fallbacks


async def test_infer_through_generate(faulty: Any) -> None:
    faulty.script(triton())
    async with client(faulty.base_url) as c:
        r = await c.infer(describe())
    assert (r.text, r.model, r.backend, r.finish_reason) == ("a red square", M, "triton", "stop")
    assert posts(faulty) == [f"/v2/models/{M}/generate"]


async def test_generate_404_falls_back_to_infer_and_remembers(faulty: Any) -> None:
    faulty.script(triton(first=[status(f"/v2/models/{M}/generate", 404, {"error": "Not Found"})]))
    async with client(faulty.base_url) as c:
        first = await c.infer(describe())
        second = await c.infer(describe())
    assert first.text == second.text == "infer: a red square"
    assert posts(faulty) == [f"/v2/models/{M}/generate", f"/v2/models/{M}/infer", f"/v2/models/{M}/infer"]


async def test_kserve_server_without_generate_uses_infer(faulty: Any) -> None:
    other = {"name": "mlserver", "version": "1.6.0", "extensions": []}
    faulty.script(triton(server=other, with_config=False))  # no /config either: 404
    async with client(faulty.base_url) as c:
        r = await c.infer(describe())
        chunks = [ch async for ch in c.stream(describe())]
    assert r.text == "infer: a red square"
    assert [ch.text for ch in chunks] == ["infer: a red square", ""] and chunks[-1].finish_reason == "stop"
    assert posts(faulty) == [f"/v2/models/{M}/infer"] * 2


async def test_extension_list_with_generate_is_trusted(faulty: Any) -> None:
    faulty.script(triton(server={**SERVER_META, "name": "kserve", "extensions": ["generate"]}))
    async with client(faulty.base_url) as c:
        assert (await c.infer(describe())).text == "a red square"


async def test_endpoint_infer_skips_generate(faulty: Any) -> None:
    faulty.script(triton())
    async with client(faulty.base_url, endpoint="infer") as c:
        assert (await c.infer(describe())).text == "infer: a red square"
    assert posts(faulty) == [f"/v2/models/{M}/infer"]


async def test_endpoint_generate_without_generate_is_a_clear_error(faulty: Any) -> None:
    faulty.script(triton(first=[status(f"/v2/models/{M}/generate", 404, {"error": "Not Found"})]))
    async with client(faulty.base_url, endpoint="generate") as c:
        with pytest.raises(BackendRejected, match="no generate extension") as info:
            await c.infer(describe())
    assert 'endpoint = "infer"' in (info.value.hint or "")
    assert posts(faulty) == [f"/v2/models/{M}/generate"]


async def test_decoupled_model_is_collected_from_generate_stream(faulty: Any) -> None:
    faulty.script(triton(decoupled=True))
    async with client(faulty.base_url) as c:
        r = await c.infer(describe())
    assert r.text == "a red square" and r.finish_reason == "stop"
    assert posts(faulty) == [f"/v2/models/{M}/generate_stream"]


async def test_http_200_several_responses_error_switches_to_stream(faulty: Any) -> None:
    several = {
        "error": "generate expects model to produce exactly 1 response, use generate stream for model that "
        "generates various number of responses"
    }
    faulty.script(triton(with_config=False, first=[status(f"/v2/models/{M}/generate", 200, several)]))
    async with client(faulty.base_url) as c:
        assert (await c.infer(describe())).text == "a red square"
        assert (await c.infer(describe())).text == "a red square"  # remembered: straight to the stream
    assert posts(faulty) == [f"/v2/models/{M}/generate"] + [f"/v2/models/{M}/generate_stream"] * 2


async def test_infer_501_decoupled_switches_to_stream(faulty: Any) -> None:
    body = '{"error":"HTTP end point doesn\'t support models with decoupled transaction policy"}'
    faulty.script(triton(with_config=False, first=[status(f"/v2/models/{M}/infer", 501, body)]))
    async with client(faulty.base_url, endpoint="infer") as c:
        assert (await c.infer(describe())).text == "a red square"
    assert posts(faulty) == [f"/v2/models/{M}/infer", f"/v2/models/{M}/generate_stream"]


async def test_infer_answer_from_a_batched_model(faulty: Any) -> None:
    faulty.script(
        triton(
            max_batch_size=4,
            first=[
                status(
                    f"/v2/models/{M}/infer",
                    200,
                    {
                        "model_name": M,
                        "outputs": [
                            {"name": "text_output", "datatype": "BYTES", "shape": [1, 1], "data": ["row"]}
                        ],
                    },
                )
            ],
        )
    )
    async with client(faulty.base_url, endpoint="infer") as c:
        assert (await c.infer(describe())).text == "row"


# ------------------------------------------------------------------ errors


async def test_unknown_model(faulty: Any) -> None:
    faulty.script(
        triton(
            first=[
                status("/v2/models/nope", 404, {"error": "Request for unknown model: 'nope' is not found"})
            ]
        )
    )
    async with client(faulty.base_url, model="nope") as c:
        with pytest.raises(BackendRejected) as info:
            await c.infer(describe())
    err = info.value
    assert "'nope'" in err.message and err.status == 404
    assert "/v2/repository/index" in (err.hint or "") and "--vlm-model" in (err.hint or "")
    assert posts(faulty) == []  # nothing sent to a model that does not exist


@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
async def test_400_input_error_is_rejected_once(faulty: Any, content_type: str) -> None:
    msg = (
        "[request id: <id_unknown>] expected number of inputs between 1 and 4 but got 0 inputs "
        "for model 'tiny'. "
        "Got input(s) [], but missing required input(s) ['text_input']. Please provide all required input(s)."
    )
    faulty.script(
        triton(
            first=[
                status(f"/v2/models/{M}/generate", 400, json.dumps({"error": msg}), content_type=content_type)
            ]
        )
    )
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendRejected, match="missing required input") as info:
            await c.infer(describe())
    assert info.value.status == 400 and "[request id" not in info.value.message
    assert "text_input, image_url_input" in (info.value.hint or "")
    assert len(posts(faulty)) == 1  # a rejected request is not retried


async def test_400_datatype_error_on_infer(faulty: Any) -> None:
    msg = (
        "[request id: <id_unknown>] inference input 'max_tokens' data-type is 'FP32', "
        "but model 'tiny' expects 'INT32'"
    )
    faulty.script(triton(first=[status(f"/v2/models/{M}/infer", 400, {"error": msg})]))
    async with client(faulty.base_url, endpoint="infer") as c:
        with pytest.raises(BackendRejected, match="data-type is 'FP32'"):
            await c.infer(describe())


@pytest.mark.parametrize("path", ["infer", "generate"])
async def test_model_exception_keeps_the_last_traceback_line(faulty: Any, path: str) -> None:
    code = 500 if path == "infer" else 400  # what Triton 2.51 sends for a model exception
    faulty.script(triton(first=[status(f"/v2/models/{M}/{path}", code, json.dumps({"error": MODEL_RAISED}))]))
    async with client(faulty.base_url, endpoint=path) as c:
        with pytest.raises(BackendProtocolError) as info:
            await c.infer(describe())
    err = info.value
    assert err.message.endswith("raised RuntimeError: boom requested by the prompt")
    assert "\n" not in err.message and "Traceback" not in err.message and "model.py" not in err.message
    assert err.status == code and not err.retryable
    assert len(posts(faulty)) == 1


async def test_503_queue_full_is_overloaded_and_retried(faulty: Any) -> None:
    busy = '{"error":"Exceeds maximum queue size"}'
    faulty.script(
        triton(
            first=[
                {**status(f"/v2/models/{M}/generate", 503, busy, headers={"Retry-After": "2"}), "times": 2}
            ]
        )
    )
    async with client(faulty.base_url) as c:
        r = await c.infer(describe())
    assert r.text == "a red square"
    assert [a.error_type for a in r.attempts] == ["BackendOverloaded", "BackendOverloaded", None]
    assert len(posts(faulty)) == 3


@pytest.mark.about("wait_for_backend")
async def test_503_error_type_and_retry_after(faulty: Any) -> None:
    busy = '{"error":"Exceeds maximum queue size"}'
    faulty.script(triton(first=[status(f"/v2/models/{M}/generate", 503, busy, headers={"Retry-After": "2"})]))
    # the plugin's mapping is under test: no outage waiting, so the final error comes out at once
    async with client(faulty.base_url, wait_for_backend=0) as c:
        with pytest.raises(BackendOverloaded) as info:
            await c.infer(describe())
    assert info.value.retry_after == 2.0 and "Exceeds maximum queue size" in info.value.message


async def test_http_200_error_body_is_an_error_not_text(faulty: Any) -> None:
    faulty.script(triton(first=[status(f"/v2/models/{M}/generate", 200, {"error": "something broke"})]))
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendProtocolError, match="something broke") as info:
            await c.infer(describe())
    assert "HTTP 200" in info.value.message


async def test_answer_without_text_output(faulty: Any) -> None:
    faulty.script(triton(first=[status(f"/v2/models/{M}/generate", 200, {"model_name": M, "output": "x"})]))
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendProtocolError, match="without 'text_output'") as info:
            await c.infer(describe())
    assert "text_output_name" in (info.value.hint or "")


async def test_text_only_model_rejects_images_before_sending(faulty: Any) -> None:
    faulty.script(triton(inputs=TEXT_INPUTS))
    async with client(faulty.base_url) as c:
        with pytest.raises(
            BackendRejected, match=rf"model '{M}' takes no images \(its inputs: text_input, max_tokens\)"
        ):
            await c.infer(describe())
        assert (await c.infer(Request(prompt="just text"))).text == "a red square"
    assert posts(faulty) == [f"/v2/models/{M}/generate"]  # only the text request


@pytest.mark.parametrize(
    ("name", "datatype", "shape", "expected"),
    [
        ("image_input", "FP16", [-1, 3, 336, 336], "preprocessed FP16 'image_input'"),
        ("image_bytes_input", "UINT8", [-1, -1, -1, 3], "raw UINT8 pixel tensors"),
    ],
)
async def test_unsupported_image_inputs_are_refused_with_a_warning(
    faulty: Any, caplog: pytest.LogCaptureFixture, name: str, datatype: str, shape: list[int], expected: str
) -> None:
    inputs = [VLM_INPUTS[0], {"name": name, "datatype": datatype, "shape": shape, "optional": True}]
    faulty.script(triton(inputs=inputs))
    caplog.set_level(logging.WARNING, logger="imageworks.backend.triton")
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendRejected, match=expected) as info:
            await c.infer(describe())
        assert (await c.infer(Request(prompt="text still works"))).text == "a red square"
    assert "image_url_input" in (info.value.hint or "")
    assert any("will not fake an answer" in r.getMessage() for r in caplog.records)
    assert posts(faulty) == [f"/v2/models/{M}/generate"]  # only the text request


async def test_credentials_in_the_base_url_stay_out_of_messages(faulty: Any) -> None:
    body = {"error": "Request for unknown model: 'nope' is not found"}
    faulty.script(triton(first=[status("/v2/models/nope", 404, body)]))
    url = faulty.base_url.replace("http://", "http://user:s3cr3t@")
    async with client(url, model="nope") as c:
        with pytest.raises(BackendRejected) as info:
            await c.infer(describe())
        report = await c.health()
    assert "s3cr3t" not in str(info.value)
    assert "s3cr3t" not in f"{report.url} {report.detail} {report.hint}"


async def test_undeclared_parameters_are_dropped_with_one_warning(
    faulty: Any, caplog: pytest.LogCaptureFixture
) -> None:
    faulty.script(triton())
    caplog.set_level(logging.WARNING, logger="imageworks.backend.triton")
    async with client(faulty.base_url, parameters={"top_k": 3}) as c:
        await c.infer(describe())
        await c.infer(describe())
    warnings = [r.getMessage() for r in caplog.records if "top_k" in r.getMessage()]
    assert len(warnings) == 1 and "does not declare" in warnings[0]


# ------------------------------------------------------------------ generate_stream


async def test_stream_chunks_and_final_finish(faulty: Any) -> None:
    faulty.script(triton(decoupled=True))
    async with client(faulty.base_url) as c:
        chunks = [ch async for ch in c.stream(describe())]
    assert [ch.text for ch in chunks] == ["a", " red", " square", ""]
    assert [ch.finish_reason for ch in chunks] == [None, None, None, "stop"]
    assert all(ch.model == M for ch in chunks)


async def test_stream_error_event_after_chunks(faulty: Any) -> None:
    body = sse(
        {"model_name": M, "text_output": "a"}, {"model_name": M, "text_output": " red"}, {"error": TRACEBACK}
    )
    faulty.script(
        triton(
            decoupled=True,
            first=[status(f"/v2/models/{M}/generate_stream", 200, body, content_type="text/event-stream")],
        )
    )
    got: list[str] = []
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendProtocolError) as info:
            async for ch in c.stream(describe()):
                got.append(ch.text)
    assert got == ["a", " red"]
    assert "RuntimeError: boom requested by the prompt (reported inside the stream)" in info.value.message
    assert "Traceback" not in info.value.message


async def test_stream_error_before_first_chunk_is_400_sse(faulty: Any) -> None:
    # A long traceback: the useful last line is far past the first 500 characters.
    assert len(TRACEBACK) > 800
    body = sse({"error": TRACEBACK})
    faulty.script(
        triton(
            decoupled=True,
            first=[status(f"/v2/models/{M}/generate_stream", 400, body, content_type="text/event-stream")],
        )
    )
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendProtocolError) as info:
            async for _ in c.stream(describe()):
                pytest.fail("no chunk expected")
    assert info.value.message.endswith("raised RuntimeError: boom requested by the prompt")
    assert info.value.status == 400


async def test_stream_unknown_model_is_404_json(faulty: Any) -> None:
    body = {"error": f"Request for unknown model: '{M}' is not found"}
    faulty.script(triton(decoupled=True, first=[status(f"/v2/models/{M}/generate_stream", 404, body)]))
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendRejected, match="serves no model named"):
            async for _ in c.stream(describe()):
                pass


async def test_stream_closed_without_any_event(faulty: Any) -> None:
    faulty.script(
        triton(
            decoupled=True,
            first=[status(f"/v2/models/{M}/generate_stream", 200, "", content_type="text/event-stream")],
        )
    )
    async with client(faulty.base_url) as c:
        with pytest.raises(BackendProtocolError, match="without sending any response"):
            async for _ in c.stream(describe()):
                pass


async def test_stream_of_a_non_decoupled_model_is_one_event(faulty: Any) -> None:
    body = sse({"model_name": M, "text_output": "whole answer"})
    faulty.script(
        triton(first=[status(f"/v2/models/{M}/generate_stream", 200, body, content_type="text/event-stream")])
    )
    async with client(faulty.base_url) as c:
        chunks = [ch async for ch in c.stream(describe())]
    assert [(ch.text, ch.finish_reason) for ch in chunks] == [("whole answer", None), ("", "stop")]


async def test_stream_falls_back_to_infer_without_generate(faulty: Any) -> None:
    faulty.script(triton(first=[status(f"/v2/models/{M}/generate_stream", 404, {"error": "Not Found"})]))
    async with client(faulty.base_url) as c:
        chunks = [ch async for ch in c.stream(describe())]
    assert [ch.text for ch in chunks] == ["infer: a red square", ""]
    assert posts(faulty) == [f"/v2/models/{M}/generate_stream", f"/v2/models/{M}/infer"]


# ------------------------------------------------------------------ mode = "openai" (the OpenAI frontend)


async def test_openai_mode_is_text_only_and_fails_before_sending(faulty: Any) -> None:
    faulty.script([])
    async with client(faulty.v1, mode="openai", model="fake-vlm") as c:
        with pytest.raises(BackendRejected, match="accepts text only") as info:
            await c.infer(describe())
        with pytest.raises(BackendRejected, match="accepts text only"):
            async for _ in c.stream(describe()):
                pass
        msgs = (
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image().data_url()}}]},
        )
        with pytest.raises(BackendRejected, match="accepts text only"):
            await c.infer(Request(messages=msgs))
    assert 'mode = "kserve"' in info.value.message and "vllm backend" in info.value.message
    assert faulty.log() == []


async def test_openai_mode_text_never_sends_fields_the_schema_forbids(faulty: Any) -> None:
    forbid = [
        {
            "match": {"path": "/v1/chat/completions", "body_contains": key},
            "fault": "status",
            "status": 422,
            "body": {
                "detail": [
                    {"loc": ["body", key], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
                ]
            },
        }
        for key in ("top_k", "repetition_penalty", "stream_options")
    ]
    faulty.script(forbid)
    async with client(faulty.v1, mode="openai", model="fake-vlm", parameters={"top_k": 5}) as c:
        r = await c.infer(Request(prompt="id=t1 hello", extra={"repetition_penalty": 1.1}))
        chunks = [ch async for ch in c.stream(Request(prompt="id=t2 hello"))]
    assert r.text == "[t1] A grey cat on a sofa."
    assert "".join(ch.text for ch in chunks) == "[t2] A grey cat on a sofa."
    assert [e["status"] for e in faulty.log("/v1/chat/completions")] == [200, 200]


async def test_openai_mode_fastapi_detail_errors(faulty: Any) -> None:
    faulty.script([status("/v1/chat/completions", 400, {"detail": "only text message is supported"})])
    async with client(faulty.v1, mode="openai", model="fake-vlm") as c:
        with pytest.raises(BackendRejected, match="only text message is supported"):
            await c.infer(Request(prompt="hi"))


async def test_openai_mode_health(faulty: Any) -> None:
    faulty.script([status("/health/ready", 200)])
    async with client(faulty.v1, mode="openai", model=None) as c:
        r = await c.health()
    assert (r.ready, r.models) == (True, ("fake-vlm",))
    faulty.script([status("/health/ready", 400)])
    async with client(faulty.v1, mode="openai", model=None) as c:
        r = await c.health()
    assert (r.reachable, r.ready) == (True, False) and "not ready" in (r.detail or "")


# ------------------------------------------------------------------ the CLI with no server


def _run_describe(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    img_dir = tmp_path / "imgs"
    img_dir.mkdir()
    Image.new("RGB", (32, 24), (10, 20, 30)).save(img_dir / "a.jpg")
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        sys.executable, "-m", "imageworks_core.cli", "describe", str(img_dir), "--vlm-backend", "triton",
        "--vlm-base-url", url, "--output", str(tmp_path / "r.jsonl"), "--quiet", *extra,
    ]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    proc.url = url  # type: ignore[attr-defined]
    return proc


def test_cli_describe_with_no_server(tmp_path: Path) -> None:
    proc = _run_describe(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert proc.url in out and "cannot connect" in out and "down or still loading" in out  # type: ignore[attr-defined]
    assert "tritonserver --model-repository" in out and "trtllm-serve" in out


def test_cli_describe_with_no_server_no_preflight(tmp_path: Path) -> None:
    proc = _run_describe(tmp_path, "--no-preflight")
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "WARNING" in proc.stderr and proc.url in proc.stderr  # type: ignore[attr-defined]
    assert "down or still loading" in out
