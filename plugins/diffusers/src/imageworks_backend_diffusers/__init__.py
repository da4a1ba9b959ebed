"""ImageWorks backend ``diffusers``: text-to-image with a diffusers pipeline inside this process.

The pipeline (a local folder or a Hub id, ``backends.diffusers.model``) loads on
the first request, runs one generation at a time in a worker thread, and is
unloaded when the client closes.  Nothing heavy is imported until then.
"""

from __future__ import annotations

from ._backend import DiffusersBackend, DiffusersSettings

__all__ = ["DiffusersBackend", "DiffusersSettings", "plugin"]

#: The entry-point target.
plugin = DiffusersBackend()
