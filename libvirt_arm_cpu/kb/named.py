"""Named, versioned CPU models (``xml/models.xml``): their type, and their generator.

A named model is a set of ID register values with a name operators know
(``neoverse-v1``, ``armv8.2-a``) and a version (``neoverse-v1-v1``).  Once
released a version never changes: the generator reads the file it last
wrote as the history, keeps every version in it byte for byte, and adds
``v<N+1>`` only when the values it computes from today's data differ from
the latest version's (each version carries the SHA-256 of its values, which
the tests check).  A model's meaning is therefore independent of the data
files, of the running kernel and of which fields it lets userspace write.

Two kinds, from ``../shared/data`` (each version cites its source file and
its SHA-256):

* ``core``: one Arm core, from ``cpus/qemu-<core>.json`` (every ID register,
  as QEMU models the core from its TRM) or else ``cpus/hrw-<core>.json`` (a
  subset, from the TRM).  The values are what a KVM guest of that core
  reads (:data:`GUEST_VIEW`: no EL3, trace, SPE, AMU, MPAM, MTE, nested
  virtualization; a GICv3 CPU interface); a register the file lacks is 0
  (no feature: the one value that never claims one) with its RES1 bits set.
  CTR_EL0, CLIDR_EL1 and DCZID_EL0 are fixed only where the file gives
  them; MIDR/REVIDR/AIDR never (a guest keeps its host's identity, so the
  errata workarounds it applies are its host's).
* ``architecture``: an Arm architecture level, from ``arch_profiles.json``
  (LLVM's model of each level): every field at the lowest value that gives
  the level's features (``features.xml``), on :data:`ARCH_BASE`, the fields
  a guest needs whatever the level; no AArch32; PAuth off, and SVE off
  below the levels that have it.  The fields KVM does not let userspace
  lower (``kvm_writable.json``) are the host's, each at least the level's
  value (:func:`kvm_unwritable`, the ``host`` fields of a register): a
  level fixes what it can and is explicit about what it cannot.

The generator is :func:`generate` (``python -m libvirt_arm_cpu.kb.named``;
``python -m libvirt_arm_cpu.kb.gen`` runs it too).  The reader is
:func:`libvirt_arm_cpu.kb.load.named_models`.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field

from libvirt_arm_cpu.kb.registers import NAMESPACE, Field, KnowledgeBase, Source

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

    from libvirt_arm_cpu.kb.features import Condition, FeatureCatalog

__all__ = ["FORMAT", "CORE", "ARCHITECTURE", "NamedModel", "NamedModels", "digest_of",
           "split_version", "generate", "main"]

FORMAT = 2                      # the models.xml format this version reads and writes
# 2: a register may name fields taken from the host (an older reader would
# take their least values as exact)
CORE, ARCHITECTURE = "core", "architecture"
OUTPUT = "models.xml"


def digest_of(values: dict[str, int], vcpu_off: tuple[str, ...] = (),
              host_fields: dict[str, tuple[str, ...]] | None = None) -> str:
    """The SHA-256 of a version's values (and the vCPU features it runs
    with off, and the fields it takes from the host): what must never change."""
    import hashlib
    text = ";".join(f"{name}=0x{value:016x}" for name, value in sorted(values.items()))
    if vcpu_off:
        text += ";vcpu-off=" + ",".join(sorted(vcpu_off))
    if host_fields:     # appended only then: the core models keep their digests
        text += ";host=" + ",".join(f"{r}.{f}" for r, fs in sorted(host_fields.items())
                                    for f in sorted(fs))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RegisterOrigin:
    """One register of a named model's version, and where its value comes from."""

    register: str
    value: int
    origin: str                 # data, guest-view, absent, derived, level, base
    fields: str = ""            # the fields guest-view/level/base set (space-separated)
    # fields whose value is the host's, at least the one in *value* (a
    # level's fields KVM does not let userspace lower: see ARCH_HOST_FIELDS)
    host: str = ""


@dataclass(frozen=True)
class NamedModel:
    """One released version of a named model."""

    name: str                   # neoverse-v1 (without the version)
    version: int
    kind: str                   # core | architecture
    title: str
    source: str                 # a <source> id of the file
    registers: tuple[RegisterOrigin, ...]
    digest: str
    notes: tuple[str, ...] = ()
    vcpu_off: tuple[str, ...] = ()      # vCPU features a guest runs with off (KVM's names)

    @property
    def versioned(self) -> str:
        return f"{self.name}-v{self.version}"

    @property
    def values(self) -> dict[str, int]:
        return {r.register: r.value for r in self.registers}

    @property
    def host_fields(self) -> dict[str, tuple[str, ...]]:
        """register -> the fields a guest of the model reads from its host
        (each at least the model's value there)."""
        return {r.register: tuple(r.host.split()) for r in self.registers if r.host}


