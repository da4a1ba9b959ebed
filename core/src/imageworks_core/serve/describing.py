"""``POST /v1/describe``: ImageWorks' own route; answers with lines of the results JSONL.

Images come as multipart uploads (field ``image``, repeatable) or in a JSON
body (``image``: base64 or a data URL, one or a list; ``path``: files under
the folder given with ``--allow-paths``).  Each image is prepared like
``imageworks describe`` prepares it (oriented, downscaled) and described on
its own; the answer has one JSONL line per image, in input order, each the
same record ``describe`` appends to its results file.  ``?write=xmp,json``
also writes the sidecars of ``path`` inputs.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio
import attrs
from starlette.requests import Request as HttpRequest

from ..describe import result_record
from ..dispatch import ungrouped
from ..errors import BackendProtocolError, ImageWorksError, InputError
from ..images import aprepare_image, wrap_encoded
from ..models import PreparedImage, Request, Result
from ..outputs import NarrationRecord, write_json_sidecar, write_xmp_sidecar
from ..outputs._common import dumps_json
from ..templates import get_template
from .gateway import Gateway
from .wire import (
    GatewayError,
    Receive,
    Scope,
    Send,
    read_body,
    send_bytes,
    status_of,
    until_disconnect,
)

__all__ = ["DescribeRoute"]

_WRITES = frozenset({"xmp", "json"})


@attrs.frozen
class _Job:
    source: str  # the record's "image": the path, the upload's file name, or "#N"
    data: bytes | None = None
    path: Path | None = None


def _field(form: Mapping[str, Any], key: str, kind: type) -> Any:
    value = form.get(key)
    if value is None or value == "":
        return None
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise GatewayError(400, f"{key} must be a number, not {value!r}") from None
    if (isinstance(number, float) and not math.isfinite(number)) or number < (1 if kind is int else 0):
        raise GatewayError(400, f"{key} is out of range: {value!r}")
    return number


class DescribeRoute:
    """The ASGI app of ``/v1/describe``."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.gw.handle("describe", send, lambda: self._answer(scope, receive, send))

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> int:
        body = await read_body(scope, receive, self.gw.options.max_body)
        fields, jobs = await self._inputs(scope, body)
        writes = self._writes(scope, jobs)
        named = fields.get("backend") or self.gw.split_model(str(fields.get("model") or ""))[0]
        with self.gw.caller_key(scope, str(named) if named else None):
            answered, lines = await until_disconnect(receive, lambda: self._run(fields, jobs, writes))
        if not answered or lines is None:
            return 499
        records, errors = lines
        status = 200 if len(errors) < len(records) else status_of(errors[0])[0]
        # valid UTF-8 whatever the model wrote (a lone surrogate becomes U+FFFD), as in the JSONL file
        payload = b"".join(dumps_json(r).encode() + b"\n" for r in records)
        await send_bytes(send, status, payload, b"application/x-ndjson")
        return status

    # ------------------------------------------------------------ inputs

    async def _inputs(self, scope: Scope, body: bytes) -> tuple[dict[str, Any], list[_Job]]:
        ctype = next((bytes(v).decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), "")
        if ctype.startswith("multipart/form-data"):
            return await self._multipart(scope, body)
        try:
            obj = json.loads(body)
        except ValueError as exc:
            raise GatewayError(400, f"send multipart/form-data or a JSON object: {exc}") from None
        if not isinstance(obj, Mapping):
            raise GatewayError(400, "the body must be a JSON object")
        jobs: list[_Job] = []
        images = obj.get("image")
        for i, item in enumerate([images] if isinstance(images, str) else images or []):
            if not isinstance(item, str):
                raise GatewayError(400, "image must be base64 or a data: URL (a string, or a list of them)")
            payload = item.partition(",")[2] if item.startswith("data:") else item
            try:
                jobs.append(_Job(f"#{i}", data=base64.b64decode(payload, validate=True)))
            except (binascii.Error, ValueError):
                raise GatewayError(400, f"image {i} is not valid base64") from None
        paths = obj.get("path")
        for item in [paths] if isinstance(paths, str) else paths or []:
            if not isinstance(item, str):
                raise GatewayError(400, "path must be a string or a list of strings")
            jobs.append(_Job(item, path=self._allowed(item)))
        return dict(obj), self._counted(jobs)

    async def _multipart(self, scope: Scope, body: bytes) -> tuple[dict[str, Any], list[_Job]]:
        sent = False

        async def replay() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        request = HttpRequest(scope, replay)
        try:
            form = await request.form(max_files=self.gw.options.max_images + 1, max_fields=32)
        except Exception as exc:  # starlette raises its HTTPException or the parser's errors
            detail = getattr(exc, "detail", None) or str(exc)
            status = 413 if "too many" in str(detail).lower() else 400
            raise GatewayError(status, f"cannot read the multipart body: {detail}") from None
        jobs: list[_Job] = []
        fields: dict[str, Any] = {}
        for key, value in form.multi_items():
            if key == "image":
                if isinstance(value, str):
                    raise GatewayError(400, "field image must be a file upload")
                jobs.append(_Job(value.filename or f"#{len(jobs)}", data=await value.read()))
            else:
                fields[key] = value
        await form.close()
        return fields, self._counted(jobs)

    def _counted(self, jobs: list[_Job]) -> list[_Job]:
        if not jobs:
            raise GatewayError(400, "no image: send field image (multipart), or image / path (JSON)")
        if len(jobs) > self.gw.options.max_images:
            raise GatewayError(413, f"too many images: the limit is {self.gw.options.max_images} per request")
        return jobs

    def _allowed(self, given: str) -> Path:
        root = self.gw.options.allow_paths
        if root is None:
            raise GatewayError(403, "path inputs are off; start the gateway with --allow-paths DIR")
        root = root.resolve()
        path = (root / given).resolve()  # an absolute *given* replaces root: checked below
        if not path.is_relative_to(root):
            raise GatewayError(403, f"path {given!r} is outside the allowed folder {os.fspath(root)!r}")
        if not path.is_file():
            raise GatewayError(404, f"no such image file: {given!r}")
        return path

    def _writes(self, scope: Scope, jobs: list[_Job]) -> frozenset[str]:
        query = bytes(scope.get("query_string", b"")).decode("latin-1")
        asked: set[str] = set()
        for part in query.split("&"):
            key, _, value = part.partition("=")
            if key == "write":
                asked.update(x for x in value.split(",") if x)
        if not asked:
            return frozenset()
        if asked - _WRITES:
            raise GatewayError(400, f"write= takes xmp and/or json, not {','.join(sorted(asked - _WRITES))}")
        if any(j.path is None for j in jobs):
            raise GatewayError(400, "write= writes sidecars next to path inputs only")
        return frozenset(asked)

    # ------------------------------------------------------------ the work

    async def _run(
        self, fields: dict[str, Any], jobs: list[_Job], writes: frozenset[str]
    ) -> tuple[list[dict[str, Any]], list[ImageWorksError]]:
        gw = self.gw
        prompt = fields.get("prompt") or None
        template = "custom" if prompt else str(fields.get("template") or "describe")
        if prompt is None:
            try:
                prompt = get_template(template).render(None)
            except InputError as exc:
                raise GatewayError(400, exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
        backend = gw.check_backend(str(fields["backend"])) if fields.get("backend") else None
        b2, model = gw.split_model(str(fields["model"])) if fields.get("model") else (None, None)
        base = Request(
            prompt=str(prompt),
            backend=backend or b2,
            model=model,
            max_tokens=_field(fields, "max_tokens", int),
            temperature=_field(fields, "temperature", float),
        )
        records: list[dict[str, Any]] = [{} for _ in jobs]
        errors: list[ImageWorksError] = []

        async def one(i: int, job: _Job) -> None:
            result = await self._describe(job, base)
            error = result.error
            if error is None and not result.text.strip():
                error = BackendProtocolError(
                    f"{result.backend} ({result.model}) answered with an empty description",
                    backend=result.backend,
                )
            if error is None and writes and job.path is not None:
                error = await self._write(job.path, result, writes)
            if error is not None:
                errors.append(error)
            records[i] = result_record(
                result, prompt=base.prompt, template=template, error=error, on_disk=job.path is not None
            )

        with ungrouped():
            async with anyio.create_task_group() as tg:
                for i, job in enumerate(jobs):
                    tg.start_soon(one, i, job)
        return records, errors

    async def _describe(self, job: _Job, base: Request) -> Result:
        gw = self.gw
        dispatcher = gw.client.dispatcher
        try:
            image = await self._prepare(job)
        except InputError as exc:
            return Result(backend=base.backend or gw.client.settings.backend, id=job.source, error=exc)
        result = await dispatcher.run_one(attrs.evolve(base, images=(image,)), item_id=job.source)
        gw.telemetry.result(result, dispatcher)
        return result

    async def _prepare(self, job: _Job) -> PreparedImage:
        data = job.data
        if data is None:
            assert job.path is not None
            data = await anyio.Path(job.path).read_bytes()
        head = wrap_encoded(data, source=job.source)  # the header only: refuse a pixel bomb undecoded
        limit = self.gw.options.max_image_pixels
        if head.width * head.height > limit:
            raise GatewayError(
                413,
                f"{job.source} is {head.width}x{head.height} = {head.width * head.height / 1e6:.1f} MP; "
                f"the limit is {limit / 1e6:.1f} MP",
            )
        return await aprepare_image(data, max_pixels=self.gw.client.settings.max_pixels)

    @staticmethod
    async def _write(path: Path, result: Result, writes: frozenset[str]) -> ImageWorksError | None:
        record = NarrationRecord(
            description=result.text.strip(), vlm_model=result.model, vlm_processing_time=result.latency
        )

        def write() -> None:
            if "xmp" in writes:
                write_xmp_sidecar(path, record)
            if "json" in writes:
                write_json_sidecar(path, record)

        try:
            await anyio.to_thread.run_sync(write)
        except ImageWorksError as exc:
            return exc
        except OSError as exc:
            return InputError(f"{path}: cannot write the sidecar: {exc.strerror or exc}", source=str(path))
        return None
