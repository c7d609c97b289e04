"""Parse XML that comes from outside (domain XML, host CPU descriptions).

libvirt's XML never carries a DOCTYPE, so any document type declaration
(and with it every entity: external entities, "billion laughs" expansion)
is refused before the tree is built, as are documents over a size limit.
Nothing is fetched from the network or the file system.  Standard library
only: this runs on the hook's path.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
import xml.parsers.expat

from .errors import ParseError

__all__ = ["parse_untrusted", "MAX_BYTES"]

MAX_BYTES = 8 * 1024 * 1024         # a domain XML is a few kB; libvirt itself caps at 10 MB


class _Refused(Exception):
    pass


def _refuse_doctype(*_args: object) -> None:
    raise _Refused("a DOCTYPE (document type declarations and entities are not allowed)")


def _refuse_entity(*_args: object) -> None:
    raise _Refused("an entity declaration (not allowed)")


def parse_untrusted(data: bytes, path: str) -> ET.Element:
    """The root element of *data*.

    :raise ParseError: (file:line) when it is too large, not well-formed,
        or declares a DOCTYPE or entities.
    """
    if len(data) > MAX_BYTES:
        raise ParseError(path, None, f"{len(data)} bytes: larger than the {MAX_BYTES} bytes "
                         f"an XML document may have here")
    scan = xml.parsers.expat.ParserCreate()
    scan.StartDoctypeDeclHandler = _refuse_doctype
    scan.EntityDeclHandler = _refuse_entity
    scan.ExternalEntityRefHandler = lambda *a: 0     # never resolve
    try:
        scan.Parse(data, True)
    except _Refused as why:
        raise ParseError(path, scan.CurrentLineNumber, f"refused: {why}") from None
    except xml.parsers.expat.ExpatError as err:
        raise ParseError(path, err.lineno, f"not well-formed XML: "
                         f"{xml.parsers.expat.ErrorString(err.code)}") from None
    try:
        return ET.fromstring(data)
    except ET.ParseError as err:        # not reached after the scan, kept for safety
        raise ParseError(path, err.position[0], f"not well-formed XML: {err}") from None
