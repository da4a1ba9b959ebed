"""Tests of imageworks_core.discovery.iter_image_paths."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import PERMISSIONS_HOLD, python_as_user
from conftest import require

from imageworks_core import discovery
from imageworks_core.discovery import iter_image_paths
from imageworks_core.errors import InputError

needs_symlinks = pytest.mark.skipif(sys.platform == "win32", reason="needs symlinks")
needs_bytes_names = pytest.mark.skipif(
    sys.platform in ("win32", "darwin"), reason="needs a byte-oriented file system"
)


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded by discovery")


def run(specs: list[str | os.PathLike[str]], **kwargs: bool) -> tuple[list[str], list[InputError]]:
    paths: list[str] = []
    errors: list[InputError] = []
    for item in iter_image_paths(specs, **kwargs):
        if isinstance(item, InputError):
            errors.append(item)
        else:
            assert isinstance(item, Path)
            paths.append(item.as_posix())
    return paths, errors


@pytest.fixture
def tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    touch(
        tmp_path,
        "photos/b.jpg",
        "photos/a.PNG",
        "photos/notes.txt",
        "photos/.hidden.jpg",
        "photos/._a.jpg",
        "photos/.git/objects/c.jpg",
        "photos/2024/z.webp",
        "photos/2024/deep/y.tiff",
        "photos/c.jpeg",
        "photos/d.tif",
        "other/x.jpg",
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_folder_is_walked_recursively_in_name_order(tree: Path) -> None:
    paths, errors = run(["photos"])
    assert errors == []
    assert paths == [
        "photos/2024/deep/y.tiff",
        "photos/2024/z.webp",
        "photos/a.PNG",
        "photos/b.jpg",
        "photos/c.jpeg",
        "photos/d.tif",
    ]


def test_not_recursive(tree: Path) -> None:
    paths, _ = run(["photos"], recursive=False)
    assert paths == ["photos/a.PNG", "photos/b.jpg", "photos/c.jpeg", "photos/d.tif"]


def test_explicit_files_keep_their_order_and_duplicates_go(tree: Path) -> None:
    paths, errors = run(["other/x.jpg", "photos/b.jpg", "./other/x.jpg", str(tree / "photos/b.jpg"), "other"])
    assert errors == []
    assert paths == ["other/x.jpg", "photos/b.jpg"]


def test_explicit_file_with_unsupported_suffix(tree: Path) -> None:
    paths, errors = run(["photos/notes.txt", "photos/b.jpg"])
    assert paths == ["photos/b.jpg"]
    assert len(errors) == 1 and errors[0].source == "photos/notes.txt"
    assert "not an image file name" in str(errors[0]) and ".jpg" in str(errors[0])


def test_explicit_hidden_file_is_taken(tree: Path) -> None:
    assert run(["photos/.hidden.jpg"])[0] == ["photos/.hidden.jpg"]


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("photos/*.jpg", ["photos/b.jpg"]),
        ("photos/[ab].*", ["photos/a.PNG", "photos/b.jpg"]),
        ("photos/**/*.tiff", ["photos/2024/deep/y.tiff"]),
        ("**/*.jpg", ["other/x.jpg", "photos/b.jpg"]),
        ("photos/20*", ["photos/2024/deep/y.tiff", "photos/2024/z.webp"]),
        ("*/?.jpg", ["other/x.jpg", "photos/b.jpg"]),
    ],
)
def test_globs(tree: Path, pattern: str, expected: list[str]) -> None:
    paths, errors = run([pattern])
    assert errors == []
    assert paths == expected


def test_absolute_glob(tree: Path) -> None:
    paths, errors = run([str(tree / "photos" / "**" / "*.webp")])
    assert errors == []
    assert paths == [(tree / "photos/2024/z.webp").as_posix()]


def test_double_star_without_recursion_is_one_level(tree: Path) -> None:
    paths, _ = run(["photos/**/*.webp"], recursive=False)
    assert paths == ["photos/2024/z.webp"]
    paths, errors = run(["**/y.tiff"], recursive=False)  # '**' acts as '*': photos/deep is too deep
    assert paths == []
    assert len(errors) == 1 and "sub-folders were not searched" in str(errors[0])


def test_spec_matching_nothing(tree: Path) -> None:
    paths, errors = run(["photos/*.gif", "missing/", "empty"])
    assert paths == []
    assert [e.source for e in errors] == ["photos/*.gif", "missing/", "empty"]
    assert "matches no images" in str(errors[0])
    assert "no such file or folder" in str(errors[1])


def test_empty_folder(tree: Path) -> None:
    (tree / "blank").mkdir()
    touch(tree, "blank/readme.txt")
    paths, errors = run(["blank"])
    assert paths == []
    assert len(errors) == 1 and "folder contains no images" in str(errors[0])
    assert errors[0].hint is not None and ".jpg" in errors[0].hint


def test_existing_name_with_glob_characters_is_literal(tree: Path) -> None:
    touch(tree, "odd/[1].jpg", "odd/1.jpg")
    assert run(["odd/[1].jpg"])[0] == ["odd/[1].jpg"]


def test_spaces_in_names(tree: Path) -> None:
    touch(tree, "my photos/summer day.jpg")
    assert run(["my photos"])[0] == ["my photos/summer day.jpg"]
    assert run(["my photos/summer *.jpg"])[0] == ["my photos/summer day.jpg"]


@needs_bytes_names
def test_non_utf8_names(tmp_path: Path) -> None:
    root = os.fsencode(tmp_path)
    os.mkdir(root + b"/dossier \xe9t\xe9")
    for name in (b"caf\xe9.jpg", b"\xff\xfe.png"):
        with open(root + b"/dossier \xe9t\xe9/" + name, "wb") as fh:
            fh.write(b"x")
    found = [item for item in iter_image_paths([os.fsdecode(root)]) if isinstance(item, Path)]
    assert [os.fsencode(p.name) for p in found] == [b"caf\xe9.jpg", b"\xff\xfe.png"]
    assert all(os.path.exists(p) for p in found)
    pattern = os.fsdecode(root + b"/*/caf\xe9.*")
    assert [os.fsencode(p) for p in iter_image_paths([pattern]) if isinstance(p, Path)] == [
        root + b"/dossier \xe9t\xe9/caf\xe9.jpg"
    ]
    error = next(iter_image_paths([os.fsdecode(root + b"/gone\xe9.jpg")]))
    assert isinstance(error, InputError)
    assert "gone\\xe9.jpg" in str(error)
    str(error).encode("utf-8")


@needs_symlinks
def test_broken_symlinks(tree: Path) -> None:
    (tree / "photos" / "dead.jpg").symlink_to(tree / "nowhere.jpg")
    (tree / "photos" / "dead.txt").symlink_to(tree / "nowhere.txt")
    paths, errors = run(["photos"], recursive=False)
    assert "photos/dead.jpg" not in paths
    assert [e.source for e in errors] == ["photos/dead.jpg"]
    assert "broken symbolic link" in str(errors[0])
    _, errors = run(["photos/dead.jpg"])
    assert len(errors) == 1 and "broken symbolic link" in str(errors[0])


@needs_symlinks
def test_symlinked_folder_loop_is_not_followed(tree: Path) -> None:
    os.symlink(tree / "photos", tree / "photos" / "2024" / "loop")
    paths, errors = run(["photos"])
    assert errors == []
    assert len(paths) == 6
    assert len(run(["photos/**/*.jpg"])[0]) == 1


def test_unreadable_folder(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_scandir = os.scandir

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        if os.path.basename(path) == "2024":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    paths, errors = run(["photos"])
    assert paths == ["photos/a.PNG", "photos/b.jpg", "photos/c.jpeg", "photos/d.tif"]
    assert [e.source for e in errors] == [os.path.join("photos", "2024")]
    assert "cannot read folder" in str(errors[0]) and "Permission denied" in str(errors[0])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unreadable_folder_for_real(tree: Path) -> None:
    """In a fresh interpreter where permissions hold (root drops its override through setpriv)."""
    require(PERMISSIONS_HOLD, "running as root without setpriv: root can read any folder")
    locked = tree / "photos" / "2024"
    locked.chmod(0)
    code = (
        "import json; from imageworks_core.discovery import iter_image_paths\n"
        "items = list(iter_image_paths(['photos']))\n"
        "print(json.dumps([[type(i).__name__, str(getattr(i, 'source', i))] for i in items]))"
    )
    try:
        proc = python_as_user(code, tree)
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 0, proc.stderr
    items = json.loads(proc.stdout)
    assert [s for kind, s in items if kind == "InputError"] == [os.path.join("photos", "2024")]
    assert os.path.join("photos", "b.jpg") in [s for kind, s in items if kind != "InputError"]


def test_unreadable_top_folder_is_one_error(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    paths, errors = run(["photos"])
    assert paths == []
    assert len(errors) == 1 and "cannot read folder" in str(errors[0])


def test_is_lazy(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scanned: list[str] = []
    real_scandir = os.scandir

    def scandir(path: str) -> Iterator[os.DirEntry[str]]:
        scanned.append(os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(discovery.os, "scandir", scandir)
    touch(tree, "lazy/a/1.jpg", "lazy/b/2.jpg", "lazy/c/3.jpg")
    items = iter_image_paths(["lazy"])
    assert scanned == []  # nothing happens before the first next()
    assert next(items) == Path("lazy/a/1.jpg")
    assert scanned == ["lazy", os.path.join("lazy", "a")]  # lazy/b and lazy/c not listed yet
    touch(tree, "lazy/c/0.jpg")  # appears because lazy/c is only listed when reached
    assert [p.as_posix() for p in items if isinstance(p, Path)] == [
        "lazy/b/2.jpg",
        "lazy/c/0.jpg",
        "lazy/c/3.jpg",
    ]


def test_large_folder_streams(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for index in range(1000):
        (folder / f"{index:05d}.jpg").touch()
        (folder / f"{index:05d}.xmp").touch()
    items = iter_image_paths([folder])
    assert next(items) == folder / "00000.jpg"
    assert sum(1 for _ in items) == 999


def test_accepts_path_objects_and_generators(tree: Path) -> None:
    specs = (p for p in [Path("photos/b.jpg"), Path("other")])
    assert run(list(specs)) == (["photos/b.jpg", "other/x.jpg"], [])
