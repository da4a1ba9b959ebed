"""Finding image files: expand file, folder and glob arguments into image paths, lazily.

``iter_image_paths`` walks one directory at a time with ``os.scandir`` (each
directory's entries are sorted, so the order is deterministic) and yields as it
goes, so the first path comes out before a large tree has been scanned.
Problems are yielded in line as :class:`~imageworks_core.errors.InputError`
values, so one bad argument does not stop the others.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

from imageworks_core.errors import InputError
from imageworks_core.image_input import link_error, printable_path
from imageworks_core.images import SUPPORTED_SUFFIXES

__all__ = ["iter_image_paths"]

_SUFFIX_LIST = ", ".join(sorted(SUPPORTED_SUFFIXES))


def iter_image_paths(
    specs: Iterable[str | os.PathLike[str]], *, recursive: bool = True
) -> Iterator[Path | InputError]:
    """Yield a :class:`~pathlib.Path` per candidate image named by *specs*, or an error per problem.

    Args:
        specs: Files, folders and glob patterns (``*``, ``?``, ``[...]``, ``**``).
            A folder is walked (recursively unless *recursive* is false), skipping
            hidden files and folders (``.git``, ``._x.jpg``) and not following
            symlinked folders.  A name that exists is never taken as a pattern.
        recursive: Descend into sub-folders, and let ``**`` span folders.

    Yields:
        A path (by suffix, see ``SUPPORTED_SUFFIXES``; the file is not opened),
        each once even when named by several specs, or an :class:`InputError`
        (its ``source`` is the spec or path) for a spec that matches nothing, an
        explicit file with an unsupported suffix, a broken symlink, or a folder
        that cannot be read.  Names that are not valid UTF-8 work
        (``os.fsdecode``'s surrogate escapes).
    """
    seen: set[str] = set()
    for spec in specs:
        for item in _expand(os.fsdecode(os.fspath(spec)), recursive):
            if isinstance(item, Path):
                key = os.path.normcase(os.path.abspath(item))
                if key in seen:
                    continue
                seen.add(key)
            yield item


def _expand(spec: str, recursive: bool) -> Iterator[Path | InputError]:
    found: int
    if os.path.isdir(spec):
        found = yield from _counted(_walk(spec, recursive))
        what = "folder contains no images"
    elif os.path.lexists(spec):
        yield _explicit_file(spec)
        return
    elif glob.has_magic(spec):
        found = yield from _counted(_glob_images(spec, recursive))
        what = "pattern matches no images"
    else:
        yield InputError(f"{printable_path(spec)}: no such file or folder", source=spec)
        return
    if not found:
        hint = f"image files end in {_SUFFIX_LIST}"
        if not recursive:
            hint += "; sub-folders were not searched"
        yield InputError(f"{printable_path(spec)}: {what}", source=spec, hint=hint)


def _counted(items: Iterator[Path | InputError]) -> Generator[Path | InputError, None, int]:
    """Yield *items*; the generator's return value is how many there were (paths and errors)."""
    count = 0
    for item in items:
        count += 1
        yield item
    return count


def _explicit_file(spec: str) -> Path | InputError:
    if not os.path.exists(spec):
        return _broken_link(spec)
    if os.path.splitext(spec)[1].lower() not in SUPPORTED_SUFFIXES:
        return InputError(
            f"{printable_path(spec)}: not an image file name (supported: {_SUFFIX_LIST})",
            source=spec,
            hint="rename it if it really is a JPEG, PNG, WebP or TIFF image",
        )
    return Path(spec)


def _broken_link(path: str) -> InputError:
    found = link_error(path)
    if found is not None:
        return found
    return InputError(  # a target that came back since the listing, or went in between
        f"{printable_path(path)}: broken symbolic link (target {printable_path(os.path.realpath(path))})",
        source=path,
        hint="fix or remove the link",
    )


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in SUPPORTED_SUFFIXES


def _walk(top: str, recursive: bool) -> Iterator[Path | InputError]:
    """Depth-first walk of *top*, entries in name order, yielding before descending further.

    Iterative (a stack of listings, not recursion): a tree thousands of folders
    deep is walked like any other, and a folder that cannot be listed (too long
    a path, no permission) is one error, the rest of the walk goes on.
    """
    listing = _list_dir(top)
    if isinstance(listing, InputError):
        yield listing
        return
    stack: list[tuple[str, Iterator[tuple[str, bool]]]] = [(top, iter(listing))]
    while stack:
        folder, entries = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        name, is_dir = entry
        path = os.path.join(folder, name)
        if is_dir:
            if recursive:
                sub = _list_dir(path)
                if isinstance(sub, InputError):
                    yield sub
                else:
                    stack.append((path, iter(sub)))
        elif os.path.exists(path):
            yield Path(path)
        else:
            yield _broken_link(path)


def _list_dir(top: str) -> list[tuple[str, bool]] | InputError:
    """Sorted (name, is_dir) of the visible image files and sub-folders of *top* (others not kept)."""
    entries: list[tuple[str, bool]] = []
    try:
        with os.scandir(top) as scan:
            for entry in scan:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    entries.append((entry.name, True))
                elif _is_image_name(entry.name):
                    entries.append((entry.name, False))
    except OSError as exc:
        return InputError(
            f"{printable_path(top)}: cannot read folder: {exc.strerror or exc}",
            source=top,
            hint="check the folder's permissions",
        )
    entries.sort()
    return entries


def _glob_images(pattern: str, recursive: bool) -> Iterator[Path | InputError]:
    """Images matching *pattern*; matched folders are walked like folder arguments."""
    anchor, parts = _split_pattern(pattern)
    for match in _glob(anchor, parts, recursive):
        if os.path.isdir(match):
            yield from _walk(match, recursive)
        elif _is_image_name(os.path.basename(match)):
            yield Path(match) if os.path.exists(match) else _broken_link(match)


def _split_pattern(pattern: str) -> tuple[str, list[str]]:
    drive, rest = os.path.splitdrive(pattern)
    parts = [part for part in rest.replace(os.altsep or os.sep, os.sep).split(os.sep) if part]
    anchor = drive + os.sep if rest.startswith((os.sep, os.altsep or os.sep)) else drive
    return anchor, parts


def _glob(base: str, parts: list[str], recursive: bool) -> Iterator[str]:
    """Lazy, name-ordered glob: '*' and '?' skip hidden names, '**' spans folders."""
    if not parts:
        if base:
            yield base
        return
    head, rest = parts[0], parts[1:]
    if head == "**" and recursive:  # every folder under base, depth first, without recursion
        stack = [iter([base])]
        while stack:
            folder = next(stack[-1], None)
            if folder is None:
                stack.pop()
                continue
            yield from _glob(folder, rest, recursive)
            subs = _matching(folder, "*", dirs_only=True, follow=False)  # no symlink loops
            stack.append(iter([os.path.join(folder, name) for name in subs]))
    elif glob.has_magic(head):
        for name in _matching(base, head, dirs_only=bool(rest), follow=True):
            yield from _glob(os.path.join(base, name), rest, recursive)
    else:
        path = os.path.join(base, head)
        if os.path.lexists(path):
            yield from _glob(path, rest, recursive)


def _matching(base: str, pattern: str, *, dirs_only: bool, follow: bool) -> list[str]:
    """Sorted names in *base* matching *pattern* (hidden ones only if the pattern starts with '.')."""
    pattern = "*" if pattern == "**" else pattern
    names: list[str] = []
    try:
        with os.scandir(base or os.curdir) as scan:
            for entry in scan:
                if entry.name.startswith(".") and not pattern.startswith("."):
                    continue
                if dirs_only and not entry.is_dir(follow_symlinks=follow):
                    continue
                if fnmatch.fnmatch(entry.name, pattern):
                    names.append(entry.name)
    except OSError:
        return []
    names.sort()
    return names
