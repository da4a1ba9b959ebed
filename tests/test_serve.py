"""``imageworks serve`` end to end: the real command under uvicorn on 127.0.0.1, real upstream servers.

Callers are the official ``openai`` SDK (a client written by others) and raw
HTTP (httpx).  Upstreams are the fault-injecting server and, where marked,
Hugging Face ``transformers serve`` with the tiny offline vision model.  The
gateway runs as users run it: the console command, default retry policy and
waits, its config from a user file.
"""

from __future__ import annotations

import base64
import io
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cli_helpers import run_cli, show
from conftest import IN_CI
from serve_helpers import Gateway, metric, running_gateway

try:
    import openai
    import starlette  # noqa: F401
except ImportError as exc:  # skipped locally; in CI a missing extra is a failure
    if IN_CI:
        raise
    pytest.skip(
        f"the gateway's tests need the serve extra and the openai SDK: {exc}", allow_module_level=True
    )

CHAT = "/v1/chat/completions"
UPSTREAM_KEY = "configured-upstream-key-7f3a"
CALLER_KEY = "caller-own-key-91bd2e"
TOKEN = "gateway-token-5c8e41"
#: The results JSONL line, as ``imageworks describe`` writes it (pinned here, not imported).
RECORD_KEYS = [
    "image",
    "prompt",
    "template",
    "backend",
    "model",
    "base_url",
    "description",
    "processing_time",
    "queue_time",
    "usage",
    "attempts",
    "error",
    "resolved_path",
]


