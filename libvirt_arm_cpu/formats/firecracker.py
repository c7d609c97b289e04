"""A Firecracker custom CPU template for a CPU model.

Firecracker (``docs/cpu_templates/cpu-templates.md``, ``schema.json``)
takes a JSON template on ``PUT /cpu-config``; on aarch64:

* ``reg_modifiers``: ``{"addr": "0x603000000013c020", "bitmap": "0b..."}``,
  ``addr`` the KVM_SET_ONE_REG id of the register, ``bitmap`` one character
  a bit from bit 63 down: ``0`` clears it, ``1`` sets it, ``x`` keeps the
  host's (the schema allows up to 128 characters for 128-bit registers; a
  shorter bitmap is padded with ``x`` on the left; ``_`` may separate);
* ``vcpu_features``: ``{"index": 0, "bitmap": "0b..."}`` over
  ``kvm_vcpu_init.features[index]``, same characters.

The template sets the fields the model may change (those every host it
was made from lets userspace write, as :func:`libvirt_arm_cpu.engine.compare.
compare` lowers them) to the model's values and keeps every other bit as
the host has it, as Firecracker's own static V1N1 template does (so do the
fields an architecture level takes from its host); a host
whose other fields differ from the model cannot run it, which
``cpu-compare MODEL PROFILE --kvm-only`` (or ``export firecracker MODEL
--profile PROFILE``) tells before.  vCPU features the model runs with off
are cleared (KVM_ARM_VCPU_* bits of arch/arm64/include/uapi/asm/kvm.h).
Firecracker writes what it is given and does not check that KVM took it
("KVM may reject setting some bits quietly").

Pure: a model and the knowledge base in, a JSON text out.
"""

from __future__ import annotations

import json
from typing import Any

from libvirt_arm_cpu.kb.registers import KnowledgeBase
from libvirt_arm_cpu.model import CpuModel

__all__ = ["VCPU_FEATURE_BITS", "bitmap", "template", "dumps"]

# kvm_vcpu_init.features[0] bits (arch/arm64/include/uapi/asm/kvm.h)
VCPU_FEATURE_BITS = {"pmu": (3,), "sve": (4,), "ptrauth": (5, 6)}   # PMU_V3; SVE; PTRAUTH_ADDRESS, _GENERIC


def bitmap(value: int, mask: int, width: int = 64) -> str:
    """``0b`` then *width* characters from the top bit down: the bits of
    *value* where *mask* has a 1, ``x`` elsewhere."""
    return "0b" + "".join(("1" if value >> i & 1 else "0") if mask >> i & 1 else "x"
                          for i in range(width - 1, -1, -1))


def template(model: CpuModel, kb: KnowledgeBase) -> tuple[dict[str, Any], list[str]]:
    """The template for *model*, and notes on what it leaves to the host."""
    notes: list[str] = []
    modifiers = []
    regs = sorted((kb.register(name) for name in model.values), key=lambda r: r.encoding)
    for reg in regs:
        if reg.kind == "affinity":
            continue                    # MPIDR: per vCPU, Firecracker's own
        writable = model.writable.get(reg.name, 0)
        if reg.kind == "implementation-id" and not model.imp_id_writable:
            if writable:
                notes.append(f"{reg.name} left to the host: changing it needs KVM capability "
                             f"239 on every host of the model")
            continue
        mask = 0
        hosts = model.host_fields.get(reg.name, ())
        for f in reg.fields:
            if (writable & f.mask) == f.mask and f.name not in hosts:
                mask |= f.mask
        if not reg.fields and reg.kind == "implementation-id":
            mask = writable
        if mask:
            modifiers.append({"addr": f"{reg.kvm_id:#018x}",
                              "bitmap": bitmap(model.values[reg.name], mask)})
    if model.host_fields:
        notes.append("the fields the model takes from its host are kept as the host has them "
                     "(x): " + " ".join(f"{r}.{f}" for r, fs in sorted(model.host_fields.items())
                                        for f in fs) + "; a host with less than the model "
                     "there cannot run it (export firecracker MODEL --profile PROFILE checks)")
    out: dict[str, Any] = {}
    off = 0
    for feature in model.vcpu_off:
        for bit in VCPU_FEATURE_BITS[feature]:
            off |= 1 << bit
    if off:
        out["vcpu_features"] = [{"index": 0, "bitmap": bitmap(0, off, off.bit_length())}]
    out["reg_modifiers"] = modifiers
    if model.firmware:
        notes.append("firmware pseudo-registers (PSCI version, hypercall bitmaps) left to "
                     "Firecracker: a template has no place for them")
    return out, notes


def dumps(model: CpuModel, kb: KnowledgeBase) -> tuple[str, list[str]]:
    data, notes = template(model, kb)
    return json.dumps(data, indent=2) + "\n", notes
