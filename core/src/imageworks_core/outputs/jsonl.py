"""The results file: one JSON object per line, appended as each image completes.

Record keys (written by the runner; :class:`JsonlWriter` accepts any mapping)::

    image            path string (see "file names" below)
    prompt, template, backend, model, base_url, description   strings (or null)
    processing_time  seconds (float)
    usage            object or null
    attempts         list of objects
    error            string, or null on success
    timestamp        ISO 8601 UTC; filled in by the writer when missing

File names: ``image`` is ``os.fsdecode(path)``.  A name that is not valid
UTF-8 decodes (PEP 383) to lone surrogates U+DC80..U+DCFF, which are written as
``\\udcXX`` JSON escapes while the rest of the line stays plain UTF-8.  Python's
``json.loads`` gives back the same string, so ``os.fsencode(record["image"])``
is the original bytes and ``completed_images`` matches ``os.fsdecode(path)``.

The file is append-only, not replaced atomically: a killed run leaves at most
one truncated last line, which the readers skip and which the next
:class:`JsonlWriter` terminates with a newline before appending.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from imageworks_core.outputs._common import dumps_json, iso_utc, path_text

__all__ = ["RESULT_KEYS", "JsonlWriter", "completed_images", "iter_results"]

RESULT_KEYS = (
    "image",
    "prompt",
    "template",
    "backend",
    "model",
    "base_url",
    "description",
    "processing_time",
    "usage",
    "attempts",
    "error",
    "timestamp",
)


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
        data.setdefault("timestamp", iso_utc())
        line = (dumps_json(data) + "\n").encode("utf-8")
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
        record["image"]
        for record in iter_results(path)
        if isinstance(record.get("image"), str) and "error" in record and record["error"] is None
    }
