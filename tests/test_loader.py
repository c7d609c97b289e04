"""The loader's variable, read by the C loader (built natively with the
set-up's gcc and preloaded into /bin/true: its constructor parses before
any ioctl) and by libvirt_arm_cpu.engine.loader: both accept and refuse the same
entries.  Its KVM side runs in the test bed (tests/test_testbed.py)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.engine.loader import (ENV_VALUES, LoaderValueError, environment, parse_entries,
                                    parse_values)

ROOT = Path(__file__).resolve().parent.parent
KB = kb_load.registers()


@pytest.fixture(scope="module")
def native_loader(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("loader") / "loader.so"
    subprocess.run(["sh", str(ROOT / "loader" / "build.sh"), str(out)], check=True)
    return out


def preloaded(lib: Path, value: str | None, debug: bool = False) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(lib)}
    if value is not None:
        env[ENV_VALUES] = value
    if debug:
        env["LIBVIRT_ARM_CPU_LOADER_DEBUG"] = "1"
    return subprocess.run(["/bin/true"], env=env, capture_output=True, text=True, timeout=30)


def test_the_environment_is_what_the_loader_takes(native_loader):
    values = {"ID_AA64ISAR0_EL1": 0x0000100010211120, "MIDR_EL1": 0x414FD0C1,
              "CTR_EL0": 0x84448004}
    env = environment(values, KB)
    text = env[ENV_VALUES]
    assert text.split()[0] == "MIDR_EL1@S3_0_C0_C0_0=0x00000000414fd0c1"
    assert parse_values(text, KB) == values
    p = preloaded(native_loader, text, debug=True)
    assert p.returncode == 0, p.stderr
    assert "3 registers configured (MIDR/REVIDR/AIDR among them: yes)" in p.stderr


def test_firmware_entries_and_hidden_registers(native_loader):
    fw = {"PSCI_VERSION": 0x10001, "VENDOR_HYP_BMAP_2": None}
    text = environment({"CTR_EL0": 0x84448004}, KB, firmware_values=fw)[ENV_VALUES]
    assert text.split()[1:] == ["PSCI_VERSION@FW0=0x0000000000010001",
                                "VENDOR_HYP_BMAP_2@FWBMAP3=absent"]
    assert parse_entries(text, KB) == ({"CTR_EL0": 0x84448004}, fw, frozenset())
    p = preloaded(native_loader, text, debug=True)
    assert p.returncode == 0, p.stderr
    assert "3 registers configured (MIDR/REVIDR/AIDR among them: no); 1 kept out of the " \
        "guest's register list" in p.stderr


def test_hidden_system_registers(native_loader):
    tcr2 = 0x603000000013C103            # TCR2_EL1, S3_0_C2_C0_3: not a feature-ID register
    text = environment({}, KB, hidden={tcr2})[ENV_VALUES]
    assert text == "S3_0_C2_C0_3=absent"
    assert parse_entries(text, KB) == ({}, {}, frozenset({tcr2}))
    p = preloaded(native_loader, text, debug=True)
    assert p.returncode == 0 and "1 kept out of the guest's register list" in p.stderr
    p = preloaded(native_loader, "S3_0_C2_C0_3=0x1")       # hidden, yes; written, no
    assert p.returncode == 1 and "not in KVM's feature-ID space" in p.stderr
    with pytest.raises(LoaderValueError):
        environment({}, KB, hidden={0x6030000000140000})   # a firmware id: FW<n> entries


def test_without_the_variable_the_loader_does_nothing(native_loader):
    p = preloaded(native_loader, None)
    assert (p.returncode, p.stderr) == (0, "")


@pytest.mark.parametrize("value, needle", [
    ("", "is set but has no entries"),
    ("ID_AA64ISAR0_EL1@S3_0_C0_C6_0", "no '='"),
    ("S3_0_C0_C6_0=0x1 S3_0_C0_C6_0=0x2", "named again"),
    ("S3_0_C0_C0_5=0x1", "MPIDR_EL1"),
    ("S3_0_C1_C0_0=0x1", "not in KVM's feature-ID space"),
    ("S3_0_C0_C6_0=12", "does not start with 0x"),
    ("S3_0_C0_C6_0=0x1g", "not a hex digit"),
    ("S3_0_C0_C6_0=0x10000000000000000", "more than 16"),
    ("bad-label@S3_0_C0_C6_0=0x1", "label has '-'"),
    ("S3_0_C0_C6=0x1", "is not an encoding"),
    ("FW16=0x1", "is not FW<n> or FWBMAP<n>"),
    ("FWX=0x1", "is not FW<n> or FWBMAP<n>"),
    ("FWBMAP3=absen", "does not start with 0x"),
    ("PSCI_VERSION@FW0=0x1 FW0=0x2", "named again"),
    ("S3_0_C2_C0_3=absent S3_0_C2_C0_3=absent", "named again"),
    ("S3_0_C0_C6_0=0x1 S3_0_C0_C6_0=absent", "named again"),
    ("S3_0_C16_C0_3=absent", "not a system register encoding"),
])
def test_malformed_values_stop_qemu_and_python_agrees(native_loader, value, needle):
    p = preloaded(native_loader, value)
    assert p.returncode == 1, (value, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("libvirt-arm-cpu-loader: ") and needle in lines[0]
    with pytest.raises(LoaderValueError):
        parse_values(value, KB)


def test_the_loader_builds_warning_free_for_arm64():
    """The flags of loader/build.sh (-Wall -Wextra -Werror) with the cross
    compiler the test bed uses."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"lac-loader-{os.getpid()}.so"
    try:
        subprocess.run(["sh", str(ROOT / "loader" / "build.sh"), str(out)], check=True,
                       env={**os.environ, "CC": "aarch64-linux-gnu-gcc"})
        head = out.read_bytes()[:20]
        assert head[:4] == b"\x7fELF" and head[18] == 0xB7      # EM_AARCH64
    finally:
        out.unlink(missing_ok=True)
