"""The ComfyUI backend against ComfyUI's recorded HTTP shapes, in-process (``MockTransport``).

No ComfyUI server runs here.  Every answer below follows ComfyUI's own source:
``server.py`` (routes ``post_prompt``, ``get_history``, ``view_image``,
``get_queue``, ``post_queue``, ``post_interrupt``, ``system_stats``,
``get_models``, ``get_object_info_node``) and ``execution.py``
(``validate_prompt``/``validate_inputs`` error objects, ``PromptQueue.task_done``
history entries, ``handle_execution_error`` messages).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import anyio
import pytest
from PIL import Image

from imageworks_core import (
    BackendProtocolError,
    BackendRejected,
    BackendServerError,
    Client,
    ConfigError,
    ImageRequest,
    InputError,
)
from imageworks_core.testing import MockRequest, MockResponse, MockTransport

pytestmark = pytest.mark.anyio

URL = "http://comfy-box.invalid:8188"
PID = "0b7d1d2c-4b4e-4f57-9a53-3f1f0f6f2f61"
CKPT = "v1-5-pruned-emaonly.safetensors"


def png(width: int, height: int, colour: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buf, "PNG")
    return buf.getvalue()


def done_entry(n: int = 1, node: str = "7") -> dict[str, Any]:
    """A finished history entry as ``PromptQueue.task_done`` writes it."""
    images = [
        {"filename": f"imageworks_{i + 1:05}_.png", "subfolder": "", "type": "output"} for i in range(n)
    ]
    return {
        PID: {
            "prompt": [0, PID, {}, {"client_id": "x"}, [node]],
            "outputs": {node: {"images": images}},
            "status": {
                "status_str": "success",
                "completed": True,
                "messages": [["execution_start", {"prompt_id": PID, "timestamp": 1}]],
            },
        }
    }


class Comfy:
    """A scripted ComfyUI: what it answers, and what it was asked."""

    def __init__(
        self,
        *,
        pending_polls: int = 0,
        history: dict[str, Any] | None = None,
        size: tuple[int, int] = (64, 48),
        checkpoints: list[str] | None = None,
        models_route: bool = True,
        prompt_answer: MockResponse | None = None,
        place: str = "running",
        never_done: bool = False,
    ) -> None:
        self.pending_polls = pending_polls
        self.history = history if history is not None else done_entry()
        self.size = size
        self.checkpoints = [CKPT] if checkpoints is None else checkpoints
        self.models_route = models_route
        self.prompt_answer = prompt_answer
        self.place = place
        self.never_done = never_done
        self.polls = 0

    async def __call__(self, request: MockRequest) -> MockResponse:
        await anyio.lowlevel.checkpoint()
        path = request.path
        if path == "/prompt" and request.method == "POST":
            return self.prompt_answer or MockResponse.json({"prompt_id": PID, "number": 3, "node_errors": {}})
        if path == f"/history/{PID}":
            self.polls += 1
            if self.never_done or self.polls <= self.pending_polls:
                return MockResponse.json({})
            return MockResponse.json(self.history)
        if path == "/view":
            return MockResponse(200, {"content-type": "image/png"}, png(*self.size))
        if path == "/queue" and request.method == "GET":
            item = [3, PID, {}, {"client_id": "x"}, ["7"]]
            running, pending = ([item], []) if self.place == "running" else ([], [item])
            return MockResponse.json({"queue_running": running, "queue_pending": pending})
        if path in ("/queue", "/interrupt"):
            return MockResponse(200)
        if path == "/system_stats":
            return MockResponse.json(
                {
                    "system": {"os": "posix", "comfyui_version": "0.3.66", "python_version": "3.12"},
                    "devices": [
                        {
                            "name": "cuda:0 NVIDIA",
                            "type": "cuda",
                            "index": 0,
                            "vram_total": 25_000_000_000,
                            "vram_free": 20_000_000_000,
                        }
                    ],
                }
            )
        if path == "/models/checkpoints":
            if not self.models_route:
                return MockResponse(404)
            return MockResponse.json(self.checkpoints)
        if path == "/object_info/CheckpointLoaderSimple":
            spec = {"required": {"ckpt_name": [self.checkpoints, {"tooltip": "x"}]}}
            return MockResponse.json(
                {"CheckpointLoaderSimple": {"input": spec, "name": "CheckpointLoaderSimple"}}
            )
        raise AssertionError(f"unexpected {request.method} {request.url}")


def client(transport: MockTransport, **settings: Any) -> Client:
    overrides = {"backends": {"comfyui": {"poll_interval": 0.01, **settings}}}
    return Client(
        backend="comfyui",
        base_url=URL,
        transport=transport,
        user_file=False,
        project_file=False,
        allow=["comfyui"],
        overrides=overrides,
    )


def view_query(request: MockRequest) -> dict[str, str]:
    """The /view query, blank values kept (``subfolder=`` is sent even when empty)."""
    return dict(parse_qsl(urlsplit(request.url).query, keep_blank_values=True))


def sent_workflow(mock: MockTransport) -> dict[str, Any]:
    (post,) = mock.sent("/prompt")
    body = post.json()
    assert isinstance(body["client_id"], str) and body["client_id"]
    return dict(body["prompt"])


def by_class(workflow: dict[str, Any], class_type: str) -> list[dict[str, Any]]:
    return [n["inputs"] for n in workflow.values() if n["class_type"] == class_type]


async def test_default_workflow_is_filled_from_the_request() -> None:
    mock = MockTransport(Comfy(history=done_entry(2), size=(640, 384)))
    request = ImageRequest(
        "a lighthouse at dusk",
        negative_prompt="blurry",
        size="640x384",
        n=2,
        seed=1234,
        steps=12,
        guidance=5.5,
    )
    async with client(mock, model=CKPT, sampler_name="dpmpp_2m", scheduler="karras") as c:
        result = await c.generate_image(request)
    wf = sent_workflow(mock)
    assert by_class(wf, "CheckpointLoaderSimple") == [{"ckpt_name": CKPT}]
    texts = sorted(i["text"] for i in by_class(wf, "CLIPTextEncode"))
    assert texts == ["a lighthouse at dusk", "blurry"]
    (latent,) = by_class(wf, "EmptyLatentImage")
    assert (latent["width"], latent["height"], latent["batch_size"]) == (640, 384, 2)
    (ks,) = by_class(wf, "KSampler")
    assert (ks["seed"], ks["steps"], ks["cfg"]) == (1234, 12, 5.5)
    assert (ks["sampler_name"], ks["scheduler"]) == ("dpmpp_2m", "karras")
    positive = wf[ks["positive"][0]]["inputs"]["text"]
    assert positive == "a lighthouse at dusk"  # the positive link really leads to the prompt
    assert len(by_class(wf, "SaveImage")) == 1
    assert [img.width for img in result.images] == [640, 640]
    assert result.seed == 1234 and result.model == CKPT
    assert [img.seed for img in result.images] == [1234, None]  # one seed per batch in ComfyUI
    assert result.parameters["steps"] == 12 and result.parameters["batch_size"] == 2


async def test_random_seed_is_drawn_and_reported() -> None:
    mock = MockTransport(Comfy())
    async with client(mock, model=CKPT) as c:
        result = await c.generate_image(ImageRequest("a cat"))
    (ks,) = by_class(sent_workflow(mock), "KSampler")
    assert isinstance(ks["seed"], int) and result.seed == ks["seed"] == result.images[0].seed


async def test_only_checkpoint_is_used_when_no_model_is_set() -> None:
    mock = MockTransport(Comfy(checkpoints=["only.safetensors"]))
    async with client(mock) as c:
        await c.generate_image(ImageRequest("a cat"))
    assert by_class(sent_workflow(mock), "CheckpointLoaderSimple") == [{"ckpt_name": "only.safetensors"}]


async def test_several_checkpoints_and_no_model_is_refused() -> None:
    mock = MockTransport(Comfy(checkpoints=["a.safetensors", "b.safetensors"]))
    async with client(mock) as c:
        with pytest.raises(BackendRejected) as excinfo:
            await c.generate_image(ImageRequest("a cat"))
    assert "a.safetensors" in excinfo.value.message and "model" in (excinfo.value.hint or "")
    assert mock.sent("/prompt") == []


USER_WORKFLOW = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "{{model}}"}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "masterpiece, {{prompt}}", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "{{negative_prompt}}", "clip": ["4", 1]}},
    "5": {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": "{{width}}", "height": "{{height}}", "batch_size": 1},
    },
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": "{{seed}}",
            "steps": 30,
            "cfg": "{{cfg}}",
            "sampler_name": "euler",
            "scheduler": "normal",
            "denoise": 1,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "mine", "images": ["8", 0]}},
}


async def test_placeholders_in_a_workflow_file_are_substituted(tmp_path: Path) -> None:
    path = tmp_path / "wf_api.json"
    path.write_text(json.dumps(USER_WORKFLOW))
    mock = MockTransport(Comfy(history=done_entry(node="9")))
    async with client(mock, workflow=str(path), model=CKPT) as c:
        result = await c.generate_image(ImageRequest("a fox", size="768x512", seed=7, guidance=4, steps=9))
    wf = sent_workflow(mock)
    assert wf["6"]["inputs"]["text"] == "masterpiece, a fox"
    assert wf["7"]["inputs"]["text"] == ""
    assert wf["5"]["inputs"] == {"width": 768, "height": 512, "batch_size": 1}
    assert wf["3"]["inputs"]["seed"] == 7 and wf["3"]["inputs"]["cfg"] == 4.0
    assert wf["3"]["inputs"]["steps"] == 30  # no {{steps}}: the workflow's own value stays
    assert wf["4"]["inputs"]["ckpt_name"] == CKPT
    assert "steps" not in result.parameters  # not reported: it was not used
    assert result.seed == 7 and result.parameters["workflow"] == str(path)


async def test_workflow_from_extras_wins_and_n_needs_batch_size() -> None:
    mock = MockTransport(Comfy(history=done_entry(node="9")))
    async with client(mock, model=CKPT) as c:
        await c.generate_image(ImageRequest("a fox", extras={"workflow": USER_WORKFLOW}))
        assert sent_workflow(mock)["9"]["inputs"]["filename_prefix"] == "mine"
        with pytest.raises(InputError, match="batch_size"):
            await c.generate_image(ImageRequest("a fox", n=2, extras={"workflow": USER_WORKFLOW}))


async def test_workflow_without_prompt_placeholder_is_refused(tmp_path: Path) -> None:
    wf = json.loads(json.dumps(USER_WORKFLOW))
    wf["6"]["inputs"]["text"] = "a fixed prompt"
    path = tmp_path / "fixed.json"
    path.write_text(json.dumps(wf))
    mock = MockTransport(Comfy())
    async with client(mock, workflow=str(path), model=CKPT) as c:
        with pytest.raises(ConfigError) as excinfo:
            await c.generate_image(ImageRequest("a fox"))
        with pytest.raises(InputError, match=r"\{\{negative_prompt\}\}"):
            await c.generate_image(ImageRequest("a fox", extras={"workflow": wf}))
        report = await c.health()
    assert "{{prompt}}" in excinfo.value.message and "{{seed}}" in excinfo.value.message
    assert not report.ready and report.reachable and "{{prompt}}" in (report.detail or "")
    assert mock.sent("/prompt") == []


async def test_ui_format_and_unknown_placeholder_are_named() -> None:
    mock = MockTransport(Comfy())
    async with client(mock, model=CKPT) as c:
        with pytest.raises(InputError, match="API format"):
            await c.generate_image(
                ImageRequest("x", extras={"workflow": {"nodes": [], "links": [], "version": 0.4}})
            )
        bad = {**USER_WORKFLOW, "10": {"class_type": "Note", "inputs": {"text": "{{promt}}"}}}
        with pytest.raises(InputError, match=r"unknown placeholder \{\{promt\}\}"):
            await c.generate_image(ImageRequest("x", extras={"workflow": bad}))


async def test_node_errors_of_a_400_are_surfaced_and_not_retried() -> None:
    # the body of validate_prompt's failure, as post_prompt sends it
    refusal = {
        "error": {
            "type": "prompt_outputs_failed_validation",
            "message": "Prompt outputs failed validation",
            "details": "Value not in list: ckpt_name: 'nope.safetensors' not in [...]",
            "extra_info": {},
        },
        "node_errors": {
            "1": {
                "errors": [
                    {
                        "type": "value_not_in_list",
                        "message": "Value not in list",
                        "details": "ckpt_name: 'nope.safetensors' not in ['v1-5.safetensors']",
                        "extra_info": {
                            "input_name": "ckpt_name",
                            "input_config": None,
                            "received_value": "nope.safetensors",
                        },
                    }
                ],
                "dependent_outputs": ["7"],
                "class_type": "CheckpointLoaderSimple",
            }
        },
    }
    mock = MockTransport(Comfy(prompt_answer=MockResponse.json(refusal, status=400)))
    async with client(mock, model="nope.safetensors") as c:
        with pytest.raises(BackendRejected) as excinfo:
            await c.generate_image(ImageRequest("a cat"))
    message = excinfo.value.message
    assert "node 1 (CheckpointLoaderSimple) input ckpt_name" in message
    assert "'nope.safetensors' not in" in message and "Prompt outputs failed validation" in message
    assert len(mock.sent("/prompt")) == 1  # a 4xx is sent once


async def test_server_error_on_prompt_is_retried() -> None:
    mock = MockTransport(Comfy(prompt_answer=MockResponse.text("500 Internal Server Error", status=500)))
    async with client(mock, model=CKPT) as c:
        with pytest.raises(BackendServerError):
            await c.generate_image(ImageRequest("a cat"))
    assert len(mock.sent("/prompt")) > 1


async def test_history_is_polled_until_the_entry_appears() -> None:
    comfy = Comfy(pending_polls=3, size=(32, 32))
    mock = MockTransport(comfy)
    async with client(mock, model=CKPT) as c:
        result = await c.generate_image(ImageRequest("a cat"))
    assert comfy.polls == 4
    (view,) = mock.sent("/view")
    assert view_query(view) == {"filename": "imageworks_00001_.png", "subfolder": "", "type": "output"}
    assert result.images[0].mime == "image/png" and (result.images[0].width, result.images[0].height) == (
        32,
        32,
    )
    assert result.parameters["prompt_id"] == PID and set(result.timings) == {"generate", "download"}


async def test_view_query_carries_subfolder_and_skips_previews() -> None:
    entry = done_entry()
    entry[PID]["outputs"]["9"] = {
        "images": [{"filename": "ComfyUI_temp_x.png", "subfolder": "", "type": "temp"}]
    }
    entry[PID]["outputs"]["7"]["images"][0]["subfolder"] = "portraits"
    mock = MockTransport(Comfy(history=entry))
    async with client(mock, model=CKPT) as c:
        result = await c.generate_image(ImageRequest("a cat"))
    assert [view_query(r) for r in mock.sent("/view")] == [
        {"filename": "imageworks_00001_.png", "subfolder": "portraits", "type": "output"}
    ]
    assert len(result.images) == 1


async def test_execution_error_names_node_and_exception() -> None:
    entry = done_entry()
    entry[PID]["outputs"] = {}
    entry[PID]["status"] = {
        "status_str": "error",
        "completed": False,
        "messages": [
            ["execution_start", {"prompt_id": PID, "timestamp": 1}],
            [
                "execution_error",
                {
                    "prompt_id": PID,
                    "node_id": "5",
                    "node_type": "KSampler",
                    "executed": ["1"],
                    "exception_message": "mat1 and mat2 shapes cannot be multiplied\n",
                    "exception_type": "RuntimeError",
                    "traceback": ["..."],
                    "current_inputs": {},
                    "current_outputs": {},
                },
            ],
        ],
    }
    mock = MockTransport(Comfy(history=entry))
    async with client(mock, model=CKPT) as c:
        with pytest.raises(BackendProtocolError) as excinfo:
            await c.generate_image(ImageRequest("a cat"))
    assert (
        "node 5 (KSampler) raised RuntimeError: mat1 and mat2 shapes cannot be multiplied"
        in excinfo.value.message
    )
    assert len(mock.sent("/prompt")) == 1 and mock.sent("/view") == []


async def test_answer_without_images_is_a_protocol_error() -> None:
    entry = done_entry()
    entry[PID]["outputs"] = {"7": {"text": ["no images here"]}}
    mock = MockTransport(Comfy(history=entry))
    async with client(mock, model=CKPT) as c:
        with pytest.raises(BackendProtocolError, match="without images"):
            await c.generate_image(ImageRequest("a cat"))


@pytest.mark.parametrize(
    ("place", "path", "body"),
    [
        ("running", "/interrupt", {"prompt_id": PID}),
        ("pending", "/queue", {"delete": [PID]}),
    ],
)
async def test_cancelled_request_withdraws_its_prompt(place: str, path: str, body: dict[str, Any]) -> None:
    mock = MockTransport(Comfy(never_done=True, place=place))
    async with client(mock, model=CKPT) as c:
        with anyio.move_on_after(0.3) as scope:
            await c.generate_image(ImageRequest("a cat"))
        assert scope.cancelled_caught
        posts = [r for r in mock.sent(path) if r.method == "POST"]
        assert [r.json() for r in posts][:1] == [body]
        other = "/queue" if path == "/interrupt" else "/interrupt"
        assert [r for r in mock.sent(other) if r.method == "POST"] == []
        # the client stays usable afterwards
        assert (await c.health()).ready


async def test_health_ready_reports_version_checkpoints_and_vram() -> None:
    mock = MockTransport(Comfy(checkpoints=[CKPT, "sdxl.safetensors"]))
    async with client(mock, model=CKPT) as c:
        report = await c.health()
    assert report.ready and report.version == "0.3.66"
    assert report.models == (CKPT, "sdxl.safetensors")
    assert report.metrics["vram_total_bytes"] == 25e9 and report.metrics["running"] == 1.0


async def test_health_falls_back_to_object_info_on_older_servers() -> None:
    mock = MockTransport(Comfy(models_route=False))
    async with client(mock) as c:
        report = await c.health()
    assert report.ready and report.models == (CKPT,)
    assert len(mock.sent("/object_info/CheckpointLoaderSimple")) == 1


async def test_health_without_checkpoints_is_not_ready() -> None:
    mock = MockTransport(Comfy(checkpoints=[]))
    async with client(mock) as c:
        report = await c.health()
    assert report.reachable and not report.ready and "no checkpoint" in (report.detail or "")


async def test_health_with_missing_configured_model_is_not_ready() -> None:
    mock = MockTransport(Comfy())
    async with client(mock, model="sdxl_base.safetensors") as c:
        report = await c.health()
    assert report.reachable and not report.ready
    assert "sdxl_base.safetensors" in (report.detail or "") and CKPT in (report.detail or "")


async def test_health_unreachable_is_down() -> None:
    def refuse(request: MockRequest) -> MockResponse:
        raise ConnectionRefusedError("Connection refused")

    async with client(MockTransport(refuse)) as c:
        report = await c.health()
    assert not report.reachable and not report.ready
    assert "comfy-box.invalid:8188" in (report.detail or "") and report.hint


async def test_unknown_extras_are_refused() -> None:
    mock = MockTransport(Comfy())
    async with client(mock, model=CKPT) as c:
        with pytest.raises(InputError, match="quality"):
            await c.generate_image(ImageRequest("a cat", extras={"quality": "hd"}))


# ------------------------------------------------------------------ progress over /ws


class ComfyWithSocket(Comfy):
    """ComfyUI with its ``/ws``: after the prompt is queued, the messages server.py and
    execution.py send for it (``progress`` from the sampler's hook), then the end of the prompt;
    the history has the entry only once it ended. Another client's prompt shows up too."""

    def __init__(self, *, refuse: bool = False, old: bool = False, **kw: Any) -> None:
        super().__init__(**kw)
        self.refuse = refuse
        self.old = old  # before prompt_id was added to progress messages
        self.queued = anyio.Event()
        self.ended = False

    async def _messages(self, client_id: str) -> Any:
        yield {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": client_id}}
        await self.queued.wait()
        yield {"type": "execution_start", "data": {"prompt_id": PID, "timestamp": 1}}
        yield {"type": "executing", "data": {"node": "3", "display_node": "3", "prompt_id": PID}}
        yield {"type": "progress", "data": {"value": 9, "max": 9, "prompt_id": "someone-else", "node": "3"}}
        for step in range(1, 5):
            data: dict[str, Any] = {"value": step, "max": 4, "node": "3"}
            if not self.old:
                data["prompt_id"] = PID
            yield {"type": "progress", "data": data}
            await anyio.sleep(0.01)
        yield b"\x00\x00\x00\x01\x00\x00\x00\x02preview-jpeg"  # a preview frame
        self.ended = True
        yield {"type": "executing", "data": {"node": None, "prompt_id": PID}}
        yield {"type": "execution_success", "data": {"prompt_id": PID, "timestamp": 2}}
        await anyio.sleep(3600)  # the socket stays open until the client leaves

    async def __call__(self, request: MockRequest) -> MockResponse:
        if request.websocket:
            assert request.path == "/ws"
            if self.refuse:
                return MockResponse.text("no websockets here", status=403)
            return MockResponse.websocket(self._messages(request.query["clientId"]))
        if request.path == "/prompt" and request.method == "POST":
            self.queued.set()
        if request.path == f"/history/{PID}" and not self.ended:
            self.polls += 1
            return MockResponse.json({})
        return await super().__call__(request)


@pytest.mark.parametrize("old", [False, True], ids=["current", "no-prompt-id"])
async def test_progress_comes_over_the_websocket_and_its_end_wakes_the_poller(old: bool) -> None:
    from imageworks_core import Event

    comfy = ComfyWithSocket(old=old)
    mock = MockTransport(comfy)
    events: list[Event] = []
    async with client(mock, model=CKPT, poll_interval=30) as c:
        with anyio.fail_after(10):  # a 30 s poll interval: only the socket can end it this soon
            result = await c.generate_image(ImageRequest("a lighthouse"), on_event=events.append)
    assert len(result.images) == 1
    [ws] = [r for r in mock.requests if r.websocket]
    client_id = ws.query["clientId"]
    assert mock.sent("/prompt")[0].json()["client_id"] == client_id  # the socket hears this prompt
    assert mock.requests.index(ws) < mock.requests.index(mock.sent("/prompt")[0])  # opened first
    progress = [(e.step, e.total, e.detail) for e in events if e.kind == "progress"]
    assert progress == [(1, 4, "node 3"), (2, 4, "node 3"), (3, 4, "node 3"), (4, 4, "node 3")]
    assert comfy.polls <= 2  # one poll before the end at most, not one every 30 s
    assert events[-1].kind == "done"


async def test_each_request_that_listens_has_its_own_client_id() -> None:
    comfy = ComfyWithSocket()
    mock = MockTransport(comfy)
    async with client(mock, model=CKPT) as c:
        for _ in range(2):
            comfy.queued, comfy.ended = anyio.Event(), False
            await c.generate_image(ImageRequest("a lighthouse"), on_event=lambda e: None)
    ids = [r.query["clientId"] for r in mock.requests if r.websocket]
    assert len(ids) == 2 and ids[0] != ids[1]
    assert [p.json()["client_id"] for p in mock.sent("/prompt")] == ids


async def test_nobody_listening_opens_no_socket() -> None:
    comfy = ComfyWithSocket()
    comfy.ended = True  # no socket to say so: the history has it at once
    mock = MockTransport(comfy)
    async with client(mock, model=CKPT) as c:
        await c.generate_image(ImageRequest("a lighthouse"))
    assert not [r for r in mock.requests if r.websocket]


async def test_a_refused_socket_falls_back_to_polling_once_and_for_all(
    caplog: pytest.LogCaptureFixture,
) -> None:
    comfy = ComfyWithSocket(refuse=True, pending_polls=2)
    comfy.ended = True
    mock = MockTransport(comfy)
    async with client(mock, model=CKPT) as c:
        for _ in range(2):
            comfy.polls = 0
            result = await c.generate_image(ImageRequest("a lighthouse"), on_event=lambda e: None)
            assert len(result.images) == 1
    assert len([r for r in mock.requests if r.websocket]) == 1  # asked once, then polled
    assert "no progress over /ws" in caplog.text and "HTTP 403" in caplog.text
