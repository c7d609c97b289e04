"""A host-passthrough guest moving between hosts on stock QEMU: the
destination's KVM must take the source's values (compare_passthrough), and
`migrate-check` / `cpu-compare PROFILE PROFILE` say so with the fields.
What real KVM and QEMU do with the same pairs is in
tests/test_migration_rehearsal.py."""

from __future__ import annotations

import dataclasses
import json

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.engine.compare import IDENTICAL, INCOMPATIBLE, SUPERSET, compare_passthrough
from libvirt_arm_cpu.formats.profile import read_profile, write_profile
from libvirt_arm_cpu.model import HostProfile

from .domains import FIXTURES

N1_612, N1_73 = (FIXTURES / f"neoverse-n1-qemu7.2-linux{k}.xml" for k in ("6.12", "7.3"))
MAX_73, V1_73 = FIXTURES / "max-qemu10.0-linux7.3.xml", FIXTURES / "neoverse-v1-qemu10.0-linux7.3.xml"


def lowered(p: HostProfile, kb, reg: str, field: str, value: int) -> HostProfile:
    """The same host with one field lower, as a host of the same CPU whose
    firmware or kernel hides a feature would be."""
    f = kb.field(reg, field)
    regs = [dataclasses.replace(r, value=f.put(r.value, value)) if r.name == reg else r
            for r in p.registers]
    return dataclasses.replace(p, registers=regs)


def test_a_host_passthrough_guest_moves_neither_way_between_two_kernels(kb):
    """The same CPU on Linux 6.12 and 7.3: the ID registers are equal, but
    6.12 lists TCR2_EL1, PIRE0_EL1 and PIR_EL1 for every vCPU and 7.3 only
    where the CPU has the features; 7.3 lists PMMIR_EL1, offers PSCI 1.3 and
    has a firmware register 6.12 lacks.  (The test bed shows QEMU agree:
    tests/test_migration_rehearsal.py.)"""
    old, new = read_profile(str(N1_612)), read_profile(str(N1_73))
    up = compare_passthrough(old, new, kb)
    assert up.result == INCOMPATIBLE
    assert [(r.register, r.kind) for r in up.reasons] == [
        ("S3_0_C2_C0_3", "absent"), ("S3_0_C10_C2_2", "absent"), ("S3_0_C10_C2_3", "absent")]
    assert "the source's kernel lists it for the guest's vCPU, this host's does not" in \
        up.reasons[0].message
    down = compare_passthrough(new, old, kb)
    assert [(r.register, r.kind) for r in down.reasons] == [
        ("S3_0_C9_C14_6", "absent"), ("PSCI_VERSION", "firmware"),
        ("VENDOR_HYP_BMAP_2", "firmware")]
    assert "PSCI 1.3" in down.reasons[1].message and "PSCI 1.1" in down.reasons[1].message


def test_their_baseline_moves_both_ways(kb):
    from libvirt_arm_cpu.engine.baseline import baseline
    from libvirt_arm_cpu.cli.migrate import check_direction
    from libvirt_arm_cpu.model import CpuModel
    old, new = read_profile(str(N1_612)), read_profile(str(N1_73))
    model = baseline([CpuModel.from_profile(old, kb), CpuModel.from_profile(new, kb)], kb, kb_load.dependencies()).model
    assert model.reg_list == old.reg_list & new.reg_list
    assert check_direction(old, new, kb, model).result != INCOMPATIBLE
    assert check_direction(new, old, kb, model).result != INCOMPATIBLE


def test_firmware_left_unjudged_is_said(kb):
    a = read_profile(str(N1_73))
    c = compare_passthrough(dataclasses.replace(a, firmware=None), a, kb)
    assert c.result == IDENTICAL
    assert "firmware pseudo-registers not judged: the profile of the source does not record " \
        "them (probe again with this version)" in c.notes


def test_lower_to_higher_migrates_and_not_back(kb):
    high = read_profile(str(N1_73))
    low = lowered(high, kb, "ID_AA64ISAR0_EL1", "DP", 0)
    up = compare_passthrough(low, high, kb)
    assert up.result == SUPERSET and up.changes == ["ID_AA64ISAR0_EL1.DP 1 -> 0"]
    down = compare_passthrough(high, low, kb)
    assert down.result == INCOMPATIBLE
    assert [(r.register, r.field, r.kind) for r in down.reasons] == \
        [("ID_AA64ISAR0_EL1", "DP", "needs-higher")]


