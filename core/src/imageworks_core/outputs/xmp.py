"""Colour Narrator XMP: render a packet, and write or merge the ``.xmp`` sidecar.

Sidecar name: ``photo.jpg`` -> ``photo.xmp`` (the extension is *replaced*).
That is the Adobe convention (Lightroom, Bridge, Camera Raw) and what exiftool
writes with ``-o %d%f.xmp``.  Two images differing only by extension
(``photo.jpg`` + ``photo.cr2``) share one sidecar, exactly as in Lightroom.
Note that Lightroom Classic reads XMP sidecars only for raw files; for JPEG,
TIFF, PSD, PNG and DNG it reads the metadata inside the file, so use
:func:`imageworks_core.outputs.embed_xmp` for those.

Properties written, in namespace ``http://imageworks.ai/color-narrator/1.0/``
(prefix ``cn``): ``description``, ``confidenceScore``, ``processingTimestamp``,
``monoContaminationLevel``, ``vlmModel``, ``vlmProcessingTime``, and when set
``hueAnalysis``, ``chromaAnalysis``, ``validationStatus``, ``colorRegions``
(``rdf:Bag``).  Plus ``dc:description`` (``rdf:Alt``, ``xml:lang="x-default"``),
which Lightroom shows as the Caption.  Unset optional values and non-finite
numbers are omitted.  Text is cleaned with ``xml_safe_text`` (forbidden
control characters dropped, lone surrogates -> U+FFFD) and escaped on output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeGuard
from xml.dom import minidom
from xml.dom.minidom import Node

from imageworks_core.outputs._common import OutputError, finite_or_none, xml_safe_text
from imageworks_core.outputs._xmldom import XmlProblem, parse_xml, serialize_document
from imageworks_core.outputs.atomic import atomic_write_bytes
from imageworks_core.outputs.record import NarrationRecord

__all__ = [
    "CN_NAMESPACE",
    "merge_xmp",
    "render_xmp",
    "write_xmp_sidecar",
    "xmp_sidecar_path",
]

CN_NAMESPACE = "http://imageworks.ai/color-narrator/1.0/"
DC_NAMESPACE = "http://purl.org/dc/elements/1.1/"
RDF_NAMESPACE = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"
XMLNS_NAMESPACE = "http://www.w3.org/2000/xmlns/"

_SKELETON = (
    '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
    '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    f' <rdf:RDF xmlns:rdf="{RDF_NAMESPACE}">\n'
    " </rdf:RDF>\n"
    "</x:xmpmeta>\n"
    '<?xpacket end="w"?>\n'
).encode()


def xmp_sidecar_path(image: Path) -> Path:
    """``photo.jpg`` -> ``photo.xmp`` in the same directory (Adobe / exiftool convention)."""
    return Path(image).with_suffix(".xmp")


def _number(value: float | None) -> str | None:
    number = finite_or_none(value)
    return None if number is None else repr(number)


def _cn_properties(record: NarrationRecord) -> list[tuple[str, str | tuple[str, ...]]]:
    candidates: list[tuple[str, str | tuple[str, ...] | None]] = [
        ("description", record.description),
        ("confidenceScore", _number(record.confidence_score)),
        ("processingTimestamp", record.processing_timestamp.isoformat()),
        ("monoContaminationLevel", _number(record.mono_contamination_level)),
        ("vlmModel", record.vlm_model),
        ("vlmProcessingTime", _number(record.vlm_processing_time)),
        ("hueAnalysis", record.hue_analysis),
        ("chromaAnalysis", record.chroma_analysis),
        ("validationStatus", record.validation_status),
        ("colorRegions", tuple(record.color_regions) or None),
    ]
    return [(name, value) for name, value in candidates if value is not None]


# ---------------------------------------------------------------- DOM helpers
# Element = minidom.Element; every helper takes the owning Document explicitly.

Element = minidom.Element


def _is_blank_text(node: Node | None) -> TypeGuard[minidom.Text]:
    return isinstance(node, minidom.Text) and not node.data.strip()


def _elements(parent: Node) -> list[Element]:
    return [c for c in parent.childNodes if isinstance(c, Element)]


def _remove(parent: Element, node: Element) -> None:
    """Remove *node* from *parent*, with the indentation in front of it."""
    previous = node.previousSibling
    if _is_blank_text(previous):
        parent.removeChild(previous)
    parent.removeChild(node)


def _depth(node: Node) -> int:
    depth = 0
    parent = node.parentNode
    while isinstance(parent, Element):
        depth += 1
        parent = parent.parentNode
    return depth


def _in_scope(element: Element, prefix: str) -> str | None:
    """The namespace URI bound to *prefix* at *element*, or ``None``."""
    node: Node | None = element
    while isinstance(node, Element):
        if node.hasAttribute(f"xmlns:{prefix}"):
            return node.getAttribute(f"xmlns:{prefix}")
        node = node.parentNode
    return None


def _text_of(element: Element) -> str:
    return "".join(c.data for c in element.childNodes if isinstance(c, minidom.Text))


class _Builder:
    """Appends indented elements to a document (one space per level, like exiftool)."""

    def __init__(self, doc: minidom.Document) -> None:
        self.doc = doc

    def child(
        self, parent: Element, namespace: str, qname: str, indent: int, text: str | None = None
    ) -> Element:
        parent.appendChild(self.doc.createTextNode("\n" + " " * indent))
        element = self.doc.createElementNS(namespace, qname)
        parent.appendChild(element)
        if text is not None:
            element.appendChild(self.doc.createTextNode(text))
        return element

    def close(self, element: Element, indent: int) -> None:
        element.appendChild(self.doc.createTextNode("\n" + " " * indent))


def _find_rdf(doc: minidom.Document) -> Element:
    for element in doc.getElementsByTagNameNS(RDF_NAMESPACE, "RDF"):
        return element
    raise XmlProblem("has no rdf:RDF element, so it is not an XMP packet")


def _descriptions(rdf: Element) -> list[Element]:
    return [e for e in _elements(rdf) if e.namespaceURI == RDF_NAMESPACE and e.localName == "Description"]


def _is_dc_description(node: Element | minidom.Attr) -> bool:
    return node.namespaceURI == DC_NAMESPACE and node.localName == "description"


def _has_ours(description: Element) -> bool:
    attrs = description.attributes.values()
    return any(a.namespaceURI == CN_NAMESPACE for a in attrs) or any(
        e.namespaceURI == CN_NAMESPACE for e in _elements(description)
    )


def _strip_ours(description: Element, other_languages: list[tuple[str, str]]) -> None:
    """Remove cn:* and dc:description; remember dc:description's non-default languages."""
    for attr in list(description.attributes.values()):
        if attr.namespaceURI == CN_NAMESPACE or _is_dc_description(attr):
            description.removeAttributeNode(attr)
    for element in _elements(description):
        if _is_dc_description(element):
            for li in element.getElementsByTagNameNS(RDF_NAMESPACE, "li"):
                lang = li.getAttributeNS(XML_NAMESPACE, "lang")
                if lang and lang.lower() != "x-default":
                    other_languages.append((lang, _text_of(li)))
            _remove(description, element)
        elif element.namespaceURI == CN_NAMESPACE:
            _remove(description, element)


