"""Generated images on disk: PNG files with the prompt and parameters embedded.

Each file carries two descriptions a tool can read back:

* a ``parameters`` text chunk in the Stable Diffusion WebUI's "infotext" format
  (prompt line, ``Negative prompt:`` line, then ``Key: value`` pairs joined by
  ``", "``, a value holding ``,`` ``:`` or a newline JSON-quoted — the WebUI's
  ``modules/processing.py`` ``create_infotext`` / ``infotext_utils.quote``),
  which the WebUI's "PNG Info" tab and ComfyUI's loaders read;
* an XMP packet (iTXt ``XML:com.adobe.xmp``) with ``dc:description`` = the
  prompt, which exiftool and photo managers read.

Files are named ``<slug of the prompt>_<NNN>.png`` in the output folder; an
existing file is never replaced unless asked (the link that publishes a
finished temp file fails if the name is taken).
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from .errors import InputError, OutputError

__all__ = ["file_names", "infotext", "png_with_metadata", "slug", "write_image", "xmp_packet"]

_XMP_KEY = "XML:com.adobe.xmp"
# XML 1.0 forbids most C0 controls even escaped: they are dropped from the packet
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def slug(prompt: str, width: int = 48) -> str:
    """A file-name stem from *prompt*: ASCII letters, digits and dashes, at most *width* long."""
    text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
    text = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    return text[:width].rstrip("-") or "image"


def file_names(out: Path, prompt: str, n: int, *, overwrite: bool) -> list[Path]:
    """The *n* paths this prompt's images get in *out*: ``<slug>_001.png`` ...

    Raises:
        InputError: one of them exists and *overwrite* is false (nothing is generated then).
    """
    stem = slug(prompt)
    paths = [out / f"{stem}_{i:03d}.png" for i in range(1, n + 1)]
    taken = [p for p in paths if os.path.lexists(p)]
    if taken and not overwrite:
        shown = ", ".join(str(p) for p in taken[:3]) + (" ..." if len(taken) > 3 else "")
        raise InputError(
            f"{len(taken)} output file(s) already exist: {shown}",
            hint="pass --overwrite to replace them, or --out DIR for another folder",
        )
    return paths


def _quote(value: Any) -> str:
    text = str(value)
    if any(ch in text for ch in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def infotext(prompt: str, negative: str | None, pairs: Sequence[tuple[str, Any]]) -> str:
    """The WebUI's ``parameters`` text: prompt, ``Negative prompt:`` line, ``Key: value, ...``.

    Pairs whose value is ``None`` are left out, as the WebUI does.
    """
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    tail = ", ".join(f"{k}: {_quote(v)}" for k, v in pairs if v is not None)
    if tail:
        lines.append(tail)
    return "\n".join(lines)


def xmp_packet(description: str, *, tool: str = "imageworks") -> str:
    """An XMP packet whose ``dc:description`` (x-default) is *description*, XML-escaped."""
    text = escape(_NOT_XML.sub("", description), {'"': "&quot;"})
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        ' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
        '  <rdf:Description rdf:about=""\n'
        '    xmlns:dc="http://purl.org/dc/elements/1.1/"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/">\n'
        f"   <xmp:CreatorTool>{escape(tool)}</xmp:CreatorTool>\n"
        "   <dc:description>\n"
        "    <rdf:Alt>\n"
        f'     <rdf:li xml:lang="x-default">{text}</rdf:li>\n'
        "    </rdf:Alt>\n"
        "   </dc:description>\n"
        "  </rdf:Description>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    )


def png_with_metadata(data: bytes, *, parameters: str, description: str) -> bytes:
    """*data* (PNG, JPEG or WebP) as a PNG with the ``parameters`` chunk and XMP added.

    Pixels are kept exactly (PNG is lossless); chunks the source carried are dropped.
    """
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", parameters)  # tEXt, or iTXt when not Latin-1 (as the WebUI writes it)
    info.add_itxt(_XMP_KEY, xmp_packet(description), zip=False)
    with Image.open(io.BytesIO(data)) as src:
        src.load()
        im: Image.Image = src
        if im.mode not in ("RGB", "RGBA", "L", "LA", "P", "I", "I;16", "1"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        buf = io.BytesIO()
        im.save(buf, "PNG", pnginfo=info)
    return buf.getvalue()


def write_image(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Write *data* to *path* atomically; never replace an existing file unless *overwrite*.

    Raises:
        OutputError: the folder cannot be written, or the name was taken meanwhile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".imageworks-", suffix=".png.tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the name is taken: an existing file is never replaced
            except FileExistsError:
                raise OutputError(
                    f"{path} appeared while generating; not replaced",
                    hint="pass --overwrite to replace it",
                ) from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def parameter_pairs(
    result_parameters: Mapping[str, Any],
    *,
    seed: int | None,
    width: int,
    height: int,
    model: str,
    backend: str,
    revised_prompt: str | None,
    version: str,
) -> list[tuple[str, Any]]:
    """The infotext pairs, in the WebUI's order; only what the backend reported as used."""
    p = result_parameters
    return [
        ("Steps", p.get("steps")),
        ("Sampler", p.get("sampler")),
        ("CFG scale", p.get("guidance")),
        ("Seed", seed),
        ("Size", f"{width}x{height}" if width and height else p.get("size")),
        ("Model", model or None),
        ("Denoising strength", p.get("strength", p.get("denoising_strength"))),  # img2img
        ("Backend", backend),
        ("Revised prompt", revised_prompt),
        ("Version", version),
    ]
