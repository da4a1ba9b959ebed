"""Crash-safe replacement of a whole file.

The data goes to a fresh temporary file in the target's own directory (so the
final rename never crosses a file system), is flushed and fsync'ed, then
``os.replace`` swaps it in and the directory is fsync'ed where the platform
allows it.  At every instant the target is either the complete old file or the
complete new one.  If anything fails before the swap the temporary file is
removed and the old file is untouched; only a hard kill (SIGKILL, power loss)
between creating and renaming can leave a ``.<name>.<random>.tmp`` file behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_write_bytes"]

_TEMP_SUFFIX = ".tmp"


def _create_temp(directory: Path, name: str) -> tuple[int, Path]:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        temp = directory / f".{name}.{secrets.token_hex(6)}{_TEMP_SUFFIX}"
        try:
            # 0o666 lets the process umask decide, as for any newly created file.
            return os.open(temp, flags, 0o666), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a unique temporary file next to {directory / name}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable; silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace (or create) *path* with exactly *data*, all or nothing.

    When *path* already exists its permission bits are carried over to the new
    file; a new file gets the usual ``0o666 & ~umask``.  A symlink at *path* is
    replaced by a regular file (the link target is not written through).

    Raises:
        OSError: The directory is not writable, the disk is full, ... (the
            old file is then unchanged and no temporary file remains).
    """
    path = Path(path)
    directory = path.parent
    fd, temp = _create_temp(directory, path.name)
    try:
        try:
            _write_all(fd, data)
            with contextlib.suppress(FileNotFoundError):
                mode = os.stat(path).st_mode & 0o7777
                os.chmod(temp, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)
