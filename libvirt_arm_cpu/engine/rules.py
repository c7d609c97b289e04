"""What KVM accepts when userspace writes an ID register field.

The kernel's own rule (Linux arch/arm64/kvm/sys_regs.c,
arm64_check_features()): a field may differ from the host's value ("the
limit") only when the writable mask covers the whole field and the kernel has
a policy for it; then the written value must be what
arm64_ftr_safe_value() picks from (new, limit).  Every other bit must equal
the limit.  Implementation registers (MIDR/REVIDR/AIDR) take any value inside
their mask once KVM_CAP_ARM_WRITABLE_IMP_ID_REGS is enabled.

These functions are the single place baseline and compare ask.
"""

from __future__ import annotations

from libvirt_arm_cpu.kb.registers import (ANY, Field, KnowledgeBase, Register)

__all__ = ["field_accepts", "covers", "source_accepts", "register_refusal",
           "taken_whole"]


def covers(mask: int | None, field: Field) -> bool:
    """Does the writable mask cover the whole field?"""
    return mask is not None and (mask & field.mask) == field.mask


def field_accepts(field: Field, new: int, limit: int) -> bool:
    """Would KVM's safe-value rule accept *new* for a writable field whose
    host value is *limit*?  (Equal values are always accepted.)  The rule
    is the field's own (:meth:`Field.kvm_accepts`: the knowledge base's
    generators ask it too)."""
    return field.kvm_accepts(new, limit)


def source_accepts(values: dict[str, int], writable: dict[str, int], register: str,
                   field: Field, value: int) -> bool:
    """Would a host (or model) with these register values and writable masks
    accept *value* for the field?  Its own value always is."""
    own = field.get(values.get(register, 0))
    return value == own or (covers(writable.get(register, 0), field)
                            and field_accepts(field, value, own))


def register_refusal(kb: KnowledgeBase, name: str, value: int,
                     ctr_values: list[int]) -> str | None:
    """Why KVM's register-specific setter refuses *value*, or None.

    CLIDR_EL1 (set_clidr()): with CTR_EL0.IDC clear, data cache clean to the
    point of unification is needed, so a value with LoC == 0, or with LoUIS
    and LoUU both 0, is refused.  *ctr_values*: every CTR_EL0 the check may
    meet (the host's, and the one the model writes).  The fields are the
    knowledge base's.
    """
    if name != "CLIDR_EL1":
        return None
    loc, louis, louu = (kb.field(name, f).get(value) for f in ("LoC", "LoUIS", "LoUU"))
    idc = kb.field("CTR_EL0", "IDC")
    idc_clear = any(not idc.get(ctr) for ctr in ctr_values)
    if idc_clear and (loc == 0 or (louis == 0 and louu == 0)):
        return ("CTR_EL0.IDC is 0, so KVM needs LoC and LoUIS or LoUU to be non-zero "
                "(set_clidr)")
    return None


def taken_whole(reg: Register) -> bool:
    """Does KVM take this register as a whole (every field "any", e.g. a
    CLIDR_EL1 cache hierarchy), not field by field?"""
    return bool(reg.fields) and all(f.effective_policy == ANY for f in reg.fields)
