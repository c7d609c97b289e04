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

from libvirt_arm_cpu.kb.registers import (ANY, EXACT, HIGHER_OR_ZERO_SAFE, HIGHER_SAFE, LOWER_SAFE, Field, KnowledgeBase, Register)

__all__ = ["field_accepts", "covers", "source_accepts", "register_refusal",
           "taken_whole"]


def covers(mask: int | None, field: Field) -> bool:
    """Does the writable mask cover the whole field?"""
    return mask is not None and (mask & field.mask) == field.mask


def field_accepts(field: Field, new: int, limit: int) -> bool:
    """Would KVM's safe-value rule accept *new* for a writable field whose
    host value is *limit*?  (Equal values are always accepted.)"""
    if new == limit:
        return True
    if field.kvm_min is not None and new < field.kvm_min and not (new == 0 and field.kvm_zero_ok):
        return False
    policy = field.effective_policy
    if policy == ANY:
        return True         # the register-level check is register_refusal()
    n, lim = field.order(new), field.order(limit)
    if policy == LOWER_SAFE:
        return n <= lim
    if policy == HIGHER_SAFE:
        return n >= lim
    if policy == HIGHER_OR_ZERO_SAFE:
        # arm64_ftr_safe_value: 0 when either is 0, else the higher
        return new == 0 or (limit != 0 and n >= lim)
    if policy == EXACT:
        return field.safe is not None and new == field.safe
    return False        # must-match: no policy, no change


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
