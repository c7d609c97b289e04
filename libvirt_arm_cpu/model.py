"""The values everything else passes around: what a host offers, what a
guest is given, what a domain asks for.

Plain frozen dataclasses and nothing else: no XML, no files, no knowledge
base loading.  The readers and writers of their file forms live in
:mod:`libvirt_arm_cpu.formats`; the algorithms over them in
:mod:`libvirt_arm_cpu.engine`.

* :class:`HostProfile` (with :class:`ProfileRegister`, :class:`QemuInfo`,
  :class:`LoaderInfo`, :class:`VcpuOffValues`, :class:`CpuIdentity`,
  :class:`Fingerprint`): what one host's KVM can present to a guest, as the
  helper's probe measured it.
* :class:`CpuModel`: the ID register values a guest is given and what may
  still change (what baseline computes and compare checks).
* :class:`DomainCpu` and :class:`CpuFeature`: a domain's ``<cpu>``.
* :class:`Translation`: what translate resolved for a domain, kept in its
  metadata.
* :class:`HostCpu`: libvirt's description of a host CPU (model name and
  hwcaps), for hosts without a profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libvirt_arm_cpu.errors import DataError
from libvirt_arm_cpu.kb.firmware import SETTABLE

from libvirt_arm_cpu.deferred import sha256 as _sha256

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (3 ms a hook run)
if TYPE_CHECKING:
    from libvirt_arm_cpu.kb.registers import KnowledgeBase

__all__ = ["VCPU_FEATURES", "METHOD_SYSREG", "METHOD_LOADER", "METHOD_NONE", "METHODS",
           "METADATA_FORMAT", "QemuInfo", "LoaderInfo", "Platform", "PLATFORM_FIELDS", "VcpuOffValues", "CpuIdentity",
           "ProfileRegister", "Fingerprint", "HostProfile", "CpuModel", "CpuFeature",
           "DomainCpu", "Translation", "HostCpu", "vcpu_options", "SVE_LENGTHS", "sve_length_feature", "sve_length_options",
           "qemu_cpu_argument"]

# The optional vCPU features a KVM_ARM_VCPU_INIT takes and a model can
# switch off, by KVM's names (as in host profiles), with QEMU's -cpu option
# for each.  QEMU: docs/system/arm/cpu-features.rst (sve, pauth, pmu on -cpu
# host).
VCPU_FEATURES = ("pmu", "ptrauth", "sve")
_QEMU_OPTION = {"sve": "sve", "ptrauth": "pauth", "pmu": "pmu"}

# How the guest gets its ID registers: QEMU's SYSREG_* properties on a second
# -cpu, the preloaded loader (libvirt_arm_cpu.engine.loader), or nothing (the
# guest is the host's CPU and neither is available: plain host-passthrough).
METHOD_SYSREG, METHOD_LOADER, METHOD_NONE = "sysreg", "loader", "none"
METHODS = (METHOD_SYSREG, METHOD_LOADER, METHOD_NONE)

# The format of a domain's metadata (formats.domain).  2: the method and the
# vCPU features switched off (readers of format 1 would take a loader domain
# for plain host-passthrough: they must refuse it)
METADATA_FORMAT = 2


# -- host profile -------------------------------------------------------------

# Every value type has a docstring: dataclasses makes one for a class without
# it from inspect.signature, which costs each libvirt hook run that imports
# these types a fraction of a millisecond a class.

@dataclass(frozen=True)
class QemuInfo:
    """The QEMU a host runs guests with, as the probe found it."""

    status: str                      # found, missing, error
    path: str | None = None
    version: str | None = None
    sysreg: str = "unknown"          # yes, no, unknown: takes -cpu host,SYSREG_* properties?
    detail: str | None = None        # why missing/unknown


@dataclass(frozen=True)
class LoaderInfo:
    """Is the ID register loader (libvirt_arm_cpu.engine.loader.LOADER_PATH) installed?"""

    status: str = "missing"          # found, missing
    path: str | None = None


@dataclass(frozen=True)
class VcpuOffValues:
    """What the ID registers read on a vCPU made with *features* switched off
    (the rest as by default): only the registers that differ from the
    default vCPU's values."""

    features: tuple[str, ...]        # sorted
    registers: dict[str, int]
    # KVM_GET_REG_LIST of that vCPU against the default one (None: not probed)
    list_removed: frozenset[int] | None = None
    list_added: frozenset[int] | None = None


@dataclass(frozen=True)
class CpuIdentity:
    """One host CPU's identity registers (None: not readable)."""

    cpu: int
    midr: int | None
    revidr: int | None


