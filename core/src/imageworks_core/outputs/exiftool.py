"""Long-lived ``exiftool -stay_open True -@ -`` processes, one per busy worker thread.

Starting exiftool (Perl) costs ~130 ms; a command sent to a running one costs
a few ms.  Protocol (exiftool's ``-stay_open`` documentation): write one
argument per line on its stdin, then ``-execute<N>``; exiftool answers
``{ready<N>}`` on stdout.  We also send ``-echo4 {status=${status} <N>}`` so
stderr carries the command's exit status after its messages, and both
streams are read up to their marker (together, so a long stderr cannot
block exiftool while we wait on stdout).

Caveats handled here:

* an argument is one line: arguments holding ``\\n`` or ``\\r`` are refused
  (:class:`ValueError`; the caller runs a one-shot exiftool for those);
* ``-config`` is only read on the command line, so each process starts with it;
* one command at a time per process (a lock; the pool hands a process to one
  thread at a time anyway);
* a process that died (killed, crashed) is reaped and replaced;
* exiftool ignores EOF on its argfile and would spin forever once we are gone:
  :meth:`ExifToolPool.close` sends ``-stay_open False`` (also at interpreter
  exit), and on Linux the child gets SIGTERM if we die without closing it.
  Children run in their own session so a Ctrl-C in the terminal does not
  interrupt a write half-way; the run closes them afterwards.
"""

from __future__ import annotations

import atexit
import os
import queue
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

__all__ = ["ExifToolDied", "ExifToolPool", "ExifToolProcess", "ExifToolTimeout", "default_pool"]

_STATUS = re.compile(rb"\{status=(-?\d+) (\d+)\}\n\Z")


class ExifToolDied(RuntimeError):
    """The exiftool process exited (or closed its pipes) before answering."""


class ExifToolTimeout(RuntimeError):
    """exiftool did not answer in time; the process was killed."""