def jpeg(width: int = 64, height: int = 48) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (120, 90, 60)).save(buf, "JPEG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(data).decode()


def vision_messages(text: str, *images: bytes) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    parts.append({"type": "text", "text": text})
    return [{"role": "user", "content": parts}]


@pytest.fixture(scope="module")
def gateway(_faulty_session: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """One gateway for the module: openai (byok) first, lmdeploy beside it, both on the faulty server."""
    work = tmp_path_factory.mktemp("gateway")
    (work / "photos").mkdir()
    settings = {
        "backend": "openai",
        "backends": {
            "openai": {
                "base_url": _faulty_session.v1,
                "model": "fake-vlm",
                "api_key_env": "IW_TEST_UPSTREAM_KEY",
                "byok": True,
            },
            "lmdeploy": {"base_url": _faulty_session.v1, "model": "fallback-vlm"},
        },
    }
    args = ["--max-body-mb", "1", "--max-images", "2", "--max-image-pixels", "1000000", "--queue", "4"]
    args += ["--allow-paths", str(work / "photos")]
    env = {"IW_TEST_UPSTREAM_KEY": UPSTREAM_KEY}
    with running_gateway(work, settings, *args, token=TOKEN, env=env) as gw:
        yield gw
        log = gw.process.log(tail=10_000_000)
    assert "Traceback" not in log, log  # no request of the module made the gateway fail


@pytest.fixture
def gw(gateway: Gateway, faulty: Any) -> Gateway:
    """The module's gateway with the faulty server reset, once the primary is back up."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        health = httpx.get(gateway.url + "/healthz", headers=gateway.auth, timeout=10).json()
        states = {b["backend"]: b["state"] for b in health["backends"]}
        if states.get("openai") == "up":
            break
        time.sleep(0.1)
    return gateway


def sdk(gw: Gateway, **kw: Any) -> Any:
    return openai.OpenAI(base_url=gw.v1, api_key=gw.token or "unused", max_retries=0, timeout=30, **kw)


# ------------------------------------------------------------------ the OpenAI API through the SDK


def test_chat_non_stream_with_the_openai_sdk(gw: Gateway, faulty: Any) -> None:
    answer = sdk(gw).chat.completions.create(
        model="openai/fake-vlm", messages=vision_messages("describe", jpeg()), user="item-1", max_tokens=20
    )
    assert answer.choices[0].message.content == "[item-1] A grey cat on a sofa."
    assert answer.model == "openai/fake-vlm"  # routes back
    assert answer.usage is not None and answer.usage.completion_tokens > 0
    (entry,) = faulty.log(CHAT)
    assert entry["model"] == "fake-vlm" and entry["request_id"] == "item-1"


def test_chat_stream_with_the_openai_sdk(gw: Gateway, faulty: Any) -> None:
    stream = sdk(gw).chat.completions.create(
        model="fake-vlm",
        messages=vision_messages("describe", jpeg()),
        user="item-2",
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "[item-2] A grey cat on a sofa."
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert {c.model for c in chunks} == {"openai/fake-vlm"}
    (entry,) = faulty.log(CHAT)
    assert entry["stream"] is True


def test_models_are_named_to_route_back(gw: Gateway, faulty: Any) -> None:
    ids = {m.id for m in sdk(gw).models.list()}
    assert "openai/fake-vlm" in ids and "lmdeploy/fake-vlm" in ids
    answer = sdk(gw).chat.completions.create(model="lmdeploy/fake-vlm", messages=vision_messages("x"))
    # the name picks the backend; lmdeploy cannot switch models per request, so it uses its own
    assert answer.model == "lmdeploy/fallback-vlm"
    assert [e["model"] for e in faulty.log(CHAT)] == ["fallback-vlm"]


def test_bad_requests_get_openai_errors(gw: Gateway) -> None:
    with pytest.raises(openai.BadRequestError, match="unknown fallback backend 'nope'"):
        sdk(gw).chat.completions.create(
            model="fake-vlm", messages=vision_messages("x"), extra_body={"imageworks": {"fallback": ["nope"]}}
        )
    with pytest.raises(openai.BadRequestError, match="data: URL"):
        sdk(gw).chat.completions.create(
            model="fake-vlm",
            messages=[
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.jpg"}}]}
            ],
        )
    resp = httpx.post(gw.v1 + "/chat/completions", content=b"{not json", headers=gw.auth)
    assert resp.status_code == 400 and "not valid JSON" in resp.json()["error"]["message"]


def test_upstream_errors_keep_their_meaning(gw: Gateway, faulty: Any) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "status", "status": 404, "times": 1}])
    with pytest.raises(openai.NotFoundError, match="HTTP 404"):
        sdk(gw).chat.completions.create(model="fake-vlm", messages=vision_messages("x"))


def test_a_stream_that_fails_before_any_text_gets_a_real_status(gw: Gateway, faulty: Any) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "status", "status": 400, "times": 1}])
    with pytest.raises(openai.BadRequestError, match="HTTP 400"):
        sdk(gw).chat.completions.create(model="fake-vlm", messages=vision_messages("x"), stream=True)


# ------------------------------------------------------------------ /v1/describe


def test_describe_upload_answers_with_results_jsonl_lines(gw: Gateway, faulty: Any) -> None:
    files = [("image", ("a.jpg", jpeg(), "image/jpeg")), ("image", ("b.jpg", jpeg(80, 60), "image/jpeg"))]
    resp = httpx.post(
        gw.v1 + "/describe", files=files, data={"template": "describe"}, headers=gw.auth, timeout=30
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in resp.text.splitlines()]
    assert [r["image"] for r in records] == ["a.jpg", "b.jpg"]
    for r in records:
        assert list(r) == RECORD_KEYS
        assert r["description"].endswith("A grey cat on a sofa.") and r["error"] is None
        assert r["backend"] == "openai" and r["template"] == "describe"
    assert len(faulty.log(CHAT)) == 2


def test_describe_answers_valid_utf8_whatever_the_model_wrote(gw: Gateway, faulty: Any) -> None:
    """A lone surrogate in the answer (legal in a JSON escape, not in UTF-8) is U+FFFD, never a 500."""
    faulty.script([{"match": {"path": CHAT}, "fault": "ok", "content": "half a pair \ud83d here"}])
    files = [("image", ("a.jpg", jpeg(), "image/jpeg"))]
    resp = httpx.post(gw.v1 + "/describe", files=files, headers=gw.auth, timeout=30)
    assert resp.status_code == 200, resp.text
    [record] = [json.loads(line) for line in resp.content.decode("utf-8").splitlines()]
    assert record["description"].endswith("half a pair \ufffd here") and record["error"] is None


def test_describe_json_base64_and_path_with_sidecars(gw: Gateway, faulty: Any, tmp_path: Path) -> None:
    body = {"image": data_url(jpeg()), "prompt": "What colour?", "model": "openai/fake-vlm", "max_tokens": 30}
    resp = httpx.post(gw.v1 + "/describe", json=body, headers=gw.auth, timeout=30)
    assert resp.status_code == 200, resp.text
    (record,) = [json.loads(line) for line in resp.text.splitlines()]
    assert record["prompt"] == "What colour?" and record["template"] == "custom" and record["image"] == "#0"

    photos = Path(gw.process.cwd or ".") / "photos"
    (photos / "p.jpg").write_bytes(jpeg())
    resp = httpx.post(gw.v1 + "/describe?write=xmp,json", json={"path": "p.jpg"}, headers=gw.auth, timeout=30)
    assert resp.status_code == 200, resp.text
    assert json.loads(resp.text)["error"] is None
    assert (photos / "p.xmp").is_file() and (photos / "p.jpg.cn_metadata.json").is_file()
    assert "A grey cat on a sofa." in (photos / "p.jpg.cn_metadata.json").read_text()

    outside = httpx.post(gw.v1 + "/describe", json={"path": "../gateway.toml"}, headers=gw.auth)
    assert outside.status_code == 403 and "outside the allowed folder" in outside.json()["error"]["message"]


# ------------------------------------------------------------------ fallback and outage


def test_per_request_fallback_takes_over_an_outage(gw: Gateway, faulty: Any) -> None:
    """The primary resets the connection (an outage): this request's own fallback answers at once."""
    # two resets: the try and the transport's one resend on a new connection
    faulty.script([{"match": {"path": CHAT, "model": "fake-vlm"}, "fault": "reset", "times": 2}])
    answer = sdk(gw).chat.completions.create(
        model="fake-vlm",
        messages=vision_messages("x", jpeg()),
        user="item-fb",
        extra_body={"imageworks": {"fallback": ["lmdeploy"]}},
    )
    assert answer.model == "lmdeploy/fallback-vlm"
    assert [e["model"] for e in faulty.log(CHAT)] == ["fake-vlm", "fake-vlm", "fallback-vlm"]
    text = httpx.get(gw.url + "/metrics", headers=gw.auth).text
    assert metric(text, "imageworks_fallbacks_total", backend="lmdeploy") >= 1
    assert metric(text, "imageworks_backend_outages_total", backend="openai") >= 1
    assert metric(text, "imageworks_attempts_total", backend="openai", outcome="BackendUnavailable") >= 1


def test_healthz_reports_each_backend_and_endpoint(gw: Gateway) -> None:
    resp = httpx.get(gw.url + "/healthz", headers=gw.auth)
    assert resp.status_code == 200
    body = resp.json()
    assert body["ready"] is True
    rows = {b["backend"]: b for b in body["backends"]}
    assert rows["openai"]["endpoint"].endswith("/v1") and rows["openai"]["models"] == ["fake-vlm"]
    assert httpx.get(gw.url + "/livez").status_code == 200  # no token needed


def test_metrics_are_prometheus_text_by_backend(gw: Gateway, faulty: Any) -> None:
    sdk(gw).chat.completions.create(model="fake-vlm", messages=vision_messages("x"))
    resp = httpx.get(gw.url + "/metrics", headers=gw.auth)
    assert resp.headers["content-type"].startswith("text/plain")
    text = resp.text
    assert metric(text, "imageworks_gateway_requests_total", route="chat", status="200") >= 1
    assert metric(text, "imageworks_attempts_total", backend="openai", outcome="ok") >= 1
    assert metric(text, "imageworks_tokens_total", backend="openai", kind="completion") > 0
    assert metric(text, "imageworks_backend_concurrency_limit", backend="openai") >= 1
    assert metric(text, "imageworks_backend_state", backend="openai", state="up") == 1
    assert metric(text, "imageworks_gateway_request_seconds_count", route="chat") >= 1


# ------------------------------------------------------------------ security


def test_token_is_required_except_for_livez(gw: Gateway) -> None:
    plain = httpx.post(gw.v1 + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert plain.status_code == 401 and plain.headers["www-authenticate"] == "Bearer"
    wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "X"}  # same length, last byte differs
    assert httpx.get(gw.url + "/healthz", headers=wrong).status_code == 401
    assert httpx.get(gw.url + "/metrics").status_code == 401
    assert httpx.get(gw.v1 + "/models", headers={"Authorization": TOKEN}).status_code == 401  # no "Bearer"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.v1, api_key="wrong", max_retries=0).models.list()
    assert httpx.get(gw.url + "/livez").status_code == 200


def test_byok_key_reaches_only_that_backend_and_is_never_shown(gw: Gateway, faulty: Any) -> None:
    caller = {"Authorization": f"Bearer {CALLER_KEY}"}
    configured = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
    faulty.script(
        [
            {
                "match": {"path": CHAT, "model": "fake-vlm", "headers": caller},
                "fault": "ok",
                "content": "caller key",
            },
            {
                "match": {"path": CHAT, "model": "fake-vlm", "headers": configured},
                "fault": "ok",
                "content": "configured key",
            },
            {
                "match": {"path": CHAT, "headers": caller},
                "fault": "ok",
                "content": "LEAKED to another backend",
            },
        ]
    )
    with_key = sdk(gw, default_headers={"X-Upstream-Authorization": f"Bearer {CALLER_KEY}"})
    assert (
        with_key.chat.completions.create(model="fake-vlm", messages=vision_messages("x"))
        .choices[0]
        .message.content
        == "caller key"
    )
    assert (
        sdk(gw)
        .chat.completions.create(model="fake-vlm", messages=vision_messages("x"))
        .choices[0]
        .message.content
        == "configured key"
    )  # the next caller gets the configured key again

    # the fallback backend never gets the caller's key
    faulty.script(
        [
            {"match": {"path": CHAT, "model": "fake-vlm"}, "fault": "reset", "times": 2},
            {
                "match": {"path": CHAT, "headers": caller},
                "fault": "ok",
                "content": "LEAKED to another backend",
            },
        ]
    )
    answer = with_key.chat.completions.create(
        model="fake-vlm", messages=vision_messages("x"), extra_body={"imageworks": {"fallback": ["lmdeploy"]}}
    )
    assert answer.model == "lmdeploy/fallback-vlm"
    assert "LEAKED" not in (answer.choices[0].message.content or "")

    # a backend without byok refuses a caller's key
    with pytest.raises(openai.PermissionDeniedError, match="byok"):
        with_key.chat.completions.create(model="lmdeploy/fallback-vlm", messages=vision_messages("x"))

    time.sleep(0.2)
    assert CALLER_KEY not in httpx.get(gw.url + "/metrics", headers=gw.auth).text
    assert CALLER_KEY not in gw.process.log(tail=1_000_000)
    assert CALLER_KEY not in httpx.get(gw.url + "/healthz", headers=gw.auth).text


def test_oversized_requests_get_413(gw: Gateway, faulty: Any) -> None:
    big = {"messages": [{"role": "user", "content": "x" * 1_200_000}]}
    resp = httpx.post(gw.v1 + "/chat/completions", json=big, headers=gw.auth)
    assert resp.status_code == 413 and "--max-body-mb" in resp.json()["error"]["message"]
    three = vision_messages("x", jpeg(), jpeg(), jpeg())
    with pytest.raises(openai.APIStatusError, match="too many images") as err:
        sdk(gw).chat.completions.create(model="fake-vlm", messages=three)
    assert err.value.status_code == 413
    with pytest.raises(openai.APIStatusError, match="MP") as err:
        sdk(gw).chat.completions.create(model="fake-vlm", messages=vision_messages("x", jpeg(1100, 1000)))
    assert err.value.status_code == 413
    upload = httpx.post(
        gw.v1 + "/describe", files=[("image", ("big.jpg", jpeg(1100, 1000), "image/jpeg"))], headers=gw.auth
    )
    assert upload.status_code == 413
    assert faulty.log(CHAT) == []  # nothing oversized reached a backend


def test_full_queue_answers_429_with_retry_after(gw: Gateway, faulty: Any) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "delay", "delay_s": 1.5}])
    results: list[int] = []

    def slow() -> None:
        r = httpx.post(
            gw.v1 + "/chat/completions",
            json={"messages": [{"role": "user", "content": "x"}]},
            headers=gw.auth,
            timeout=30,
        )
        results.append(r.status_code)

    threads = [threading.Thread(target=slow) for _ in range(4)]  # the gateway admits 4 (--queue 4)
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # all four admitted (running, or waiting for a backend slot)
        text = httpx.get(gw.url + "/metrics", headers=gw.auth).text
        if metric(text, "imageworks_gateway_in_flight") == 4:
            break
        time.sleep(0.02)
    resp = httpx.post(
        gw.v1 + "/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}, headers=gw.auth
    )
    for t in threads:
        t.join()
    assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1, resp.text
    assert results == [200] * 4  # the admitted ones are answered
    text = httpx.get(gw.url + "/metrics", headers=gw.auth).text
    assert metric(text, "imageworks_gateway_rejected_total", reason="queue_full") >= 1


