"""Probe this host: what its KVM (and QEMU) can present to a guest.

:func:`probe_host` gathers a :class:`~libvirt_arm_cpu.formats.profile.HostProfile`:

1. the machine, kernel release and every CPU's MIDR/REVIDR from sysfs;
2. through /dev/kvm: capabilities, a scratch VM and vCPU initialised with
   the features a ``-cpu host`` guest gets (PMU, SVE, pointer
   authentication, where offered), every register of the feature-ID space
   (KVM_GET_ONE_REG; ENOENT = absent) and the writable masks
   (KVM_ARM_GET_REG_WRITABLE_MASKS, when capability 230 is there);
3. the same registers on one more scratch VM per offered vCPU feature, with
   that feature off (what a guest gets with QEMU's ``sve=off``,
   ``pauth=off``, ``pmu=off``), and with all of them off: the registers that
   differ from the default are recorded.  ID registers are VM-wide and fixed
   by the first vCPU's features, hence one VM each (Linux
   arch/arm64/kvm/sys_regs.c: the SVE field and ZFR0 read as zero without
   SVE, the PAuth fields without PAuth, PMUVer/PerfMon without a PMU);
4. the QEMU emulator: its version, and whether ``-cpu host`` takes
   ``SYSREG_*`` properties (asked through QMP; a missing QEMU is recorded),
   and whether the ID register loader is installed.

Every step is bounded: ioctls return at once, QEMU gets a deadline.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import json
import os
import platform
import select
import socket
import subprocess
import time

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.errors import KvmPermission, NoKvm, NotArm64
from libvirt_arm_cpu.kb.firmware import FIRMWARE_REGISTERS
from libvirt_arm_cpu.host import kvm as K
from libvirt_arm_cpu.host.kvm import CAPS, KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES, Kvm, KvmError, VcpuFeatures
from libvirt_arm_cpu.model import (HostProfile, LoaderInfo, Platform, ProfileRegister, QemuInfo,
                                   VcpuOffValues)
from libvirt_arm_cpu.kb.registers import KnowledgeBase, generic_name, kvm_reg_id, writable_mask_index
from libvirt_arm_cpu.kb.load import registers as load_kb

from libvirt_arm_cpu.engine.loader import LOADER_PATH
from libvirt_arm_cpu.fileio import read_text
from libvirt_arm_cpu.host.fingerprint import (find_qemu, fingerprint,
                                              read_cpus)

__all__ = ["probe_host", "probe_kvm", "probe_platform", "vcpu_off_values", "probe_loader", "feature_id_space",
           "read_cpus", "find_qemu", "probe_qemu", "fingerprint", "check_machine", "open_kvm",
           "LOADER_PATH"]

QEMU_TIMEOUT = 15.0


def feature_id_space() -> list[tuple[int, int, int, int, int]]:
    """All 192 encodings KVM's writable-mask array covers, in index order."""
    return [(3, op1, 0, crm, op2) for op1 in (0, 1, 3) for crm in range(8) for op2 in range(8)]


def register_name(kb: KnowledgeBase, enc: tuple[int, int, int, int, int]) -> str:
    reg = kb.by_encoding(*enc)
    return reg.name if reg else generic_name(*enc)


# -- the machine -------------------------------------------------------------

def check_machine(machine: str | None = None) -> str:
    """:raise NotArm64: unless this is an aarch64 machine."""
    machine = machine or platform.machine()
    if machine not in ("aarch64", "arm64"):
        raise NotArm64(f"this is an {machine} machine: the helper asks ARM64 KVM and must run "
                       f"on the aarch64 host itself")
    return machine


# -- KVM ---------------------------------------------------------------------

def open_kvm(path: str = "/dev/kvm") -> Kvm:
    """:raise NoKvm: no device; :raise KvmPermission: naming the group to join."""
    try:
        return Kvm(path)
    except FileNotFoundError:
        raise NoKvm(f"{path} does not exist: KVM is not available (disabled with "
                    f"kvm-arm.mode=none, not built in, or the kernel runs at EL1 without "
                    f"virtualization)") from None
    except PermissionError:
        group = _group_of(path)
        raise KvmPermission(f"permission denied opening {path}: run as root or join the "
                            f"group '{group}' that owns it") from None
    except OSError as err:
        if err.errno in (errno.ENXIO, errno.ENODEV):
            raise NoKvm(f"{path} exists but KVM is not usable: {err.strerror}") from None
        raise


