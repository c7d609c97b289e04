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

from .registers import (EXACT, HIGHER_OR_ZERO_SAFE, HIGHER_SAFE, LOWER_SAFE, Field)

__all__ = ["field_accepts", "covers", "source_accepts"]


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