@dataclass(frozen=True)
class ProfileRegister:
    """One ID register of a host profile: its value and what KVM lets
    userspace change."""

    name: str
    encoding: tuple[int, int, int, int, int]
    kvm_id: int
    mask_index: int | None
    value: int | None                # None: the kernel does not know the register
    writable: int | None             # None: unknown (kernel without capability 230)


@dataclass(frozen=True)
class Fingerprint:
    """What, when it changes, makes a cached profile stale."""

    components: dict[str, str]

    @property
    def digest(self) -> str:
        text = "\n".join(f"{k}={v}" for k, v in sorted(self.components.items()))
        return _sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class Platform:
    """What a guest is given beyond the ID registers that a migration must
    find again on its destination: for a host, what its KVM offers; for a
    CPU model, what a guest of the model may use.  None: not known (not
    probed, or a profile written before the probe measured it).

    Sources (Linux): arch/arm64/kvm/guest.c (KVM_REG_ARM64_SVE_VLS: a guest's
    set must equal the host's up to its largest length), KVM_CAP_ARM_VM_IPA_SIZE,
    KVM_CAP_ARM_MTE, KVM_CAP_ARM_EL2 (6.16), KVM_CAP_ARM_EL1_32BIT
    (Documentation/virt/kvm/api.rst), arch/arm64/kvm/pmu-emul.c (PMCR_EL0.N,
    lowered by userspace since 6.8), KVM_CREATE_DEVICE (GIC versions, ITS);
    CNTFRQ_EL0 is not trapped: a guest reads the host's counter frequency.
    """

    sve_vls: frozenset[int] | None = None    # SVE vector lengths in bits (empty: no SVE)
    ipa_bits: int | None = None              # largest guest physical address size
    mte: bool | None = None                  # memory tagging for guests
    pmu_counters: int | None = None          # PMCR_EL0.N of a vCPU with a PMU
    pmu_counters_settable: bool | None = None   # can userspace lower PMCR_EL0.N?
    gic: frozenset[int] | None = None        # GIC versions a VM can have (2, 3)
    its: bool | None = None                  # a GICv3 ITS
    el2: bool | None = None                  # nested virtualization (a vCPU with EL2)
    aarch32_el1: bool | None = None          # 32-bit guests (aarch64=off)
    cntfrq: int | None = None                # the generic timer's frequency, Hz

    @property
    def sve_max(self) -> int:
        return max(self.sve_vls) if self.sve_vls else 0

    def known(self) -> bool:
        return any(getattr(self, f) is not None for f in PLATFORM_FIELDS)

    def without(self, off: tuple[str, ...] | list[str] | set[str] | frozenset[str]) -> Platform:
        """What a guest has with the vCPU features *off* switched off: no
        SVE lengths without SVE, no PMU counters without a PMU."""
        from dataclasses import replace
        out = self
        if "sve" in off and self.sve_vls is not None:
            out = replace(out, sve_vls=frozenset())
        if "pmu" in off and self.pmu_counters is not None:
            out = replace(out, pmu_counters=0)
        return out

    def text(self) -> str:
        """A stable one-line form (model names are digests of it)."""
        def show(v: object) -> str:
            if isinstance(v, frozenset):
                return "+".join(str(x) for x in sorted(v))
            return "-" if v is None else str(int(v) if isinstance(v, bool) else v)
        return ",".join(f"{f}={show(getattr(self, f))}" for f in PLATFORM_FIELDS)


PLATFORM_FIELDS = ("sve_vls", "ipa_bits", "mte", "pmu_counters", "pmu_counters_settable",
                   "gic", "its", "el2", "aarch32_el1", "cntfrq")


