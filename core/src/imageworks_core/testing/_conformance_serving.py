"""The conformance tests of inference, streaming, errors and cancellation."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from ..errors import (
    BackendError,
    BackendOverloaded,
    BackendProtocolError,
    BackendRejected,
    BackendTimeout,
    BackendUnavailable,
    InputError,
)
from ..models import Chunk, PreparedImage, Result
from ._conformance_base import SuiteBase, _open_stream, _secrets_in, _with_credentials
from ._conformance_faults import (
    _SECRET_KEY,
    HANG,
    MALFORMED,
    OVERLOADED,
    REJECT_MESSAGE,
    REJECTED,
    RETRY_AFTER,
    STREAM_ERROR,
    STREAM_ERROR_MESSAGE,
)


class ServingTests(SuiteBase):
    """Requests: inference, streaming, the error tree, cancellation."""

    # ------------------------------------------------------------ inference

    def _check_result(self, result: Any) -> None:
        assert isinstance(result, Result), f"infer returned {type(result).__name__}, not Result"
        assert isinstance(result.text, str) and result.text.strip(), f"empty answer: {result}"
        assert result.backend == self.backend
        assert isinstance(result.model, str) and result.model, "name the model that answered"
        assert result.finish_reason, f"say why generation stopped (finish_reason): {result}"
        assert result.error is None and result.ok
        if self.reports_usage:
            u = result.usage
            assert isinstance(u.completion_tokens, int) and u.completion_tokens >= 0, (
                f"usage missing (set reports_usage = False if the backend never reports it): {u}"
            )

    @pytest.mark.anyio
    async def test_infer_with_an_image(
        self, backend_plugin: Any, server_url: str | None, faults: Any, image: PreparedImage
    ) -> None:
        if not self._caps(backend_plugin).vision:
            pytest.skip("the backend declares vision=False")
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(image))
        self._check_result(result)
        assert len(result.attempts) == 1 and result.attempts[0].error is None
        if faults is not None and faults.images_received() is not None:
            assert faults.images_received() == 1, "the image did not reach the server"

    @pytest.mark.anyio
    async def test_infer_with_several_images(
        self, backend_plugin: Any, server_url: str | None, faults: Any, image: PreparedImage
    ) -> None:
        caps = self._caps(backend_plugin)
        if not caps.vision or (caps.max_images is not None and caps.max_images < 2):
            pytest.skip("the backend takes at most one image per request")
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(image, images=(image, image)))
        self._check_result(result)
        if faults is not None and faults.images_received() is not None:
            assert faults.images_received() == 2, "both images must reach the server"

    @pytest.mark.anyio
    async def test_infer_text_only(self, backend_plugin: Any, server_url: str | None) -> None:
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(None))
        self._check_result(result)

    @pytest.mark.anyio
    async def test_too_many_images_are_refused(
        self, backend_plugin: Any, server_url: str | None, image: PreparedImage
    ) -> None:
        caps = self._caps(backend_plugin)
        if not caps.vision or caps.max_images is None:
            pytest.skip("the backend declares no max_images")
        images = (image,) * (caps.max_images + 1)
        async with self._client(backend_plugin, server_url) as client:
            with pytest.raises((BackendRejected, InputError)) as exc_info:
                await client.infer(self.request(image, images=images))
        assert str(caps.max_images) in str(exc_info.value), "say how many images are allowed"

    @pytest.mark.anyio
    async def test_model_override(self, backend_plugin: Any, server_url: str | None) -> None:
        if self.other_model is None:
            pytest.skip("other_model = None: the server answers to no second model name")
        caps = self._caps(backend_plugin)
        async with self._client(backend_plugin, server_url) as client:
            result = await client.infer(self.request(None, model=self.other_model))
        self._check_result(result)
        if caps.model_switch:
            assert result.model.startswith(self.other_model), (
                f"model_switch=True, but the answer came from {result.model!r}"
            )

    @pytest.mark.anyio
    async def test_concurrent_requests(self, backend_plugin: Any, server_url: str | None) -> None:
        results: list[Result] = []
        async with self._client(backend_plugin, server_url) as client:

            async def one(i: int) -> None:
                results.append(await client.infer(self.request(None, id=f"req-{i}")))

            async with anyio.create_task_group() as tg:
                for i in range(6):
                    tg.start_soon(one, i)
        assert sorted(r.id or "" for r in results) == [f"req-{i}" for i in range(6)]
        for r in results:
            self._check_result(r)

    # ------------------------------------------------------------ streaming

    @pytest.mark.anyio
    async def test_stream(self, backend_plugin: Any, server_url: str | None, image: PreparedImage) -> None:
        caps = self._caps(backend_plugin)
        async with self._client(backend_plugin, server_url) as client:
            chunks = await self._collect(client, self.request(image if caps.vision else None))
        assert chunks, "the stream yielded nothing"
        assert all(isinstance(c, Chunk) for c in chunks), "stream must yield Chunk objects"
        finals = [i for i, c in enumerate(chunks) if c.finish_reason is not None]
        assert finals, "the last content chunk must carry finish_reason"
        after = chunks[finals[0] + 1 :]
        assert not any(c.text for c in after), "no text may follow the finish_reason chunk"
        assert "".join(c.text for c in chunks).strip(), "the stream carried no text"
        if caps.streaming:
            assert any(c.text for c in chunks[: finals[0] + 1]), "text must come before (or with) the finish"
        if self.reports_usage:
            usage = [c.usage for c in chunks if c.usage is not None]
            assert usage and isinstance(usage[-1].completion_tokens, int), (
                "the stream must end with usage (set reports_usage = False if the backend never reports it)"
            )

    @pytest.mark.anyio
    async def test_stream_closed_early_releases_the_request(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        async with self._client(backend_plugin, server_url) as client:
            async with _open_stream(client, self.request(None)) as stream:
                async for _ in stream:
                    break
            await self._settle(faults)
            self._check_result(await client.infer(self.request(None)))

    # ------------------------------------------------------------ errors

    @pytest.mark.anyio
    async def test_error_unavailable_when_nothing_listens(
        self, backend_plugin: Any, down_url: str | None, faults: Any
    ) -> None:
        url = self._down(faults, down_url)
        async with self._client(backend_plugin, url) as client:
            with pytest.raises(BackendUnavailable) as exc_info:
                await client.infer(self.request(None))
            with pytest.raises(BackendUnavailable):
                await self._collect(client, self.request(None))
        exc = exc_info.value
        assert exc.retryable
        assert self.backend in exc.message, f"name the backend in the message: {exc.message}"
        assert exc.hint, "say what to do (hint): the command that starts the server, the key to set"
        if url is not None:
            host_port = url.split("://", 1)[1].split("/", 1)[0]
            assert host_port in str(exc), f"name where it tried ({host_port}): {exc}"

    @pytest.mark.anyio
    async def test_no_secret_in_errors(self, backend_plugin: Any, down_url: str | None, faults: Any) -> None:
        url = self._down(faults, down_url)
        async with self._client(backend_plugin, url, settings={"api_key": _SECRET_KEY}) as client:
            with pytest.raises(BackendError) as exc_info:
                await client.infer(self.request(None))
            report = await client.health()
        exc = exc_info.value
        leaks = _secrets_in(str(exc), repr(exc), exc.hint, report.detail, report.hint, report.url)
        assert not leaks, f"an API key reached a message: {leaks}"

    @pytest.mark.anyio
    async def test_no_password_from_the_url_in_errors(
        self, backend_plugin: Any, down_url: str | None
    ) -> None:
        if down_url is None:
            pytest.skip("the backend uses no server URL")
        async with self._client(backend_plugin, _with_credentials(down_url)) as client:
            with pytest.raises(BackendError) as exc_info:
                await client.infer(self.request(None))
            report = await client.health()
            own = await self._health(client, self.backend)
        exc = exc_info.value
        texts = (str(exc), exc.hint, exc.url, report.detail, report.hint, report.url, own.url, own.hint)
        leaks = _secrets_in(*texts)
        assert not leaks, f"a password from the base URL reached a message: {leaks}"

    @pytest.mark.anyio
    async def test_error_overloaded_carries_retry_after(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, OVERLOADED)
        async with self._client(backend_plugin, server_url) as client:
            result = await client.dispatcher.run_one(self.request(None))
            with pytest.raises(BackendOverloaded):
                await self._collect(client, self.request(None))
        exc = result.error
        assert isinstance(exc, BackendOverloaded), f"expected BackendOverloaded, got {exc!r}"
        assert exc.retry_after == RETRY_AFTER, f"honour Retry-After: {RETRY_AFTER:g}, got {exc.retry_after!r}"
        assert exc.retryable and len(result.attempts) == 2, "an overloaded server is retried"
        assert self.backend in exc.message

    @pytest.mark.anyio
    async def test_error_rejected_is_not_retried(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, REJECTED)
        async with self._client(backend_plugin, server_url) as client:
            result = await client.dispatcher.run_one(self.request(None))
            with pytest.raises(BackendRejected):
                await self._collect(client, self.request(None))
        exc = result.error
        assert isinstance(exc, BackendRejected), f"expected BackendRejected, got {exc!r}"
        assert REJECT_MESSAGE in exc.message, f"pass the server's own words on: {exc.message}"
        assert self.backend in exc.message, f"name the backend: {exc.message}"
        assert not exc.retryable and len(result.attempts) == 1, "a rejected request must not be retried"
        assert exc.status is None or 400 <= exc.status < 500

    @pytest.mark.anyio
    async def test_error_malformed_answer(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, MALFORMED)
        async with self._client(backend_plugin, server_url) as client:
            with pytest.raises(BackendProtocolError) as exc_info:
                await client.infer(self.request(None))
        assert self.backend in exc_info.value.message

    @pytest.mark.anyio
    async def test_error_inside_the_stream(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, STREAM_ERROR)
        got: list[Chunk] = []
        async with self._client(backend_plugin, server_url) as client:
            with pytest.raises(BackendError) as exc_info:
                async with _open_stream(client, self.request(None)) as stream:
                    async for chunk in stream:
                        got.append(chunk)
        assert STREAM_ERROR_MESSAGE in str(exc_info.value), f"pass the in-band error on: {exc_info.value}"
        assert not any(c.finish_reason for c in got), "a failed stream must not also report a normal finish"

    @pytest.mark.anyio
    async def test_request_timeout(self, backend_plugin: Any, server_url: str | None, faults: Any) -> None:
        self._need(faults, HANG)
        async with self._client(backend_plugin, server_url) as client:
            start = time.monotonic()
            with pytest.raises(BackendTimeout):
                await client.infer(self.request(None, timeout=0.5))
            elapsed = time.monotonic() - start
            assert elapsed < 10, f"Request.timeout=0.5 with two tries took {elapsed:.1f}s"
            faults.clear()
            await self._settle(faults)

    # ------------------------------------------------------------ cancellation

    @pytest.mark.anyio
    async def test_cancel_in_flight_releases_the_connection(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        self._need(faults, HANG)
        async with self._client(backend_plugin, server_url) as client:
            with anyio.move_on_after(0.5) as scope:
                await client.infer(self.request(None))
            assert scope.cancelled_caught, "the request should have hung until cancelled"
            await self._settle(faults)
            faults.clear()
            self._check_result(await client.infer(self.request(None)))
            with anyio.move_on_after(0.3):
                faults.inject(HANG)
                async with _open_stream(client, self.request(None)) as stream:
                    async for _ in stream:
                        pass
            await self._settle(faults)
            faults.clear()
        await self._settle(faults)

    @pytest.mark.anyio
    async def test_cancel_at_any_moment_leaves_the_client_usable(
        self, backend_plugin: Any, server_url: str | None, faults: Any
    ) -> None:
        async with self._client(backend_plugin, server_url) as client:
            for delay in (0.0, 0.001, 0.005, 0.02, 0.05):
                with anyio.move_on_after(delay):
                    await client.infer(self.request(None))
                with anyio.move_on_after(delay):
                    await self._collect(client, self.request(None))
            self._check_result(await client.infer(self.request(None)))
        await self._settle(faults)
