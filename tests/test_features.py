"""Feature names -> field conditions, checked against the upstream tables."""

from __future__ import annotations

import json

import pytest

from libvirt_arm_cpu.formats.dump import read_dump
from libvirt_arm_cpu.errors import UnknownName
from libvirt_arm_cpu.kb.features import FieldCondition, Group

from .conftest import EXAMPLES


def _values(path):
    from libvirt_arm_cpu.kb.load import registers as load_kb
    return {e.register.name: e.value.raw for e in read_dump(str(path), load_kb())}


def test_every_linux_hwcap_is_mapped(catalog, kb, shared_data):
    table = json.loads((shared_data / "hwcaps.json").read_text())["hwcaps"]
    for entry in table:
        key = entry["hwcap"] if entry["hwcap_type"] == "CAP_HWCAP" else "aarch32:" + entry["hwcap"]
        feat = catalog.feature(key)
        assert feat.condition is not None, key
        if "register" in entry:
            cond = feat.condition
            assert isinstance(cond, FieldCondition), key
            assert (cond.field.register, cond.field.name) == (entry["register"],
                                                              kb.field(entry["register"],
                                                                       entry["field"]).name)
            assert cond.field.from_order(cond.lo) == entry["min_value"], key
            assert cond.field.signed == entry["signed"], key
            assert cond.hi is None, key
        elif "condition_any_of" in entry:
            assert isinstance(feat.condition, Group) and feat.condition.op == "any"
            assert len(feat.condition.terms) == len(entry["condition_any_of"])


def test_every_feat_name_is_mapped(catalog, shared_data):
    table = json.loads((shared_data / "feat_map.json").read_text())["arm_spec_via_lelegard"]
    for name in table:
        assert catalog.feature(name).kind == "feat"
    checkable = [f for f in catalog if f.kind == "feat" and f.condition is not None]
    assert len(checkable) > 300


def test_graviton2_cpuinfo(catalog):
    """The AArch64 hwcaps of a Neoverse N1 as /proc/cpuinfo lists them on an
    AWS Graviton2 (m6g) instance, less evtstrm and cpuid (not from ID registers):
    fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid
    asimdrdm lrcpc dcpop asimddp ssbs."""
    values = _values(EXAMPLES / "qemu-neoverse-n1.regs")
    present = {f.key for f in catalog.present(values) if f.kind == "hwcap"}
    assert present == {"fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32", "atomics",
                       "fphp", "asimdhp", "asimdrdm", "lrcpc", "dcpop", "asimddp", "ssbs"}


def test_cortex_a57_is_plain_armv8(catalog):
    values = _values(EXAMPLES / "qemu-cortex-a57.regs")
    present = {f.key for f in catalog.present(values) if f.kind == "hwcap"}
    assert present == {"fp", "asimd", "aes", "pmull", "sha1", "sha2", "crc32"}


def test_qemu_max_values_give_their_feature(catalog, kb, shared_data):
    """feat_map.json's QEMU-max table: the value QEMU sets for FEAT_X makes
    FEAT_X present (for features decided by that one field)."""
    table = json.loads((shared_data / "feat_map.json").read_text())["qemu_max_cpu"]
    checked = 0
    for entry in table:
        name = entry.get("qemu_comment", "")
        if not name.startswith("FEAT_"):
            continue
        try:
            feat = catalog.feature(name.split()[0].rstrip(","))
        except UnknownName:
            continue
        fields = feat.fields(catalog)
        if feat.condition is None or len(fields) != 1:
            continue
        fld = fields[0]
        if (fld.register, fld.name.upper()) != (entry["register"], entry["field"].upper()):
            continue
        raw = fld.put(0, entry["value"])
        assert feat.holds({fld.register: raw}, catalog) is True, (name, entry)
        checked += 1
    assert checked > 40


def test_three_valued_evaluation(catalog):
    paca = catalog.feature("paca")         # APA or APA3 or API
    assert paca.holds({}, catalog) is None
    assert paca.holds({"ID_AA64ISAR1_EL1": 0}, catalog) is None      # APA3 unknown
    assert paca.holds({"ID_AA64ISAR1_EL1": 0, "ID_AA64ISAR2_EL1": 0}, catalog) is False
    assert paca.holds({"ID_AA64ISAR1_EL1": 1 << 4}, catalog) is True
    fp16 = catalog.feature("FEAT_FP16")
    assert fp16.holds({"ID_AA64PFR0_EL1": 0x1 << 16}, catalog) is True
    assert fp16.holds({"ID_AA64PFR0_EL1": 0x0 << 16}, catalog) is False
    assert fp16.holds({"ID_AA64PFR0_EL1": 0xF << 16}, catalog) is False    # not implemented


def test_signed_conditions(catalog):
    fp = catalog.feature("fp")
    assert fp.holds({"ID_AA64PFR0_EL1": 0}, catalog) is True
    assert fp.holds({"ID_AA64PFR0_EL1": 0xF << 16}, catalog) is False
    tgran4 = catalog.feature("FEAT_TGran4K")
    assert tgran4.holds({"ID_AA64MMFR0_EL1": 0xF << 28}, catalog) is False
    assert tgran4.holds({"ID_AA64MMFR0_EL1": 0x1 << 28}, catalog) is True


def test_feature_references(catalog):
    crypto = catalog.feature("FEAT_Crypto")
    assert crypto.holds({"ID_AA64ISAR0_EL1": 0x1 << 4}, catalog) is True
    assert crypto.holds({"ID_AA64ISAR0_EL1": 0}, catalog) is False
    assert "ID_AA64ISAR0_EL1.SM4" in {str(f) for f in crypto.fields(catalog)}
    given = crypto.satisfied_by({"ID_AA64ISAR0_EL1": 0x1 << 4}, catalog)
    assert [str(f) for f in given] == ["ID_AA64ISAR0_EL1.AES"]


@pytest.mark.parametrize("name, key", [("atomics", "atomics"), ("ATOMICS", "atomics"),
                                       ("FEAT_LSE", "FEAT_LSE"), ("lse", "FEAT_LSE"),
                                       ("feat_dotprod", "FEAT_DotProd"),
                                       ("aarch32:aes", "aarch32:aes"), ("aes", "aes")])
def test_lookup(catalog, name, key):
    assert catalog.feature(name).key == key


def test_unknown_feature_suggests(catalog):
    with pytest.raises(UnknownName, match="did you mean atomics"):
        catalog.feature("atomic")


def test_unavailable_features_say_why(catalog):
    tme = catalog.feature("FEAT_TME")
    assert tme.condition is None and "does not describe" in tme.unavailable
    assert tme.holds({"ID_AA64ISAR0_EL1": 2**64 - 1}, catalog) is None
    etm = catalog.feature("FEAT_ETMv4")
    assert "not a feature ID register" in etm.requires()
