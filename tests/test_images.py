"""Tests of imageworks_core.images: resizing, orientation, modes, encoding and every bad input."""

from __future__ import annotations

import base64
import io
import math
import os
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from cli_helpers import PERMISSIONS_HOLD, python_as_user
from conftest import require
from PIL import Image, ImageCms, JpegImagePlugin

from imageworks_core.errors import InputError
from imageworks_core.images import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_SUFFIXES,
    PreparedImage,
    aprepare_image,
    prepare_image,
)

ORIENTATION = 0x0112


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    return request.param


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth gradient with a little noise: JPEG-friendly and not flat."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 200, width, dtype=np.float32)[None, :]
    y = np.linspace(0, 200, height, dtype=np.float32)[:, None]
    base = np.empty((height, width, 3), np.float32)
    base[..., 0], base[..., 1], base[..., 2] = x, y, (x + y) * 0.6
    base += rng.standard_normal((height, width, 1), dtype=np.float32) * 3
    return Image.fromarray(base.clip(0, 255).astype(np.uint8))


def save(im: Image.Image, path: Path, fmt: str | None = None, **params: object) -> Path:
    im.save(path, fmt, **params)
    return path


def decode(prepared: PreparedImage) -> Image.Image:
    im = Image.open(io.BytesIO(prepared.data))
    im.load()
    return im


def exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = value
    return exif.tobytes()


def psnr(a: Image.Image, b: Image.Image) -> float:
    diff = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return 10 * math.log10(255**2 / max(float((diff**2).mean()), 1e-12))


def expect_input_error(source: object, *words: str) -> InputError:
    with pytest.raises(InputError) as info:
        prepare_image(source)  # type: ignore[arg-type]
    message = str(info.value)
    for word in words:
        assert word.lower() in message.lower(), message
    message.encode("utf-8")  # printable even for undecodable file names
    return info.value


# --- public constants and sizes ----------------------------------------------------------------


