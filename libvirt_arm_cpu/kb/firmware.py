"""KVM's firmware pseudo-registers: the other half of what a migration carries.

Besides the ID registers, QEMU's register list (and so its migration stream)
holds KVM's firmware pseudo-registers: the PSCI version, the Spectre
mitigation levels the guest was told (SMCCC_ARCH_WORKAROUND_1/2/3), and the
bitmaps of hypercall services it may use.  The destination's QEMU writes the
source's values; its KVM refuses what it cannot honour, and the load fails
("error while loading state for instance 0x0 of device 'cpu'") just as for an
ID register.  Unlike ID registers, the workaround levels cannot be lowered:
KVM checks the value but keeps its own, so they are a property of the host
that no CPU model changes.

Pure: the register ids and KVM's acceptance rules, as data and functions.

Sources (Linux): arch/arm64/include/uapi/asm/kvm.h (KVM_REG_ARM_FW_REG,
KVM_REG_ARM_FW_FEAT_BMAP_REG, the *_NOT_AVAIL/AVAIL/NOT_REQUIRED levels);
arch/arm64/kvm/hypercalls.c kvm_arm_set_fw_reg (WORKAROUND_1/3: a level
above the kernel's is -EINVAL and the value is not stored; WORKAROUND_2:
NOT_AVAIL/UNKNOWN count as NOT_AVAIL, AVAIL/NOT_REQUIRED as NOT_REQUIRED,
then the same comparison; the bitmaps: a bit the kernel does not offer is
-EINVAL, any change after the VM ran -EBUSY); arch/arm64/kvm/psci.c (the
versions KVM accepts); Documentation/virt/kvm/arm/fw-pseudo-registers.rst.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FirmwareRegister", "FIRMWARE_REGISTERS", "BY_NAME", "SETTABLE", "Refusal",
           "refusals", "describe", "combine", "model_refusals", "stream"]

_ARM64_U64 = 0x6030000000000000
_FW = 0x0014 << 16                  # KVM_REG_ARM_FW
_FW_FEAT_BMAP = 0x0016 << 16        # KVM_REG_ARM_FW_FEAT_BMAP


@dataclass(frozen=True)
class FirmwareRegister:
    """One of KVM's firmware pseudo-registers."""

    name: str
    kvm_id: int
    kind: str           # psci-version | workaround | workaround-2 | bitmap
    levels: tuple[str, ...] = ()    # a workaround's level names, by value


_WA_LEVELS = ("not available", "available", "not required")
_WA2_LEVELS = ("not available", "unknown", "available", "not required")

FIRMWARE_REGISTERS: tuple[FirmwareRegister, ...] = (
    FirmwareRegister("PSCI_VERSION", _ARM64_U64 | _FW | 0, "psci-version"),
    FirmwareRegister("SMCCC_ARCH_WORKAROUND_1", _ARM64_U64 | _FW | 1, "workaround", _WA_LEVELS),
    FirmwareRegister("SMCCC_ARCH_WORKAROUND_2", _ARM64_U64 | _FW | 2, "workaround-2",
                     _WA2_LEVELS),
    FirmwareRegister("SMCCC_ARCH_WORKAROUND_3", _ARM64_U64 | _FW | 3, "workaround", _WA_LEVELS),
    FirmwareRegister("STD_BMAP", _ARM64_U64 | _FW_FEAT_BMAP | 0, "bitmap"),
    FirmwareRegister("STD_HYP_BMAP", _ARM64_U64 | _FW_FEAT_BMAP | 1, "bitmap"),
    FirmwareRegister("VENDOR_HYP_BMAP", _ARM64_U64 | _FW_FEAT_BMAP | 2, "bitmap"),
    FirmwareRegister("VENDOR_HYP_BMAP_2", _ARM64_U64 | _FW_FEAT_BMAP | 3, "bitmap"),
)
BY_NAME = {r.name: r for r in FIRMWARE_REGISTERS}
# What a VMM can give a guest before it first runs: KVM stores these (the
# workaround levels it only checks).  A CPU model carries them.
SETTABLE = tuple(r.name for r in FIRMWARE_REGISTERS if r.kind in ("psci-version", "bitmap"))

