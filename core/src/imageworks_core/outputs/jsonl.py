"""The results file: one JSON object per line, appended as each image completes.

Record keys (written by the runner; :class:`JsonlWriter` accepts any mapping)::

    image            path string as given (see "file names" below)
    resolved_path    absolute path with symlinks resolved: what --resume matches on (or null)
    image_bytes_b64, resolved_path_bytes_b64
                     only for a name that is not valid UTF-8: base64 of the path's exact bytes
    prompt, template, backend, model, base_url, description   strings (or null)
    processing_time  seconds the answering try took (the server's time)
    queue_time       seconds spent waiting for a free slot or for a backend to come back
    usage            object or null
    attempts         list of objects
    error            string, or null on success
    output_error     string when the answer came but a sidecar could not be written
                     (the description is still here; --resume writes the sidecar from it)
    timestamp        ISO 8601 UTC; filled in by the writer when missing

File names: ``image`` is ``os.fsdecode(path)``.  A name that is not valid
UTF-8 decodes (PEP 383) to lone surrogates, which strict JSON parsers reject:
they are written as U+FFFD and the exact bytes are kept beside them in
``image_bytes_b64`` / ``resolved_path_bytes_b64`` (added by the writer).  Every
line is valid UTF-8 JSON without lone surrogates.

The file is append-only, not replaced atomically: a killed run leaves at most
one truncated last line, which the readers skip and which the next
:class:`JsonlWriter` terminates with a newline before appending.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from imageworks_core.outputs._common import dumps_json, has_surrogates, iso_utc, path_text
from imageworks_core.redact import scrub_data

__all__ = [
    "OPTIONAL_KEYS",
    "RESULT_KEYS",
    "JsonlWriter",
    "completed_images",
    "iter_results",
    "path_keys",
    "record_path",
    "resolved_key",
    "resume_index",
]

RESULT_KEYS = (
    "image",
    "resolved_path",
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
    "timestamp",
)
#: Keys written only when they apply (see the module docstring).
OPTIONAL_KEYS = ("image_bytes_b64", "resolved_path_bytes_b64", "output_error")
_PATH_FIELDS = ("image", "resolved_path")


def _ends_without_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        if fh.seek(0, os.SEEK_END) == 0:
            return False
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) != b"\n"


class JsonlWriter:
    """Append result records to a JSONL file, one flushed line per record.

    Use as a context manager (or call :meth:`close`).  Each :meth:`write`
    serialises the record to a single line, writes it in one call and flushes
    it, so a reader sees complete lines while the run goes on; with
    ``fsync=True`` every line is also fsync'ed (durable across power loss, but
    slower).  Writes are serialised by a lock, so threads may share a writer.

    The parent directory is created if needed.  If the file ends in a
    truncated line (an earlier run was killed mid-write), a newline is
    appended first so the new records never merge into the broken one.

    Attributes:
        path: The JSONL file.
        fsync: Whether each record is fsync'ed after the flush.
    """

    def __init__(self, path: Path, *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fh: BinaryIO | None = None
        self._lock = threading.Lock()

    def open(self) -> JsonlWriter:
        """Open the file for appending (done automatically by ``with`` and :meth:`write`)."""
        with self._lock:
            self._open_locked()
        return self

    def _open_locked(self) -> BinaryIO:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(self.path, "ab")  # noqa: SIM115 (kept open until close())
            try:
                if _ends_without_newline(self.path):
                    fh.write(b"\n")
                    fh.flush()
            except BaseException:
                fh.close()
                raise
            self._fh = fh
        return self._fh

    def write(self, record: Mapping[str, object]) -> None:
        """Append *record* as one JSON line and flush it.

        ``image`` may be a ``Path``/``bytes``; ``Path`` and ``datetime`` values
        anywhere are written as text; ``timestamp`` is added (now, UTC) when
        absent.

        Raises:
            TypeError, ValueError: The record cannot be serialised (nothing is written).
            OSError: Writing failed.
        """
        data = dict(record)
        image = data.get("image")
        if isinstance(image, bytes | os.PathLike):
            data["image"] = path_text(image)
        for field in _PATH_FIELDS:  # a non-UTF-8 name: U+FFFD in the text, exact bytes beside it
            value = data.get(field)
            if isinstance(value, str) and has_surrogates(value):
                data[f"{field}_bytes_b64"] = base64.b64encode(os.fsencode(value)).decode("ascii")
        data.setdefault("timestamp", iso_utc())
        # secrets come from servers' answers and errors; the user's own file names are kept
        # exactly (a name a key happened to match would no longer find its image on --resume)
        kept = {k: v for k, v in data.items() if k in _PATH_FIELDS or k.endswith("_bytes_b64")}
        line = (dumps_json({**scrub_data(data), **kept}) + "\n").encode("utf-8")
        with self._lock:
            fh = self._open_locked()
            fh.write(line)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    def close(self) -> None:
        """Flush and close; closing twice is harmless."""
        with self._lock:
            if self._fh is not None:
                try:
                    self._fh.flush()
                    if self.fsync:
                        os.fsync(self._fh.fileno())
                finally:
                    self._fh.close()
                    self._fh = None

    def __enter__(self) -> JsonlWriter:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def iter_results(path: Path) -> Iterator[dict]:
    """Yield each record (a JSON object) of a results file, in order.

    A missing file yields nothing.  Lines that are blank, not valid UTF-8, not
    valid JSON or not an object (e.g. the truncated last line of a killed
    run) are skipped.
    """
    try:
        fh = open(path, "rb")  # noqa: SIM115 (closed by the with below)
    except FileNotFoundError:
        return
    with fh:
        for raw in fh:
            line = raw.strip()
            if not line:
                continue
            try:
                obj = json.loads(line.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                continue
            if isinstance(obj, dict):
                yield obj


def completed_images(path: Path) -> set[str]:
    """The ``image`` values that have at least one successful record (``"error": null``).

    Compare against ``os.fsdecode(image_path)`` written the same way as the run
    wrote it (the writer does not make paths absolute).
    """
    return {
        image
        for record in iter_results(path)
        if "error" in record and record["error"] is None and (image := record_path(record)) is not None
    }


def resolved_key(path: str | os.PathLike[str]) -> str:
    """The key ``--resume`` matches on: the absolute path with symlinks resolved (``os.fsdecode``d)."""
    return os.fsdecode(os.path.realpath(os.fspath(path)))


def path_keys(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``resolved_path`` key of a record about *path*."""
    return {"resolved_path": resolved_key(path)}


def record_path(record: Mapping[str, object], field: str = "image") -> str | None:
    """A record's path *field* exactly as written (``<field>_bytes_b64`` for a non-UTF-8 name)."""
    raw = record.get(f"{field}_bytes_b64")
    if isinstance(raw, str):
        try:
            return os.fsdecode(base64.b64decode(raw, validate=True))
        except (binascii.Error, ValueError):
            pass
    value = record.get(field)
    return value if isinstance(value, str) else None


def _record_key(record: Mapping[str, object]) -> str | None:
    resolved = record_path(record, "resolved_path")
    if resolved is not None:
        return resolved
    image = record_path(record)  # a record from before resolved_path: as seen from here
    return resolved_key(image) if image is not None else None


def resume_index(path: Path) -> dict[str, dict]:
    """Resolved path -> its latest successful record (``"error": null``), for ``--resume``.

    Any spelling of the same file (``.``, ``imgs``, an absolute path, a symlink)
    finds it.  A record with ``output_error`` set has its description but is
    missing a sidecar: the caller writes the sidecar from it.
    """
    index: dict[str, dict] = {}
    for record in iter_results(path):
        if "error" not in record or record["error"] is not None:
            continue
        key = _record_key(record)
        if key is not None:
            index[key] = record
    return index