def test_constants() -> None:
    assert DEFAULT_MAX_PIXELS == 1_000_000
    assert {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff"} == set(SUPPORTED_SUFFIXES)


@pytest.mark.parametrize(
    ("size", "fmt", "max_pixels"),
    [
        ((4000, 3000), "JPEG", DEFAULT_MAX_PIXELS),
        ((3000, 1000), "PNG", DEFAULT_MAX_PIXELS),
        ((1000, 3000), "WEBP", 250_000),
        ((1300, 1000), "TIFF", DEFAULT_MAX_PIXELS),
        ((5000, 7), "PNG", 10_000),
    ],
)
def test_resize_respects_budget_and_aspect(
    tmp_path: Path, size: tuple[int, int], fmt: str, max_pixels: int
) -> None:
    path = save(photo(*size), tmp_path / f"in.{fmt.lower()}", fmt)
    out = prepare_image(path, max_pixels=max_pixels)
    assert out.width * out.height <= max_pixels
    assert out.width * out.height >= 0.98 * max_pixels or min(out.width, out.height) < 50
    assert abs(out.width * size[1] - out.height * size[0]) <= max(size)  # aspect within one pixel
    assert (out.original_width, out.original_height) == size
    assert decode(out).size == (out.width, out.height)
    assert out.mime == "image/jpeg"


@pytest.mark.parametrize("max_pixels", [DEFAULT_MAX_PIXELS, 0, -1, None])
def test_never_upscales_and_zero_budget_keeps_size(tmp_path: Path, max_pixels: int | None) -> None:
    small = prepare_image(save(photo(300, 200), tmp_path / "small.png"), max_pixels=max_pixels)
    assert (small.width, small.height) == (300, 200)
    if not max_pixels or max_pixels <= 0:
        big = prepare_image(save(photo(1500, 1000), tmp_path / "big.png"), max_pixels=max_pixels)
        assert (big.width, big.height) == (1500, 1000)


def test_bytes_source(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    photo(800, 600).save(buffer, "PNG")
    out = prepare_image(buffer.getvalue(), max_pixels=120_000)
    assert out.source == "<bytes>"
    assert out.width * out.height <= 120_000


def test_quality_is_validated_and_used(tmp_path: Path) -> None:
    path = save(photo(600, 400), tmp_path / "a.png")
    assert len(prepare_image(path, quality=30).data) < len(prepare_image(path, quality=95).data)
    with pytest.raises(ValueError, match="quality"):
        prepare_image(path, quality=0)


# --- orientation and draft -----------------------------------------------------------------------


def halves(width: int, height: int) -> Image.Image:
    """Left half red, right half blue."""
    im = Image.new("RGB", (width, height), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, width // 2, height))
    return im


def rgb_at(im: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    pixel = im.getpixel(xy)
    assert isinstance(pixel, tuple)
    return pixel


def grey_at(im: Image.Image, xy: tuple[int, int]) -> int:
    pixel = im.getpixel(xy)
    assert isinstance(pixel, int)
    return pixel


def is_close(pixel: tuple[int, ...], colour: tuple[int, int, int]) -> bool:
    return all(abs(a - b) < 40 for a, b in zip(pixel, colour, strict=False))


@pytest.mark.parametrize(("size", "max_pixels"), [((400, 200), DEFAULT_MAX_PIXELS), ((4000, 2000), 200_000)])
def test_exif_orientation_6_is_applied(tmp_path: Path, size: tuple[int, int], max_pixels: int) -> None:
    # Orientation 6: displayed rotated 90 degrees clockwise, so the stored left half ends up on top.
    path = save(halves(*size), tmp_path / "rotated.jpg", exif=exif_with_orientation(6), quality=95)
    out = prepare_image(path, max_pixels=max_pixels)
    im = decode(out).convert("RGB")
    assert out.height > out.width
    assert (out.original_width, out.original_height) == (size[1], size[0])
    assert is_close(rgb_at(im, (out.width // 2, out.height // 8)), (255, 0, 0))
    assert is_close(rgb_at(im, (out.width // 2, out.height * 7 // 8)), (0, 0, 255))
    assert ORIENTATION not in im.getexif()  # nothing left for a server to rotate twice


@pytest.mark.parametrize(("orientation", "top_left"), [(3, (0, 0, 255)), (8, (0, 0, 255)), (2, (0, 0, 255))])
def test_other_orientations(tmp_path: Path, orientation: int, top_left: tuple[int, int, int]) -> None:
    path = save(halves(400, 200), tmp_path / "o.jpg", exif=exif_with_orientation(orientation), quality=95)
    im = decode(prepare_image(path)).convert("RGB")
    assert is_close(rgb_at(im, (5, 5)), top_left)


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_orientation_in_other_formats(fmt: str) -> None:
    buffer = io.BytesIO()
    params: dict[str, Any] = {"exif": exif_with_orientation(6)}
    if fmt == "TIFF":
        params = {"tiffinfo": {ORIENTATION: 6}}
    halves(400, 200).save(buffer, fmt, **params)
    out = prepare_image(buffer.getvalue())
    assert (out.width, out.height) == (200, 400)
    assert is_close(rgb_at(decode(out).convert("RGB"), (100, 20)), (255, 0, 0))


def test_big_jpeg_is_decoded_at_reduced_scale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drafted: list[tuple[int, int]] = []
    original_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> object:
        result = original_draft(self, mode, size)
        drafted.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    source = photo(4000, 3000)
    path = save(source, tmp_path / "big.jpg", quality=92)
    out = prepare_image(path, max_pixels=200_000)
    assert drafted == [(1000, 750)]  # libjpeg decoded at 1/4 scale: the smallest still >= 516x387
    assert (out.width, out.height) == (516, 387)
    reference = Image.open(path).convert("RGB").resize((516, 387), Image.Resampling.LANCZOS)
    assert psnr(decode(out).convert("RGB"), reference) > 35


# --- modes and transparency ----------------------------------------------------------------------


def test_png_with_alpha_stays_png(tmp_path: Path) -> None:
    im = photo(600, 400).convert("RGBA")
    im.putalpha(Image.linear_gradient("L").resize((600, 400)))
    out = prepare_image(save(im, tmp_path / "alpha.png"), max_pixels=60_000)
    assert out.mime == "image/png"
    assert out.data_url().startswith("data:image/png;base64,")
    assert decode(out).mode == "RGBA"


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA"])
def test_png_without_real_alpha_becomes_jpeg(tmp_path: Path, mode: str) -> None:
    out = prepare_image(save(photo(300, 200).convert(mode), tmp_path / "opaque.png"))
    assert out.mime == "image/jpeg"
    assert decode(out).mode == ("L" if mode.startswith("L") else "RGB")


def test_grey_alpha_and_palette_transparency_stay_png(tmp_path: Path) -> None:
    la = Image.new("LA", (50, 50), (128, 0))
    la.paste((200, 255), (10, 10, 40, 40))
    assert prepare_image(save(la, tmp_path / "la.png")).mime == "image/png"
    palette = Image.new("P", (50, 50), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.paste(1, (10, 10, 40, 40))
    out = prepare_image(save(palette, tmp_path / "p.png", transparency=0))
    assert out.mime == "image/png"
    assert rgb_at(decode(out).convert("RGBA"), (0, 0))[3] == 0


def test_palette_without_transparency_becomes_rgb_jpeg(tmp_path: Path) -> None:
    palette = photo(200, 100).quantize(64)
    out = prepare_image(save(palette, tmp_path / "p.png"))
    assert out.mime == "image/jpeg"
    assert decode(out).mode == "RGB"


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    cmyk = Image.new("CMYK", (400, 300), (0, 255, 255, 0))  # pure red ink
    out = prepare_image(save(cmyk, tmp_path / "cmyk.jpg", quality=95))
    im = decode(out)
    assert im.mode == "RGB"
    assert is_close(rgb_at(im, (200, 150)), (255, 0, 0))


def test_sixteen_bit_grey_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (64, 1))
    path = save(Image.fromarray(ramp), tmp_path / "grey16.png")
    with Image.open(path) as im:
        assert im.mode.startswith("I")
    im = decode(prepare_image(path))
    assert im.mode == "L"
    assert abs(grey_at(im, (128, 32)) - 128) <= 3  # mid-grey, not clipped to white
    assert grey_at(im, (0, 32)) <= 3
    assert grey_at(im, (255, 32)) >= 252


def test_sixteen_bit_rgb_png(tmp_path: Path) -> None:
    # 16-bit RGB PNG written by hand (Pillow cannot write one): IHDR bit depth 16, colour type 2.
    width, height = 32, 16
    row = b"".join(struct.pack(">HHH", 65535, 32768, 0) for _ in range(width))
    raw = b"".join(b"\x00" + row for _ in range(height))
    data = _png_bytes(width, height, 16, 2, zlib.compress(raw))
    im = decode(prepare_image(save_bytes(tmp_path / "rgb16.png", data)))
    assert is_close(rgb_at(im, (10, 10)), (255, 128, 0))


@pytest.mark.parametrize("mode", ["1", "I", "F", "YCbCr", "I;16"])
def test_other_modes_become_jpeg(tmp_path: Path, mode: str) -> None:
    im = Image.new("L", (64, 64), 100) if mode != "YCbCr" else photo(64, 64)
    if mode == "F":
        im = Image.fromarray(np.full((64, 64), 0.5, np.float32))
    elif mode == "I;16":
        im = Image.fromarray(np.full((64, 64), 40000, np.uint16))
    else:
        im = im.convert(mode)
    out = prepare_image(save(im, tmp_path / "m.tif", "TIFF"))
    assert out.mime == "image/jpeg"
    if mode in ("F", "I;16"):
        assert abs(grey_at(decode(out), (32, 32)) - (128 if mode == "F" else 156)) <= 2


# --- pass-through and from_bytes -------------------------------------------------------------------


def test_small_baseline_jpeg_passes_through_unchanged(tmp_path: Path) -> None:
    path = save(photo(640, 480), tmp_path / "small.jpg", quality=85)
    out = prepare_image(path)
    assert out.data == path.read_bytes()
    assert (out.width, out.height, out.mime) == (640, 480, "image/jpeg")


@pytest.mark.parametrize(
    "params", [{"progressive": True}, {"exif": exif_with_orientation(1)}], ids=["progressive", "exif"]
)
def test_jpeg_needing_work_is_reencoded(tmp_path: Path, params: dict[str, Any]) -> None:
    path = save(photo(640, 480), tmp_path / "small.jpg", quality=85, **params)
    out = prepare_image(path)
    assert out.data != path.read_bytes()
    im = decode(out)
    assert "exif" not in im.info
    assert "progressive" not in im.info


def test_srgb_profile_passes_through_and_bad_profile_is_harmless(tmp_path: Path) -> None:
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    path = save(photo(320, 240), tmp_path / "srgb.jpg", quality=85, icc_profile=srgb)
    assert prepare_image(path).data == path.read_bytes()
    broken = save(photo(320, 240), tmp_path / "broken.jpg", quality=85, icc_profile=b"not a profile" * 20)
    out = prepare_image(broken)
    assert out.data != broken.read_bytes()
    assert decode(out).size == (320, 240)


def test_data_url(tmp_path: Path) -> None:
    out = prepare_image(save(photo(64, 48), tmp_path / "a.png"))
    prefix, payload = out.data_url().split(",", 1)
    assert prefix == "data:image/jpeg;base64"
    assert base64.b64decode(payload) == out.data
    assert out.b64() == payload


def test_from_bytes_wraps_without_reencoding(tmp_path: Path) -> None:
    data = save(photo(320, 200), tmp_path / "a.jpg", quality=70).read_bytes()
    wrapped = PreparedImage.from_bytes(data)
    assert wrapped.data is data or wrapped.data == data
    assert (wrapped.mime, wrapped.width, wrapped.height, wrapped.source) == (
        "image/jpeg",
        320,
        200,
        "<bytes>",
    )
    png = io.BytesIO()
    photo(10, 10).save(png, "PNG")
    assert PreparedImage.from_bytes(png.getvalue(), source="x.png").mime == "image/png"
    assert PreparedImage.from_bytes(data, mime="image/jpeg").mime == "image/jpeg"
    assert "bytes" in repr(wrapped) and len(repr(wrapped)) < 300
    with pytest.raises(InputError, match="text"):
        PreparedImage.from_bytes(b"hello world")
    with pytest.raises(InputError, match="empty"):
        PreparedImage.from_bytes(b"")


def test_prepared_image_is_frozen() -> None:
    image = PreparedImage(b"x", "image/jpeg", 1, 1, 1, 1, "<bytes>")
    with pytest.raises(AttributeError):
        image.width = 2  # type: ignore[misc]


# --- names that must work ----------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="needs a byte-oriented file system")
def test_non_utf8_and_spaced_names_work(tmp_path: Path) -> None:
    raw = os.fsencode(tmp_path) + b"/caf\xe9 au lait \xff.png"
    with open(raw, "wb") as fh:
        photo(100, 80).save(fh, "PNG")
    name = os.fsdecode(raw)
    out = prepare_image(name)
    assert (out.width, out.height) == (100, 80)
    assert out.source == name
    assert prepare_image(Path(name)).data == out.data
    error = expect_input_error(name + ".missing", "no such file", "caf\\xe9 au lait \\xff")
    assert error.source == name + ".missing"


# --- bad inputs: one InputError each, naming the file and the cause ----------------------------------


def save_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _png_bytes(width: int, height: int, depth: int, colour: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def jpeg_bytes(size: tuple[int, int] = (300, 200)) -> bytes:
    buffer = io.BytesIO()
    photo(*size).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_zero_byte_file(tmp_path: Path) -> None:
    path = save_bytes(tmp_path / "empty.jpg", b"")
    assert expect_input_error(path, "empty.jpg", "empty").source == str(path)
    expect_input_error(b"", "empty")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_jpeg_is_an_error(tmp_path: Path, keep: float) -> None:
    data = jpeg_bytes((1200, 900))
    path = save_bytes(tmp_path / "cut.jpg", data[: int(len(data) * keep)])
    expect_input_error(path, "cut.jpg", "truncated")


def test_jpeg_missing_only_its_end_marker_is_an_error(tmp_path: Path) -> None:
    data = jpeg_bytes()  # small enough for the pass-through path, which must not hide it
    expect_input_error(save_bytes(tmp_path / "noeoi.jpg", data[:-2]), "truncated")


def test_truncated_png_is_an_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    photo(400, 300).save(buffer, "PNG")
    data = buffer.getvalue()
    expect_input_error(save_bytes(tmp_path / "cut.png", data[: len(data) // 2]), "cut.png", "truncated")


def test_damaged_header(tmp_path: Path) -> None:
    expect_input_error(save_bytes(tmp_path / "head.jpg", jpeg_bytes()[:40]), "head.jpg", "truncated")
    damaged = b"\xff\xd8\xff\xe0" + b"\x00" * 60
    expect_input_error(save_bytes(tmp_path / "bad.jpg", damaged), "bad.jpg", "JPEG", "header")


def test_text_file_named_jpg(tmp_path: Path) -> None:
    path = save_bytes(tmp_path / "notes.jpg", "Shopping list: milk, eggs, café\n".encode())
    expect_input_error(path, "notes.jpg", "text")


@pytest.mark.parametrize(("fmt", "name"), [("GIF", "anim.jpg"), ("BMP", "renamed.png"), ("BMP", "real.bmp")])
def test_unsupported_formats_name_the_supported_ones(tmp_path: Path, fmt: str, name: str) -> None:
    path = save(photo(40, 30), tmp_path / name, fmt)
    error = expect_input_error(path, name, fmt, "unsupported", "JPEG, PNG, WebP and TIFF")
    assert error.hint


def test_decompression_bomb(tmp_path: Path) -> None:
    # A 100-byte PNG whose header claims 30000 x 30000 pixels.
    data = _png_bytes(30000, 30000, 8, 2, zlib.compress(b"\x00" * 100))
    error = expect_input_error(save_bytes(tmp_path / "bomb.png", data), "bomb.png", "decompression bomb")
    assert error.hint is not None and "MAX_IMAGE_PIXELS" in error.hint
    assert Image.MAX_IMAGE_PIXELS is not None  # the guard stays on
    with pytest.raises(InputError, match="decompression bomb"):
        PreparedImage.from_bytes(data)


def test_missing_file(tmp_path: Path) -> None:
    expect_input_error(tmp_path / "nope.jpg", "nope.jpg", "no such file")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    expect_input_error(tmp_path / "folder.jpg", "folder.jpg", "directory")


@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs symlinks")
def test_broken_symlink(tmp_path: Path) -> None:
    link = tmp_path / "link.jpg"
    link.symlink_to(tmp_path / "gone.jpg")
    expect_input_error(link, "link.jpg", "broken symbolic link", "gone.jpg")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    expect_input_error(fifo, "pipe.jpg", "not a regular file")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    """In a fresh interpreter where permissions hold (root drops its override through setpriv)."""
    require(PERMISSIONS_HOLD, "running as root without setpriv: root can read any file")
    path = save(photo(40, 30), tmp_path / "secret.png")
    path.chmod(0)
    code = (
        "from imageworks_core.errors import InputError; from imageworks_core.images import prepare_image\n"
        "try:\n    prepare_image('secret.png')\nexcept InputError as e:\n    print('InputError:', e)"
    )
    try:
        proc = python_as_user(code, tmp_path)
    finally:
        path.chmod(0o644)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("InputError:") and "secret.png" in proc.stdout, proc.stdout
    assert "permission denied" in proc.stdout.lower(), proc.stdout


def test_permission_error_is_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(photo(40, 30), tmp_path / "secret.png")
    real_open = os.open

    def deny(file: str, flags: int, *args: int) -> int:
        if os.fspath(file) == str(path):
            raise PermissionError(13, "Permission denied", file)
        return real_open(file, flags, *args)

    monkeypatch.setattr(os, "open", deny)
    error = expect_input_error(path, "secret.png", "permission denied")
    assert error.hint and "chmod" in error.hint


def test_corrupted_files_never_raise_raw_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    originals = {}
    for fmt in ("JPEG", "PNG", "WEBP", "TIFF"):
        buffer = io.BytesIO()
        photo(96, 64).save(buffer, fmt)
        originals[fmt] = buffer.getvalue()
    for data in originals.values():
        for _ in range(25):
            damaged = bytearray(data)
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 12))):
                damaged[pos] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                damaged = damaged[: int(rng.integers(1, len(damaged)))]
            try:
                prepare_image(bytes(damaged))
            except InputError as error:
                assert error.source == "<bytes>"


# --- async ---------------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_aprepare_image_runs_in_threads(tmp_path: Path, anyio_backend: str) -> None:
    paths = [save(photo(400, 300, seed=i), tmp_path / f"{i}.png") for i in range(4)]
    limiter = anyio.CapacityLimiter(2)
    results: dict[int, PreparedImage] = {}

    async def one(index: int) -> None:
        results[index] = await aprepare_image(paths[index], max_pixels=30_000, limiter=limiter)

    async with anyio.create_task_group() as group:
        for index in range(len(paths)):
            group.start_soon(one, index)
    assert sorted(results) == [0, 1, 2, 3]
    assert all(r.width * r.height <= 30_000 and r.source == str(paths[i]) for i, r in results.items())


@pytest.mark.anyio
async def test_aprepare_image_raises_input_error(tmp_path: Path, anyio_backend: str) -> None:
    with pytest.raises(InputError, match="no such file"):
        await aprepare_image(tmp_path / "missing.jpg")