_LEVEL_MASK = 0xf                   # KVM_REG_FEATURE_LEVEL_MASK
_WA2_ENABLED = 1 << 4               # KVM_REG_ARM_SMCCC_ARCH_WORKAROUND_2_ENABLED


def describe(name: str, value: int) -> str:
    """A value as an operator reads it: 'PSCI 1.1', '2 (not required)', '0x7'."""
    reg = BY_NAME[name]
    if reg.kind == "psci-version":
        return f"PSCI {value >> 16}.{value & 0xffff}"
    level = value & _LEVEL_MASK
    if reg.levels and level < len(reg.levels):
        return f"{level} ({reg.levels[level]})"
    return f"{value:#x}"


def _wa2_class(value: int) -> int:
    """WORKAROUND_2 as KVM compares it: NOT_AVAIL (0) or NOT_REQUIRED (3)."""
    return 0 if value & _LEVEL_MASK in (0, 1) else 3


@dataclass(frozen=True)
class Refusal:
    """A firmware value a destination's KVM refuses, and why."""

    register: str
    source: int | None
    dest: int | None
    message: str

    def __str__(self) -> str:
        return self.message


def refusals(source: dict[str, int | None], dest: dict[str, int | None],
             who: str = "the source") -> list[Refusal]:
    """What the destination's KVM refuses when QEMU writes the source's
    firmware registers (name -> value; None: the kernel does not have it).
    A register only the destination has keeps its own value (QEMU skips
    what the stream lacks)."""
    out = []
    for reg in FIRMWARE_REGISTERS:
        s, d = source.get(reg.name), dest.get(reg.name)
        if s is None:
            continue
        if d is None:
            out.append(Refusal(reg.name, s, None, f"firmware {reg.name}: {who} has it, this "
                               f"host's kernel does not"))
            continue
        why = None
        if reg.kind == "workaround" and (s & _LEVEL_MASK) > (d & _LEVEL_MASK):
            why = "KVM refuses a mitigation level above its own (the guest was told it needs " \
                  "less than this host can promise)"
        elif reg.kind == "workaround-2" and (_wa2_class(s) > _wa2_class(d)
                                             or (s & ~(_LEVEL_MASK | _WA2_ENABLED))):
            why = "KVM refuses a mitigation level above its own"
        elif reg.kind == "psci-version" and s > d:
            why = "this host's KVM does not offer that PSCI version"
        elif reg.kind == "bitmap" and s & ~d:
            why = (f"services {s & ~d:#x} are not offered by this host's KVM "
                   f"(a bit it lacks is refused)")
        if why:
            out.append(Refusal(reg.name, s, d, f"firmware {reg.name}: {who} has "
                               f"{describe(reg.name, s)}, this host "
                               f"{describe(reg.name, d)}; {why}"))
    return out


def combine(values: list[int | None], name: str) -> int | None:
    """The most a guest may be given on every host: None (out of the
    register list) if one host lacks the register, else the lowest PSCI
    version or the services every host offers."""
    if any(v is None for v in values):
        return None
    reg = BY_NAME[name]
    if reg.kind == "psci-version":
        return min(values)  # type: ignore[type-var]
    out = ~0
    for v in values:
        out &= v  # type: ignore[operator]
    return out


def model_refusals(model: dict[str, int | None], host: dict[str, int | None]) -> list[Refusal]:
    """What *host*'s KVM refuses of a model's firmware values (SETTABLE
    registers only; None in the model: hidden from the guest, always
    possible)."""
    return refusals({k: v for k, v in model.items() if v is not None}, host, "the model")


def stream(source: dict[str, int | None], model: dict[str, int | None]) -> dict[str, int | None]:
    """The firmware values a guest's migration stream carries: the model's
    where it sets one (None: not in the stream), the source host's
    otherwise (the workaround levels always)."""
    out = dict(source)
    for k, v in model.items():
        out[k] = v
    return out