@dataclass
class NamedModels:
    """Every named model of a models.xml, every version."""

    models: list[NamedModel]
    sources: list[Source] = field(default_factory=list)
    path: str = ""

    def names(self) -> list[str]:
        return sorted({m.name for m in self.models})

    def versions(self, name: str) -> list[NamedModel]:
        return sorted((m for m in self.models if m.name == name), key=lambda m: m.version)

    def latest(self) -> list[NamedModel]:
        return [self.versions(n)[-1] for n in self.names()]

    def all_names(self) -> list[str]:
        """Every name a model can be asked for: unversioned and versioned."""
        return sorted({*self.names(), *(m.versioned for m in self.models)})

    def find(self, name: str) -> NamedModel | None:
        """*name* (``neoverse-v1``: its latest version; ``neoverse-v1-v1``),
        None when no model has that name.

        :raise LookupError: the model exists but not that version (the
            message lists the versions it has).
        """
        if name in self.names():
            return self.versions(name)[-1]
        base, number = split_version(name)
        if base is None:
            return None
        have = self.versions(base)
        if not have:
            return None
        for m in have:
            if m.version == number:
                return m
        raise LookupError(f"named CPU model {base} has no version {number} (it has "
                          f"{', '.join('v' + str(m.version) for m in have)}; "
                          f"{base} alone is the latest, {have[-1].versioned})")

    def source(self, sid: str) -> Source | None:
        return next((s for s in self.sources if s.id == sid), None)


def split_version(name: str) -> tuple[str | None, int]:
    """``neoverse-v1-v2`` -> (``neoverse-v1``, 2); (None, 0) without a
    ``-v<N>`` suffix."""
    head, sep, tail = name.rpartition("-v")
    if not sep or not head or not tail.isdigit() or tail.startswith("0"):
        return None, 0
    return head, int(tail)


# -- what a KVM guest of a core reads ------------------------------------------

# (register, field) -> the value a KVM guest under QEMU/libvirt reads, and why.
# Sources: Linux arch/arm64/kvm/sys_regs.c (__kvm_read_sanitised_id_reg,
# sanitise_id_aa64pfr0_el1, sanitise_id_aa64dfr0_el1; fields cpufeature.c
# does not describe read as 0: TraceVer, TraceFilt, TraceBuffer, BRBE), and
# QEMU/libvirt's aarch64 'virt' machine (no EL3 for a KVM guest, a GICv3).
_EL3 = "a KVM guest has no EL3 (Linux kvm/sys_regs.c; QEMU virt with KVM)"
_TRACE = "self-hosted trace is not given to KVM guests (fields cpufeature.c does not describe read as 0)"
GUEST_VIEW: dict[tuple[str, str], tuple[int, str]] = {
    ("ID_AA64PFR0_EL1", "EL3"): (0, _EL3),
    ("ID_AA64PFR0_EL1", "AMU"): (0, "sanitise_id_aa64pfr0_el1() hides AMU"),
    ("ID_AA64PFR0_EL1", "MPAM"): (0, "sanitise_id_aa64pfr0_el1() hides MPAM"),
    ("ID_AA64PFR0_EL1", "GIC"): (1, "KVM sets GIC = IMP for a GICv3 vGIC (libvirt's aarch64 default)"),
    ("ID_AA64PFR0_EL1", "RME"): (0, "no Realm Management Extension in a guest"),
    ("ID_AA64PFR1_EL1", "MTE"): (0, "MTE is hidden unless the VM enables it (QEMU: mte=off by default with KVM)"),
    ("ID_AA64PFR1_EL1", "SME"): (0, "__kvm_read_sanitised_id_reg() hides SME"),
    ("ID_AA64PFR1_EL1", "MPAM_frac"): (0, "MPAM is hidden"),
    ("ID_AA64PFR1_EL1", "RNDR_trap"): (0, "__kvm_read_sanitised_id_reg() clears RNDR_trap"),
    ("ID_AA64PFR1_EL1", "NMI"): (0, "__kvm_read_sanitised_id_reg() hides NMI"),
    ("ID_AA64PFR1_EL1", "GCS"): (0, "__kvm_read_sanitised_id_reg() hides GCS"),
    ("ID_AA64PFR1_EL1", "THE"): (0, "__kvm_read_sanitised_id_reg() hides THE"),
    ("ID_AA64PFR1_EL1", "MTEX"): (0, "__kvm_read_sanitised_id_reg() hides MTEX"),
    ("ID_AA64PFR1_EL1", "PFAR"): (0, "__kvm_read_sanitised_id_reg() hides PFAR"),
    ("ID_AA64DFR0_EL1", "PMSVer"): (0, "sanitise_id_aa64dfr0_el1(): SPE is hidden from guests"),
    ("ID_AA64DFR0_EL1", "BRBE"): (0, "sanitise_id_aa64dfr0_el1(): BRBE is hidden from guests"),
    ("ID_AA64DFR0_EL1", "TraceVer"): (0, _TRACE),
    ("ID_AA64DFR0_EL1", "TraceFilt"): (0, _TRACE),
    ("ID_AA64DFR0_EL1", "TraceBuffer"): (0, _TRACE),
    ("ID_AA64MMFR2_EL1", "CCIDX"): (0, "__kvm_read_sanitised_id_reg() hides CCIDX (KVM makes up the cache geometry)"),
    ("ID_AA64MMFR2_EL1", "NV"): (0, "Linux 6.16+ hides NV from a guest without nested virtualization (older kernels show the core's, unwritable)"),
    ("ID_MMFR4_EL1", "CCIDX"): (0, "__kvm_read_sanitised_id_reg() hides CCIDX"),
    ("ID_PFR0_EL1", "AMU"): (0, "AMU is hidden"),
    ("ID_PFR0_EL1", "RAS"): (0, "AArch32 RAS is for AArch32 EL1, which KVM guests of these cores do not have"),
    ("ID_PFR1_EL1", "Security"): (0, _EL3),
    ("ID_PFR1_EL1", "GIC"): (1, "KVM sets GIC for a GICv3 vGIC"),
    ("ID_DFR0_EL1", "CopSDbg"): (0, _EL3 + ": no Secure debug"),
    ("ID_DFR0_EL1", "CopTrc"): (0, _TRACE),
    ("ID_DFR0_EL1", "MMapTrc"): (0, _TRACE),
    ("ID_DFR0_EL1", "TraceFilt"): (0, _TRACE),
}

