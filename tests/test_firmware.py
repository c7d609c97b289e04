"""KVM's firmware pseudo-registers: the acceptance rules the destination's
kernel applies to the values QEMU migrates (libvirt_arm_cpu.kb.firmware), and
their record in host profiles.  That the rules are KVM's is shown on the test
bed (tests/test_migration_rehearsal.py: a guest from a host whose KVM says
SMCCC_ARCH_WORKAROUND_3 is not required does not load where it is)."""

from __future__ import annotations

import dataclasses

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.kb.firmware import BY_NAME, FIRMWARE_REGISTERS, describe, refusals
from libvirt_arm_cpu.formats.profile import from_xml, read_profile, to_xml

from .domains import FIXTURES

PSCI_1_0, PSCI_1_1 = 0x10000, 0x10001


def names(rs):
    return [r.register for r in rs]


def test_the_register_ids_are_kvms():
    # KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_FW (0x14) / FW_FEAT_BMAP (0x16) | index
    assert BY_NAME["PSCI_VERSION"].kvm_id == 0x6030000000140000
    assert BY_NAME["SMCCC_ARCH_WORKAROUND_3"].kvm_id == 0x6030000000140003
    assert BY_NAME["STD_BMAP"].kvm_id == 0x6030000000160000
    assert BY_NAME["VENDOR_HYP_BMAP_2"].kvm_id == 0x6030000000160003
    assert len({r.kvm_id for r in FIRMWARE_REGISTERS}) == len(FIRMWARE_REGISTERS)


@pytest.mark.parametrize("reg", ["SMCCC_ARCH_WORKAROUND_1", "SMCCC_ARCH_WORKAROUND_3"])
def test_a_mitigation_level_above_the_destinations_is_refused(reg):
    refused = refusals({reg: 2}, {reg: 1})
    assert names(refused) == [reg]
    assert "the source has 2 (not required), this host 1 (available)" in refused[0].message
    assert refusals({reg: 1}, {reg: 2}) == []
    assert refusals({reg: 0}, {reg: 0}) == []


def test_workaround_2_is_compared_in_kvms_two_classes():
    wa2 = "SMCCC_ARCH_WORKAROUND_2"
    # NOT_AVAIL (0) and UNKNOWN (1) count as NOT_AVAIL; AVAIL (2) and NOT_REQUIRED (3) as
    # NOT_REQUIRED
    assert refusals({wa2: 1}, {wa2: 0}) == []
    assert names(refusals({wa2: 2}, {wa2: 0})) == [wa2]
    assert refusals({wa2: 2}, {wa2: 3}) == []
    assert refusals({wa2: 3}, {wa2: 3}) == []
    assert names(refusals({wa2: 0x40 | 3}, {wa2: 3})) == [wa2]     # bits KVM does not know


def test_psci_version_and_service_bitmaps():
    assert names(refusals({"PSCI_VERSION": PSCI_1_1}, {"PSCI_VERSION": PSCI_1_0})) == \
        ["PSCI_VERSION"]
    assert "PSCI 1.1" in str(refusals({"PSCI_VERSION": PSCI_1_1},
                                      {"PSCI_VERSION": PSCI_1_0})[0])
    assert refusals({"PSCI_VERSION": PSCI_1_0}, {"PSCI_VERSION": PSCI_1_1}) == []
    r = refusals({"STD_HYP_BMAP": 0b111}, {"STD_HYP_BMAP": 0b011})
    assert names(r) == ["STD_HYP_BMAP"] and "services 0x4" in r[0].message
    assert refusals({"STD_HYP_BMAP": 0b001}, {"STD_HYP_BMAP": 0b011}) == []


def test_a_register_only_one_kernel_has():
    r = refusals({"VENDOR_HYP_BMAP_2": 0}, {"VENDOR_HYP_BMAP_2": None})
    assert names(r) == ["VENDOR_HYP_BMAP_2"] and "this host's kernel does not" in r[0].message
    assert refusals({"VENDOR_HYP_BMAP_2": None}, {"VENDOR_HYP_BMAP_2": 0}) == []
    assert refusals({}, {"STD_BMAP": 1}) == []


def test_describe():
    assert describe("PSCI_VERSION", PSCI_1_1) == "PSCI 1.1"
    assert describe("SMCCC_ARCH_WORKAROUND_2", 3) == "3 (not required)"
    assert describe("STD_BMAP", 1) == "0x1"


def test_every_fixture_records_the_firmware_registers():
    for path in sorted(FIXTURES.glob("*.xml")):
        fw = read_profile(str(path)).firmware
        assert fw is not None, path.name
        assert fw["PSCI_VERSION"] is not None and fw["SMCCC_ARCH_WORKAROUND_3"] is not None


