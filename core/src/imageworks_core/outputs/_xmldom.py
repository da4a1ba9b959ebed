"""Parse an XMP packet into a DOM and write it back without losing anything.

``xml.dom.minidom`` keeps namespace prefixes, ``xmlns`` declarations, comments
and the ``<?xpacket?>`` processing instructions around the root, so a file
written by Lightroom or exiftool comes back with the same prefixes and layout.
Serialisation is done here rather than with ``Node.toxml`` because Python 3.11's
minidom writes TAB/LF/CR in attribute values and CR in text raw, and an XML
parser then normalises them away; we write them as character references.
"""

from __future__ import annotations

from xml.dom import minidom
from xml.dom.minidom import Node
from xml.parsers import expat

__all__ = ["XmlProblem", "parse_xml", "serialize_document"]

_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})
_ATTR_ESCAPES = str.maketrans(
    {
        "&": "&amp;",
        "<": "&lt;",
        ">": "&gt;",
        '"': "&quot;",
        "\t": "&#9;",
        "\n": "&#10;",
        "\r": "&#13;",
    }
)


class XmlProblem(ValueError):
    """The bytes are not an XML document we are willing to rewrite."""


def _refuse_doctype(*_args: object) -> None:
    raise XmlProblem("has a <!DOCTYPE> declaration, which an XMP packet never has")


def parse_xml(data: bytes) -> minidom.Document:
    """Parse *data* with expat; refuse documents with a DOCTYPE (XMP never has one).

    A first pass stops at any document type declaration, so no DTD, entity
    definition or external reference is ever processed when the DOM is built.

    Raises:
        XmlProblem: Not well-formed, or has a document type declaration.
    """
    try:
        scanner = expat.ParserCreate()
        scanner.StartDoctypeDeclHandler = _refuse_doctype
        scanner.Parse(data, True)
        doc = minidom.parseString(data)  # noqa: S318 (DTDs refused by the scan above)
    except expat.ExpatError as exc:
        raise XmlProblem(f"is not well-formed XML ({exc})") from exc
    return doc


def _write(node: Node, out: list[str]) -> None:
    if isinstance(node, minidom.Element):
        out.append(f"<{node.tagName}")
        for name, value in node.attributes.items():
            out.append(f' {name}="{value.translate(_ATTR_ESCAPES)}"')
        if not node.childNodes:
            out.append("/>")
            return
        out.append(">")
        for child in node.childNodes:
            _write(child, out)
        out.append(f"</{node.tagName}>")
    elif isinstance(node, minidom.Text):  # CDATA sections too: written as escaped text
        out.append(node.data.translate(_TEXT_ESCAPES))
    elif isinstance(node, minidom.Comment):
        out.append(f"<!--{node.data}-->")
    elif isinstance(node, minidom.ProcessingInstruction):
        out.append(f"<?{node.target} {node.data}?>" if node.data else f"<?{node.target}?>")
    else:  # doctype, entity references ...: never produced by parse_xml
        raise XmlProblem(f"contains a node (DOM type {node.nodeType}) that cannot be written back")


def serialize_document(doc: minidom.Document, *, xml_declaration: bool = False) -> bytes:
    """UTF-8 bytes of *doc*; top-level nodes (xpacket PIs, root) each end a line."""
    out: list[str] = ['<?xml version="1.0" encoding="UTF-8"?>\n'] if xml_declaration else []
    for node in doc.childNodes:
        _write(node, out)
        out.append("\n")
    return "".join(out).encode("utf-8")