# (register, field) -> the most a KVM guest reads, and why.
GUEST_CAP: dict[tuple[str, str], tuple[int, str]] = {
    ("ID_AA64PFR0_EL1", "CSV2"): (1, "sanitise_id_aa64pfr0_el1() presents CSV2 as 1 at most"),
}

# Registers a named model leaves to the host: per-level cache geometry
# (KVM makes it up), MTE tag geometry, the SME implementation, IMPDEF
# auxiliary registers, and the implementation identity.
NOT_FIXED = ("CCSIDR_EL1", "CCSIDR2_EL1", "GMID_EL1", "SMIDR_EL1")


def _clidr_for(ctr: int) -> int:
    """CLIDR_EL1 as KVM makes it up from CTR_EL0 (Linux arch/arm64/kvm/
    sys_regs.c reset_clidr(); MTE off)."""
    idc, dic = (ctr >> 28) & 1, (ctr >> 29) & 1
    if idc:
        loc = 1 if dic else 2
        clidr = 4 << (3 * (loc - 1))            # unified cache at LoC
    else:
        loc = 1
        clidr = (1 << 27) | (1 << 21) | (2 << 0)   # LoUU, LoUIS, L1 data cache
    if not dic:
        clidr |= 1                              # L1 instruction cache
    return clidr | (loc << 24)


# -- architecture levels -----------------------------------------------------------

# (register, field) -> value every architecture-level model has, and why:
# what a guest needs whatever the level, chosen to run on every core of the
# data that has the level.  A level feature needing more of one of these
# fields is left out, as one KVM does not give guests is.
ARCH_BASE: dict[tuple[str, str], tuple[int, str]] = {
    ("ID_AA64PFR0_EL1", "EL0"): (1, "AArch64 only"),
    ("ID_AA64PFR0_EL1", "EL1"): (1, "AArch64 only"),
    ("ID_AA64PFR0_EL1", "GIC"): (1, "a GICv3 vGIC"),
    ("ID_AA64PFR0_EL1", "SEL2"): (0, "a KVM guest has no Secure state (no EL3), so Secure EL2 "
                                     "is not its to use; KVM lets the field be lowered"),
}
# Features LLVM's model puts in a level earlier than the Arm architecture
# does: (feature) -> (the first level that has it, why).  LLVM's one "ras"
# extension record names FEAT_RAS and FEAT_RASv1p1 together
# (AArch64Features.td), so arch_profiles.json lists FEAT_RASv1p1 from
# Armv8.2; the Arm ARM (DDI 0487, A2: the feature lists of each extension)
# makes it OPTIONAL in Armv8.2 and mandatory from Armv8.4 (Neoverse N1, an
# Armv8.2 core, has RAS 1 and RAS_frac 0).
ARCH_FEATURE_FROM: dict[str, tuple[str, str]] = {
    "FEAT_RASv1p1": ("v8.4a", "OPTIONAL in Armv8.2, mandatory from Armv8.4 (Arm ARM DDI "
                              "0487, A2); LLVM's 'ras' record names it with FEAT_RAS"),
}
# Features the data tells by part of what they are: (feature) -> (the
# feature of the catalog that tells the rest, why).  The data gives
# FEAT_I8MM as ID_AA64ZFR0_EL1.I8MM only (arm_spec_via_lelegard in
# feat_map.json), its SVE instructions; its AdvSIMD ones are Linux's hwcap
# i8mm, ID_AA64ISAR1_EL1.I8MM (hwcaps.json), which a level without SVE needs.
ARCH_FEATURE_ALSO: dict[str, tuple[str, str]] = {
    "FEAT_I8MM": ("i8mm", "its AdvSIMD instructions (hwcap i8mm, ID_AA64ISAR1_EL1.I8MM); "
                          "the data tells it by ID_AA64ZFR0_EL1.I8MM, its SVE ones"),
}
# Registers an architecture level does not fix: their fields are the
# implementation's sizes (physical address size, ASID bits, granules,
# breakpoints, PMU, debug version), several of which KVM does not let
# userspace change; a guest reads its host's.
ARCH_HOST_REGISTERS = ("ID_AA64MMFR0_EL1", "ID_AA64DFR0_EL1")
# vCPU features an architecture-level guest runs with off: the PAuth
# algorithm (APA/API/APA3) is the implementation's choice and KVM does not
# let it change, so no level can fix it.  A level without FEAT_SVE also
# runs with SVE off (ID_AA64PFR0_EL1.SVE follows the vCPU feature only).
ARCH_VCPU_OFF = ("ptrauth",)
ARCH_OFF_FIELDS = {("ID_AA64ISAR1_EL1", n) for n in ("APA", "API", "GPA", "GPI")} | \
    {("ID_AA64ISAR2_EL1", n) for n in ("APA3", "GPA3", "PAC_frac")}
