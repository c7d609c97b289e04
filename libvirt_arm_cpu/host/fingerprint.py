"""What this host is made of, cheaply: its CPUs' MIDRs, the QEMU binary, the
kernel and boot -- the fingerprint that says when a cached host profile is
stale (:mod:`.hostcache`).  Reads /proc and /sys only: this runs on the
libvirt hook's path, unlike the probe.
"""

from __future__ import annotations

import os

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.fileio import read_text, which
from libvirt_arm_cpu.model import CpuIdentity, Fingerprint

__all__ = ["read_cpus", "find_qemu", "fingerprint", "current_fingerprint"]


def read_cpus(sysfs: str = "/sys") -> list[CpuIdentity]:
    """Every CPU's MIDR_EL1 and REVIDR_EL1, as Linux exposes them per CPU."""
    base = os.path.join(sysfs, "devices", "system", "cpu")
    cpus = []
    try:
        names = os.listdir(base)
    except OSError:
        return []
    for name in names:
        if not (name.startswith("cpu") and name[3:].isdigit()):
            continue
        ident = os.path.join(base, name, "regs", "identification")
        cpus.append(CpuIdentity(int(name[3:]), _read_hex(os.path.join(ident, "midr_el1")),
                                _read_hex(os.path.join(ident, "revidr_el1"))))
    return sorted(cpus, key=lambda c: c.cpu)


def _read_hex(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip(), 16)
    except (OSError, ValueError):
        return None




def find_qemu(emulator: str | None = None) -> str | None:
    if emulator:
        return emulator if os.path.exists(emulator) else None
    return which("qemu-system-aarch64")



def fingerprint(kernel_release: str, cpus: list[CpuIdentity], qemu_path: str | None,
                boot_id: str) -> Fingerprint:
    """What makes a cached profile stale when it changes."""
    qemu = "none"
    if qemu_path:
        try:
            st = os.stat(qemu_path)
            qemu = f"{qemu_path}:{st.st_size}:{int(st.st_mtime)}"
        except OSError:
            qemu = f"{qemu_path}:missing"
    midrs = ",".join(f"{c.midr:#x}" if c.midr is not None else "?" for c in cpus) or "?"
    return Fingerprint({"kernel-release": kernel_release, "boot-id": boot_id, "qemu": qemu,
                        "midrs": midrs, "tool-version": __version__})


def current_fingerprint(emulator: str | None = None, sysfs: str = "/sys") -> Fingerprint:
    return fingerprint(os.uname().release, read_cpus(sysfs), find_qemu(emulator),
                       read_text("/proc/sys/kernel/random/boot_id"))
