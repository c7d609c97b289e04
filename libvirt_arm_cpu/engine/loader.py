"""The ID-register loader's side in Python: where it is installed and the
environment that tells it a guest's registers.

The loader (``loader/libvirt-arm-cpu-loader.c``) is preloaded into a stock
QEMU and writes the registers with ``KVM_SET_ONE_REG`` after each vCPU init
of the guest's VM, before QEMU takes its own copy (which it then keeps,
re-writes and migrates).  It reads one variable::

    LIBVIRT_ARM_CPU_ID_REGS="ID_AA64ISAR0_EL1@S3_0_C0_C6_0=0x0000100010211120 ..."

entries separated by spaces, ``LABEL@`` optional (messages only), the whole
register value.  KVM's firmware pseudo-registers a CPU model sets
(libvirt_arm_cpu.kb.firmware) are ``FW<n>`` / ``FWBMAP<n>`` entries, whose value
may be ``absent``: the loader then keeps the register out of the guest's
register list (and so out of QEMU's migration stream).  :func:`environment` writes it, :func:`parse_values` reads
it back with the loader's own rules, so a domain's ``<qemu:env>`` can be
checked without starting QEMU.
"""

from __future__ import annotations

import re

from libvirt_arm_cpu.paths import readable_file
from libvirt_arm_cpu.kb import firmware
from libvirt_arm_cpu.errors import DataError
from libvirt_arm_cpu.kb.registers import (KnowledgeBase, Register, encoding_of_kvm_id, in_feature_id_space, kvm_reg_id)

__all__ = ["LOADER_PATH", "ENV_PRELOAD", "ENV_VALUES", "ENV_DEBUG", "ENV_NAMES", "environment",
           "parse_values", "parse_entries", "installed", "LoaderValueError"]

# Debian's QEMU module directory: libvirt's AppArmor profile for QEMU
# (/etc/apparmor.d/abstractions/libvirt-qemu) lets QEMU map files under
# /usr/lib/@{multiarch}/qemu/, so the preload needs no profile change.
LOADER_PATH = "/usr/lib/aarch64-linux-gnu/qemu/libvirt-arm-cpu-loader.so"
ENV_PRELOAD = "LD_PRELOAD"
ENV_VALUES = "LIBVIRT_ARM_CPU_ID_REGS"
ENV_DEBUG = "LIBVIRT_ARM_CPU_LOADER_DEBUG"
ENV_NAMES = (ENV_PRELOAD, ENV_VALUES)

# MPIDR_EL1 is per vCPU (KVM sets it from the vCPU index): never a model's.
_MPIDR = (3, 0, 0, 0, 5)
# an entry of the loader's variable; compiled when first used (re keeps
# them): the hook's check writes entries, it does not read them
_ENTRY = (r"(?:([A-Za-z0-9_]{1,63})@)?S(\d{1,2})_(\d{1,2})_C(\d{1,2})_C(\d{1,2})_(\d{1,2})"
          r"=(?:0x([0-9A-Fa-f]{1,16})|(absent))")
_FW_ENTRY = r"(?:([A-Za-z0-9_]{1,63})@)?FW(BMAP)?(\d{1,2})=(?:0x([0-9A-Fa-f]{1,16})|(absent))"


class LoaderValueError(DataError):
    """The loader's variable is malformed (the loader would stop QEMU)."""


def _encoding_text(enc: tuple[int, int, int, int, int]) -> str:
    op0, op1, crn, crm, op2 = enc
    return f"S{op0}_{op1}_C{crn}_C{crm}_{op2}"


def _firmware_encoding(name: str) -> str:
    reg = firmware.BY_NAME[name]
    kind = "FWBMAP" if reg.kvm_id & 0x0016_0000 == 0x0016_0000 else "FW"
    return f"{kind}{reg.kvm_id & 0xffff}"


def hidden_registers(listed: frozenset[int], allowed: frozenset[int]) -> frozenset[int]:
    """What the loader keeps out of a guest vCPU's register list: the system
    registers *listed* for it that the model's list *allowed* lacks (only
    system registers can be given as ``=absent`` entries; firmware ones go
    by name)."""
    return frozenset(i for i in listed - allowed if encoding_of_kvm_id(i) is not None)