# Fields of a level that are its host's (ARCH_HOST_FIELDS): those some
# kernel of kvm_writable.json (Linux arch/arm64/kvm/sys_regs.c, 6.12 to
# 2026) does not let userspace write, or whose KVM rule refuses the level's
# value on a host that has more (FP/AdvSIMD with FP16, MMFR1.XNX/VH/VMIDBits,
# MMFR2.EVT/FWB/IDS, RAS, SVE, ...).  Each keeps the level's value as its
# least: a host with less cannot run the level, one with more gives its own
# value, which translate writes into the domain, so a guest still never
# migrates to a host that differs there.  Fixed per version at generation.
KVM_WRITABLE = "kvm_writable.json"
# GUEST_VIEW fields only newer kernels fix: older ones show the host's and
# do not let it change, so a level takes them from the host
ARCH_HOST_BEFORE = {("ID_AA64MMFR2_EL1", "NV")}
ARCH_REGISTERS = ("ID_AA64PFR0_EL1", "ID_AA64PFR1_EL1", "ID_AA64PFR2_EL1", "ID_AA64ZFR0_EL1",
                  "ID_AA64SMFR0_EL1", "ID_AA64FPFR0_EL1", "ID_AA64DFR1_EL1",
                  "ID_AA64AFR0_EL1", "ID_AA64AFR1_EL1", "ID_AA64ISAR0_EL1", "ID_AA64ISAR1_EL1",
                  "ID_AA64ISAR2_EL1", "ID_AA64ISAR3_EL1", "ID_AA64MMFR1_EL1",
                  "ID_AA64MMFR2_EL1", "ID_AA64MMFR3_EL1", "ID_AA64MMFR4_EL1")


def _arch_name(key: str) -> str:
    """arch_profiles.json's ``v8.2a`` / ``v9a`` -> ``armv8.2-a`` / ``armv9.0-a``."""
    ver = key[1:-1]
    return f"armv{ver if '.' in ver else ver + '.0'}-a"


def _level(key: str) -> tuple[int, int]:
    """arch_profiles.json's ``v8.2a`` -> (8, 2); ``v9a`` -> (9, 0)."""
    major, _, minor = key[1:-1].partition(".")
    return int(major), int(minor or 0)


def _has_level(key: str, first: str) -> bool:
    """Does level *key* include what level *first* added?  (Armv9.N-A
    includes Armv8.(N+5)-A: the data's own note.)"""
    (km, kn), (fm, fn) = _level(key), _level(first)
    if fm == 8:
        return kn + (5 if km == 9 else 0) >= fn
    return km == 9 and kn >= fn


def _fixed(f: Field) -> int | None:
    """The most a level may give field *f* (in field order), where a KVM
    guest or every level fixes it; None where it is free."""
    key = (f.register, f.name)
    for table in (GUEST_VIEW, GUEST_CAP, ARCH_BASE):
        if key in table:
            return f.order(table[key][0])
    return None


def _least(cond: Condition, catalog: FeatureCatalog, into: dict[Field, int], seen: set[str],
           sve: bool = True) -> bool:
    """Raise the fields in *into* to the least values that satisfy *cond*
    (an ``any`` takes its first term); False if it needs more of a field a
    KVM guest or every level fixes lower (a feature a guest cannot have),
    or, without *sve*, any of ID_AA64ZFR0_EL1 (zero with SVE off)."""
    from libvirt_arm_cpu.kb.features import FeatureRef, FieldCondition, Group
    if isinstance(cond, FieldCondition):
        f = cond.field
        most = _fixed(f)
        if most is not None and most < cond.lo:
            return False
        if not sve and f.register == "ID_AA64ZFR0_EL1":
            return False
        if f.register not in ARCH_REGISTERS or (f.register, f.name) in ARCH_OFF_FIELDS:
            return False
        into[f] = max(into.get(f, cond.lo), cond.lo)
        return True
    if isinstance(cond, Group):
        terms = cond.terms if cond.op == "all" else cond.terms[:1]
        return all(_least(t, catalog, into, seen, sve) for t in terms)
    if isinstance(cond, FeatureRef):
        if cond.name in seen:
            return True
        seen.add(cond.name)
        ref = catalog.feature(cond.name).condition
        return ref is None or _least(ref, catalog, into, seen, sve)
    return False