def test_client_disconnect_cancels_the_upstream_request(gw: Gateway, faulty: Any) -> None:
    faulty.script([{"match": {"path": CHAT}, "fault": "delay", "delay_s": 5}])
    for stream in (False, True):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                gw.v1 + "/chat/completions",
                json={"messages": [{"role": "user", "content": "x"}], "stream": stream},
                headers=gw.auth,
                timeout=httpx.Timeout(10, read=0.5),
            )
        # the gateway let go of the upstream request well before its 5 s answer
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            text = httpx.get(gw.url + "/metrics", headers=gw.auth).text
            if metric(text, "imageworks_backend_in_flight", backend="openai") == 0:
                break
            time.sleep(0.05)
        assert metric(text, "imageworks_backend_in_flight", backend="openai") == 0
        assert metric(text, "imageworks_gateway_in_flight") == 0
    log = faulty.log(CHAT)
    assert len(log) == 2 and not any(e["completed"] for e in log)  # no answer was delivered


def test_a_dead_primary_is_taken_out_at_start_and_the_fallback_answers(faulty: Any, tmp_path: Path) -> None:
    """The startup check (as before a batch) takes a dead primary out: requests go to the fallback at once."""
    from servers._proc import free_port

    settings = {
        "backend": "vllm",
        "fallback": ["openai"],
        "backends": {
            "vllm": {"base_url": f"http://127.0.0.1:{free_port()}"},
            "openai": {"base_url": faulty.v1, "model": "fake-vlm"},
        },
    }
    with running_gateway(tmp_path, settings) as gw:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            health = httpx.get(gw.url + "/healthz", timeout=10)
            states = {b["backend"]: b["state"] for b in health.json()["backends"]}
            if states.get("vllm") in ("out", "down"):
                break
            time.sleep(0.1)
        assert health.status_code == 200 and states["vllm"] in ("out", "down"), health.text
        started = time.monotonic()
        answer = sdk(gw).chat.completions.create(model="fake-vlm", messages=vision_messages("x", jpeg()))
        assert answer.model == "openai/fake-vlm" and time.monotonic() - started < 5