def environment(values: dict[str, int], kb: KnowledgeBase, path: str = LOADER_PATH,
                firmware_values: dict[str, int | None] | None = None,
                hidden: frozenset[int] | set[int] = frozenset()) -> dict[str, str]:
    """``LD_PRELOAD`` and ``LIBVIRT_ARM_CPU_ID_REGS`` for a guest that must
    read *values* (register name -> whole value), in encoding order, then
    the firmware pseudo-registers *firmware_values* (None: keep it out of the
    guest's register list), then the system registers *hidden* (KVM ids) to
    keep out of it.

    :raise LoaderValueError: a register outside KVM's feature-ID space or
        MPIDR_EL1 (the loader would refuse it), or a hidden id that is not
        a system register.
    """
    regs: list[Register] = sorted((kb.register(n) for n in values), key=lambda r: r.encoding)
    entries = []
    for reg in regs:
        if reg.encoding == _MPIDR or not in_feature_id_space(*reg.encoding):
            raise LoaderValueError(f"register {reg.name} ({_encoding_text(reg.encoding)}) "
                                   f"cannot be given to the loader: it writes KVM's "
                                   f"feature-ID registers only")
        entries.append(f"{reg.name}@{_encoding_text(reg.encoding)}=0x{values[reg.name]:016x}")
    for name in sorted(firmware_values or {}, key=lambda n: firmware.BY_NAME[n].kvm_id):
        v = (firmware_values or {})[name]
        entries.append(f"{name}@{_firmware_encoding(name)}="
                       + ("absent" if v is None else f"0x{v:016x}"))
    by_encoding = {r.encoding: r.name for r in kb}
    for reg_id in sorted(hidden):
        enc = encoding_of_kvm_id(reg_id)
        if enc is None:
            raise LoaderValueError(f"register {reg_id:#x} cannot be kept out of the guest's "
                                   f"list by the loader: not a system register")
        label = by_encoding.get(enc)
        entries.append((f"{label}@" if label else "") + f"{_encoding_text(enc)}=absent")
    return {ENV_PRELOAD: path, ENV_VALUES: " ".join(entries)}


def parse_values(text: str, kb: KnowledgeBase, source: str = ENV_VALUES) -> dict[str, int]:
    """The ID register values in a ``LIBVIRT_ARM_CPU_ID_REGS`` value (see
    :func:`parse_entries`)."""
    return parse_entries(text, kb, source)[0]


def parse_entries(text: str, kb: KnowledgeBase, source: str = ENV_VALUES
                  ) -> tuple[dict[str, int], dict[str, int | None], frozenset[int]]:
    """The ID register values, the firmware pseudo-registers (None: kept
    out of the guest's list) and the system registers kept out of it (KVM
    ids) in a ``LIBVIRT_ARM_CPU_ID_REGS`` value, by the loader's rules
    (register names from *kb*; an encoding it does not know keeps its
    generic name).

    :raise LoaderValueError: naming the entry, as the loader would.
    """
    by_encoding = {r.encoding: r.name for r in kb}
    by_fw = {_firmware_encoding(n): n for n in firmware.BY_NAME}
    out: dict[str, int] = {}
    fw: dict[str, int | None] = {}
    hidden: set[int] = set()
    entries = text.split()
    if not entries:
        raise LoaderValueError(f"{source} is set but has no entries")
    for i, entry in enumerate(entries, 1):
        f = re.fullmatch(_FW_ENTRY, entry)
        if f:
            n = int(f.group(3))
            enc = f"FW{f.group(2) or ''}{n}"
            if n > 15:
                raise LoaderValueError(f"{source} entry {i} '{entry[:100]}': '{enc}' is not "
                                       f"FW<n> or FWBMAP<n> (n 0-15)")
            name = by_fw.get(enc, enc)
            if name in fw:
                raise LoaderValueError(f"{source} entry {i}: {name} named again")
            fw[name] = None if f.group(5) else int(f.group(4), 16)
            continue
        m = re.fullmatch(_ENTRY, entry)
        if not m:
            raise LoaderValueError(f"{source} entry {i} '{entry[:100]}': expected "
                                   f"[LABEL@]S<op0>_<op1>_C<crn>_C<crm>_<op2>=0x<1-16 hex digits>"
                                   f" or [LABEL@]FW[BMAP]<n>=0x<hex>|absent")
        enc5 = tuple(int(g) for g in m.group(2, 3, 4, 5, 6))
        assert len(enc5) == 5
        op0, op1, crn, crm, op2 = enc5
        if op0 > 3 or op1 > 7 or crn > 15 or crm > 15 or op2 > 7:
            raise LoaderValueError(f"{source} entry {i} '{entry[:100]}': "
                                   f"'{_encoding_text(enc5)}' is not a system register encoding")
        if m.group(8):
            reg_id = kvm_reg_id(*enc5)
            if reg_id in hidden or by_encoding.get(enc5, _encoding_text(enc5)) in out:
                raise LoaderValueError(f"{source} entry {i}: {_encoding_text(enc5)} named again")
            hidden.add(reg_id)
            continue
        if enc5 == _MPIDR or not in_feature_id_space(*enc5):
            raise LoaderValueError(f"{source} entry {i} '{entry[:100]}': "
                                   f"{_encoding_text(enc5)} is not one of KVM's feature-ID "
                                   f"registers (or is MPIDR_EL1)")
        name = by_encoding.get(enc5, _encoding_text(enc5))
        if name in out or kvm_reg_id(*enc5) in hidden:
            raise LoaderValueError(f"{source} entry {i}: {name} named again")
        out[name] = int(m.group(7), 16)
    return out, fw, frozenset(hidden)


def installed(path: str = LOADER_PATH) -> bool:
    """Is the loader on this machine (a readable regular file)?"""
    return readable_file(path)
