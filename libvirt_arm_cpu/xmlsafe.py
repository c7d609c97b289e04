"""Parse XML that comes from outside (domain XML, host CPU descriptions).

libvirt's XML never carries a DOCTYPE, so any document type declaration
(and with it every entity: external entities, "billion laughs" expansion)
is refused before the tree is built, as are documents over a size limit.
Nothing is fetched from the network or the file system.  Standard library
only: this runs on the hook's path.

Two passes, one verdict.  A document that plainly has no declarations (an
encoding in which every ASCII byte is that character, no ``<!DOCTYPE`` or
``<!ENTITY`` bytes) is parsed by ElementTree's C parser and its depth
checked after; anything else, or anything that parser rejects, goes through
expat with the refusing handlers, which gives the one-line message.  The
first is several times faster (the knowledge base, profiles by the
thousand); the second decides every refusal.

For the libvirt hook, :func:`parse_light` reads a document with expat
alone into :class:`LightElement` s: the part of ElementTree's tree that
reading needs (tag, attributes, text, tail, children, find by tag path).
Importing ElementTree costs the hook more than parsing the domain.
"""

from __future__ import annotations

import xml.parsers.expat
from itertools import chain

from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.fileio import MAX_INPUT_BYTES

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import xml.etree.ElementTree as ET
    from collections.abc import Iterator
    from typing import Any, TypeAlias, TypeVar
    _T = TypeVar("_T")
    # what reading code takes: ElementTree's tree or parse_light's
    Readable: TypeAlias = "ET.Element | LightElement"

__all__ = ["parse_untrusted", "parse_untrusted_into", "parse_light", "LightElement", "shown",
           "MAX_BYTES", "MAX_DEPTH"]

MAX_BYTES = MAX_INPUT_BYTES         # a domain XML is a few kB; libvirt itself caps at 10 MB
# a libvirt domain nests about 8 deep, a profile or model 4: far deeper is
# hostile, and the recursive serialisers downstream (ElementTree.tostring,
# deepcopy) would overflow the stack (RecursionError, or a crash)
MAX_DEPTH = 64


# The XML declaration's encoding, where the bytes of any ASCII character are
# that character (so a byte search for "<!DOCTYPE" cannot be fooled: UTF-7 or
# UTF-16 could hide one).  Compiled when first used: the hook's answer for a
# domain allowed before reads the XML with expat alone (parse_light),
# and importing re and ElementTree is most of what it would cost.
_DECLARED_PATTERN = rb"\A(?:\xef\xbb\xbf)?\s*<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)"
_declared: Any = None
_ASCII_SAFE = {b"utf-8", b"utf8", b"us-ascii", b"ascii", b"iso-8859-1", b"latin-1", b"latin1"}


def _plainly_without_declarations(data: bytes) -> bool:
    global _declared
    head = data[:200]
    if head.startswith((b"\xff\xfe", b"\xfe\xff", b"\x00", b"\x4c\x6f")) or b"\x00" in head:
        return False            # UTF-16/32, EBCDIC: not byte-searchable
    if _declared is None:
        import re
        _declared = re.compile(_DECLARED_PATTERN)
    m = _declared.match(head)
    if m is None and head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<?xml") and b"?>" not in head:
        return False            # a declaration longer than we look at
    if m is not None and m.group(1).lower() not in _ASCII_SAFE:
        return False
    return b"<!DOCTYPE" not in data and b"<!ENTITY" not in data


def _too_deep(root: ET.Element) -> bool:
    """Does the tree nest deeper than MAX_DEPTH?  Level by level, each
    level gathered by C code (the knowledge base's thousands of elements:
    0.1 ms, not 1 ms element by element)."""
    level, depth = [root], 1
    while depth <= MAX_DEPTH:
        level = list(chain.from_iterable(level))
        if not level:
            return False
        depth += 1
    return True


