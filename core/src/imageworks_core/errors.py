"""The ImageWorks error tree.

    ImageWorksError
    ├── ConfigError                 bad file / key / value (file and key named)
    ├── PluginError                 a plugin failed to load or broke its contract
    ├── OutputError                 a sidecar / results file could not be written
    ├── InputError                  unreadable / unsupported / oversized image      item
    └── BackendError                anything a backend said or failed to say
        ├── BackendUnavailable      refused / reset / DNS / 502 / 504 / loading      OUTAGE
        │   └── BackendDown         gave up waiting for it, or it failed for good    final
        ├── BackendOverloaded       429 / 503, carries retry_after                   OUTAGE (pause)
        ├── BackendTimeout          read / stream-idle / one try's total time        item, retryable
        ├── BackendRejected         4xx: bad request, unknown model, too many images item, final
        └── BackendProtocolError    malformed body / stream, in-band stream error    item
            └── BackendServerError  HTTP 5xx other than 502/503/504                  item, retryable

The class decides who is to blame (``outage``): the dispatcher puts a backend
whose request failed with an ``outage`` error into an outage state (the item
goes back to the queue, its attempts untouched); every other error is the
item's and counts against its ``max_attempts`` (when ``retryable``) or ends it.

Every message says what happened, where, and what to do next.  ``hint`` holds
the "what to do next" part separately so a CLI can print it on its own line.
No secret ever reaches a message: callers pass URLs through ``redact_url``, and
every message and hint is scrubbed of the secrets the process has sent
(``redact.scrub``), so a server echoing the API key back cannot leak it.
"""

from __future__ import annotations

from typing import Any, Self

from .redact import redact_url, scrub

__all__ = [
    "BackendError",
    "BackendOverloaded",
    "BackendProtocolError",
    "BackendRejected",
    "BackendTimeout",
    "BackendUnavailable",
    "BackendDown",
    "BackendServerError",
    "ConfigError",
    "ImageWorksError",
    "InputError",
    "OutputError",
    "PluginError",
    "redact_url",
]


class ImageWorksError(Exception):
    """Base class of every error this project raises on purpose.

    Attributes:
        message: What happened and where.
        hint: What to do next (a command, a config key), or ``None``.
        retryable: A new try of the same request may succeed.
        outage: The backend, not the request, failed: the backend goes into an
            outage (or a pause) and the request waits for it without using up
            its attempts.  Decided by the class.
        attempts: The tries made (``Attempt``s, in order) when raised by
            ``Client.infer``; empty otherwise.
    """

    retryable: bool = False
    outage: bool = False
    attempts: tuple[Any, ...] = ()

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        message, hint = scrub(message), (None if hint is None else scrub(hint))
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  hint: {hint}")

    def with_hint(self, hint: str | None) -> Self:
        """This error with its hint replaced by *hint* (say what to do); returns ``self``.

        ``raise exc.with_hint("restart the server with --max-model-len 8192")``
        """
        self.hint = None if hint is None else scrub(hint)
        self.args = (self.message if self.hint is None else f"{self.message}\n  hint: {self.hint}",)
        return self

    def __reduce__(self):  # keep pickling (and copy) working with keyword-only args
        return (_rebuild, (type(self), self.__dict__.copy()))


def _rebuild(cls: type[ImageWorksError], state: dict) -> ImageWorksError:
    obj = cls(str(state.get("message", "")), hint=state.get("hint"))
    obj.__dict__.update(state)
    return obj