# kvm_writable.json's kinds of a register a guest reads as zero whatever
# its host (RAZ): nothing of the host's to take
_RAZ_KINDS = ("ID_HIDDEN", "ID_UNALLOCATED")


def kvm_unwritable(data: dict, kb: KnowledgeBase) -> tuple[set[tuple[str, str]],
                                                         set[tuple[str, str]]]:
    """Two sets of (register, field)s of :data:`ARCH_REGISTERS`, from
    kvm_writable.json: those some kernel does not let userspace write (a
    register a kernel does not list counts as not writable), and those a
    guest reads as 0 whatever its host (of a register every kernel hides,
    or a field cpufeature.c does not describe in a register it does:
    read_sanitised_ftr_reg()), which a level can fix at 0."""
    unwritable, zero = set(), set()
    for name in ARCH_REGISTERS:
        register = kb.register(name)
        described = any(f.safe is not None for f in register.fields)
        entries = [v["registers"].get(name, {}) for v in data["versions"]]
        hidden = all(e.get("kind") in _RAZ_KINDS for e in entries)
        for f in register.fields:
            if hidden or (described and f.safe is None):
                zero.add((name, f.name))
            elif any(f.mask & ~int(e.get("writable_mask") or "0", 16) for e in entries):
                unwritable.add((name, f.name))
    return unwritable, zero


# -- generation ---------------------------------------------------------------------

def _q(tag: str) -> str:
    return "{" + NAMESPACE + "}" + tag


def _core_model(name: str, path: Path, data: dict, sid: str, kb: KnowledgeBase
                ) -> tuple[list[RegisterOrigin], list[str]]:
    regs = {k: int(v, 16) for k, v in data.get("regs", {}).items()}
    notes = []
    unknown = sorted(r for r in regs if r not in {x.name for x in kb})
    if unknown:
        notes.append(f"{path.name}: registers the knowledge base lacks, left out: "
                     f"{', '.join(unknown)}")
    derived: dict[str, int] = {}
    if data.get("ctr"):
        ctr = kb.register("CTR_EL0")
        derived["CTR_EL0"] = int(data["ctr"], 16)
        for f in ctr.fields:      # read_sanitised_ftr_reg(): undescribed fields read 0
            if f.safe is None:
                derived["CTR_EL0"] = f.put(derived["CTR_EL0"], 0)
        derived["CLIDR_EL1"] = _clidr_for(derived["CTR_EL0"])
    out = []
    for reg in kb:
        if reg.kind != "feature-id" or reg.name in NOT_FIXED:
            continue
        if reg.name in ("CTR_EL0", "CLIDR_EL1", "DCZID_EL0") and reg.name not in derived:
            # DCZID_EL0: KVM does not list it (the guest reads the host's)
            continue
        if reg.name in derived:
            out.append(RegisterOrigin(reg.name, derived[reg.name], "derived"))
            continue
        given = reg.name in regs
        value = regs.get(reg.name, 0)
        if not given:
            for r in reg.reserved:
                if r.kind == "res1":
                    value |= r.mask
        changed = []
        sanitised = any(f.safe is not None for f in reg.fields)
        for f in reg.fields:
            view = GUEST_VIEW.get((reg.name, f.name))
            want = f.get(value)
            if view is not None:
                want = view[0]
            elif (reg.name, f.name) in GUEST_CAP:
                want = min(want, GUEST_CAP[(reg.name, f.name)][0])
            elif sanitised and f.safe is None:
                want = 0    # read_sanitised_ftr_reg(): a field cpufeature.c does not describe
            if f.get(value) != want:
                value = f.put(value, want)
                changed.append(f.name)
        origin = "data" if given else "absent"
        if changed:
            origin = "guest-view"
        out.append(RegisterOrigin(reg.name, value, origin, " ".join(changed)))
    out, more = _aarch32(out, regs, path.name, kb)
    return out, notes + more


def _replace(out: list[RegisterOrigin], name: str, value: int, fields: list[str]) -> None:
    for i, ro in enumerate(out):
        if ro.register == name and ro.value != value:
            have = ro.fields.split()
            out[i] = RegisterOrigin(name, value, "guest-view",
                                    " ".join(have + [f for f in fields if f not in have]))


