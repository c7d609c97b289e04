"""Host profile XML: round trips through the schema, and bad files are refused."""

from __future__ import annotations

import dataclasses
import re
import pytest
from hypothesis import given, settings, strategies as st

from libvirt_arm_cpu.errors import DataError, ParseError
from libvirt_arm_cpu.host.probe import feature_id_space, register_name
from libvirt_arm_cpu.formats.profile import from_xml, read_profile, to_xml, validate, write_profile
from libvirt_arm_cpu.model import CpuIdentity, Fingerprint, HostProfile, ProfileRegister, QemuInfo
from libvirt_arm_cpu.kb.registers import kvm_reg_id, writable_mask_index
from libvirt_arm_cpu.kb.load import registers as load_kb

u64 = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def profiles(draw):
    kb = load_kb()
    known = draw(st.booleans())
    regs = []
    for enc in feature_id_space():
        value = draw(st.one_of(st.none(), u64))
        regs.append(ProfileRegister(register_name(kb, enc), enc, kvm_reg_id(*enc),
                                    writable_mask_index(*enc), value,
                                    draw(u64) if known else None))
    qemu = draw(st.sampled_from([
        QemuInfo("found", "/usr/bin/qemu-system-aarch64", "10.0.2", "no"),
        QemuInfo("found", "/usr/bin/qemu-system-aarch64", "11.1.0", "yes"),
        QemuInfo("missing", None, None, "unknown", "qemu-system-aarch64 not found on PATH"),
        QemuInfo("found", "/opt/q", "7.2.22", "unknown", "QMP: <&> \"quoted\""),
    ]))
    midrs = draw(st.lists(st.sampled_from([0x414FD0C1, 0x410FD034, 0x410FD092]),
                          min_size=1, max_size=4))
    return HostProfile(
        hostname=draw(st.text(alphabet="abc-.0123", min_size=1, max_size=10)),
        machine="aarch64", kernel_release="6.12.118+deb13-cloud-arm64",
        kernel_version="#1 SMP Debian 6.12.118-1 (2026-01-01)",
        probed_at="2026-11-24T21:00:00Z", tool_version="0.1.0", qemu=qemu,
        vcpu_features=draw(st.sampled_from([[], ["pmu"], ["pmu", "sve", "ptrauth"]])),
        capabilities={"KVM_CAP_ARM_SVE": (170, draw(st.integers(0, 1))),
                      "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES": (230, 1 if known else 0)},
        cpus=[CpuIdentity(i, m, 0) for i, m in enumerate(midrs)],
        registers=regs, masks_known=known,
        fingerprint=Fingerprint({"kernel-release": "6.12.118", "boot-id": "x"}))


@settings(max_examples=25, deadline=None)
@given(profiles())
def test_round_trip_through_the_schema(profile):
    data = to_xml(profile)
    validate(data, "p.xml")
    back = from_xml(data, "p.xml")
    assert back == profile
    assert to_xml(back) == data
    assert back.heterogeneous == (len({c.midr for c in profile.cpus}) > 1)


def _valid_xml() -> bytes:
    kb = load_kb()
    regs = [ProfileRegister(register_name(kb, e), e, kvm_reg_id(*e), writable_mask_index(*e),
                            0, 0) for e in feature_id_space()]
    p = HostProfile("h", "aarch64", "6.12", "#1", "2026-11-24T21:00:00Z", "0.1.0",
                    QemuInfo("missing", detail="none"), [], {}, [CpuIdentity(0, 1, 0)], regs, True)
    return to_xml(p)


def test_write_and_read_file(tmp_path):
    p = from_xml(_valid_xml())
    path = tmp_path / "host.xml"
    write_profile(p, str(path))
    assert read_profile(str(path)) == p
    assert [f.name for f in tmp_path.iterdir()] == ["host.xml"]