class ConfigError(ImageWorksError, ValueError):
    """Bad configuration: the file, the key and the expected value are named.

    Attributes:
        source: Where the value came from (a file path, ``env IMAGEWORKS_X``, a flag).
        key: The dotted key, e.g. ``backends.vllm.timeout``.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.source = source
        self.key = key
        where = ", ".join(p for p in (source, f"key {key!r}" if key else None) if p)
        super().__init__(f"{message} ({where})" if where else message, hint=hint)


class PluginError(ImageWorksError, RuntimeError):
    """A backend plugin failed to load or broke the plugin contract.

    Attributes:
        plugin: The entry-point (backend) name.
        distribution: The distribution that ships it, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        plugin: str | None = None,
        distribution: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.plugin = plugin
        self.distribution = distribution
        super().__init__(message, hint=hint)

    @classmethod
    def raised_by(cls, plugin: str, exc: BaseException) -> PluginError:
        """An exception outside the error tree, raised by plugin *plugin*'s hook: a bug in the plugin."""
        return cls(
            f"the {plugin} plugin raised {type(exc).__name__}: {exc}",
            plugin=plugin,
            hint="this is a bug in the plugin; report it to its authors",
        )


class BackendError(ImageWorksError, RuntimeError):
    """Anything a backend said, or failed to say.

    Attributes:
        backend: Backend name (``vllm``, ``lmdeploy`` ...), when known.
        url: The URL tried, with credentials and query removed.
        status: HTTP status, when there was one.
    """

    def __init__(
        self,
        message: str,
        *,
        backend: str | None = None,
        url: str | None = None,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.backend = backend
        self.url = redact_url(url) if url else None
        self.status = status
        super().__init__(message, hint=hint)


class BackendUnavailable(BackendError, ConnectionError):
    """Connection refused / reset, DNS failure, a bad gateway, or the server is not ready yet."""

    retryable = True
    outage = True


class BackendDown(BackendUnavailable):
    """The backend stayed unavailable past ``wait_for_backend``, or cannot serve at all.

    Final: neither retried nor waited for again by the request that got it.

    Attributes:
        down_for: Seconds the backend had been unavailable, when known.
    """

    retryable = False
    outage = False

    def __init__(
        self,
        message: str,
        *,
        down_for: float | None = None,
        backend: str | None = None,
        url: str | None = None,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.down_for = down_for
        super().__init__(message, backend=backend, url=url, status=status, hint=hint)


class BackendTimeout(BackendError, TimeoutError):
    """Connect, read or stream-idle timeout."""

    retryable = True


class BackendOverloaded(BackendError):
    """The server said it is busy (429 / 503 / in-band busy).

    Attributes:
        retry_after: Seconds the server asked us to wait, or ``None``.
    """

    retryable = True
    outage = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        backend: str | None = None,
        url: str | None = None,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, backend=backend, url=url, status=status, hint=hint)


class BackendRejected(BackendError, ValueError):
    """The server refused this request (4xx): bad request, unknown model, too many images."""


class BackendProtocolError(BackendError):
    """Malformed body or stream, or an error reported inside an HTTP 200 stream.

    ``retryable`` (given when it is raised) says whether the same request may
    succeed on a new try: a cut stream may, a model that raised on this input not.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = False,
        backend: str | None = None,
        url: str | None = None,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.retryable = retryable
        super().__init__(message, backend=backend, url=url, status=status, hint=hint)


class BackendServerError(BackendProtocolError):
    """The server failed on this request: HTTP 5xx other than 502 / 503 / 504 (retryable)."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        backend: str | None = None,
        url: str | None = None,
        status: int | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, retryable=retryable, backend=backend, url=url, status=status, hint=hint)


class OutputError(ImageWorksError):
    """An output (sidecar, metadata in an image, results file) could not be written.

    Attributes:
        path: The file that was being written or merged into, when known.
    """

    def __init__(self, message: str, *, path: str | None = None, hint: str | None = None) -> None:
        self.path = path
        super().__init__(message, hint=hint)


class InputError(ImageWorksError, ValueError):
    """An input (usually an image) could not be used.

    Attributes:
        source: The path or identity of the input.
    """

    def __init__(self, message: str, *, source: str | None = None, hint: str | None = None) -> None:
        self.source = source
        super().__init__(message, hint=hint)
