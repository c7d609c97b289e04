"""Names for MIDR_EL1 values: implementer and part tables.

``0x414fd0c1`` -> "Arm Neoverse-N1 r4p1".  Cores are matched on
(Implementer, PartNum), as Linux's MIDR_CPU_MODEL_MASK does; Variant and
Revision give the stepping (rNpM).  The tables are in
``xml/implementers.xml`` (generated from implementation_regs.json).
"""

from __future__ import annotations

from dataclasses import dataclass

from libvirt_arm_cpu.kb.registers import NAMESPACE, KnowledgeBase

__all__ = ["Midr", "decode_midr"]

_NS = "{" + NAMESPACE + "}"


@dataclass(frozen=True)
class Midr:
    """A MIDR_EL1 value and its fields."""

    raw: int
    implementer: int
    variant: int
    architecture: int
    part: int
    revision: int
    implementer_name: str | None
    part_name: str | None

    @property
    def stepping(self) -> str:
        return f"r{self.variant}p{self.revision}"

    def __str__(self) -> str:
        vendor = self.implementer_name or f"implementer {self.implementer:#04x}"
        part = self.part_name or f"part {self.part:#05x}"
        return f"{vendor} {part} {self.stepping}"


@dataclass(frozen=True)
class Tables:
    """Implementer and part names, by code."""

    implementers: dict[int, str]
    parts: dict[tuple[int, int], str]


def decode_midr(raw: int, tables: Tables, kb: KnowledgeBase) -> Midr:
    midr = kb.register("MIDR_EL1").decode(raw)
    implementer, part = midr["Implementer"], midr["PartNum"]
    return Midr(raw, implementer, midr["Variant"], midr["Architecture"], part,
                midr["Revision"], tables.implementers.get(implementer),
                tables.parts.get((implementer, part)))
