"""Register dumps: the accepted spellings and the refused ones."""

from __future__ import annotations

import pytest

from libvirt_arm_cpu.formats.dump import parse_dump, read_dump
from libvirt_arm_cpu.errors import ParseError


def test_forms(kb):
    text = """# a comment
ID_AA64ISAR0_EL1=0x0000100010211120
id_aa64pfr0 0x1100000010111112   # trailing comment
MIDR_EL1: 0x414fd0c1

S3_3_C0_C0_1 = 2219098116
"""
    entries = parse_dump(text, kb, "h.regs")
    assert [(e.line, e.register.name) for e in entries] == [
        (2, "ID_AA64ISAR0_EL1"), (3, "ID_AA64PFR0_EL1"), (4, "MIDR_EL1"), (6, "CTR_EL0")]
    assert entries[3].value.raw == 0x8444C004


@pytest.mark.parametrize("text, line, needle", [
    ("ID_AA64ISAR0_EL1=0x1\nID_AA64ISRA0_EL1=0x1\n", 2, "did you mean ID_AA64ISAR0_EL1"),
    ("ID_AA64ISAR0_EL1=zz\n", 1, "'zz' is not a number"),
    ("ID_AA64ISAR0_EL1=0x10000000000000000\n", 1, "does not fit in 64 bits"),
    ("ID_AA64ISAR0_EL1=0x1\nid_aa64isar0 0x2\n", 2, "given twice (first on line 1)"),
    ("ID_AA64ISAR0_EL1\n", 1, "expected 'NAME=VALUE'"),
    ("ID_AA64ISAR0_EL1 = 1 2\n", 1, "expected 'NAME=VALUE'"),
    ("<cpu mode='custom'/>\n", 1, "expected 'NAME=VALUE'"),
])
def test_refused(kb, text, line, needle):
    with pytest.raises(ParseError) as info:
        parse_dump(text, kb, "h.regs")
    assert info.value.line == line
    assert str(info.value).startswith(f"h.regs:{line}: ")
    assert needle in str(info.value)


def test_empty(kb):
    with pytest.raises(ParseError, match="no registers found"):
        parse_dump("# nothing\n\n", kb, "h.regs")


def test_binary_file(kb, tmp_path):
    p = tmp_path / "bin"
    p.write_bytes(b"\x7fELF\x02\x01\x01\x00\xff\xfe")
    with pytest.raises(ParseError, match="not a text file"):
        read_dump(str(p), kb)


def test_huge_file(kb, tmp_path):
    from libvirt_arm_cpu.fileio import MAX_INPUT_BYTES
    p = tmp_path / "huge"
    p.write_text("# x\n" * (MAX_INPUT_BYTES // 4 + 1))
    with pytest.raises(ParseError, match="not a register dump"):
        read_dump(str(p), kb)