@dataclass(frozen=True)
class HostProfile:
    """What one host's KVM can present to a guest, as the probe measured it."""

    hostname: str
    machine: str
    kernel_release: str
    kernel_version: str
    probed_at: str                   # ISO 8601, UTC
    tool_version: str
    qemu: QemuInfo
    vcpu_features: list[str]
    capabilities: dict[str, tuple[int, int]]   # name -> (number, value)
    cpus: list[CpuIdentity]
    registers: list[ProfileRegister]
    masks_known: bool
    fingerprint: Fingerprint = field(default_factory=lambda: Fingerprint({}))
    # None: the probe did not measure it (a profile written before it did):
    # what switching a vCPU feature off does is unknown.
    vcpu_off: list[VcpuOffValues] | None = None
    loader: LoaderInfo = field(default_factory=LoaderInfo)
    # KVM's firmware pseudo-registers (libvirt_arm_cpu.kb.firmware), name ->
    # value, None where the kernel lacks one; None: not probed (older profile)
    firmware: dict[str, int | None] | None = None
    # KVM_GET_REG_LIST of the default vCPU, less the core and SVE registers
    # (QEMU migrates those by other means): every register QEMU's migration
    # stream carries for it.  None: not probed (older profile)
    reg_list: frozenset[int] | None = None
    # beyond the ID registers (SVE lengths, IPA size, GIC, ...); an empty
    # Platform: not probed (older profile)
    platform: Platform = field(default_factory=Platform)

    @property
    def heterogeneous(self) -> bool:
        """Do the CPUs differ (big.LITTLE)?  Compared as MIDR_CPU_MODEL does,
        plus variant and revision: any MIDR difference counts."""
        return len({c.midr for c in self.cpus if c.midr is not None}) > 1

    def can_switch_off(self, feature: str) -> bool:
        """Is it known what a guest here reads with *feature* off?  True
        when the host does not offer it (the guest never has it) or the
        probe measured it."""
        return feature not in self.vcpu_features or any(
            o.features == (feature,) for o in self.vcpu_off or ())

    def values(self, off: tuple[str, ...] | list[str] | frozenset[str] = ()) -> dict[str, int]:
        """Register name -> value, for the registers this host has, as a
        guest reads them with the vCPU features *off* switched off.

        A set the probe measured as such is taken as measured; otherwise the
        single-feature measurements are combined (the probe checks that
        they are independent: it also measures all-off, and each pair when
        all-off is not their combination).

        :raise DataError: when a feature of *off* is one this host offers
            but its profile does not say what switching it off does.
        """
        out = {r.name: r.value for r in self.registers if r.value is not None}
        wanted = tuple(sorted(set(off) & set(self.vcpu_features)))
        if not wanted:
            return out
        unknown = [f for f in wanted if not self.can_switch_off(f)]
        if unknown:
            raise DataError(f"host profile of {self.hostname or 'a host'} does not record the "
                            f"ID registers with vCPU feature {unknown[0]} off (probed by an "
                            f"older libvirt-arm-cpu): probe it again")
        records = {o.features: o.registers for o in self.vcpu_off or ()}
        if wanted in records:
            out.update(records[wanted])
        else:
            for f in wanted:
                out.update(records[(f,)])
        return out

    def reg_ids(self, off: tuple[str, ...] | list[str] | frozenset[str] = ()
                ) -> frozenset[int] | None:
        """The register list of a guest vCPU with the features *off*
        switched off, as :meth:`values` combines measurements; None where
        the profile does not record it."""
        if self.reg_list is None:
            return None
        wanted = tuple(sorted(set(off) & set(self.vcpu_features)))
        if not wanted:
            return self.reg_list
        records = {o.features: o for o in self.vcpu_off or ()}
        parts = [records[wanted]] if wanted in records else [records.get((f,)) for f in wanted]
        out = set(self.reg_list)
        for o in parts:
            if o is None or o.list_removed is None or o.list_added is None:
                return None
            out -= o.list_removed
            out |= o.list_added
        return frozenset(out)

    def register(self, name: str) -> ProfileRegister | None:
        for r in self.registers:
            if r.name == name:
                return r
        return None

    def capability(self, name: str) -> int:
        return self.capabilities.get(name, (0, 0))[1]


# -- CPU model ----------------------------------------------------------------