def _aarch32(out: list[RegisterOrigin], regs: dict[str, int], file: str, kb: KnowledgeBase
             ) -> tuple[list[RegisterOrigin], list[str]]:
    """AArch32: without AArch32 ID registers in the data, a guest without
    AArch32; without AArch32 at EL0, the AArch32 ID registers read as zero
    (Linux kvm/sys_regs.c aa32_id_visibility()); with it, ID_DFR0_EL1.PerfMon
    is the PMU version KVM gives whatever AArch32 (read_sanitised_id_dfr0_el1();
    seen on the test bed's A64FX, which has no AArch32)."""
    notes = []
    values = {ro.register: ro.value for ro in out}
    pfr0 = kb.register("ID_AA64PFR0_EL1")
    aa32 = [r.name for r in kb if r.kind == "feature-id" and r.name.startswith(
        ("ID_PFR", "ID_DFR", "ID_MMFR", "ID_ISAR", "MVFR", "ID_AFR"))]
    if not any(r.startswith(("ID_ISAR", "ID_PFR")) for r in regs):
        v = values["ID_AA64PFR0_EL1"]
        for fname in ("EL0", "EL1"):
            f = pfr0.field(fname)
            v = f.put(v, min(f.get(v), 1))
        _replace(out, "ID_AA64PFR0_EL1", v, ["EL0", "EL1"])
        notes.append(f"{file} has no AArch32 ID registers: AArch64 only")
    if pfr0.field("EL0").get(values["ID_AA64PFR0_EL1"]) < 2 or \
            not any(r.startswith(("ID_ISAR", "ID_PFR")) for r in regs):
        for name in aa32:
            _replace(out, name, 0, ["(all: no AArch32 EL0)"])
        values = {ro.register: ro.value for ro in out}
    dfr0 = kb.register("ID_AA64DFR0_EL1")
    pmuver = dfr0.field("PMUVer").get(values["ID_AA64DFR0_EL1"])
    perfmon = 0 if pmuver in (0, 0xf) else 3 if pmuver == 1 else pmuver
    f = kb.field("ID_DFR0_EL1", "PerfMon")
    _replace(out, "ID_DFR0_EL1", f.put(values["ID_DFR0_EL1"], perfmon), ["PerfMon"])
    return out, notes


def _arch_model(key: str, entry: dict, catalog: FeatureCatalog, kb: KnowledgeBase,
                kvm: tuple[set[tuple[str, str]], set[tuple[str, str]]], kvm_source: str
                ) -> tuple[list[RegisterOrigin], list[str], tuple[str, ...]]:
    """A level's registers, notes and the vCPU features it runs with off."""
    feats = sorted({f for f in (*entry.get("cumulative_implied_FEAT", []),
                                *entry.get("cumulative_default_FEAT", []))
                    if f.startswith("FEAT_")})
    later = [f for f in feats if f in ARCH_FEATURE_FROM
             and not _has_level(key, ARCH_FEATURE_FROM[f][0])]
    feats = [f for f in feats if f not in later]
    least: dict[Field, int] = {}
    missing, guestless = [], []
    has_sve = "FEAT_SVE" in feats
    also = [ARCH_FEATURE_ALSO[f][0] for f in feats if f in ARCH_FEATURE_ALSO]
    for name in [*feats, *also]:
        try:
            feat = catalog.feature(name)
        except Exception:       # UnknownName: no ID register field tells it
            missing.append(name)
            continue
        if feat.condition is None:
            missing.append(name)
            continue
        trial = dict(least)
        if _least(feat.condition, catalog, trial, set(), has_sve):
            least = trial
        else:
            guestless.append(name)
    for (reg, fname), (value, _why) in ARCH_BASE.items():
        f = kb.field(reg, fname)
        least[f] = max(least.get(f, f.order(value)), f.order(value))
    sve = kb.field("ID_AA64PFR0_EL1", "SVE")
    off = ARCH_VCPU_OFF if least.get(sve, 0) > 0 else tuple(sorted((*ARCH_VCPU_OFF, "sve")))
    unwritable, zero = kvm
    exact = {*GUEST_VIEW, *GUEST_CAP, *ARCH_BASE, *ARCH_OFF_FIELDS, *zero} - ARCH_HOST_BEFORE
    if "sve" in off:
        exact.add((sve.register, sve.name))
    out = []
    taken = []
    for reg_name in ARCH_REGISTERS:
        register = kb.register(reg_name)
        value, origin, set_fields, host = 0, "level", [], []
        for r in register.reserved:
            if r.kind == "res1":
                value |= r.mask
        for f in register.fields:
            if f in least:
                value = f.put(value, f.from_order(least[f]))
                set_fields.append(f.name)
            if (reg_name, f.name) not in exact and (
                    (reg_name, f.name) in unwritable or not f.kvm_accepts(f.get(value), None)):
                host.append(f.name)
        taken += [f"{reg_name}.{n}" for n in host]
        out.append(RegisterOrigin(reg_name, value, origin if set_fields else "absent",
                                  " ".join(set_fields), " ".join(host)))
    notes = [f"features of the level ({len(feats)}): {' '.join(feats)}"]
    if later:
        notes.append("in LLVM's model of the level but later in the Arm architecture, so left "
                     "out: " + "; ".join(f"{f} ({ARCH_FEATURE_FROM[f][1]})" for f in later))
    if also:
        notes.append("with them: " + "; ".join(f"{ARCH_FEATURE_ALSO[f][0]} for {f} "
                                               f"({ARCH_FEATURE_ALSO[f][1]})"
                                               for f in feats if f in ARCH_FEATURE_ALSO))
    if missing:
        notes.append(f"not told by ID registers, so not in the values: {' '.join(missing)}")
    if guestless:
        notes.append(f"not given to KVM guests, not fixed by a level (PAuth: the "
                     f"algorithm is the implementation's), or SVE's in a level without SVE, "
                     f"so left out: {' '.join(guestless)}")
    notes.append(f"{', '.join(ARCH_HOST_REGISTERS)}: the host's (implementation sizes)")
    notes.append(f"the host's, at least the level's value (KVM does not let userspace lower "
                 f"them on every kernel of {kvm_source}): {' '.join(taken)}")
    return out, notes, off


