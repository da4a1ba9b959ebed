"""The scrub registry (redact.py): what it hides, and what it leaves readable (issue 13.1-2)."""

from __future__ import annotations

import base64
import pickle

import pytest

from imageworks_core import BackendRejected, Secret
from imageworks_core.redact import StreamScrubber, redact_headers, redact_url, register_secret, scrub

KEY = "sk-unit-REDACT-93e1c0de"


def test_a_secret_is_scrubbed_from_every_error_form() -> None:
    Secret(KEY)  # a Secret registers itself
    err = BackendRejected(f"401: Invalid API key: Bearer {KEY}", hint=f"the key {KEY} was refused")
    for text in (err.message, err.hint, str(err), repr(err), repr(pickle.loads(pickle.dumps(err)))):
        assert KEY not in (text or "") and "***" in (text or "")
    assert scrub(f"x{KEY}y") == "x***y"


def test_basic_credentials_and_their_encodings() -> None:
    register_secret("Basic " + base64.b64encode(b"carol:pw-0f9e8d7c").decode())
    token = base64.b64encode(b"carol:pw-0f9e8d7c").decode()
    for text in (token, "carol:pw-0f9e8d7c", "pw-0f9e8d7c"):
        assert "0f9e8d7c" not in scrub(f"echo {text}")


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    assert scrub("a cab") == "a cab"


def test_redact_url_keeps_what_is_not_secret() -> None:
    assert redact_url("http://u:p4ss@h:8000/v1?key=abc&v=2") == "http://h:8000/v1?key=***&v=***"
    assert redact_url("https://[::1]:9/x") == "https://[::1]:9/x"
    assert redact_url("http://h:99999/") == "<unparseable URL>"


def test_headers() -> None:
    shown = redact_headers({"Authorization": "Bearer x", "api-key": "y", "X-Auth-Token": "z", "X-Title": "t"})
    assert shown == {"Authorization": "***", "api-key": "***", "X-Auth-Token": "***", "X-Title": "t"}


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 40])
def test_stream_scrubber_any_split(size: int) -> None:
    register_secret(KEY)
    text = f"the key is {KEY}, again {KEY}{KEY} end"
    scrubber = StreamScrubber()
    out = "".join(scrubber.feed(text[i : i + size]) for i in range(0, len(text), size)) + scrubber.flush()
    assert out == scrub(text) == "the key is ***, again ****** end"


def test_a_short_password_is_a_secret_and_a_no_key_placeholder_is_not() -> None:
    from imageworks_core.redact import url_secrets

    register_secret(*url_secrets("http://me:hunter2@gpu-box:8000/v1?api-version=2024-06-01&sig=abcd1234"))
    register_secret("EMPTY", "Bearer EMPTY", "ollama")
    assert scrub("pw hunter2, sig abcd1234") == "pw ***, sig ***"
    assert scrub("an EMPTY frame in 2024-06-01, ollama style") == "an EMPTY frame in 2024-06-01, ollama style"