def test_the_profile_record_round_trips_and_is_checked():
    p = read_profile(str(FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml"))
    fw = {r.name: None for r in FIRMWARE_REGISTERS} | {"PSCI_VERSION": PSCI_1_1,
                                                       "SMCCC_ARCH_WORKAROUND_3": 1}
    q = dataclasses.replace(p, firmware=fw)
    assert from_xml(to_xml(q)).firmware == fw
    bad = to_xml(q).replace(b'name="STD_BMAP"', b'name="NO_SUCH_BMAP"')
    with pytest.raises(ParseError, match="firmware><register name='NO_SUCH_BMAP'"):
        from_xml(bad, "bad.xml")
    older = dataclasses.replace(p, firmware=None)
    assert b"<firmware" not in to_xml(older) and from_xml(to_xml(older)).firmware is None


# -- firmware in CPU models: baseline, XML, compare, translate, metadata ------

def n1_pool(kb):
    from libvirt_arm_cpu.engine.baseline import baseline
    from libvirt_arm_cpu.model import CpuModel
    return baseline([CpuModel.from_profile(read_profile(str(FIXTURES / f"{n}.xml")), kb, n)
                     for n in ("neoverse-n1-qemu7.2-linux6.12", "neoverse-n1-qemu7.2-linux7.3")], kb, kb_load.dependencies()).model


def test_the_baseline_of_two_kernels_takes_what_both_offer(kb):
    model = n1_pool(kb)
    assert model.firmware == {"PSCI_VERSION": PSCI_1_1, "STD_BMAP": 1, "STD_HYP_BMAP": 1,
                              "VENDOR_HYP_BMAP": 3, "VENDOR_HYP_BMAP_2": None}
    from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml, to_xml as model_to_xml
    back = model_from_xml(model_to_xml(model, []))
    assert back.firmware == model.firmware and back.name == model.name
    bad = model_to_xml(model, []).replace(b'name="STD_BMAP"', b'name="WORKAROUND"')
    with pytest.raises(ParseError, match="<firmware name='WORKAROUND'>"):
        model_from_xml(bad, "m.xml")


def test_compare_names_the_firmware_it_changes_and_needs_the_loader(kb):
    from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, SUPERSET, compare
    from libvirt_arm_cpu.model import LoaderInfo
    model = n1_pool(kb)
    new = read_profile(str(FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml"))
    c = compare(model, new, kb)
    assert c.result == SUPERSET and c.changes == [
        "firmware PSCI_VERSION PSCI 1.3 -> PSCI 1.1", "firmware VENDOR_HYP_BMAP_2 0x0 -> hidden"]
    bare = dataclasses.replace(new, loader=LoaderInfo("missing"))
    c = compare(model, bare, kb)
    assert c.result == INCOMPATIBLE and "only the loader makes" in c.reasons[0].message
    # a model asking for more than the host's KVM offers
    greedy = dataclasses.replace(model, firmware={**model.firmware, "STD_HYP_BMAP": 0b11})
    c = compare(greedy, new, kb)
    assert c.result == INCOMPATIBLE and [r.register for r in c.reasons] == ["STD_HYP_BMAP"]
    assert "the model has 0x3" in c.reasons[0].message


def test_translate_gives_the_loader_the_firmware_and_the_metadata_keeps_it(run, kb, tmp_path,
                                                                         monkeypatch):
    from libvirt_arm_cpu.formats.cpumodel import to_xml as model_to_xml
    from libvirt_arm_cpu.formats.domain import Domain, translation_element, translation_from_element
    from .domains import custom_cpu, domain_xml, with_sysreg
    model = n1_pool(kb)
    models = tmp_path / "models"
    models.mkdir()
    (models / f"{model.name}.xml").write_bytes(model_to_xml(model, []))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(models))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    dom = tmp_path / "g.xml"
    dom.write_text(domain_xml(cpu=custom_cpu(model.name)))
    host = str(FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml")
    out = tmp_path / "arm.xml"
    r = run("translate", str(dom), "--host", host, "-o", str(out))
    assert r.code == 0, r.err
    text = out.read_text()
    assert "PSCI_VERSION@FW0=0x0000000000010001" in text
    assert "VENDOR_HYP_BMAP_2@FWBMAP3=absent" in text
    t = Domain.parse(out.read_bytes(), "arm.xml").translation
    assert t.firmware == model.firmware and t.method == "loader"
    assert translation_from_element(translation_element(t), "x").firmware == model.firmware
    sysreg_host = with_sysreg(FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml", tmp_path / "s.xml")
    r = run("translate", str(dom), "--host", str(sysreg_host), "--method", "sysreg")
    assert r.code == 1 and "only the loader can give a guest" in r.err
    # on the older kernel the same model needs nothing: the loader still
    # writes every register, and no register is left out there
    old = str(FIXTURES / "neoverse-n1-qemu7.2-linux6.12.xml")
    r = run("validate", str(out), "--host", old, "--json")
    assert r.code == 0, r.err