@dataclass(frozen=True)
class CpuModel:
    """The ID register values a guest is given, and what may still change."""

    values: dict[str, int]                      # register -> value
    writable: dict[str, int]                    # register -> bits every source may change
    imp_id_writable: bool = False               # every source has KVM capability 239
    hosts: tuple[str, ...] = ()                 # where it came from
    implementations: tuple[int, ...] = ()       # MIDRs the guest may run on
    name: str = field(default="")
    vcpu_off: tuple[str, ...] = ()              # vCPU features a guest runs with off (sorted)
    # feature still on -> register -> value once it is off too (only those that
    # change); a feature missing here cannot be switched off (unknown)
    vcpu_effects: dict[str, dict[str, int]] = field(default_factory=dict)
    # KVM firmware pseudo-registers the guest is given (libvirt_arm_cpu.
    # firmware: PSCI version, hypercall bitmaps), None: kept out of its
    # register list.  Empty: not managed, the guest has each host's own.
    firmware: dict[str, int | None] = field(default_factory=dict)
    # the registers a guest vCPU of this model may have (KVM ids, as QEMU
    # migrates them): the loader keeps any other out of QEMU's list, so the
    # migration stream never carries one a host of the model lacks.  None:
    # not managed (the guest has each host's list)
    reg_list: frozenset[int] | None = None
    # what a guest of the model may use beyond the ID registers (the meet of
    # its hosts' platforms, engine.platform); empty: not managed
    platform: Platform = field(default_factory=Platform)
    # register -> fields whose value is the host's, at least the one in
    # *values* (an architecture level's fields KVM does not let userspace
    # lower: kb.named); resolved against a host by engine.compare.on_host
    host_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # frozen: the normal forms are set once, here
        object.__setattr__(self, "vcpu_off", tuple(sorted(set(self.vcpu_off))))
        bad = [f for f in (*self.vcpu_off, *self.vcpu_effects) if f not in VCPU_FEATURES]
        if bad:
            raise ValueError(f"unknown vCPU feature '{bad[0]}' (known: {', '.join(VCPU_FEATURES)})")
        if not self.name:
            object.__setattr__(self, "name", self.digest_name())

    def digest_name(self) -> str:
        text = ";".join(f"{k}={v:x}" for k, v in sorted(self.values.items()))
        if self.vcpu_off:       # appended only then: older models keep their names
            text += ";vcpu-off=" + ",".join(self.vcpu_off)
        if self.reg_list is not None:
            text += ";list=" + _sha256(" ".join(
                f"{i:x}" for i in sorted(self.reg_list)).encode()).hexdigest()[:16]
        if self.firmware:
            text += ";firmware=" + ",".join(f"{k}={'-' if v is None else f'{v:x}'}"
                                            for k, v in sorted(self.firmware.items()))
        if self.platform.known():
            text += ";platform=" + self.platform.text()
        if self.host_fields:
            text += ";host=" + ",".join(f"{r}.{f}" for r, fs in sorted(self.host_fields.items())
                                        for f in fs)
        return "arm64-" + _sha256(text.encode()).hexdigest()[:12]

    def can_switch_off(self, feature: str) -> bool:
        return feature in self.vcpu_off or feature in self.vcpu_effects

    def switched_off(self, off: tuple[str, ...] | set[str] | frozenset[str],
                     name: str = "") -> CpuModel:
        """This model with the vCPU features *off* switched off as well,
        named *name* (default: by its digest, which costs ~0.15 ms).

        :raise KeyError: for a feature whose effect is unknown (check
            :meth:`can_switch_off`).
        """
        new = sorted(set(off) - set(self.vcpu_off))
        if not new:
            return self
        values = dict(self.values)
        for f in new:
            values.update(self.vcpu_effects[f])
        effects = {f: e for f, e in self.vcpu_effects.items() if f not in new}
        return CpuModel(values, self.writable, self.imp_id_writable, self.hosts,
                        self.implementations, vcpu_off=tuple(set(self.vcpu_off) | set(new)),
                        vcpu_effects=effects, firmware=dict(self.firmware),
                        reg_list=self.reg_list, platform=self.platform.without(new),
                        host_fields=self.host_fields, name=name)

    @classmethod
    def from_profile(cls, p: HostProfile, kb: KnowledgeBase, label: str | None = None,
                     off: tuple[str, ...] = ()) -> CpuModel:
        """The model of exactly this host, as a guest with the vCPU features
        *off* switched off sees it.  MPIDR (per-vCPU topology) is left out;
        unknown masks (kernels before 6.7) mean nothing may change.

        :raise DataError: *off* has a feature whose effect the profile does
            not record (:meth:`HostProfile.can_switch_off`).
        """
        have = p.values(off)
        keep = []
        for r in p.registers:
            reg = kb.by_encoding(*r.encoding)
            if reg is not None and reg.kind == "affinity":
                continue
            keep.append(r)
        values = {r.name: have.get(r.name, 0) for r in keep}
        writable = {r.name: r.writable or 0 for r in keep}
        effects = {}
        for f in VCPU_FEATURES:
            if f in off or not p.can_switch_off(f):
                continue
            more = p.values((*off, f))
            effects[f] = {n: more.get(n, 0) for n in values if more.get(n, 0) != values[n]}
        midrs = tuple(sorted({c.midr for c in p.cpus if c.midr is not None}
                             | {values.get("MIDR_EL1", 0)}))
        firmware = {n: v for n, v in (p.firmware or {}).items() if n in SETTABLE}
        return cls(values, writable, p.capability("KVM_CAP_ARM_WRITABLE_IMP_ID_REGS") > 0,
                   (label or p.hostname,), midrs, vcpu_off=tuple(off), vcpu_effects=effects,
                   firmware=firmware, reg_list=p.reg_ids(off), platform=p.platform.without(off))


