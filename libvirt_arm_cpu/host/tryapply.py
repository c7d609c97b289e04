"""Ask the kernel itself whether it accepts a set of ID register values.

Creates a scratch VM and vCPU the way QEMU would for ``-cpu host`` (same
vCPU features as the probe; capability 239 enabled before the vCPU exists
when implementation registers are part of the request), then, after
KVM_ARM_VCPU_INIT and before anything runs, writes each requested value with
KVM_SET_ONE_REG and reads it back.  Per register the verdict is:

* ``unchanged``: equal to the host's value, nothing to write;
* ``accepted``: written and read back as written;
* ``changed``: written, but KVM reads back something else (it fixed it up);
* ``rejected``: KVM refused (errno), with the fields that differ from the host;
* ``absent``: this kernel does not know the register.
"""

from __future__ import annotations

import errno as errno_mod
from dataclasses import dataclass, field
from typing import Any

from libvirt_arm_cpu.host.kvm import KVM_CAP_ARM_WRITABLE_IMP_ID_REGS, Kvm, KvmError, VcpuFeatures
from libvirt_arm_cpu.kb.registers import KnowledgeBase, Register

__all__ = ["Verdict", "TryApplyResult", "try_apply", "differing_fields"]



@dataclass
class Verdict:
    """What KVM did with one register a try-apply wrote."""

    register: str
    status: str                     # unchanged, accepted, changed, rejected, absent
    host: int | None
    wanted: int
    readback: int | None = None
    errno: str | None = None
    fields: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"register": self.register, "status": self.status,
                "host": None if self.host is None else f"{self.host:#018x}",
                "wanted": f"{self.wanted:#018x}",
                "readback": None if self.readback is None else f"{self.readback:#018x}",
                "errno": self.errno, "fields": self.fields}


@dataclass
class TryApplyResult:
    """A try-apply's verdicts, register by register, and how its vCPU was made."""

    verdicts: list[Verdict]
    vcpu_features: list[str]
    imp_id_regs_enabled: bool
    ran_first: bool

    @property
    def ok(self) -> bool:
        """Every value accepted (a zero for a register the kernel lacks is fine:
        the guest reads it as zero there)."""
        return all(v.status in ("unchanged", "accepted") or (v.status == "absent" and not v.wanted)
                   for v in self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "vcpu_features": self.vcpu_features,
                "imp_id_regs_enabled": self.imp_id_regs_enabled, "ran_first": self.ran_first,
                "registers": [v.as_dict() for v in self.verdicts]}


def differing_fields(reg: Register, host: int, wanted: int) -> list[str]:
    """Human-readable list of what *wanted* changes relative to *host*."""
    out = []
    for f in reg.fields:
        h, w = f.get(host), f.get(wanted)
        if h != w:
            direction = ("lower" if f.order(w) < f.order(h) else "higher")
            out.append(f"{f.name} {h} -> {w} ({direction}; {f.effective_policy})")
    stray = (host ^ wanted) & ~reg.field_mask & (2**64 - 1)
    if stray:
        out.append(f"bits {stray:#x} outside any field")
    return out


def try_apply(kvm: Kvm, kb: KnowledgeBase, wanted: dict[str, int],
              features: VcpuFeatures | None = None, enable_imp_id_regs: bool | None = None,
              run_first: bool = False) -> TryApplyResult:
    """Write *wanted* (register name -> value) into a scratch vCPU.

    :param enable_imp_id_regs: enable capability 239 (None: when the request
        has MIDR/REVIDR/AIDR and the kernel offers it).
    :param run_first: run the vCPU once before writing (shows KVM's EBUSY).
    :raise KvmError: when setting up the scratch VM fails.
    """
    features = features or kvm.default_features()
    if run_first:
        features = VcpuFeatures(pmu=False, sve=features.sve, ptrauth=features.ptrauth)
    regs = sorted((kb.register(name) for name in wanted), key=lambda r: r.encoding)
    if enable_imp_id_regs is None:
        enable_imp_id_regs = (any(r.kind == "implementation-id" for r in regs)
                              and kvm.check_extension(KVM_CAP_ARM_WRITABLE_IMP_ID_REGS) > 0)
    verdicts = []
    with kvm.create_vm() as vm:
        if enable_imp_id_regs:
            vm.enable_cap(KVM_CAP_ARM_WRITABLE_IMP_ID_REGS)   # must precede the vCPU
        vcpu = vm.create_vcpu(features)
        if run_first:
            vcpu.run_once()
        for reg in regs:
            value = wanted[reg.name]
            try:
                host = vcpu.get(reg.kvm_id, reg.name)
            except KvmError as err:
                if err.errno != errno_mod.ENOENT:
                    raise
                verdicts.append(Verdict(reg.name, "absent", None, value))
                continue
            if host == value:
                verdicts.append(Verdict(reg.name, "unchanged", host, value, host))
                continue
            try:
                vcpu.set(reg.kvm_id, value, reg.name)
            except KvmError as err:
                verdicts.append(Verdict(reg.name, "rejected", host, value, None,
                                        errno_mod.errorcode.get(err.errno, str(err.errno)),
                                        differing_fields(reg, host, value)))
                continue
            back = vcpu.get(reg.kvm_id, reg.name)
            status = "accepted" if back == value else "changed"
            verdicts.append(Verdict(reg.name, status, host, value, back, None,
                                    differing_fields(reg, host, value)))
    return TryApplyResult(verdicts, features.names(), bool(enable_imp_id_regs), run_first)