def test_all_callers_share_one_concurrency_limit(faulty: Any, tmp_path: Path) -> None:
    """Six programs at once, --concurrency 2: the server never sees more than two requests at a time."""
    settings = {"backend": "openai", "backends": {"openai": {"base_url": faulty.v1, "model": "fake-vlm"}}}
    faulty.script([{"match": {"path": CHAT}, "fault": "delay", "delay_s": 0.4}])
    with running_gateway(tmp_path, settings, "--concurrency", "2") as gw:
        errors: list[BaseException] = []

        def program(i: int) -> None:
            try:
                sdk(gw).chat.completions.create(model="fake-vlm", messages=vision_messages("x"), user=f"p{i}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=program, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert not errors, errors
    log = faulty.log(CHAT)
    assert len(log) == 6
    spans = [(e["time"], e["time"] + e["duration_s"]) for e in log]
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= 2, spans


# ------------------------------------------------------------------ starting and stopping


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.1"])
def test_a_public_host_without_a_token_refuses_to_start(host: str, tmp_path: Path) -> None:
    """Refused before binding.  Were the check missing, binding would fail anyway: the port is
    held on 127.0.0.1 here (so 0.0.0.0 cannot have it) and 192.0.2.1 (TEST-NET-1) is not ours."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = str(held.getsockname()[1])
        proc = run_cli(tmp_path, "serve", "--host", host, "--port", port, timeout=60)
    assert proc.returncode == 2, show(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "without an access token" in lines[0] and "--token-env" in lines[0]


def test_rate_limit_per_token(faulty: Any, tmp_path: Path) -> None:
    settings = {"backend": "openai", "backends": {"openai": {"base_url": faulty.v1, "model": "fake-vlm"}}}
    with running_gateway(tmp_path, settings, "--rate-limit", "1", token="a,b") as gw:
        body = {"messages": [{"role": "user", "content": "x"}]}

        def post(token: str) -> httpx.Response:
            headers = {"Authorization": f"Bearer {token}"}
            return httpx.post(gw.v1 + "/chat/completions", json=body, headers=headers, timeout=30)

        assert post("a").status_code == 200
        limited = post("a")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
        assert post("b").status_code == 200  # each token has its own bucket


def test_token_env_must_hold_a_token(tmp_path: Path) -> None:
    proc = run_cli(tmp_path, "serve", "--token-env", "IW_NO_SUCH_VAR", "--port", "9", timeout=60)
    assert proc.returncode == 2 and "IW_NO_SUCH_VAR" in proc.stderr, show(proc)


def test_sigterm_drains_in_flight_requests_and_exits_0(faulty: Any, tmp_path: Path) -> None:
    settings = {"backend": "openai", "backends": {"openai": {"base_url": faulty.v1, "model": "fake-vlm"}}}
    faulty.script([{"match": {"path": CHAT}, "fault": "delay", "delay_s": 1.5}])
    with running_gateway(tmp_path, settings) as gw:
        got: list[Any] = []

        def call() -> None:
            got.append(sdk(gw).chat.completions.create(model="fake-vlm", messages=vision_messages("x")))

        t = threading.Thread(target=call)
        t.start()
        # a health checker that keeps its connection open (a load balancer does)
        checker = httpx.Client(timeout=5)
        assert checker.get(gw.url + "/healthz").status_code == 200
        deadline = time.monotonic() + 10
        while not faulty.log(CHAT) and time.monotonic() < deadline:
            time.sleep(0.02)
        proc = gw.process.proc
        assert proc is not None
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        port = int(gw.url.rsplit(":", 1)[1])
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            pass  # no longer accepting
        # while draining, no health check says ready: the idle kept-alive connection is closed too
        with pytest.raises(httpx.TransportError):
            checker.get(gw.url + "/healthz")
        checker.close()
        t.join(timeout=20)
        assert got and got[0].choices[0].message.content.endswith("A grey cat on a sofa.")
        try:
            assert proc.wait(timeout=20) == 0, gw.process.log()
        except subprocess.TimeoutExpired:
            pytest.fail("the gateway did not exit after draining:\n" + gw.process.log())


# ------------------------------------------------------------------ a real vision-language server


@pytest.mark.server
@pytest.mark.slow
def test_chat_and_describe_against_transformers_serve(hf_server: Any, tmp_path: Path) -> None:
    settings = {
        "backend": "openai",
        "max_tokens": 8,
        "backends": {"openai": {"base_url": hf_server.base_url, "model": hf_server.model_id, "timeout": 300}},
    }
    with running_gateway(tmp_path, settings) as gw:
        client = sdk(gw)
        ids = {m.id for m in client.models.list()}
        assert any(i.startswith("openai/") for i in ids), ids
        answer = client.chat.completions.create(
            model=f"openai/{hf_server.model_id}", messages=vision_messages("Describe.", jpeg()), max_tokens=8
        )
        assert answer.choices[0].message.content is not None and answer.model.startswith("openai/")
        stream = client.chat.completions.create(
            model=hf_server.model_id, messages=vision_messages("Describe.", jpeg()), max_tokens=8, stream=True
        )
        assert [c for c in stream if c.choices and c.choices[0].delta.content]
        resp = httpx.post(
            gw.v1 + "/describe", files=[("image", ("a.jpg", jpeg(), "image/jpeg"))], timeout=300
        )
        record = json.loads(resp.text)
        assert resp.status_code == 200 and record["error"] is None and record["backend"] == "openai", (
            resp.text
        )
