"""The generated knowledge base: fresh, valid, and right about the facts we rely on."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import xmlschema

from libvirt_arm_cpu.kb import gen as kbgen
from libvirt_arm_cpu.kb.registers import EXACT, LOWER_SAFE, MUST_MATCH

from .conftest import ROOT, XML_DIR


def test_committed_files_are_not_stale(shared_data):
    """Regenerating from ../shared/data gives the committed files byte for byte."""
    fresh = kbgen.generate(shared_data / "sysreg", shared_data)
    for name, data in fresh.items():
        committed = (XML_DIR / name).read_bytes()
        assert committed == data, (f"xml/{name} is stale: run python -m libvirt_arm_cpu.kb.gen "
                                   f"{shared_data / 'sysreg'}")


@pytest.mark.parametrize("name", kbgen.OUTPUTS)
def test_committed_files_match_schema(name):
    xmlschema.XMLSchema(str(XML_DIR / "schemas" / "kb.xsd")).validate(str(XML_DIR / name))


def test_check_mode_detects_stale_file(shared_data, tmp_path):
    out = tmp_path / "xml"
    shutil.copytree(XML_DIR, out)
    args = [sys.executable, "-m", "libvirt_arm_cpu.kb.gen", "-q", str(shared_data / "sysreg"),
            "--output-dir", str(out), "--check"]
    assert subprocess.run(args, capture_output=True, cwd=ROOT).returncode == 0
    reg = out / "registers.xml"
    reg.write_text(reg.read_text().replace('name="DP"', 'name="DQ"'))
    proc = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 1
    assert "stale: registers.xml" in proc.stderr


def test_generator_writes_into_a_directory(shared_data, tmp_path):
    out = tmp_path / "xml"
    shutil.copytree(XML_DIR / "schemas", out / "schemas")
    assert kbgen.main([str(shared_data / "sysreg"), "-q", "--output-dir", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted([*kbgen.OUTPUTS, "schemas"])
    for name in kbgen.OUTPUTS:
        assert (out / name).read_bytes() == (XML_DIR / name).read_bytes()


def _gen_cli(*argv, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "libvirt_arm_cpu.kb.gen", *argv],
                          capture_output=True, text=True, cwd=cwd)


def test_garbled_sysreg_is_refused_without_writing(shared_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shared_data, data, ignore=shutil.ignore_patterns("cpus"))
    text = (shared_data / "sysreg").read_text().splitlines()
    isar0 = next(i for i, line in enumerate(text) if line.startswith("Sysreg\tID_AA64ISAR0_EL1"))
    text[isar0 + 5] = "UnsignedEnum\t59:55\tTLB"     # one bit too wide
    (data / "sysreg").write_text("\n".join(text) + "\n")
    out = tmp_path / "xml"
    shutil.copytree(XML_DIR, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.xml")}
    proc = _gen_cli(str(data / "sysreg"), "--output-dir", str(out))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    # TLB now ends at bit 55, so the next field (TS, 5 lines on) starts too high
    assert f"{data / 'sysreg'}:{isar0 + 11}: ID_AA64ISAR0_EL1.TS starts at bit 55, expected 54" \
        in proc.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.xml")} == before
    assert not list(out.glob(".*.tmp"))


def test_truncated_sysreg(shared_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shared_data, data, ignore=shutil.ignore_patterns("cpus"))
    raw = (shared_data / "sysreg").read_text()
    start = raw.index("Sysreg\tID_AA64ISAR0_EL1")
    (data / "sysreg").write_text(raw[: raw.index("\n", start + 60) + 1])   # whole lines
    proc = _gen_cli(str(data / "sysreg"), "--output-dir", str(tmp_path))
    assert proc.returncode == 1
    assert "never closed (file truncated?)" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_missing_json_facts(shared_data, tmp_path):
    shutil.copy(shared_data / "sysreg", tmp_path / "sysreg")
    proc = _gen_cli(str(tmp_path / "sysreg"), "--output-dir", str(tmp_path))
    assert proc.returncode == 2
    assert "ftr_policies.json" in proc.stderr and "--data" in proc.stderr
    assert proc.stderr.count("\n") == 1


def test_inconsistent_policy_is_refused(shared_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(shared_data, data, ignore=shutil.ignore_patterns("cpus"))
    ftr = json.loads((shared_data / "ftr_policies.json").read_text())
    dp = next(f for f in ftr["registers"]["ID_AA64ISAR0_EL1"]["fields"] if f["field"] == "DP")
    dp["shift"] = 40
    (data / "ftr_policies.json").write_text(json.dumps(ftr))
    with pytest.raises(kbgen.GenError, match=r"ID_AA64ISAR0_EL1.DP: sysreg says bits 47:44"):
        kbgen.generate(data / "sysreg", data)


# -- tripwires: facts the engine depends on.  If one fails after a refresh
# from a newer kernel, teach the code what changed; do not just edit the number.

def test_tripwire_feature_id_space(kb):
    regs = {r.name: r for r in kb}
    assert regs["ID_AA64ISAR0_EL1"].field("DP").bits == "47:44"
    assert regs["ID_AA64PFR0_EL1"].kvm_id == 0x603000000013C020    # Firecracker's docs use it
    # KVM_ARM_FEATURE_ID_RANGE_IDX, per landscape.md's table
    expected_index = {"MIDR_EL1": 0, "MPIDR_EL1": 5, "REVIDR_EL1": 6, "ID_PFR0_EL1": 8,
                      "ID_DFR0_EL1": 10, "ID_AA64PFR0_EL1": 32, "ID_AA64ZFR0_EL1": 36,
                      "ID_AA64DFR0_EL1": 40, "ID_AA64ISAR0_EL1": 48, "ID_AA64MMFR4_EL1": 60,
                      "CLIDR_EL1": 65, "AIDR_EL1": 71, "CTR_EL0": 129, "DCZID_EL0": 135}
    assert {n: regs[n].mask_index for n in expected_index} == expected_index
    assert regs["CTR_EL0"].kvm_id == 0x603000000013D801
    assert regs["AIDR_EL1"].kvm_id == 0x603000000013C807
    assert {"MIDR_EL1", "REVIDR_EL1", "AIDR_EL1", "CTR_EL0", "CLIDR_EL1",
            "DCZID_EL0"} <= set(regs)
    for reg in kb:
        assert reg.mask_index is not None and 0 <= reg.mask_index < 192


def test_tripwire_policies(kb):
    dfr0 = kb.register("ID_AA64DFR0_EL1")
    assert dfr0.field("DebugVer").policy == EXACT and dfr0.field("DebugVer").safe == 6
    assert dfr0.field("DebugVer").effective_policy == LOWER_SAFE
    assert dfr0.field("PMUVer").effective_policy == LOWER_SAFE
    assert kb.field("ID_DFR0_EL1", "PerfMon").effective_policy == LOWER_SAFE
    assert kb.field("ID_AA64ISAR0_EL1", "DP").policy == LOWER_SAFE
    assert kb.field("CTR_EL0", "CWG").policy == "higher-or-zero-safe"
    tgran4 = kb.field("ID_AA64MMFR0_EL1", "TGRAN4")
    assert tgran4.signed and tgran4.order(0xF) == -1
    # a field cpufeature.c does not list must stay as the host has it
    assert kb.field("ID_PFR0_EL1", "RAS").policy == MUST_MATCH
    assert kb.register("MIDR_EL1").kind == "implementation-id"


def test_every_policy_comes_from_the_kernel_table(kb, shared_data):
    """Each field's policy and safe value equal ftr_policies.json's entry."""
    ftr = json.loads((shared_data / "ftr_policies.json").read_text())["registers"]
    checked = 0
    for reg in kb:
        table = {f["field"]: f for f in ftr.get(reg.name, {}).get("fields", []) if f["field"]}
        for fld in reg.fields:
            entry = table.get(fld.name)
            if entry is None:
                assert fld.policy == MUST_MATCH, fld
                continue
            assert fld.policy == kbgen.FTR_POLICY[entry["type"]], fld
            assert fld.safe == entry["safe_val"], fld
            assert fld.signed == (entry["sign"] == "FTR_SIGNED"), fld
            assert (fld.lsb, fld.width) == (entry["shift"], entry["width"]), fld
            checked += 1
    assert checked > 250


def test_tripwire_kvm_setter_limits(kb):
    """KVM's setters refuse DebugVer/CopDbg below 6 and PerfMon 1..2 (seen on
    real KVM: DebugVer 6 -> 2 is EINVAL); the rules must say so."""
    from libvirt_arm_cpu.engine.rules import field_accepts
    debugver = kb.field("ID_AA64DFR0_EL1", "DebugVer")
    assert field_accepts(debugver, 6, 8) and not field_accepts(debugver, 2, 6)
    perfmon = kb.field("ID_DFR0_EL1", "PerfMon")
    assert field_accepts(perfmon, 0, 4) and field_accepts(perfmon, 3, 4)
    assert not field_accepts(perfmon, 2, 4) and not field_accepts(perfmon, 5, 4)
    assert kb.field("ID_DFR0_EL1", "CopDbg").kvm_min == 6


@pytest.mark.parametrize("name", ["EL0", "EL1"])
def test_tripwire_el0_el1_cannot_be_removed(kb, name):
    """Linux 7.3 refuses ID_AA64PFR0_EL1.EL0/EL1 = 0 (seen on the test bed)."""
    from libvirt_arm_cpu.engine.rules import field_accepts
    field = kb.field("ID_AA64PFR0_EL1", name)
    assert not field_accepts(field, 0, 1) and field_accepts(field, 1, 2)