def _uses_prefix(element: Element, prefix: str) -> bool:
    for node in [element, *element.getElementsByTagName("*")]:
        if node.prefix == prefix:
            return True
        if any(a.prefix == prefix for a in node.attributes.values()):
            return True
    return False


def _drop_stale_declarations(root: Element) -> None:
    """Remove ``xmlns:P`` declarations of our namespace that nothing uses any more.

    exiftool names an unknown namespace's group after the first prefix it sees
    bound to it, so a leftover ``xmlns:foo="...color-narrator..."`` would make
    our properties read back as ``XMP-foo:*`` instead of ``XMP-cn:*``.
    """
    for element in [root, *root.getElementsByTagName("*")]:
        for attr in list(element.attributes.values()):
            stale = attr.prefix == "xmlns" and attr.value == CN_NAMESPACE
            if stale and not _uses_prefix(element, attr.localName):
                element.removeAttributeNode(attr)


def _is_empty(description: Element) -> bool:
    if _elements(description) or _text_of(description).strip():
        return False
    for attr in description.attributes.values():
        is_about = attr.namespaceURI == RDF_NAMESPACE and attr.localName == "about"
        if not (is_about or attr.namespaceURI == XMLNS_NAMESPACE or attr.name == "xmlns"):
            return False
    return True


def _build_description(
    doc: minidom.Document,
    rdf: Element,
    record: NarrationRecord,
    about: str,
    other_languages: list[tuple[str, str]],
) -> Element:
    build = _Builder(doc)
    base = _depth(rdf) + 1
    description = doc.createElementNS(RDF_NAMESPACE, "rdf:Description")
    if _in_scope(rdf, "rdf") != RDF_NAMESPACE:
        description.setAttributeNS(XMLNS_NAMESPACE, "xmlns:rdf", RDF_NAMESPACE)
    description.setAttributeNS(RDF_NAMESPACE, "rdf:about", about)
    # Bound here, on our own element, so a foreign file's choice of prefixes can never clash.
    description.setAttributeNS(XMLNS_NAMESPACE, "xmlns:cn", CN_NAMESPACE)
    description.setAttributeNS(XMLNS_NAMESPACE, "xmlns:dc", DC_NAMESPACE)

    for name, value in _cn_properties(record):
        if isinstance(value, tuple):
            prop = build.child(description, CN_NAMESPACE, f"cn:{name}", base + 1)
            bag = build.child(prop, RDF_NAMESPACE, "rdf:Bag", base + 2)
            for item in value:
                build.child(bag, RDF_NAMESPACE, "rdf:li", base + 3, xml_safe_text(item))
            build.close(bag, base + 2)
            build.close(prop, base + 1)
        else:
            build.child(description, CN_NAMESPACE, f"cn:{name}", base + 1, xml_safe_text(value))

    prop = build.child(description, DC_NAMESPACE, "dc:description", base + 1)
    alt = build.child(prop, RDF_NAMESPACE, "rdf:Alt", base + 2)
    languages = [("x-default", xml_safe_text(record.description)), *other_languages]
    for lang, text in languages:
        li = build.child(alt, RDF_NAMESPACE, "rdf:li", base + 3, text)
        li.setAttributeNS(XML_NAMESPACE, "xml:lang", lang)
    build.close(alt, base + 2)
    build.close(prop, base + 1)
    build.close(description, base)
    return description


