"""The helper on this (x86) machine: what can be checked without arm64 KVM.

The real probes run in the arm64 test bed (tests/test_kvm_*.py); here the
helper must refuse cleanly, and the parts that do not need KVM (QEMU probing,
sysfs reading, cache freshness) are exercised for real.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import shutil

import pytest

from libvirt_arm_cpu.host import fingerprint as fingerprint_mod
from libvirt_arm_cpu.host import hostcache, probe
from libvirt_arm_cpu.errors import NotArm64
from libvirt_arm_cpu.model import CpuIdentity

from .conftest import assert_one_line_error, run_installed


@pytest.mark.parametrize("argv", [["probe", "--output", "-"], ["try-apply", "-"]])
def test_not_aarch64_is_refused(argv):
    r = run_installed("libvirt-arm-cpu-helper", *argv, stdin="ID_AA64ISAR0_EL1=0x0\n")
    if platform.machine() == "aarch64":     # a developer's arm64 box: no refusal there
        assert r.code != 3
        return
    assert_one_line_error(r, 3, f"is an {platform.machine()} machine",
                          "must run on the aarch64 host")


def test_check_machine():
    assert probe.check_machine("aarch64") == "aarch64"
    with pytest.raises(NotArm64, match="this is an riscv64 machine"):
        probe.check_machine("riscv64")


def test_feature_id_space_is_kvms_range():
    encs = probe.feature_id_space()
    assert len(encs) == 192
    from libvirt_arm_cpu.kb.registers import writable_mask_index
    assert [writable_mask_index(*e) for e in encs] == list(range(192))


def test_qemu_missing_is_recorded():
    info = probe.probe_qemu("/nonexistent/qemu-system-aarch64")
    assert info.status == "missing" and "not found" in info.detail


def test_real_qemu_version_and_sysreg_unknown_without_arm64_kvm():
    """The installed QEMU (7.2, bookworm) answers --version; asking it for
    `host` under KVM fails on x86, and that is recorded, not raised."""
    path = shutil.which("qemu-system-aarch64")
    assert path, "qemu-system-aarch64 is installed by contrib/testbed/prepare.sh"
    info = probe.probe_qemu(None, timeout=20)
    assert info.status == "found" and info.path == path
    assert info.version and info.version[0].isdigit()
    assert info.sysreg == "unknown" and info.detail


def test_read_cpus_big_little(tmp_path):
    """No big.LITTLE machine can be emulated here; a sysfs tree shaped like
    one (Linux's regs/identification files) stands in."""
    for cpu, midr in ((0, "0x00000000410fd034"), (1, "0x00000000410fd034"),
                      (2, "0x00000000410fd092"), (3, "0x00000000410fd092")):
        ident = tmp_path / "devices/system/cpu" / f"cpu{cpu}" / "regs/identification"
        ident.mkdir(parents=True)
        (ident / "midr_el1").write_text(midr + "\n")
        (ident / "revidr_el1").write_text("0x0000000000000000\n")
    (tmp_path / "devices/system/cpu/cpufreq").mkdir()
    cpus = fingerprint_mod.read_cpus(str(tmp_path))
    assert [(c.cpu, c.midr) for c in cpus] == [(0, 0x410FD034), (1, 0x410FD034),
                                              (2, 0x410FD092), (3, 0x410FD092)]


def test_fingerprint_changes_with_each_component():
    cpus = [CpuIdentity(0, 0x414FD0C1, 0)]
    base = fingerprint_mod.fingerprint("6.12.1", cpus, None, "boot-a")
    assert base.digest == fingerprint_mod.fingerprint("6.12.1", cpus, None, "boot-a").digest
    assert base.digest != fingerprint_mod.fingerprint("6.12.2", cpus, None, "boot-a").digest
    assert base.digest != fingerprint_mod.fingerprint("6.12.1", cpus, None, "boot-b").digest
    assert base.digest != fingerprint_mod.fingerprint("6.12.1", [CpuIdentity(0, 0x414FD0C2, 0)], None,
                                            "boot-a").digest
    qemu = shutil.which("qemu-system-aarch64")
    assert base.digest != fingerprint_mod.fingerprint("6.12.1", cpus, qemu, "boot-a").digest


def test_current_fingerprint_is_stable():
    assert fingerprint_mod.current_fingerprint().digest == fingerprint_mod.current_fingerprint().digest
    assert fingerprint_mod.current_fingerprint().components["kernel-release"] == os.uname().release


def test_qmp_conversation_with_real_qemu():
    """The QMP exchange the probe uses, against the real QEMU under TCG (the
    only accelerator for aarch64 here), expanding `max` instead of `host`."""
    path = shutil.which("qemu-system-aarch64")
    props = probe._qmp_host_props(path, 20, accel="tcg", model="max")
    assert "sve" in props and "pauth" in props
    assert not any(k.startswith("SYSREG_") for k in props)    # QEMU 7.2: no SYSREG series
    with pytest.raises(probe._QmpFailed, match="QMP query-cpu-model-expansion"):
        probe._qmp_host_props(path, 20, accel="tcg", model="no-such-cpu")


def test_cache_is_used_while_fresh_and_reprobed_when_stale(tmp_path):
    """A fresh cache is served as is; a stale one triggers a probe (which, on
    this x86 machine, refuses: proof that it was attempted)."""
    from libvirt_arm_cpu.formats.profile import from_xml, write_profile

    from .kvm_hosts import FIXTURES
    profile = from_xml((FIXTURES / "neoverse-n1-qemu7.2-linux6.12.xml").read_bytes())
    profile = dataclasses.replace(profile, fingerprint=fingerprint_mod.current_fingerprint())
    cache = tmp_path / "host.xml"
    write_profile(profile, str(cache))
    got, probed = hostcache.cached_profile(str(cache))
    assert probed is False and got == profile and hostcache.is_fresh(got)

    profile.fingerprint.components["kernel-release"] = "5.10.0-old"
    write_profile(profile, str(cache))
    assert not hostcache.is_fresh(profile)
    with pytest.raises(NotArm64):
        hostcache.cached_profile(str(cache))
    with pytest.raises(NotArm64):      # --refresh always probes
        hostcache.cached_profile(str(tmp_path / "missing.xml"), refresh=True)


def test_unexpected_errno_names_the_ioctl():
    """An ioctl on something that is not KVM fails with ENOTTY: the error
    names the ioctl (and maps to the helper's exit code 7)."""
    from libvirt_arm_cpu.host.kvm import Kvm, KvmError
    kvm = Kvm("/dev/null")
    try:
        with pytest.raises(KvmError) as info:
            kvm.check_extension(230)
    finally:
        kvm.close()
    assert str(info.value).startswith("KVM_CHECK_EXTENSION failed: ENOTTY")
    assert info.value.exit_code == 7


def test_qemu_that_hangs_is_bounded(tmp_path):
    """A QEMU that never answers on QMP (stands in for a wedged binary: the
    real one cannot be made to hang on demand) costs at most the timeout."""
    import time
    fake = tmp_path / "qemu-system-aarch64"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo 'QEMU emulator version 9.9.9'; "
                    "exit 0; }\nexec sleep 600\n")
    fake.chmod(0o755)
    t = time.monotonic()
    info = probe.probe_qemu(str(fake), timeout=2)
    assert time.monotonic() - t < 10
    assert (info.status, info.version, info.sysreg) == ("found", "9.9.9", "unknown")
    assert "did not answer on QMP within 2 s" in info.detail