def _pdeathsig() -> Callable[[], None] | None:
    """A preexec function asking Linux to SIGTERM the child when its parent thread dies."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


_spawn_queue: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] | None = None
_spawn_lock = threading.Lock()


def _spawn(start: Callable[[], subprocess.Popen[bytes]]) -> subprocess.Popen[bytes]:
    """Run *start* on one daemon thread that lives as long as the interpreter.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits; the
    worker threads that embed come and go, this one does not.
    """
    global _spawn_queue
    with _spawn_lock:
        if _spawn_queue is None:
            jobs: queue.SimpleQueue[tuple[Callable[[], Any], queue.SimpleQueue[Any]]] = queue.SimpleQueue()

            def serve() -> None:
                while True:
                    job, answer = jobs.get()
                    try:
                        answer.put((True, job()))
                    except BaseException as exc:  # handed back to the caller
                        answer.put((False, exc))

            threading.Thread(target=serve, name="imageworks-exiftool-spawner", daemon=True).start()
            _spawn_queue = jobs
    answer: queue.SimpleQueue[Any] = queue.SimpleQueue()
    _spawn_queue.put((start, answer))
    ok, value = answer.get()
    if not ok:
        raise value
    return value


class ExifToolProcess:
    """One ``exiftool -stay_open`` process."""

    def __init__(self, exe: str, config: Path | None = None) -> None:
        argv: list[str | bytes] = [exe]
        if config is not None:
            argv += ["-config", os.fsencode(config)]
        argv += ["-stay_open", "True", "-@", "-"]
        preexec = _pdeathsig()
        self.proc: subprocess.Popen[bytes] = _spawn(
            lambda: subprocess.Popen(  # fixed argv, no shell
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                preexec_fn=preexec,
            )
        )
        self.lock = threading.Lock()
        self.commands = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="imageworks-exiftool-"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def execute(self, args: Sequence[str | bytes], timeout: float) -> tuple[int, bytes, bytes]:
        """Run one command; ``(exit status, stdout, stderr)`` without the markers.

        Raises:
            ValueError: an argument holds a line break (cannot be sent as one line).
            ExifToolDied: the process is gone (it is reaped; make a new one).
            ExifToolTimeout: no answer within *timeout* s (the process is killed).
        """
        lines = [os.fsencode(a) for a in args]
        if any(b"\n" in line or b"\r" in line for line in lines):
            raise ValueError("an exiftool argument holds a line break")
        with self.lock:
            self.commands += 1
            n = self.commands
            # -echo4 goes first: after a "--" in *args* every word is a file name.
            payload = b"-echo4\n{status=${status} %d}\n" % n
            payload += b"".join(line + b"\n" for line in lines) + b"-execute%d\n" % n
            stdin, stdout, stderr = self.proc.stdin, self.proc.stdout, self.proc.stderr
            assert stdin is not None and stdout is not None and stderr is not None
            try:
                stdin.write(payload)
                stdin.flush()
            except OSError as exc:  # BrokenPipeError: it died
                self.kill()
                raise ExifToolDied(f"exiftool (pid {self.pid}) is gone") from exc
            ready = b"{ready%d}\n" % n
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            with selectors.DefaultSelector() as sel:
                sel.register(stdout, selectors.EVENT_READ, out)
                sel.register(stderr, selectors.EVENT_READ, err)
                while True:
                    m = _STATUS.search(err) if out.endswith(ready) else None
                    if m is not None and int(m[2]) == n:
                        break
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self.kill()
                        raise ExifToolTimeout(f"exiftool (pid {self.pid}) did not answer in {timeout:g} s")
                    for key, _ in sel.select(left):
                        chunk = os.read(key.fd, 65536)
                        if not chunk:
                            self.kill()
                            raise ExifToolDied(f"exiftool (pid {self.pid}) exited during a command")
                        key.data.extend(chunk)
            return int(m[1]), bytes(out[: -len(ready)]), bytes(err[: m.start()])

    def kill(self) -> None:
        """Kill (if still running) and reap the process."""
        if self.alive():
            self.proc.kill()
        self.proc.wait()
        self._close_pipes()

    def close(self, timeout: float = 5.0) -> None:
        """Ask exiftool to exit (``-stay_open False``); kill it after *timeout* s. Always reaps."""
        if self.alive():
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"-stay_open\nFalse\n")
                self.proc.stdin.flush()
            except OSError:
                pass
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        self.kill()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass
        for leftover in self.workdir.glob("*"):
            leftover.unlink(missing_ok=True)
        with suppress(OSError):
            self.workdir.rmdir()


class ExifToolPool:
    """Idle ``-stay_open`` processes handed to one thread at a time, at most *size* alive."""

    def __init__(self, exe: str, config: Path | None = None, size: int | None = None) -> None:
        self.exe, self.config = exe, config
        self.size = size or min(8, os.cpu_count() or 2)
        self._free = threading.BoundedSemaphore(self.size)
        self._lock = threading.Lock()
        self._idle: list[ExifToolProcess] = []
        self._busy: set[ExifToolProcess] = set()
        self._retire: set[ExifToolProcess] = set()
        self.started = 0  # processes started so far (tests and benchmarks read it)

    @contextmanager
    def process(self) -> Iterator[ExifToolProcess]:
        """A live process for this thread only; returned to the pool afterwards."""
        self._free.acquire()
        try:
            with self._lock:
                proc = self._idle.pop() if self._idle else None
            if proc is None or not proc.alive():
                if proc is not None:
                    proc.kill()  # reap the dead one
                proc = ExifToolProcess(self.exe, self.config)
                with self._lock:
                    self.started += 1
            with self._lock:
                self._busy.add(proc)
            try:
                yield proc
            finally:
                with self._lock:
                    self._busy.discard(proc)
                    keep = proc.alive() and proc not in self._retire
                    self._retire.discard(proc)
                    if keep:
                        self._idle.append(proc)
                if not keep:
                    proc.close()
        finally:
            self._free.release()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in [*self._idle, *self._busy]]

    def close(self) -> None:
        """End the idle processes now, the busy ones when their command is done."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._retire |= self._busy
        for proc in idle:
            proc.close()


_default: dict[tuple[str, str], ExifToolPool] = {}
_default_lock = threading.Lock()


def default_pool(exe: str, config_text: str) -> ExifToolPool:
    """The process-wide pool for *exe* with this config (written once to a private file)."""
    with _default_lock:
        pool = _default.get((exe, config_text))
        if pool is None:
            if not _default:
                atexit.register(_at_exit)
            config_dir = Path(tempfile.mkdtemp(prefix="imageworks-exiftool-config-"))
            config = config_dir / "imageworks.config"
            config.write_text(config_text, encoding="utf-8")
            pool = _default[(exe, config_text)] = ExifToolPool(exe, config)
        return pool


def close_default_pools() -> None:
    """End every default pool's processes (the end of a run, and interpreter exit)."""
    with _default_lock:
        pools = list(_default.values())
    for pool in pools:
        pool.close()


def _at_exit() -> None:
    close_default_pools()
    with _default_lock:
        for pool in _default.values():
            if pool.config is not None:
                pool.config.unlink(missing_ok=True)
                with suppress(OSError):
                    pool.config.parent.rmdir()
        _default.clear()
