"""Parser for Linux's ``arch/arm64/tools/sysreg`` register description.

The file is the single source of truth Linux generates its register headers
from; we read it the same strict way Linux's ``gen-sysreg.awk`` does, so a
truncated or garbled copy is refused with ``file:line: message`` instead of
silently producing a wrong knowledge base:

* blocks must open and close in order (``Sysreg``/``EndSysreg``,
  ``SysregFields``/``EndSysregFields``, ``Enum``/``EndEnum``,
  ``Prefix``/``EndPrefix``);
* every layout covers bits 63..0 exactly once, from the top down;
* enum values fit their field and are unique; field names are unique;
* every line has the number of columns its keyword takes.

The result is plain data (:class:`SysregFile`); turning it into the
knowledge base is :mod:`libvirt_arm_cpu.kb.gen`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libvirt_arm_cpu.errors import ParseError

__all__ = ["SysregFile", "SysregBlock", "BitRange", "parse_sysreg", "parse_sysreg_text"]

# Bit-range kinds that carry no field name.
RESERVED_KINDS = ("Res0", "Res1", "Unkn", "Raz")
ENUM_KINDS = ("Enum", "UnsignedEnum", "SignedEnum")


@dataclass
class BitRange:
    """One line of a layout: a named field or a reserved range."""

    kind: str               # Field, Enum, UnsignedEnum, SignedEnum, Res0, Res1, Unkn, Raz
    msb: int
    lsb: int
    line: int
    name: str | None = None
    values: list[tuple[int, str]] = field(default_factory=list)

    @property
    def width(self) -> int:
        return self.msb - self.lsb + 1


@dataclass
class SysregBlock:
    """A ``Sysreg`` (with an encoding) or ``SysregFields`` (without) block."""

    name: str
    line: int
    encoding: tuple[int, int, int, int, int] | None = None
    layout: list[BitRange] = field(default_factory=list)
    fields_ref: str | None = None       # "Fields NAME": layout shared with a SysregFields block
    mapping: str | None = None          # "Mapping NAME": a VHE alias of another register
    prefixes: dict[str, list[BitRange]] = field(default_factory=dict)


@dataclass
class SysregFile:
    """Linux's arch/arm64/tools/sysreg, read: registers and shared field layouts."""

    path: str
    registers: dict[str, SysregBlock]
    field_sets: dict[str, SysregBlock]

    def layout_of(self, reg: SysregBlock) -> list[BitRange]:
        """The register's own layout, or the shared one it refers to."""
        if reg.fields_ref is not None:
            shared = self.field_sets.get(reg.fields_ref)
            if shared is None:
                raise ParseError(self.path, reg.line, f"{reg.name}: Fields {reg.fields_ref} "
                                 f"refers to no SysregFields block")
            return shared.layout
        return reg.layout


_ENCODING_LIMITS = (("op0", 3), ("op1", 7), ("CRn", 15), ("CRm", 15), ("op2", 7))


