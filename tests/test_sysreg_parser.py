"""The sysreg parser: the real file parses; broken ones fail at the right line."""

from __future__ import annotations

import pytest

from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.kb.sysreg import parse_sysreg, parse_sysreg_text

GOOD = """\
# comment
Sysreg\tID_TEST_EL1\t3\t0\t0\t6\t0
UnsignedEnum\t63:60\tA
\t0b0000\tNI
\t0b0001\tIMP
EndEnum
Res0\t59:32
SignedEnum\t31:28\tS
\t0b0000\tIMP
\t0b1111\tNI
EndEnum
Field\t27:1\tWIDE
Res1\t0
EndSysreg
"""


def test_small_file_parses():
    f = parse_sysreg_text(GOOD, "t")
    reg = f.registers["ID_TEST_EL1"]
    assert reg.encoding == (3, 0, 0, 6, 0)
    kinds = [(r.kind, r.name, r.msb, r.lsb) for r in reg.layout]
    assert kinds == [("UnsignedEnum", "A", 63, 60), ("Res0", None, 59, 32),
                     ("SignedEnum", "S", 31, 28), ("Field", "WIDE", 27, 1), ("Res1", None, 0, 0)]
    assert reg.layout[2].values == [(0, "IMP"), (15, "NI")]


def test_linux_sysreg_parses(shared_data):
    f = parse_sysreg(str(shared_data / "sysreg"))
    assert len(f.registers) > 300
    isar0 = f.registers["ID_AA64ISAR0_EL1"]
    dp = next(r for r in isar0.layout if r.name == "DP")
    assert (dp.msb, dp.lsb, dp.kind) == (47, 44, "UnsignedEnum")
    # SysregFields references resolve
    zcr = f.registers["ZCR_EL1"]
    assert [r.name for r in f.layout_of(zcr) if r.name] == ["LEN"]


def _expect(text: str, line: int | None, *needles: str) -> None:
    with pytest.raises(ParseError) as info:
        parse_sysreg_text(text, "bad.sysreg")
    err = info.value
    assert err.line == line, str(err)
    assert str(err).startswith(f"bad.sysreg:{line}:" if line else "bad.sysreg:")
    for n in needles:
        assert n in str(err), str(err)


@pytest.mark.parametrize("cut_at, line, needle", [
    (4, 3, "Enum A is never closed"),             # inside an enum
    (7, 2, "Sysreg ID_TEST_EL1 is never closed"),  # inside the register
    (13, 2, "never closed"),                      # just before EndSysreg
])
def test_truncated(cut_at, line, needle):
    text = "\n".join(GOOD.splitlines()[:cut_at])
    _expect(text, line, needle, "truncated")


def test_bit_gap():
    _expect(GOOD.replace("Res0\t59:32", "Res0\t59:33"), 8, "starts at bit 31, expected 32")


def test_overlap():
    _expect(GOOD.replace("Res0\t59:32", "Res0\t60:32"), 7, "starts at bit 60, expected 59")


def test_uncovered_low_bits():
    _expect(GOOD.replace("Res1\t0\n", ""), 13, "leaves bits 0:0 undescribed")


def test_unknown_keyword():
    _expect(GOOD.replace("Res0\t59:32", "Rez0\t59:32"), 7, "unknown keyword 'Rez0'")


def test_wrong_column_count():
    _expect(GOOD.replace("Field\t27:1\tWIDE", "Field\t27:1"), 12, "'Field' takes 2")


def test_enum_value_too_wide():
    _expect(GOOD.replace("\t0b0001\tIMP", "\t0b10001\tIMP"), 5, "does not fit in 4 bit(s)")


def test_enum_duplicate():
    _expect(GOOD.replace("\t0b0001\tIMP", "\t0b0000\tIMP"), 5, "repeats NI")


def test_not_a_number():
    _expect(GOOD.replace("\t3\t0\t0\t6\t0", "\t3\t0\t0\tx\t0"), 2, "CRm 'x' is not a number")


def test_encoding_out_of_range():
    _expect(GOOD.replace("\t3\t0\t0\t6\t0", "\t4\t0\t0\t6\t0"), 2, "op0 = 4 is out of range")


def test_end_without_open():
    _expect("EndSysreg\n", 1, "'EndSysreg' without an open Sysreg")


def test_nested_sysreg():
    _expect(GOOD.replace("EndSysreg\n", "") + GOOD, 15, "missing EndSysreg")


def test_duplicate_register():
    _expect(GOOD + GOOD, 16, "defined twice (first at line 2)")


def test_not_a_sysreg_file():
    _expect("# nothing\n", None, "no Sysreg block")


def test_unreadable_file(tmp_path):
    with pytest.raises(ParseError) as info:
        parse_sysreg(str(tmp_path / "missing"))
    assert "cannot read" in str(info.value)


def test_binary_garbage(tmp_path):
    p = tmp_path / "garbage"
    p.write_bytes(b"\xff\xfe\x00Sysreg\x80")
    with pytest.raises(ParseError):
        parse_sysreg(str(p))