def _group_of(path: str) -> str:
    try:
        gid = os.stat(path).st_gid
    except OSError:
        return "kvm"
    try:
        import grp
        return grp.getgrgid(gid).gr_name
    except (ImportError, KeyError):
        return str(gid)


def probe_kvm(kvm: Kvm, kb: KnowledgeBase, variants: bool = True
              ) -> tuple[dict[str, tuple[int, int]], list[str], list[ProfileRegister], bool,
                         list[VcpuOffValues] | None, dict[str, int | None], frozenset[int]]:
    """Capabilities, vCPU features used, registers, whether masks are known,
    (with *variants*) the registers with vCPU features off, the firmware
    pseudo-registers, and the register list QEMU migrates."""
    caps = {name: (num, kvm.check_extension(num)) for name, num in CAPS.items()}
    features = kvm.default_features()
    with kvm.create_vm() as vm:
        masks: list[int] | None = None
        if vm.check_extension(KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES) & 1:
            masks = vm.writable_masks()
        values, firmware, reg_list = _read_space(vm, features, kb, with_firmware=True)
    registers = []
    for enc, value in zip(feature_id_space(), values):
        idx = writable_mask_index(*enc)
        registers.append(ProfileRegister(register_name(kb, enc), enc, kvm_reg_id(*enc), idx,
                                         value, None if masks is None or idx is None
                                         else masks[idx]))
    off = vcpu_off_values(kvm, kb, features, registers, reg_list) if variants else None
    return caps, features.names(), registers, masks is not None, off, firmware, reg_list


# QEMU migrates the core registers and SVE's by other means than its
# register list (target/arm/kvm.c kvm_arm_reg_syncs_via_cpreg_list)
_NOT_IN_QEMU_LIST = (0x0010 << 16, 0x0015 << 16)      # KVM_REG_ARM_CORE, KVM_REG_ARM64_SVE


def qemu_list(ids: list[int]) -> frozenset[int]:
    return frozenset(i for i in ids if i & 0x0FFF0000 not in _NOT_IN_QEMU_LIST)


def _read_space(vm, features: VcpuFeatures, kb: KnowledgeBase, with_firmware: bool = False
                ) -> tuple[list[int | None], dict[str, int | None], frozenset[int]]:
    """Create the VM's vCPU with *features* and read the feature-ID space
    (None where the kernel does not know a register), *with_firmware* KVM's
    firmware pseudo-registers (libvirt_arm_cpu.kb.firmware), and its register
    list as QEMU migrates it."""
    vcpu = vm.create_vcpu(features)

    def read(reg_id: int, name: str) -> int | None:
        try:
            return vcpu.get(reg_id, name)
        except KvmError as err:
            if err.errno != errno.ENOENT:
                raise
            return None

    out = [read(kvm_reg_id(*enc), register_name(kb, enc)) for enc in feature_id_space()]
    fw = {r.name: read(r.kvm_id, r.name) for r in FIRMWARE_REGISTERS} if with_firmware else {}
    return out, fw, qemu_list(vcpu.reg_list())


def vcpu_off_values(kvm: Kvm, kb: KnowledgeBase, features: VcpuFeatures,
                    registers: list[ProfileRegister],
                    reg_list: frozenset[int] = frozenset()) -> list[VcpuOffValues]:
    """One scratch VM per offered feature with it off, one with all off; if
    all-off is not what the single ones combine to, every pair too, so that
    :meth:`HostProfile.values` never has to assume independence."""
    offered = sorted(features.names())
    default = {r.name: r.value for r in registers}

    def measure(off: tuple[str, ...]) -> VcpuOffValues:
        with kvm.create_vm() as vm:
            values, _, ids = _read_space(vm, features.without(off), kb)
        return VcpuOffValues(off, {r.name: v for r, v in zip(registers, values)
                                   if v != default[r.name] and v is not None},
                             reg_list - ids, ids - reg_list)

    out = [measure((f,)) for f in offered]
    if len(offered) > 1:
        every = measure(tuple(offered))
        combined = {k: v for o in out for k, v in o.registers.items()}
        removed = frozenset().union(*(o.list_removed or () for o in out))
        added = frozenset().union(*(o.list_added or () for o in out))
        if (every.registers != combined or every.list_removed != removed
                or every.list_added != added) and len(offered) > 2:
            out += [measure(pair) for pair in itertools.combinations(offered, 2)]
        out.append(every)
    return out