Found = tuple[str, str, str, str, list[RegisterOrigin], list[str], tuple[str, ...]]


def _compute(data_dir: Path, kb: KnowledgeBase, catalog: FeatureCatalog
             ) -> tuple[list[Found],
                        list[Source]]:
    """(name, kind, title, source id, registers, notes) for every model the
    data gives today, and the sources."""
    import hashlib
    import json
    sources: list[Source] = []
    found: list[Found] = []
    arch_path = data_dir / "arch_profiles.json"
    raw = arch_path.read_bytes()
    arch = json.loads(raw)
    sources.append(Source("arch", arch["source"], "arch_profiles.json",
                          hashlib.sha256(raw).hexdigest()))
    raw = (data_dir / KVM_WRITABLE).read_bytes()
    kvm = kvm_unwritable(json.loads(raw), kb)
    cited = f"{KVM_WRITABLE}, sha256 {hashlib.sha256(raw).hexdigest()[:16]}"
    for key, entry in arch["architectures"].items():
        regs, notes, off = _arch_model(key, entry, catalog, kb, kvm, cited)
        name = _arch_name(key)
        found.append((name, ARCHITECTURE, f"Arm{name[3:].replace('-a', '-A')} (LLVM's model "
                      f"of the level)", "arch", regs, notes, off))
    cores: dict[str, Path] = {}
    for path in sorted((data_dir / "cpus").glob("*.json")):
        prefix, _, core = path.stem.partition("-")
        if prefix == "qemu" or core not in cores:
            cores[core] = path       # QEMU's file (every register) over hrw's (a subset)
    for core, path in sorted(cores.items()):
        raw = path.read_bytes()
        data = json.loads(raw)
        sid = path.stem
        sources.append(Source(sid, data.get("source", ""), f"cpus/{path.name}",
                              hashlib.sha256(raw).hexdigest()))
        regs, notes = _core_model(core, path, data, sid, kb)
        level = data.get("other", {}).get("isa_level")
        title = core.replace("-", " ").title().replace("Cortex ", "Cortex-").replace(
            "Neoverse ", "Neoverse ").replace("A64Fx", "A64FX")
        found.append((core, CORE, title + (f" (Arm{level}-A)" if level else ""), sid, regs,
                      notes, ()))
    return found, sources


def merge(history: NamedModels | None,
          found: list[Found],
          sources: list[Source]) -> NamedModels:
    """The released versions of *history*, unchanged, plus a new version of
    each model whose values differ from its latest one's.  A source file
    whose content changed since a released version cited it gets a new id
    (its digest appended), so every version keeps citing what it came from."""
    models = list(history.models) if history else []
    known = {s.id: s for s in (history.sources if history else [])}
    today = {s.id: s for s in sources}
    for name, kind, title, sid, regs, notes, off in found:
        values = {r.register: r.value for r in regs}
        digest = digest_of(values, off, {r.register: tuple(r.host.split()) for r in regs
                                         if r.host})
        have = [m for m in models if m.name == name]
        latest = max(have, key=lambda m: m.version) if have else None
        if latest is not None and latest.digest == digest:
            continue
        src = today[sid]
        if sid in known and known[sid] != src:
            sid = f"{sid}-{(src.sha256 or '')[:8]}"
            src = Source(sid, src.origin, src.file, src.sha256)
        known.setdefault(sid, src)
        models.append(NamedModel(name, latest.version + 1 if latest else 1, kind, title, sid,
                                 tuple(regs), digest, tuple(notes), off))
    used = {m.source for m in models}
    return NamedModels(models, [known[k] for k in sorted(known) if k in used])


