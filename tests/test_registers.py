"""The register model: lookups, encodings, and decode/encode round trips."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, strategies as st

from libvirt_arm_cpu.errors import DataError, UnknownName, UsageError
from libvirt_arm_cpu.kb.registers import RegisterValue, kvm_reg_id, parse_u64, writable_mask_index


def test_neoverse_n1_isar0(kb):
    """The issue's example: a Neoverse N1's ID_AA64ISAR0_EL1."""
    v = kb.register("ID_AA64ISAR0_EL1").decode(0x0000100010211120)
    nonzero = {fv.field.name: fv.value for fv in v.fields() if fv.value}
    assert nonzero == {"AES": 2, "SHA1": 1, "SHA2": 1, "CRC32": 1, "ATOMIC": 2, "RDM": 1, "DP": 1}
    assert str(next(fv for fv in v.fields() if fv.field.name == "DP")) == "DP = 1 (IMP)"
    assert v["atomic"] == 2


def _sample_values(field):
    if field.width <= 8:
        return range(field.max_value + 1)
    rnd = random.Random(field.qemu_property)
    return [0, 1, field.max_value, field.max_value >> 1, *(rnd.randrange(field.max_value)
                                                            for _ in range(8))]


def test_round_trip_every_field_of_every_register(kb):
    """Encode each value of each field into a busy register, decode it back,
    and check no other field moved."""
    checked = 0
    for reg in kb:
        background = RegisterValue(reg, 0xA5A5_5A5A_F0F0_0F0F & reg.field_mask)
        for fld in reg.fields:
            for value in _sample_values(fld):
                raw = fld.put(background.raw, value)
                assert fld.get(raw) == value
                after = RegisterValue(reg, raw)
                assert after.replace(**{fld.name: fld.get(background.raw)}) == background
                for other in reg.fields:
                    if other is not fld:
                        assert other.get(raw) == other.get(background.raw)
                checked += 1
    assert checked > 5000


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_decode_then_encode_is_identity(kb, raw):
    for name in ("ID_AA64ISAR0_EL1", "ID_AA64PFR0_EL1", "CTR_EL0", "MIDR_EL1"):
        reg = kb.register(name)
        v = reg.decode(raw)
        rebuilt = raw & ~reg.field_mask
        for fv in v.fields():
            rebuilt = fv.field.put(rebuilt, fv.value)
        assert rebuilt == raw


def test_every_register_covers_64_bits(kb):
    for reg in kb:
        masks = [f.mask for f in reg.fields] + [r.mask for r in reg.reserved]
        total = 0
        for m in masks:
            assert not total & m, reg
            total |= m
        assert total == 2**64 - 1, reg


def test_value_must_fit_field(kb):
    fld = kb.field("ID_AA64ISAR0_EL1", "DP")
    with pytest.raises(DataError, match="does not fit in 4 bit"):
        fld.put(0, 16)
    with pytest.raises(DataError):
        RegisterValue(kb.register("MIDR"), 2**64)


def test_signed_fields_sort_not_implemented_lowest(kb):
    fp = kb.field("ID_AA64PFR0_EL1", "FP")
    assert fp.signed
    assert sorted([0, 1, 0xF], key=fp.order) == [0xF, 0, 1]
    assert fp.meaning(0xF) == "NI"
    dp = kb.field("ID_AA64ISAR0_EL1", "DP")
    assert sorted([0, 1, 0xF], key=dp.order) == [0, 1, 0xF]
    for f in (fp, dp):
        for v in range(16):
            assert f.from_order(f.order(v)) == v


@pytest.mark.parametrize("name", ["ID_AA64ISAR0_EL1", "id_aa64isar0_el1", "ID_AA64ISAR0",
                                  "id_aa64isar0", " ID_AA64ISAR0_EL1 ", "S3_0_C0_C6_0"])
def test_register_lookup_by_name(kb, name):
    assert kb.register(name).name == "ID_AA64ISAR0_EL1"


def test_register_lookup_el0_suffix(kb):
    assert kb.register("ctr").name == "CTR_EL0"
    assert kb.register("DCZID").name == "DCZID_EL0"


def test_lookup_by_encoding_and_kvm_id(kb):
    for reg in kb:
        assert kb.by_encoding(*reg.encoding) is reg
        assert kb.by_kvm_id(reg.kvm_id) is reg
        assert kb.register(reg.generic_name) is reg
    assert kb.by_encoding(3, 0, 0, 4, 3) is None


def test_unallocated_slot(kb):
    reg = kb.register("S3_0_C0_C4_3")
    assert reg.kind == "unallocated" and reg.fields == () and reg.mask_index == 35


def test_unknown_register_suggests(kb):
    with pytest.raises(UnknownName) as info:
        kb.register("ID_AA64ISRA0_EL1")
    assert info.value.suggestion == "ID_AA64ISAR0_EL1"
    assert "did you mean ID_AA64ISAR0_EL1?" in str(info.value)


def test_unknown_field_suggests(kb):
    with pytest.raises(UnknownName, match=r"unknown field of ID_AA64ISAR0_EL1 'DOT' \(did you "
                                          r"mean DP\?\)|unknown field of ID_AA64ISAR0_EL1 'DOT'"):
        kb.field("ID_AA64ISAR0_EL1", "DOT")
    with pytest.raises(UnknownName, match="did you mean ATOMIC"):
        kb.field("ID_AA64ISAR0_EL1", "ATOMICS")


def test_field_lookup_case_insensitive(kb):
    assert kb.field("id_aa64isar0", "atomic").name == "ATOMIC"
    assert kb.field_ref("ID_AA64MMFR0_EL1.TGran4").name == "TGRAN4"


def test_qemu_property_both_ways_for_every_field(kb):
    names = set()
    for fld in kb.fields():
        prop = fld.qemu_property
        assert prop == f"SYSREG_{fld.register}_{fld.name}"
        assert kb.field_by_qemu_property(prop) is fld
        assert kb.field_by_qemu_property(prop.lower()) is fld
        names.add(prop)
    assert len(names) == sum(1 for _ in kb.fields())
    assert kb.field_by_qemu_property("SYSREG_ID_AA64ISAR0_EL1_DP").register == "ID_AA64ISAR0_EL1"
    assert kb.field_by_qemu_property("SYSREG_CTR_EL0_L1Ip").name == "L1Ip"
    assert kb.field_by_qemu_property("SYSREG_ID_AA64PFR1_EL1_CSV2_frac").name == "CSV2_frac"


def test_unknown_qemu_property(kb):
    with pytest.raises(UnknownName, match="did you mean SYSREG_ID_AA64ISAR0_EL1_DP"):
        kb.field_by_qemu_property("SYSREG_ID_AA64ISAR0_EL1_DQ")
    with pytest.raises(UnknownName):
        kb.field_by_qemu_property("ID_AA64ISAR0_EL1_DP")


@pytest.mark.parametrize("text, value", [("0x10", 16), ("16", 16), ("0b101", 5), ("0o17", 15),
                                         ("010", 10), ("0xffffffffffffffff", 2**64 - 1),
                                         ("0x0000_1000", 0x1000)])
def test_parse_u64(text, value):
    assert parse_u64(text) == value


@pytest.mark.parametrize("text, message", [("zz", "is not a number"), ("-1", "negative"),
                                           ("0x10000000000000000", "does not fit in 64 bits"),
                                           ("", "is not a number"), ("1.5", "is not a number")])
def test_parse_u64_rejects(text, message):
    with pytest.raises(UsageError, match=message):
        parse_u64(text)


def test_encoding_helpers():
    assert kvm_reg_id(3, 0, 0, 6, 0) == 0x603000000013C030
    assert writable_mask_index(3, 3, 0, 0, 1) == 129
    assert writable_mask_index(3, 2, 0, 0, 0) is None      # op1=2 is outside range 0
    assert writable_mask_index(3, 0, 1, 0, 0) is None


def test_reserved_violations(kb):
    isar0 = kb.register("ID_AA64ISAR0_EL1")
    assert isar0.decode(0x0000100010211120).reserved_violations() == []
    bad = isar0.decode(0x0000100011211121)
    found = {(r.bits, bits) for r, bits in bad.reserved_violations()}
    assert found == {("27:24", 1), ("3:0", 1)}
    ctr = kb.register("CTR_EL0")
    assert [r.kind for r, _ in ctr.decode(0).reserved_violations()] == ["res1"]


def test_encoding_of_kvm_id(kb):
    from libvirt_arm_cpu.kb.registers import encoding_of_kvm_id
    for reg in kb:
        assert encoding_of_kvm_id(reg.kvm_id) == reg.encoding
    assert encoding_of_kvm_id(0x6030000000100000) is None        # a core register


def test_a_knowledge_base_file_with_an_unknown_encoding_is_one_line(tmp_path):
    from libvirt_arm_cpu.errors import ParseError
    from libvirt_arm_cpu.kb.load import read_kb_file
    bad = tmp_path / "registers.xml"
    bad.write_text("<?xml version='1.0' encoding='x'?><registers/>")
    with pytest.raises(ParseError, match=r"registers.xml:1: unknown encoding 'x' in the XML "
                                         r"declaration"):
        read_kb_file(str(bad), "registers")


def test_a_knowledge_base_file_with_a_doctype_is_refused(tmp_path):
    """The knowledge base goes through the one safe XML reader too."""
    from libvirt_arm_cpu.errors import ParseError
    from libvirt_arm_cpu.kb.load import read_kb_file
    bad = tmp_path / "registers.xml"
    bad.write_text('<!DOCTYPE r [<!ENTITY e "x">]><registers xmlns="urn:x-libvirt-arm-cpu:kb:1"/>')
    with pytest.raises(ParseError, match=r"registers.xml:1: refused: a DOCTYPE"):
        read_kb_file(str(bad), "registers")