def _fast(data: bytes) -> ET.Element | None:
    """The tree by ElementTree's C parser, or None when this document must
    go the strict way (declarations possible, malformed, too deep)."""
    if not _plainly_without_declarations(data):
        return None
    import xml.etree.ElementTree as ET
    parser = ET.XMLParser(target=ET.TreeBuilder())
    try:
        parser.feed(data)
        root = parser.close()
    except (ET.ParseError, LookupError, ValueError):
        return None
    return None if _too_deep(root) else root


_UNKNOWN_ENCODING = xml.parsers.expat.errors.codes[
    xml.parsers.expat.errors.XML_ERROR_UNKNOWN_ENCODING]


class _Refused(Exception):
    pass


def _refuse_doctype(*_args: object) -> None:
    raise _Refused("a DOCTYPE (document type declarations and entities are not allowed)")


def _refuse_entity(*_args: object) -> None:
    raise _Refused("an entity declaration (not allowed)")


def _name(expat_name: str) -> str:
    """expat's "uri}local" (namespace_separator "}") as ElementTree's "{uri}local"."""
    return "{" + expat_name if "}" in expat_name else expat_name


def shown(text: str, limit: int = 80) -> str:
    """*text* (an attribute's value, say) as a one-line error message may
    quote it: characters that are not printable escaped (a character
    reference such as ``&#10;`` puts a newline in a value), cut at *limit*."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "..."


def _bad_encoding(name: str, unknown: bool) -> str:
    what = "unknown" if unknown else "unsupported"
    return f"{what} encoding '{shown(name, 40)}' in the XML declaration (write UTF-8)"


def parse_untrusted(data: bytes, path: str) -> ET.Element:
    """The root element of *data*, built in one pass by expat with the
    refusing handlers in place.

    :raise ParseError: (file:line) when it is too large, not well-formed,
        declares a DOCTYPE or entities, or an encoding Python cannot decode.
    """
    if len(data) > MAX_BYTES:
        raise ParseError(path, None, f"{len(data)} bytes: larger than the {MAX_BYTES} bytes "
                         f"an XML document may have here")
    root = _fast(data)
    if root is not None:
        return root
    import xml.etree.ElementTree as ET
    return parse_untrusted_into(data, path, ET.TreeBuilder())


def parse_untrusted_into(data: bytes, path: str, builder: Any) -> Any:
    """What *builder* (ElementTree's TreeBuilder interface: start(tag,
    attrs), end(tag), data(text), close()) makes of *data*, read by expat
    with the refusing handlers in place: :func:`parse_untrusted`'s checks
    and errors, without ElementTree.

    :raise ParseError: as :func:`parse_untrusted`.
    """
    if len(data) > MAX_BYTES:
        raise ParseError(path, None, f"{len(data)} bytes: larger than the {MAX_BYTES} bytes "
                         f"an XML document may have here")
    parser = xml.parsers.expat.ParserCreate(namespace_separator="}")
    parser.buffer_text = True
    parser.StartDoctypeDeclHandler = _refuse_doctype
    parser.EntityDeclHandler = _refuse_entity
    parser.ExternalEntityRefHandler = lambda *a: 0     # never resolve
    depth = [0]

    def start(tag: str, attrs: dict[str, str]) -> None:
        depth[0] += 1
        if depth[0] > MAX_DEPTH:
            raise _Refused(f"elements nested more than {MAX_DEPTH} deep")
        builder.start(_name(tag), {_name(k): v for k, v in attrs.items()})

    def end(tag: str) -> None:
        depth[0] -= 1
        builder.end(_name(tag))

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    declared: list[str] = []
    parser.XmlDeclHandler = lambda _version, encoding, _standalone: declared.append(
        encoding or "")
    try:
        parser.Parse(data, True)
    except (LookupError, ValueError) as err:
        # pyexpat looks an encoding expat lacks up in Python's codecs while
        # reading the XML declaration: unknown (LookupError), not a text
        # codec, or multi-byte (ValueError, UnicodeError).  Nothing else in
        # this parse raises either.
        if not declared:
            raise
        raise ParseError(path, parser.CurrentLineNumber,
                         _bad_encoding(declared[0], isinstance(err, LookupError))) from None
    except _Refused as why:
        raise ParseError(path, parser.CurrentLineNumber, f"refused: {why}") from None
    except xml.parsers.expat.ExpatError as err:
        if err.code == _UNKNOWN_ENCODING and declared:     # a codec expat cannot use (EBCDIC)
            raise ParseError(path, err.lineno, _bad_encoding(declared[0], False)) from None
        raise ParseError(path, err.lineno, f"not well-formed XML: "
                         f"{xml.parsers.expat.ErrorString(err.code)}") from None
    return builder.close()


class LightElement:
    """An element as ElementTree reads it (tag, attrib, text, tail,
    children; get, find, findall, findtext, iter), for reading only: what
    :func:`parse_light` builds without importing ElementTree.  Paths are
    tags joined by "/" (``features/gic``, ``{uri}cpu``), nothing more of
    ElementPath."""

    __slots__ = ("tag", "attrib", "text", "tail", "_children")

    def __init__(self, tag: str, attrib: dict[str, str]) -> None:
        self.tag, self.attrib = tag, attrib
        self.text: str | None = None
        self.tail: str | None = None
        self._children: list[LightElement] = []

    def __iter__(self) -> Iterator[LightElement]:
        return iter(self._children)

    def __len__(self) -> int:
        return len(self._children)

    def get(self, key: str, default: _T = None) -> str | _T:     # type: ignore[assignment]
        return self.attrib.get(key, default)

    def findall(self, path: str) -> list[LightElement]:
        """The elements at *path*, in document order (ElementTree's findall)."""
        level = [self]
        for tag in _steps(path):
            level = [c for e in level for c in e._children if c.tag == tag]
        return level

    def find(self, path: str) -> LightElement | None:
        found = self.findall(path)
        return found[0] if found else None

    def findtext(self, path: str, default: _T = None) -> str | _T:    # type: ignore[assignment]
        elem = self.find(path)
        return default if elem is None else elem.text or ""

    def iter(self, tag: str | None = None) -> Iterator[LightElement]:
        """This element and all below it, in document order (with *tag* only)."""
        if tag is None or self.tag == tag:
            yield self
        for child in self._children:
            yield from child.iter(tag)


def _steps(path: str) -> list[str]:
    """The tags of a path ("a/{uri/with/slashes}b": ["a", "{uri/with/slashes}b"])."""
    steps, here = [], ""
    for part in path.split("/"):
        here = f"{here}/{part}" if here else part
        if here.count("{") == here.count("}"):
            steps.append(here)
            here = ""
    if here or not all(steps) or any(s in (".", "..", "*") or "[" in s for s in steps):
        raise ValueError(f"path {path!r}: only tags joined by '/' are read here")
    return steps


class _LightBuilder:
    """ElementTree's TreeBuilder, making :class:`LightElement` s: character
    data before an element's first child is its text, after its end its
    tail."""

    def __init__(self) -> None:
        self.stack: list[LightElement] = []
        self.root: LightElement | None = None
        self.last: LightElement | None = None
        self.tail = False
        self.pending: list[str] = []

    def _flush(self) -> None:
        if self.pending:
            if self.last is not None:
                text = "".join(self.pending)
                if self.tail:
                    self.last.tail = text
                else:
                    self.last.text = text
            self.pending = []

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        self._flush()
        elem = LightElement(tag, attrib)
        if self.stack:
            self.stack[-1]._children.append(elem)
        elif self.root is None:
            self.root = elem
        self.stack.append(elem)
        self.last, self.tail = elem, False

    def end(self, tag: str) -> None:
        self._flush()
        self.last, self.tail = self.stack.pop(), True

    def data(self, text: str) -> None:
        self.pending.append(text)

    def close(self) -> LightElement:
        self._flush()
        assert self.root is not None        # expat refuses a document without one
        return self.root


def parse_light(data: bytes, path: str) -> LightElement:
    """The root of *data* as :class:`LightElement` s, read with
    :func:`parse_untrusted`'s refusals, limits and errors.

    :raise ParseError: as :func:`parse_untrusted`.
    """
    return parse_untrusted_into(data, path, _LightBuilder())