class _Parser:
    def __init__(self, path: str) -> None:
        self.path = path
        self.registers: dict[str, SysregBlock] = {}
        self.field_sets: dict[str, SysregBlock] = {}
        self.block: SysregBlock | None = None
        self.block_kind: str | None = None          # "Sysreg" or "SysregFields"
        self.layout: list[BitRange] | None = None   # the layout being filled
        self.prefix: str | None = None
        self.enum: BitRange | None = None
        self.next_bit = 63
        self.lineno = 0

    def fail(self, message: str) -> ParseError:
        return ParseError(self.path, self.lineno, message)

    # -- helpers ---------------------------------------------------------
    def number(self, text: str, what: str) -> int:
        try:
            if text.lower().startswith("0b"):
                return int(text[2:], 2)
            if text.lower().startswith("0x"):
                return int(text[2:], 16)
            return int(text, 10)
        except ValueError:
            raise self.fail(f"{what} '{text}' is not a number") from None

    def bits(self, text: str) -> tuple[int, int]:
        msb_text, _, lsb_text = text.partition(":")
        msb = self.number(msb_text, "bit position")
        lsb = self.number(lsb_text, "bit position") if lsb_text else msb
        if not 0 <= lsb <= msb <= 63:
            raise self.fail(f"bit range '{text}' is not within 63:0 with msb >= lsb")
        return msb, lsb

    def expect_columns(self, cols: list[str], counts: tuple[int, ...]) -> None:
        if len(cols) not in counts:
            want = " or ".join(str(c - 1) for c in counts)
            raise self.fail(f"'{cols[0]}' takes {want} argument(s), found {len(cols) - 1}")

    def where(self) -> str:
        assert self.block is not None
        return self.block.name + (f" (Prefix {self.prefix})" if self.prefix else "")

    def require_layout(self, keyword: str) -> list[BitRange]:
        if self.layout is None:
            raise self.fail(f"'{keyword}' outside a Sysreg or SysregFields block")
        if self.enum is not None:
            raise self.fail(f"'{keyword}' inside Enum {self.enum.name} (missing EndEnum?)")
        return self.layout

    def add_range(self, rng: BitRange) -> None:
        layout = self.require_layout(rng.kind)
        if rng.msb != self.next_bit:
            raise self.fail(f"{self.where()}.{rng.name or rng.kind} starts at bit {rng.msb}, "
                            f"expected {self.next_bit}")
        if rng.name is not None and any(r.name == rng.name for r in layout):
            raise self.fail(f"{self.where()}: field {rng.name} defined twice")
        layout.append(rng)
        self.next_bit = rng.lsb - 1

    def close_layout(self, keyword: str) -> None:
        if self.enum is not None:
            raise self.fail(f"'{keyword}' inside Enum {self.enum.name} (missing EndEnum?)")
        assert self.block is not None
        uses_other = self.block.fields_ref is not None or self.block.mapping is not None
        if uses_other and self.layout:
            raise self.fail(f"{self.block.name} has both its own fields and Fields/Mapping")
        if not uses_other and self.next_bit != -1:
            raise self.fail(f"{self.where()} leaves bits {self.next_bit}:0 undescribed")

    # -- keywords --------------------------------------------------------
    def line(self, raw: str) -> None:
        text = raw.strip()
        if not text or text.startswith("#"):
            return
        cols = text.split()
        kw = cols[0]
        if self.enum is not None and kw not in ("EndEnum",):
            self.enum_value(cols)
            return
        handler = getattr(self, "kw_" + kw, None)
        if handler is None:
            raise self.fail(f"unknown keyword '{kw}'")
        handler(cols)

    def kw_Sysreg(self, cols: list[str]) -> None:
        self.open_block(cols, "Sysreg", (7,))
        enc = tuple(self.number(c, name) for c, (name, _) in zip(cols[2:], _ENCODING_LIMITS))
        for value, (name, limit) in zip(enc, _ENCODING_LIMITS):
            if not 0 <= value <= limit:
                raise self.fail(f"{cols[1]}: {name} = {value} is out of range 0..{limit}")
        assert self.block is not None
        self.block.encoding = enc  # type: ignore[assignment]

    def kw_SysregFields(self, cols: list[str]) -> None:
        self.open_block(cols, "SysregFields", (2,))

    def open_block(self, cols: list[str], kind: str, counts: tuple[int, ...]) -> None:
        if self.block is not None:
            raise self.fail(f"'{kind}' inside {self.block_kind} {self.block.name} "
                            f"(missing End{self.block_kind}?)")
        self.expect_columns(cols, counts)
        name = cols[1]
        table = self.registers if kind == "Sysreg" else self.field_sets
        if name in table:
            raise self.fail(f"{kind} {name} defined twice (first at line {table[name].line})")
        self.block = SysregBlock(name=name, line=self.lineno)
        self.block_kind = kind
        self.layout = self.block.layout
        self.next_bit = 63
        table[name] = self.block

    def kw_EndSysreg(self, cols: list[str]) -> None:
        self.close_block(cols, "Sysreg")

    def kw_EndSysregFields(self, cols: list[str]) -> None:
        self.close_block(cols, "SysregFields")

    def close_block(self, cols: list[str], kind: str) -> None:
        self.expect_columns(cols, (1,))
        if self.block is None or self.block_kind != kind:
            raise self.fail(f"'End{kind}' without an open {kind}")
        if self.prefix is not None:
            raise self.fail(f"'End{kind}' inside Prefix {self.prefix} (missing EndPrefix?)")
        self.close_layout("End" + kind)
        self.block = None
        self.block_kind = None
        self.layout = None

    def kw_Prefix(self, cols: list[str]) -> None:
        self.expect_columns(cols, (2,))
        self.require_layout("Prefix")
        assert self.block is not None
        if self.prefix is not None:
            raise self.fail(f"'Prefix' inside Prefix {self.prefix}")
        self.prefix = cols[1]
        self.layout = self.block.prefixes.setdefault(cols[1], [])
        self.next_bit = 63

    def kw_EndPrefix(self, cols: list[str]) -> None:
        self.expect_columns(cols, (1,))
        if self.prefix is None:
            raise self.fail("'EndPrefix' without an open Prefix")
        self.close_layout("EndPrefix")
        assert self.block is not None
        self.prefix = None
        self.layout = self.block.layout
        self.next_bit = 63

    def kw_Fields(self, cols: list[str]) -> None:
        self.expect_columns(cols, (2,))
        self.require_layout("Fields")
        assert self.block is not None
        # Resolved lazily (layout_of): Linux's own file has a dangling reference
        # (MPAM1_EL12 -> MPAM1_ELx) that its generator never follows.
        self.block.fields_ref = cols[1]

    def kw_Mapping(self, cols: list[str]) -> None:
        self.expect_columns(cols, (2,))
        self.require_layout("Mapping")
        assert self.block is not None
        self.block.mapping = cols[1]

    def reserved(self, cols: list[str]) -> None:
        self.expect_columns(cols, (2,))
        msb, lsb = self.bits(cols[1])
        self.add_range(BitRange(cols[0], msb, lsb, self.lineno))

    kw_Res0 = kw_Res1 = kw_Unkn = kw_Raz = reserved

    def kw_Field(self, cols: list[str]) -> None:
        self.expect_columns(cols, (3,))
        msb, lsb = self.bits(cols[1])
        self.add_range(BitRange("Field", msb, lsb, self.lineno, name=cols[2]))

    def enum_open(self, cols: list[str]) -> None:
        self.expect_columns(cols, (3,))
        msb, lsb = self.bits(cols[1])
        rng = BitRange(cols[0], msb, lsb, self.lineno, name=cols[2])
        self.add_range(rng)
        self.enum = rng

    kw_Enum = kw_UnsignedEnum = kw_SignedEnum = enum_open

    def enum_value(self, cols: list[str]) -> None:
        assert self.enum is not None
        if len(cols) != 2:
            raise self.fail(f"enum value of {self.where()}.{self.enum.name} takes 2 columns "
                            f"(value and name), found {len(cols)} (missing EndEnum?)")
        value = self.number(cols[0], "enum value")
        if value >= 1 << self.enum.width:
            raise self.fail(f"{self.where()}.{self.enum.name}: value {cols[0]} does not fit "
                            f"in {self.enum.width} bit(s)")
        for v, n in self.enum.values:
            if v == value or n == cols[1]:
                raise self.fail(f"{self.where()}.{self.enum.name}: {cols[1]} = {cols[0]} "
                                f"repeats {n} = {v:#x}")
        self.enum.values.append((value, cols[1]))

    def kw_EndEnum(self, cols: list[str]) -> None:
        self.expect_columns(cols, (1,))
        if self.enum is None:
            raise self.fail("'EndEnum' without an open Enum")
        self.enum = None

    def finish(self) -> SysregFile:
        if self.enum is not None:
            raise ParseError(self.path, self.enum.line,
                             f"Enum {self.enum.name} is never closed (file truncated?)")
        if self.prefix is not None and self.block is not None:
            raise ParseError(self.path, self.block.line,
                             f"Prefix {self.prefix} of {self.block.name} is never closed "
                             f"(file truncated?)")
        if self.block is not None:
            raise ParseError(self.path, self.block.line,
                             f"{self.block_kind} {self.block.name} is never closed "
                             f"(file truncated?)")
        if not self.registers:
            raise ParseError(self.path, None, "no Sysreg block found: not a Linux sysreg file")
        return SysregFile(self.path, self.registers, self.field_sets)


def parse_sysreg_text(text: str, path: str = "<sysreg>") -> SysregFile:
    """Parse the text of a sysreg file.

    :raise ParseError: naming *path* and the line, on anything the format
        does not allow.
    """
    parser = _Parser(path)
    for parser.lineno, raw in enumerate(text.splitlines(), start=1):
        parser.line(raw)
    return parser.finish()


def parse_sysreg(path: str) -> SysregFile:
    """Read and parse a sysreg file.

    :raise ParseError: when the file cannot be read or does not parse.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ParseError(path, None, f"cannot read: {getattr(err, 'strerror', None) or err}") from err
    return parse_sysreg_text(text, path)