def _append_last(doc: minidom.Document, rdf: Element, element: Element) -> None:
    indent = doc.createTextNode("\n" + " " * (_depth(rdf) + 1))
    last = rdf.lastChild
    if _is_blank_text(last):
        rdf.insertBefore(indent, last)
        rdf.insertBefore(element, last)
    else:
        rdf.appendChild(indent)
        rdf.appendChild(element)
        rdf.appendChild(doc.createTextNode("\n" + " " * _depth(rdf)))


# ---------------------------------------------------------------- public API


def merge_xmp(existing: bytes, record: NarrationRecord, *, overwrite: bool = True) -> bytes:
    """Return *existing* XMP with our properties replaced by those of *record*.

    Every ``cn:*`` property and ``dc:description`` is removed from every
    ``rdf:Description``; a fresh ``rdf:Description`` holding the new values is
    appended to ``rdf:RDF`` (XMP allows several, exiftool writes one per
    namespace).  ``dc:description`` alternatives in languages other than
    ``x-default`` are carried over.  Everything else (other namespaces and
    their prefixes, values, comments, xpacket wrapper, XML declaration) is
    kept; only attribute order (``xmlns`` first) and whitespace between
    top-level nodes may be normalised.  Unused ``xmlns`` bindings of our
    namespace under another prefix are dropped (exiftool names the group
    after the first prefix it sees).  Caveat: if the file binds the prefix
    ``cn`` to some *other* namespace, the XMP stays correct but exiftool
    shows our properties under a made-up group name (``XMP-tmp0``).

    Raises:
        XmlProblem: *existing* is not well-formed XML or not an XMP packet.
        FileExistsError: *overwrite* is false and *existing* already holds ``cn:*`` properties.
    """
    doc = parse_xml(existing)
    rdf = _find_rdf(doc)
    descriptions = _descriptions(rdf)
    if not overwrite and any(_has_ours(d) for d in descriptions):
        raise FileExistsError("already holds Colour Narrator (cn:) properties")
    about = descriptions[0].getAttributeNS(RDF_NAMESPACE, "about") if descriptions else ""
    other_languages: list[tuple[str, str]] = []
    for description in descriptions:
        _strip_ours(description, other_languages)
        if _is_empty(description):
            _remove(rdf, description)
    if doc.documentElement is not None:
        _drop_stale_declarations(doc.documentElement)
    _append_last(doc, rdf, _build_description(doc, rdf, record, about, other_languages))
    return serialize_document(doc, xml_declaration=doc.version is not None)


def render_xmp(record: NarrationRecord) -> bytes:
    """A complete, standalone XMP packet (UTF-8 bytes) for *record*."""
    return merge_xmp(_SKELETON, record)


def write_xmp_sidecar(image: Path, record: NarrationRecord, *, overwrite: bool = True) -> Path:
    """Write *record* to ``xmp_sidecar_path(image)`` atomically and return that path.

    An existing sidecar (from Lightroom, exiftool, an earlier run) is *merged
    into*, never replaced wholesale: our ``cn:*`` properties and the
    ``x-default`` ``dc:description`` are replaced, everything else is kept (see
    :func:`merge_xmp`).  An empty (0-byte / blank) sidecar counts as absent.
    A sidecar that cannot be parsed as XMP is left byte-for-byte untouched and
    :class:`OutputError` is raised, because rewriting it would destroy whatever
    the other program stored there.

    With ``overwrite=False`` a sidecar that already holds ``cn:*`` properties is
    left untouched and :class:`OutputError` is raised; foreign-only sidecars
    are still merged into.

    Raises:
        OutputError: The existing sidecar is unparseable / not XMP, or already
            described while ``overwrite`` is false.
        OSError: Reading or writing failed (the old sidecar is then unchanged).
    """
    target = xmp_sidecar_path(Path(image))
    where = os.fsdecode(target)
    try:
        existing = target.read_bytes()
    except FileNotFoundError:
        existing = b""
    if not existing.strip():
        data = render_xmp(record)
    else:
        try:
            data = merge_xmp(existing, record, overwrite=overwrite)
        except XmlProblem as exc:
            raise OutputError(
                f"existing XMP sidecar {where!r} {exc}; it was left untouched",
                path=where,
                hint="repair the file, or move it aside so that a new sidecar can be written",
            ) from exc
        except FileExistsError as exc:
            raise OutputError(
                f"XMP sidecar {where!r} {exc}; it was left untouched",
                path=where,
                hint="allow overwriting (overwrite=True) to replace the earlier description",
            ) from exc
    atomic_write_bytes(target, data)
    return target