def serialize(ms: NamedModels) -> bytes:
    from libvirt_arm_cpu import __version__
    ET.register_namespace("", NAMESPACE)
    root = ET.Element(_q("models"), {"format": str(FORMAT),
                                     "generator": f"libvirt_arm_cpu.kb.named {__version__}"})
    root.append(ET.Comment(
        " models.xml: GENERATED FILE, DO NOT EDIT.\n"
        "     Regenerate with: python -m libvirt_arm_cpu.kb.gen SYSREG (or\n"
        "     python -m libvirt_arm_cpu.kb.named, given the data directory).  Every version is released:\n"
        "     the generator keeps it as it is and adds a new version when the data\n"
        "     changes; 'digest' is the SHA-256 of its values (schemas/models.xsd). "))
    for s in ms.sources:
        ET.SubElement(root, _q("source"), {k: v for k, v in (("id", s.id), ("origin", s.origin),
                                                             ("file", s.file), ("sha256", s.sha256))
                                           if v is not None})
    for (reg, fname), (value, why) in sorted(GUEST_VIEW.items()):
        ET.SubElement(root, _q("guest-view"), {"register": reg, "field": fname,
                                               "value": str(value), "why": why})
    for (reg, fname), (value, why) in sorted(ARCH_BASE.items()):
        ET.SubElement(root, _q("level-base"), {"register": reg, "field": fname,
                                               "value": str(value), "why": why})
    for name in ms.names():
        versions = ms.versions(name)
        first = versions[0]
        me = ET.SubElement(root, _q("model"), {"name": name, "kind": first.kind})
        for m in versions:
            attrs = {"number": str(m.version), "title": m.title, "source": m.source,
                     "digest": m.digest}
            if m.vcpu_off:
                attrs["vcpu-off"] = " ".join(m.vcpu_off)
            ve = ET.SubElement(me, _q("version"), attrs)
            for note in m.notes:
                ET.SubElement(ve, _q("note")).text = note
            for r in m.registers:
                attrs = {"name": r.register, "value": f"0x{r.value:016x}", "origin": r.origin}
                if r.fields:
                    attrs["fields"] = r.fields
                if r.host:
                    attrs["host"] = r.host
                ET.SubElement(ve, _q("register"), attrs)
    ET.indent(root, space="  ")
    return (b"<?xml version='1.0' encoding='UTF-8'?>\n"
            + ET.tostring(root, encoding="unicode").encode("utf-8") + b"\n")


def generate(data_dir: Path, kb_dir: Path) -> bytes:
    """models.xml from the data in *data_dir*, with the knowledge base and
    the released history (the current models.xml) in *kb_dir*."""
    from libvirt_arm_cpu.kb import load
    kb = load.load_registers(str(kb_dir / "registers.xml"))
    catalog = load.load_features(str(kb_dir / "features.xml"), kb)
    history = load.load_named(str(kb_dir / OUTPUT)) if (kb_dir / OUTPUT).exists() else None
    found, sources = _compute(data_dir, kb, catalog)
    return serialize(merge(history, found, sources))


def validate(data: bytes, schema: Path) -> None:
    import xmlschema
    from libvirt_arm_cpu.errors import DataError
    errors = list(xmlschema.XMLSchema(str(schema)).iter_errors(data.decode("utf-8")))
    if errors:
        raise DataError(f"{OUTPUT}: generated file does not match {schema.name}: "
                        f"{errors[0].reason} at {errors[0].path}")


def run(data_dir: Path, out_dir: Path, check: bool = False) -> int:
    """Write (or with *check*, compare) ``models.xml``; the exit code."""
    data = generate(data_dir, out_dir)
    validate(data, out_dir / "schemas" / "models.xsd")
    target = out_dir / OUTPUT
    if check:
        if not target.exists() or target.read_bytes() != data:
            print(f"kbgen: stale: {OUTPUT} (regenerate without --check; released versions "
                  f"stay, changed models get a new version)", file=sys.stderr)
            return 1
        return 0
    from libvirt_arm_cpu.fileio import atomic_write
    atomic_write(str(target), data)
    print(f"kbgen: wrote {OUTPUT} to {out_dir}")
    return 0


def main(argv: Iterable[str] | None = None) -> int:
    import argparse
    from pathlib import Path
    from libvirt_arm_cpu.errors import Error
    from libvirt_arm_cpu.paths import kb_dir
    default_out = Path(kb_dir())
    parser = argparse.ArgumentParser(prog="python -m libvirt_arm_cpu.kb.named",
                                     description="Regenerate the named CPU models (models.xml) "
                                                 "from arch_profiles.json and cpus/*.json.")
    parser.add_argument("--data", type=Path, required=True, help="the shared data directory")
    parser.add_argument("--output-dir", "-o", type=Path, default=default_out)
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if models.xml is stale")
    args = parser.parse_args(list(argv) if argv is not None else None)
    try:
        return run(args.data, args.output_dir, args.check)
    except Error as err:
        print(f"kbgen: error: {err}", file=sys.stderr)
        return err.exit_code


if __name__ == "__main__":
    sys.exit(main())