def test_midr_must_match_even_where_the_kernel_has_capability_239(kb):
    a, b = read_profile(str(MAX_73)), read_profile(str(V1_73))
    assert b.capability("KVM_CAP_ARM_WRITABLE_IMP_ID_REGS") > 0
    c = compare_passthrough(a, b, kb)
    midr = [r for r in c.reasons if r.register == "MIDR_EL1"]
    assert c.result == INCOMPATIBLE and len(midr) == 1
    assert midr[0].kind == "needs-cap-239" and "QEMU never enables" in midr[0].message


def test_a_register_only_the_source_kernel_lists_stops_the_load(kb):
    a = read_profile(str(N1_73))
    gone = next(r for r in a.registers if r.value == 0 and r.name.startswith("ID_AA64"))
    b = dataclasses.replace(a, reg_list=a.reg_list - {gone.kvm_id})
    c = compare_passthrough(a, b, kb)
    assert c.result == INCOMPATIBLE
    assert [(r.register, r.kind) for r in c.reasons] == [(gone.name, "absent")]
    assert "QEMU fails the incoming state" in c.reasons[0].message
    # the other way the destination lists more: QEMU keeps its own value
    assert compare_passthrough(b, a, kb).result == IDENTICAL
    # profiles from before the lists: the ID registers are still compared
    old_a, old_b = (dataclasses.replace(p, reg_list=None) for p in (a, b))
    old_b = dataclasses.replace(old_b, registers=[dataclasses.replace(r, value=None)
                                                  if r.name == gone.name else r
                                                  for r in old_b.registers])
    c = compare_passthrough(old_a, old_b, kb)
    assert [(r.register, r.kind) for r in c.reasons] == [(gone.name, "absent")]
    assert any("register lists not compared" in n for n in c.notes)


@pytest.fixture
def low_high(tmp_path, kb):
    high = read_profile(str(N1_73))
    low = lowered(high, kb, "ID_AA64ISAR0_EL1", "DP", 0)
    paths = tmp_path / "low.xml", tmp_path / "high.xml"
    write_profile(dataclasses.replace(low, hostname="low"), str(paths[0]))
    write_profile(dataclasses.replace(high, hostname="high"), str(paths[1]))
    return tuple(map(str, paths))


def test_migrate_check_both_directions_and_exit_codes(run, low_high):
    low, high = low_high
    r = run("migrate-check", low, high)
    assert r.code == 0, r.err
    lines = r.out.splitlines()
    assert lines[0].startswith("low -> high: migrates (host-passthrough guest; high takes "
                               "ID_AA64ISAR0_EL1.DP 1 -> 0")
    assert lines[1] == "high -> low: refused (host-passthrough guest): 1 reason(s)"
    assert lines[2].strip().startswith("ID_AA64ISAR0_EL1.DP: needs 1, host has 0")
    assert run("migrate-check", low, high, "--both").code == 1
    assert run("migrate-check", high, low).code == 1
    data = json.loads(run("migrate-check", high, low, "--json").out)
    assert [d["migrates"] for d in data["directions"]] == [False, True]
    assert data["directions"][0]["reasons"][0]["field"] == "DP"


def test_migrate_check_with_a_model(run, low_high, tmp_path):
    low, high = low_high
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", low, high, "-o", str(model)).code == 0
    r = run("migrate-check", low, high, "--model", str(model), "--both", "--json")
    data = json.loads(r.out)
    assert r.code == 0 and all(d["migrates"] for d in data["directions"])
    assert data["guest"].startswith("CPU model arm64-")


def test_cpu_compare_takes_a_profile_as_the_cpu(run, low_high):
    low, high = low_high
    r = run("cpu-compare", low, high)
    assert r.code == 0 and "superset" in r.out and "host-passthrough guest" in r.out
    r = run("cpu-compare", high, low, "--json")
    assert r.code == 1 and json.loads(r.out)["reasons"][0]["field"] == "DP"


def test_migrate_check_bad_usage(run, low_high, tmp_path):
    low, _ = low_high
    model = tmp_path / "m.xml"
    assert run("cpu-baseline", low, "-o", str(model)).code == 0
    r = run("migrate-check", str(model), low)
    assert r.code == 2 and "is a CPU model, not a host profile" in r.err
    r = run("migrate-check", low, str(tmp_path / "nope.xml"))
    assert r.code != 0 and "nope.xml" in r.err and len(r.err.splitlines()) == 1