# -- beyond the ID registers ------------------------------------------------

PMCR_EL0 = kvm_reg_id(3, 3, 9, 12, 0)
_MRS_X0_CNTFRQ_EL0 = 0xD53BE000
_STR_X0_X1 = 0xF9000020


def probe_platform(kvm: Kvm, features: VcpuFeatures) -> Platform:
    """What a guest here is given beyond the ID registers, each read the way
    a VMM meets it: capabilities, a test-only KVM_CREATE_DEVICE per GIC
    version, the SVE lengths and PMCR_EL0 of a scratch vCPU with the
    default features, and CNTFRQ_EL0 as a scratch guest reads it."""
    ipa = kvm.check_extension(K.KVM_CAP_ARM_VM_IPA_SIZE)
    with kvm.create_vm() as vm:
        gic = frozenset(v for v, t in ((2, K.KVM_DEV_TYPE_ARM_VGIC_V2),
                                       (3, K.KVM_DEV_TYPE_ARM_VGIC_V3))
                        if vm.can_create_device(t))
        its = vm.can_create_device(K.KVM_DEV_TYPE_ARM_VGIC_ITS)
        mte = vm.check_extension(K.KVM_CAP_ARM_MTE) > 0
        vcpu = vm.create_vcpu(features)
        sve: frozenset[int] = frozenset()
        if features.sve:
            words = vcpu.get_words(K.KVM_REG_ARM64_SVE_VLS, 8, "KVM_REG_ARM64_SVE_VLS")
            sve = frozenset(128 * (64 * w + b + 1) for w, word in enumerate(words)
                            for b in range(64) if word >> b & 1)
        counters = settable = None
        if features.pmu:
            pmcr = vcpu.get(PMCR_EL0, "PMCR_EL0")
            counters = pmcr >> 11 & 0x1F
            settable = False
            if counters:
                # lower N by one on this scratch vCPU: kernels before 6.8
                # keep N whatever userspace writes
                lowered = pmcr & ~(0x1F << 11) | (counters - 1) << 11
                try:
                    vcpu.set(PMCR_EL0, lowered, "PMCR_EL0")
                    settable = vcpu.get(PMCR_EL0, "PMCR_EL0") >> 11 & 0x1F == counters - 1
                except KvmError:
                    settable = False
    cntfrq = None
    # a vCPU without optional features: one with a PMU would need its PMU
    # device set up before KVM_RUN
    with kvm.create_vm() as vm:
        try:
            cntfrq = vm.create_vcpu(VcpuFeatures()).run_code([_MRS_X0_CNTFRQ_EL0, _STR_X0_X1])
        except KvmError:
            pass        # not measured: None
    return Platform(sve_vls=sve, ipa_bits=ipa or 40, mte=mte, pmu_counters=counters,
                    pmu_counters_settable=settable, gic=gic, its=its,
                    el2=kvm.check_extension(K.KVM_CAP_ARM_EL2) > 0,
                    aarch32_el1=kvm.check_extension(K.KVM_CAP_ARM_EL1_32BIT) > 0,
                    cntfrq=cntfrq)


# -- QEMU --------------------------------------------------------------------

def probe_qemu(emulator: str | None, timeout: float = QEMU_TIMEOUT) -> QemuInfo:
    """Version and SYSREG_* support of the emulator; never raises."""
    path = find_qemu(emulator)
    if path is None:
        return QemuInfo("missing", emulator, detail=f"{emulator or 'qemu-system-aarch64'} "
                        f"not found" + ("" if emulator else " on PATH"))
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=timeout, check=True).stdout
        version = out.split("version", 1)[1].split()[0] if "version" in out else out.strip()
    except (OSError, subprocess.SubprocessError, IndexError) as err:
        return QemuInfo("error", path, detail=f"{path} --version failed: {err}")
    try:
        props = _qmp_host_props(path, timeout)
    except _QmpFailed as err:
        return QemuInfo("found", path, version, "unknown", detail=str(err))
    has = any(k.startswith("SYSREG_") for k in props)
    return QemuInfo("found", path, version, "yes" if has else "no")


class _QmpFailed(Exception):
    pass


