"""A minimal arm64 KVM binding in pure Python (fcntl ioctls, no ctypes).

Just what the helper needs to ask KVM about ID registers: create a scratch
VM and vCPU, check capabilities, read the writable masks, get and set
registers, and (for diagnostics) run a vCPU once.  It runs on the arm64 host
itself (and in the test bed's guest, whose Python may lack ctypes).

Constants: Linux ``include/uapi/linux/kvm.h`` and
``arch/arm64/include/uapi/asm/kvm.h``; the ioctl numbers were checked by
compiling against the 6.12.118 uAPI headers (shared testbed notes,
``kvm-constants-from-6.12-uapi.txt``); KVM_ENABLE_CAP and
KVM_ARM_VCPU_FINALIZE are computed from the same _IOW() encoding.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import struct
from dataclasses import dataclass, field

from libvirt_arm_cpu.errors import Error

__all__ = ["Kvm", "Vm", "Vcpu", "KvmError", "VcpuFeatures", "CAPS",
           "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES", "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS"]

KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_CHECK_EXTENSION = 0xAE03
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_RUN = 0xAE80
KVM_ENABLE_CAP = 0x4068AEA3               # _IOW(KVMIO, 0xa3, struct kvm_enable_cap), 104 bytes
KVM_GET_ONE_REG = 0x4010AEAB
KVM_SET_ONE_REG = 0x4010AEAC
KVM_ARM_VCPU_INIT = 0x4020AEAE
KVM_ARM_PREFERRED_TARGET = 0x8020AEAF
KVM_ARM_GET_REG_WRITABLE_MASKS = 0x8040AEB6
KVM_ARM_VCPU_FINALIZE = 0x4004AEC2       # _IOW(KVMIO, 0xc2, int)
KVM_GET_REG_LIST = 0xC008AEB0            # _IOWR(KVMIO, 0xb0, struct kvm_reg_list)
KVM_CREATE_DEVICE = 0xC00CAEE0           # _IOWR(KVMIO, 0xe0, struct kvm_create_device)

KVM_CAP_ARM_EL1_32BIT = 93
KVM_CAP_ARM_PMU_V3 = 126
KVM_CAP_ARM_VM_IPA_SIZE = 165
KVM_CAP_ARM_SVE = 170
KVM_CAP_ARM_PTRAUTH_ADDRESS = 171
KVM_CAP_ARM_PTRAUTH_GENERIC = 172
KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES = 230
KVM_CAP_ARM_MTE = 205
KVM_CAP_ARM_WRITABLE_IMP_ID_REGS = 239
KVM_CAP_ARM_EL2 = 240                    # Linux 6.16: nested virtualization (a vCPU with EL2)
KVM_CAP_ARM_EL2_E2H0 = 241

# The capabilities a host profile records, by name.
CAPS = {
    "KVM_CAP_ARM_PMU_V3": KVM_CAP_ARM_PMU_V3,
    "KVM_CAP_ARM_SVE": KVM_CAP_ARM_SVE,
    "KVM_CAP_ARM_PTRAUTH_ADDRESS": KVM_CAP_ARM_PTRAUTH_ADDRESS,
    "KVM_CAP_ARM_PTRAUTH_GENERIC": KVM_CAP_ARM_PTRAUTH_GENERIC,
    "KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES": KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES,
    "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS": KVM_CAP_ARM_WRITABLE_IMP_ID_REGS,
    "KVM_CAP_ARM_EL1_32BIT": KVM_CAP_ARM_EL1_32BIT,
    "KVM_CAP_ARM_VM_IPA_SIZE": KVM_CAP_ARM_VM_IPA_SIZE,
    "KVM_CAP_ARM_MTE": KVM_CAP_ARM_MTE,
    "KVM_CAP_ARM_EL2": KVM_CAP_ARM_EL2,
    "KVM_CAP_ARM_EL2_E2H0": KVM_CAP_ARM_EL2_E2H0,
}

# KVM_CREATE_DEVICE types (enum kvm_device_type) and its test-only flag
KVM_CREATE_DEVICE_TEST = 1
KVM_DEV_TYPE_ARM_VGIC_V2 = 5
KVM_DEV_TYPE_ARM_VGIC_V3 = 7
KVM_DEV_TYPE_ARM_VGIC_ITS = 8

# kvm_vcpu_init.features[0] bits (arch/arm64/include/uapi/asm/kvm.h)
KVM_ARM_VCPU_PSCI_0_2 = 2
KVM_ARM_VCPU_PMU_V3 = 3
KVM_ARM_VCPU_SVE = 4
KVM_ARM_VCPU_PTRAUTH_ADDRESS = 5
KVM_ARM_VCPU_PTRAUTH_GENERIC = 6

KVM_ARM_FEATURE_ID_RANGE = 0
KVM_ARM_FEATURE_ID_RANGE_SIZE = 3 * 8 * 8
KVM_REG_ARM64 = 0x6000000000000000
KVM_REG_SIZE_U64 = 0x0030000000000000
KVM_REG_ARM_CORE = 0x0010 << 16
KVM_REG_SIZE_U512 = 0x0060000000000000
KVM_REG_ARM64_SVE = 0x0015 << 16
# the vector lengths a vCPU may use: 8 words, bit vq-1 for a length of
# vq * 128 bits (readable once the vCPU is initialised with SVE)
KVM_REG_ARM64_SVE_VLS = KVM_REG_ARM64 | KVM_REG_ARM64_SVE | KVM_REG_SIZE_U512 | 0xFFFF
KVM_EXIT_MMIO = 6

IOCTL_NAMES = {globals()[n]: n for n in (
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_CHECK_EXTENSION", "KVM_GET_VCPU_MMAP_SIZE",
    "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION", "KVM_RUN", "KVM_ENABLE_CAP",
    "KVM_GET_ONE_REG", "KVM_SET_ONE_REG", "KVM_ARM_VCPU_INIT", "KVM_ARM_PREFERRED_TARGET",
    "KVM_ARM_GET_REG_WRITABLE_MASKS", "KVM_ARM_VCPU_FINALIZE", "KVM_GET_REG_LIST",
    "KVM_CREATE_DEVICE")}


class KvmError(Error):
    """An ioctl failed with an errno we did not expect.

    Carries the ioctl's name, the register (when there is one) and errno.
    """

    exit_code = 7

    def __init__(self, ioctl: str, err: OSError, register: str | None = None) -> None:
        self.ioctl = ioctl
        self.errno = err.errno or 0
        self.register = register
        what = f" on {register}" if register else ""
        code = errno.errorcode.get(self.errno, str(self.errno))
        super().__init__(f"{ioctl}{what} failed: {code} ({os.strerror(self.errno)})")


def _ioctl(fd: int, request: int, arg: int | bytes | bytearray = 0,
           register: str | None = None) -> int:
    try:
        if isinstance(arg, bytearray):
            return fcntl.ioctl(fd, request, arg, True)
        res = fcntl.ioctl(fd, request, arg)
        # a bytes argument comes back as a copy: what the caller needs is elsewhere
        return res if isinstance(res, int) else 0
    except OSError as err:
        raise KvmError(IOCTL_NAMES.get(request, hex(request)), err, register) from err


@dataclass
class VcpuFeatures:
    """Optional vCPU features, as KVM_ARM_VCPU_INIT takes them."""

    pmu: bool = False
    sve: bool = False
    ptrauth: bool = False      # address and generic authentication together

    def bits(self) -> int:
        out = 1 << KVM_ARM_VCPU_PSCI_0_2
        if self.pmu:
            out |= 1 << KVM_ARM_VCPU_PMU_V3
        if self.sve:
            out |= 1 << KVM_ARM_VCPU_SVE
        if self.ptrauth:
            out |= 1 << KVM_ARM_VCPU_PTRAUTH_ADDRESS | 1 << KVM_ARM_VCPU_PTRAUTH_GENERIC
        return out

    def names(self) -> list[str]:
        return [n for n in ("pmu", "sve", "ptrauth") if getattr(self, n)]

    def without(self, off: tuple[str, ...] | list[str] | set[str]) -> VcpuFeatures:
        """These features with *off* switched off (QEMU's sve=off, pauth=off,
        pmu=off; pauth=off clears address and generic authentication
        together, as ``ptrauth`` here does)."""
        unknown = set(off) - {"pmu", "sve", "ptrauth"}
        if unknown:
            raise ValueError(f"unknown vCPU feature {sorted(unknown)[0]}")
        return VcpuFeatures(pmu=self.pmu and "pmu" not in off, sve=self.sve and "sve" not in off,
                            ptrauth=self.ptrauth and "ptrauth" not in off)


class Kvm:
    """An open /dev/kvm."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def api_version(self) -> int:
        return _ioctl(self.fd, KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return _ioctl(self.fd, KVM_GET_VCPU_MMAP_SIZE)

    def create_vm(self) -> Vm:
        return Vm(self, _ioctl(self.fd, KVM_CREATE_VM, 0))

    def default_features(self) -> VcpuFeatures:
        """What a QEMU ``-cpu host`` guest gets by default: PMU, SVE and pointer
        authentication wherever KVM offers them (without SVE and PAuth the
        vCPU reads ID_AA64ZFR0_EL1 and the PAuth fields as zero)."""
        return VcpuFeatures(
            pmu=self.check_extension(KVM_CAP_ARM_PMU_V3) > 0,
            sve=self.check_extension(KVM_CAP_ARM_SVE) > 0,
            ptrauth=(self.check_extension(KVM_CAP_ARM_PTRAUTH_ADDRESS) > 0
                     and self.check_extension(KVM_CAP_ARM_PTRAUTH_GENERIC) > 0))


@dataclass
class Vm:
    """A KVM virtual machine (its file descriptor) and its vCPUs."""

    kvm: Kvm
    fd: int
    vcpus: list[Vcpu] = field(default_factory=list)

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        os.close(self.fd)

    def __enter__(self) -> Vm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        return _ioctl(self.fd, KVM_CHECK_EXTENSION, cap)

    def enable_cap(self, cap: int) -> None:
        """KVM_ENABLE_CAP without arguments (e.g. 239, before any vCPU exists)."""
        _ioctl(self.fd, KVM_ENABLE_CAP, struct.pack("II4Q64x", cap, 0, 0, 0, 0, 0))

    def can_create_device(self, dev_type: int) -> bool:
        """KVM_CREATE_DEVICE with KVM_CREATE_DEVICE_TEST: does this kernel
        offer the device (a GIC version, the ITS) to a VM here?  Creates
        nothing."""
        try:
            _ioctl(self.fd, KVM_CREATE_DEVICE,
                   bytearray(struct.pack("III", dev_type, 0, KVM_CREATE_DEVICE_TEST)))
        except KvmError as err:
            if err.errno in (errno.ENODEV, errno.ENOTSUP, errno.EINVAL):
                return False
            raise
        return True

    def writable_masks(self) -> list[int]:
        """KVM_ARM_GET_REG_WRITABLE_MASKS: 192 masks, indexed like
        KVM_ARM_FEATURE_ID_RANGE_IDX."""
        masks = array.array("Q", [0] * KVM_ARM_FEATURE_ID_RANGE_SIZE)
        req = bytearray(struct.pack("QI52x", masks.buffer_info()[0], KVM_ARM_FEATURE_ID_RANGE))
        _ioctl(self.fd, KVM_ARM_GET_REG_WRITABLE_MASKS, req)
        return list(masks)

    def create_vcpu(self, features: VcpuFeatures) -> Vcpu:
        """Create vCPU n, KVM_ARM_VCPU_INIT it with the preferred target and
        *features*, and finalize SVE when enabled: after this, ID registers
        hold their initial values and can be changed until the first run."""
        fd = _ioctl(self.fd, KVM_CREATE_VCPU, len(self.vcpus))
        vcpu = Vcpu(self, fd, features)
        self.vcpus.append(vcpu)
        init = bytearray(32)
        _ioctl(self.fd, KVM_ARM_PREFERRED_TARGET, init)
        target = struct.unpack_from("I", init)[0]
        _ioctl(fd, KVM_ARM_VCPU_INIT, struct.pack("I7I", target, features.bits(), *([0] * 6)))
        if features.sve:
            _ioctl(fd, KVM_ARM_VCPU_FINALIZE, struct.pack("i", KVM_ARM_VCPU_SVE))
        return vcpu

    def set_memory(self, slot: int, guest_addr: int, size: int, host_addr: int) -> None:
        _ioctl(self.fd, KVM_SET_USER_MEMORY_REGION,
               struct.pack("IIQQQ", slot, 0, guest_addr, size, host_addr))


@dataclass
class Vcpu:
    """A vCPU of a KVM virtual machine, made with these vCPU features."""

    vm: Vm
    fd: int
    features: VcpuFeatures

    def close(self) -> None:
        os.close(self.fd)

    def get(self, reg_id: int, name: str | None = None) -> int:
        buf = array.array("Q", [0])
        _ioctl(self.fd, KVM_GET_ONE_REG, struct.pack("QQ", reg_id, buf.buffer_info()[0]), name)
        return buf[0]

    def set(self, reg_id: int, value: int, name: str | None = None) -> None:
        buf = array.array("Q", [value])
        _ioctl(self.fd, KVM_SET_ONE_REG, struct.pack("QQ", reg_id, buf.buffer_info()[0]), name)

    def get_words(self, reg_id: int, words: int, name: str | None = None) -> list[int]:
        """A register wider than 64 bits (KVM_REG_SIZE_U512: 8 words)."""
        buf = array.array("Q", [0] * words)
        _ioctl(self.fd, KVM_GET_ONE_REG, struct.pack("QQ", reg_id, buf.buffer_info()[0]), name)
        return list(buf)

    def reg_list(self) -> list[int]:
        """KVM_GET_REG_LIST: the ids of every register this vCPU has, which
        QEMU reads, writes back and migrates (first call: n = 0, E2BIG with
        the count)."""
        head = bytearray(struct.pack("Q", 0))
        try:
            _ioctl(self.fd, KVM_GET_REG_LIST, head)
        except KvmError as err:
            if err.errno != errno.E2BIG:
                raise
        n = struct.unpack_from("Q", head)[0]
        buf = bytearray(struct.pack("Q", n) + bytes(8 * n))
        _ioctl(self.fd, KVM_GET_REG_LIST, buf)
        count = struct.unpack_from("Q", buf)[0]
        return list(struct.unpack_from(f"{count}Q", buf, 8))

    def run_once(self) -> None:
        """Run the vCPU until its first exit: it loads from an unmapped
        address, so KVM returns at once with an MMIO exit.  Afterwards KVM
        treats the VM as started (ID registers become read-only)."""
        self.run_code([0xF9400020])                     # ldr x0, [x1]

    def run_code(self, instructions: list[int]) -> int | None:
        """Run *instructions* (A64 words; MMU off, x1 = an address outside
        guest memory) until the first exit; the value of an MMIO store
        there (``str x0, [x1]``), None for any other exit.  Afterwards KVM
        treats the VM as started."""
        page = 4096
        backing = array.array("B", bytes(3 * page))
        base = backing.buffer_info()[0]
        aligned = (base + page - 1) & ~(page - 1)
        off = aligned - base
        code = struct.pack(f"<{len(instructions) + 1}I", *instructions, 0x14000000)   # ... ; b .
        backing[off:off + len(code)] = array.array("B", code)
        guest = 0x40000000
        self.vm.set_memory(0, guest, 2 * page, aligned)
        core = KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE
        self.set(core | 64, guest, "PC")       # offsetof(struct user_pt_regs, pc) / 4
        self.set(core | 2, 0x1000, "X1")       # an address outside guest memory
        import mmap
        run = mmap.mmap(self.fd, self.vm.kvm.vcpu_mmap_size(), mmap.MAP_SHARED,
                        mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            _ioctl(self.fd, KVM_RUN, 0)
            # struct kvm_run: exit_reason at 8; the mmio exit at 32:
            # phys_addr u64, data[8], len u32, is_write u8
            reason = struct.unpack_from("I", run, 8)[0]
            _, data, length, is_write = struct.unpack_from("<Q8sIB", run, 32)
        finally:
            run.close()
        self._keep = backing                   # the guest's memory must outlive the VM
        if reason != KVM_EXIT_MMIO or not is_write:
            return None
        return int.from_bytes(data[:length], "little")
