"""Register dumps: one ``NAME=VALUE`` or ``NAME VALUE`` per line.

The format many tools print (and ``decode --file`` reads)::

    # Neoverse N1 (QEMU model)
    ID_AA64ISAR0_EL1=0x0000100010211120
    id_aa64pfr0 0x1100000010111112
    MIDR_EL1: 0x414fd0c1

Names are anything :meth:`KnowledgeBase.register` accepts; values are
0x/0b/0o or decimal numbers; ``#`` starts a comment.  A bad line is an error
naming the file and line, never a guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from libvirt_arm_cpu.errors import ParseError, UsageError
from libvirt_arm_cpu.fileio import MAX_INPUT_BYTES
from libvirt_arm_cpu.kb.registers import KnowledgeBase, Register, RegisterValue, parse_u64

__all__ = ["DumpEntry", "parse_dump", "read_dump"]

_NAME = re.compile(r"[A-Za-z0-9_]+")


def _split(line: str) -> tuple[str, str] | None:
    """NAME=VALUE, NAME: VALUE or NAME VALUE (spaces around the separator
    allowed), or None.  Scanned, not matched by a backtracking pattern: a
    long line stays linear."""
    line = line.strip()
    m = _NAME.match(line)
    if not m:
        return None
    rest = line[m.end():]
    after = rest.lstrip()
    if after[:1] in ("=", ":"):
        value = after[1:].strip()
    elif rest[:1].isspace():
        value = after
    else:
        return None
    if not value or any(c.isspace() for c in value):
        return None
    return m.group(), value

MAX_DUMP_BYTES = MAX_INPUT_BYTES     # a dump is a few KiB: the one limit of every input


@dataclass(frozen=True)
class DumpEntry:
    """One NAME=VALUE line of a register dump, read."""

    line: int
    value: RegisterValue

    @property
    def register(self) -> Register:
        return self.value.register


def parse_dump(text: str, kb: KnowledgeBase, path: str = "<stdin>") -> list[DumpEntry]:
    """Entries in file order.

    :raise ParseError: on an unreadable line, an unknown register, a value
        that is not a 64-bit number, or a register given twice.
    """
    entries: list[DumpEntry] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0]
        if not line.strip():
            continue
        parts = _split(line)
        if parts is None:
            raise ParseError(path, lineno, f"expected 'NAME=VALUE' or 'NAME VALUE', "
                             f"found '{line.strip()[:60]}'")
        name, value_text = parts
        try:
            reg = kb.register(name)
            value = parse_u64(value_text, f"value of {reg.name}")
        except UsageError as err:
            raise ParseError(path, lineno, str(err)) from err
        if reg.name in seen:
            raise ParseError(path, lineno, f"{reg.name} given twice (first on line "
                             f"{seen[reg.name]})")
        seen[reg.name] = lineno
        entries.append(DumpEntry(lineno, RegisterValue(reg, value)))
    if not entries:
        raise ParseError(path, None, "no registers found (expected NAME=VALUE lines)")
    return entries


def read_dump(path: str, kb: KnowledgeBase) -> list[DumpEntry]:
    """Read a dump file (``-`` for stdin)."""
    import sys

    try:
        if path == "-":
            text = sys.stdin.read(MAX_DUMP_BYTES + 1)
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read(MAX_DUMP_BYTES + 1)
    except OSError as err:
        raise ParseError(path, None, f"cannot read: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise ParseError(path, None, "not a text file (invalid UTF-8)") from err
    if len(text) > MAX_DUMP_BYTES:
        raise ParseError(path, None, f"larger than {MAX_DUMP_BYTES >> 20} MiB: not a register dump")
    return parse_dump(text, kb, "<stdin>" if path == "-" else path)