# -- domain -------------------------------------------------------------------

# SVE vector lengths: multiples of 128 bits up to 2048 (Arm ARM, ZCR_ELx.LEN)
SVE_LENGTHS = frozenset(range(128, 2049, 128))


def sve_length_feature(name: str) -> int | None:
    """The length QEMU's and libvirt's ``sveNNN`` names (``sve256`` -> 256);
    None for any other name (``sve``, ``sve2``, ``sve2p1``: not lengths)."""
    if name.startswith("sve") and name[3:].isdigit() and int(name[3:]) in SVE_LENGTHS:
        return int(name[3:])
    return None


def sve_length_options(lengths: frozenset[int] | None) -> list[str]:
    """QEMU's -cpu options giving a guest exactly the SVE vector *lengths*
    (bits): naming some lengths switches every other off
    (docs/system/arm/cpu-features.rst, "SVE CPU Properties"); none for
    None or an empty set (no SVE, or not managed)."""
    return [f"sve{v}=on" for v in sorted(lengths or ())]


def vcpu_options(off: tuple[str, ...] | list[str],
                 sve_lengths: frozenset[int] | None = None) -> list[str]:
    """QEMU -cpu options for the vCPU features switched off, in QEMU's
    names, and the SVE vector lengths (when SVE stays on)."""
    return [f"{_QEMU_OPTION[name]}=off" for name in sorted(off)] + \
        ([] if "sve" in off else sve_length_options(sve_lengths))


def qemu_cpu_argument(properties: list[tuple[str, int]], off: tuple[str, ...] = (),
                      sve_lengths: frozenset[int] | None = None) -> str:
    """The value of the SYSREG method's second -cpu: the vCPU options libvirt
    writes into its own -cpu (the second replaces the first, so they are
    repeated here), then the properties."""
    return "host" + "".join("," + o for o in vcpu_options(off, sve_lengths)) + \
        "".join(f",{name}={value:#x}" for name, value in properties)


@dataclass(frozen=True)
class CpuFeature:
    """A ``<feature>`` of a domain's ``<cpu>``."""

    policy: str
    name: str
    value: str | None = None       # SYSREG_<REG>_<FIELD> features carry a value


@dataclass(frozen=True)
class DomainCpu:
    """A domain's ``<cpu>``."""

    mode: str
    match: str | None
    model: str | None
    fallback: str | None
    features: list[CpuFeature] = field(default_factory=list)


@dataclass(frozen=True)
class Translation:
    """What translate resolved, kept in the domain's <metadata>."""

    original_cpu: str                       # the <cpu> element as written, "" if none
    values: dict[str, int]                  # the guest's ID registers
    properties: list[tuple[str, int]]       # SYSREG_* given to QEMU on the host below
    host: str = ""                          # host name the QEMU input was made for
    fingerprint: str = ""                   # that host profile's fingerprint
    model: str = ""                         # the CPU model's name
    version: int = METADATA_FORMAT
    method: str = METHOD_SYSREG             # sysreg | loader | none (see METHODS)
    vcpu_off: tuple[str, ...] = ()          # vCPU features the guest runs without
    original_pmu: str = ""                  # the <features><pmu> we replaced, "" if none
    # firmware pseudo-registers the model sets (None: kept out of the guest's
    # register list); empty: not managed
    firmware: dict[str, int | None] = field(default_factory=dict)
    # the registers the guest's vCPU may have (KVM ids); None: not managed
    reg_list: frozenset[int] | None = None
    # what the guest may use beyond the ID registers (its model's); empty:
    # not managed (translated before it was)
    platform: Platform = field(default_factory=Platform)

    @property
    def qemu_cpu(self) -> str | None:
        """The SYSREG method's second -cpu value, None when there is none."""
        if self.method != METHOD_SYSREG or not self.properties:
            return None
        return qemu_cpu_argument(self.properties, self.vcpu_off, self.platform.sve_vls)


# -- libvirt's host CPU --------------------------------------------------------

@dataclass(frozen=True)
class HostCpu:
    """libvirt's description of a host CPU: model name and hwcaps."""

    arch: str
    model: str
    vendor: str
    features: frozenset[str]