def _qmp_host_props(path: str, timeout: float, accel: str = "kvm",
                    model: str = "host") -> dict[str, object]:
    """``query-cpu-model-expansion`` (full) of *model*, over QMP on stdio."""
    argv = [path, "-machine", "none", "-accel", accel, "-nodefaults", "-nographic",
            "-qmp", "stdio"]
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
    except OSError as err:
        raise _QmpFailed(f"cannot start {path}: {err.strerror}") from err
    assert proc.stdin and proc.stdout and proc.stderr
    stdout, stderr = proc.stdout, proc.stderr
    buf = b""

    def message() -> dict:
        nonlocal buf
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([stdout], [], [], left)[0]:
                raise _QmpFailed(f"{path} did not answer on QMP within {timeout:.0f} s")
            chunk = os.read(stdout.fileno(), 65536)
            if not chunk:
                err = stderr.read(4096).decode(errors="replace").strip().splitlines()
                raise _QmpFailed(f"{path} exited: {err[-1] if err else 'no message'}")
            buf += chunk
        line, buf = buf.split(b"\n", 1)
        return json.loads(line)

    def command(cmd: dict) -> dict:
        proc.stdin.write(json.dumps(cmd).encode() + b"\n")  # type: ignore[union-attr]
        proc.stdin.flush()  # type: ignore[union-attr]
        while True:
            msg = message()
            if "return" in msg:
                return msg["return"]
            if "error" in msg:
                raise _QmpFailed(f"QMP {cmd['execute']}: {msg['error'].get('desc')}")

    try:
        message()   # greeting
        command({"execute": "qmp_capabilities"})
        ret = command({"execute": "query-cpu-model-expansion",
                       "arguments": {"type": "full", "model": {"name": model}}})
        try:
            command({"execute": "quit"})
        except (_QmpFailed, OSError, ValueError):
            pass
        return dict(ret.get("model", {}).get("props", {}))
    except (OSError, ValueError) as err:
        raise _QmpFailed(f"QMP with {path} failed: {err}") from err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=5)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            pipe.close()


def probe_loader(path: str = LOADER_PATH) -> LoaderInfo:
    """Is the ID register loader installed (a file QEMU can map)?"""
    return LoaderInfo("found" if os.path.isfile(path) else "missing", path)


# -- putting it together -----------------------------------------------------

def probe_host(emulator: str | None = None, dev: str = "/dev/kvm", sysfs: str = "/sys",
               kb: KnowledgeBase | None = None, qemu_timeout: float = QEMU_TIMEOUT,
               progress=None) -> HostProfile:
    """Probe this host.

    :raise NotArm64: not an aarch64 machine.
    :raise NoKvm, KvmPermission: /dev/kvm missing or not accessible.
    :raise KvmError: an ioctl failed with an unexpected errno.
    """
    say = progress or (lambda _msg: None)
    machine = check_machine()
    kb = kb or load_kb()
    uname = os.uname()
    cpus = read_cpus(sysfs)
    say(f"{len(cpus)} CPUs, kernel {uname.release}")
    with open_kvm(dev) as kvm:
        t0 = time.monotonic()
        caps, features, registers, masks_known, off, firmware, reg_list = probe_kvm(kvm, kb)
        platform = probe_platform(kvm, kvm.default_features())
        took = time.monotonic() - t0
    say(f"KVM: {sum(r.value is not None for r in registers)} ID registers read, writable "
        f"masks {'known' if masks_known else 'unknown'}, vCPU features "
        f"{', '.join(features) or 'none'}; {len(off or ())} vCPU-feature-off variants; "
        f"{took * 1000:.0f} ms")
    qemu = probe_qemu(emulator, qemu_timeout)
    say(f"QEMU: {qemu.status}" + (f" {qemu.version}, SYSREG properties: {qemu.sysreg}"
                                  if qemu.status == "found" else ""))
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    return HostProfile(
        hostname=socket.gethostname(), machine=machine,
        kernel_release=uname.release, kernel_version=uname.version,
        probed_at=now.isoformat().replace("+00:00", "Z"), tool_version=__version__,
        qemu=qemu, vcpu_features=features, capabilities=caps, cpus=cpus,
        registers=registers, masks_known=masks_known, vcpu_off=off or None, loader=probe_loader(),
        firmware=firmware, reg_list=reg_list, platform=platform,
        fingerprint=fingerprint(uname.release, cpus, find_qemu(emulator),
                                read_text("/proc/sys/kernel/random/boot_id")))