@pytest.mark.parametrize("mutate, needle", [
    (lambda x: x.replace(b'writable-masks="known"', b'writable-masks="maybe"'),
     "not a valid host profile"),
    (lambda x: x.replace(b'value="0x0000000000000000"', b'value="12"', 1),
     "not a valid host profile"),
    (lambda x: x.replace(b"<hostprofile", b"<hostprofil").replace(b"</hostprofile", b"</hostprofil"),
     "not a valid host profile"),
    (lambda x: x[: len(x) // 2], "not well-formed"),
])
def test_invalid_files_are_refused(tmp_path, mutate, needle):
    path = tmp_path / "bad.xml"
    path.write_bytes(mutate(_valid_xml()))
    with pytest.raises(ParseError) as info:
        read_profile(str(path))
    assert needle in str(info.value) and str(path) in str(info.value)


def test_unvalidated_read_still_checks_the_root(tmp_path):
    path = tmp_path / "domain.xml"
    path.write_bytes(b"<domain type='kvm'><name>x</name></domain>")
    with pytest.raises(ParseError, match="not a host profile: root element is <domain>"):
        read_profile(str(path), validate_schema=False)


def test_entity_expansion_is_refused(tmp_path):
    bomb = (b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
            b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">'
            b'<!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]><hostprofile>&d;</hostprofile>')
    path = tmp_path / "bomb.xml"
    path.write_bytes(bomb)
    with pytest.raises(ParseError):
        read_profile(str(path))


def test_invalid_profile_is_not_written(tmp_path):
    p = from_xml(_valid_xml())
    p = dataclasses.replace(p, hostname="x", probed_at="yesterday")
    with pytest.raises(DataError, match="refusing to write an invalid profile"):
        write_profile(p, str(tmp_path / "h.xml"))
    assert not list(tmp_path.iterdir())


# -- vCPU-feature-off records and the loader ----------------------------------

from .conftest import assert_one_line_error, run_installed  # noqa: E402
from .kvm_hosts import FIXTURES  # noqa: E402

V1 = FIXTURES / "neoverse-v1-qemu10.0-linux7.3.xml"


def test_captured_hosts_are_named_after_what_they_are():
    """The test bed names each guest after its line of hosts.txt before the
    probe (tests/kvm_hosts.py guest_job), so messages name the host, never
    '(none)'."""
    fixtures = sorted(FIXTURES.glob("*.xml"))
    assert fixtures
    for f in fixtures:
        assert read_profile(str(f), validate_schema=False).hostname == f.stem, f.name


def test_loader_and_vcpu_off_are_read_and_old_profiles_mean_unknown():
    p = read_profile(str(V1))
    assert p.loader.status == "found" and p.loader.path.endswith("libvirt-arm-cpu-loader.so")
    assert p.can_switch_off("sve") and p.values(off=["sve"])["ID_AA64ZFR0_EL1"] == 0
    old = V1.read_bytes()
    import re
    old = re.sub(rb"\s*<off features=.*?</off>", b"", old, flags=re.S)
    old = re.sub(rb"\s*<loader [^>]*/>", b"", old)
    validate(old, "old.xml")
    q = from_xml(old, "old.xml")
    assert q.vcpu_off is None and q.loader.status == "missing"
    assert not q.can_switch_off("sve") and q.can_switch_off("pmu") is False
    with pytest.raises(DataError, match="vCPU feature sve off .* probe it again"):
        q.values(off=("sve",))
    assert q.values() == p.values()


@pytest.mark.parametrize("bad, needle", [
    (b'<off features="sve avx">', "avx"),
    (b'<off features="sve pmu">', "sve pmu"),
])
def test_malformed_vcpu_off_is_one_line_exit_1(tmp_path, bad, needle):
    data = V1.read_bytes().replace(b'<off features="sve">', bad)
    path = tmp_path / "bad.xml"
    path.write_bytes(data)
    r = run_installed("libvirt-arm-cpu", "host", "--profile", str(path))
    assert_one_line_error(r, 1, "bad.xml", needle)
    # without the schema (the hook's way) the parser refuses it too
    with pytest.raises(ParseError, match="off features"):
        from_xml(data, "bad.xml")


def test_malformed_vcpu_off_value_without_the_schema():
    data = re.sub(rb'(<off features="sve">(?:(?!</off>).)*?<register name="ID_AA64ZFR0_EL1") '
                  rb'value="0x[0-9a-f]+"', rb'\1 value="zero"', V1.read_bytes(), count=1,
                  flags=re.S)
    assert b'value="zero"' in data
    with pytest.raises(ParseError, match="ID_AA64ZFR0_EL1.*zero"):
        from_xml(data, "bad.xml")
