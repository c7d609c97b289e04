"""Drift: what an upgrade (kernel, firmware, QEMU) changed for the CPU models
a host runs, and which models and features it offers a scheduler.

``host --check`` compares the host's profile as it was (the copy kept at the
last check, or the cache before it is probed again) with the profile now:
the saved and named models it no longer runs, those it newly runs, and what
changed in the profile that explains it.  The same verdicts, for one
profile, are what ``export nfd|traits`` publish to Kubernetes and OpenStack.

The core (:func:`check`, :func:`runnable`, :func:`profile_changes`,
:func:`guest_features`) is pure: profiles, models and the knowledge base in,
verdicts out, so it runs on the captured profiles of any host.  Only
:func:`catalog_models` reads files (the models folder, through
:mod:`libvirt_arm_cpu.modelstore`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, Comparison, compare
from libvirt_arm_cpu.errors import Error
from libvirt_arm_cpu.kb.features import FeatureCatalog
from libvirt_arm_cpu.kb.registers import KnowledgeBase
from libvirt_arm_cpu.model import PLATFORM_FIELDS, CpuModel, HostProfile

__all__ = ["check", "Drift", "ModelChange", "runnable", "guest_features", "profile_changes",
           "catalog_models", "EXIT_NO_LOSS", "EXIT_LOST"]

# host --check's exit codes, as virsh cpu-compare's (0 compatible, 1 not):
# the CLI's 2 (bad usage) and 3-8 (the host could not be probed) stay theirs
EXIT_NO_LOSS = 0
EXIT_LOST = 1


@dataclass(frozen=True)
class ModelChange:
    """A model whose verdict on this host changed between two profiles."""

    name: str
    before: Comparison
    after: Comparison

    def as_dict(self) -> dict[str, Any]:
        return {"model": self.name, "before": self.before.result, "after": self.after.result,
                "reasons": [r.message for r in (self.after.reasons or self.before.reasons)]}


@dataclass
class Drift:
    """What changed between two probes of one host, and which models run now."""

    previous: HostProfile
    current: HostProfile
    lost: list[ModelChange] = field(default_factory=list)       # ran before, not now
    gained: list[ModelChange] = field(default_factory=list)     # runs now, not before
    runnable: list[str] = field(default_factory=list)           # runs now
    not_runnable: list[str] = field(default_factory=list)       # does not run now
    host_changes: list[str] = field(default_factory=list)       # what differs in the profile
    features_lost: list[str] = field(default_factory=list)      # hwcaps of a host-passthrough guest
    features_gained: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_LOST if self.lost else EXIT_NO_LOSS

    def as_dict(self) -> dict[str, Any]:
        return {"previous": _identity(self.previous), "current": _identity(self.current),
                "lost": [c.as_dict() for c in self.lost],
                "gained": [c.as_dict() for c in self.gained],
                "runnable": self.runnable, "not_runnable": self.not_runnable,
                "host_changes": self.host_changes,
                "features_lost": self.features_lost, "features_gained": self.features_gained}


def _identity(p: HostProfile) -> dict[str, Any]:
    return {"hostname": p.hostname, "kernel": p.kernel_release, "probed_at": p.probed_at,
            "qemu": p.qemu.version if p.qemu.status == "found" else p.qemu.status,
            "sysreg": p.qemu.sysreg, "loader": p.loader.status}


def runnable(host: HostProfile, models: Mapping[str, CpuModel], kb: KnowledgeBase,
             check_qemu: bool = True) -> dict[str, Comparison]:
    """Every model's verdict on *host*, by name (sorted)."""
    return {name: compare(models[name], host, kb, check_qemu=check_qemu)
            for name in sorted(models)}


def guest_features(host: HostProfile, catalog: FeatureCatalog) -> list[str]:
    """The Linux hwcaps a host-passthrough guest of *host* has (the AArch64
    ones; those ID registers cannot tell, such as evtstrm and cpuid, are not
    among them)."""
    return sorted(f.key for f in catalog.present(host.values()) if f.kind == "hwcap")


def check(previous: HostProfile, current: HostProfile, models: Mapping[str, CpuModel],
          kb: KnowledgeBase, catalog: FeatureCatalog, check_qemu: bool = True) -> Drift:
    """What changed for *models* between the host's *previous* profile and
    its *current* one (pure)."""
    before = runnable(previous, models, kb, check_qemu)
    after = runnable(current, models, kb, check_qemu)
    d = Drift(previous, current)
    for name in sorted(models):
        was, now = before[name].result != INCOMPATIBLE, after[name].result != INCOMPATIBLE
        (d.runnable if now else d.not_runnable).append(name)
        if was and not now:
            d.lost.append(ModelChange(name, before[name], after[name]))
        elif now and not was:
            d.gained.append(ModelChange(name, before[name], after[name]))
    d.host_changes = profile_changes(previous, current, kb)
    old, new = set(guest_features(previous, catalog)), set(guest_features(current, catalog))
    d.features_lost, d.features_gained = sorted(old - new), sorted(new - old)
    return d


def _platform_value(v: object) -> str:
    if v is None:
        return "unknown"
    if isinstance(v, frozenset):
        return " ".join(str(x) for x in sorted(v)) or "none"
    return str(v)


def profile_changes(previous: HostProfile, current: HostProfile, kb: KnowledgeBase) -> list[str]:
    """What differs between two profiles of a host, one line each: kernel,
    QEMU, the loader, KVM capabilities, vCPU features, the CPUs, and every ID
    register field whose value or writability changed."""
    out: list[str] = []

    def differs(what: str, a: object, b: object) -> None:
        if a != b:
            out.append(f"{what}: {a} -> {b}")

    differs("hostname", previous.hostname, current.hostname)
    differs("kernel", previous.kernel_release, current.kernel_release)
    differs("QEMU", _qemu(previous), _qemu(current))
    differs("ID register loader", previous.loader.status, current.loader.status)
    differs("libvirt-arm-cpu", previous.tool_version, current.tool_version)
    differs("vCPU features", ",".join(previous.vcpu_features) or "none",
            ",".join(current.vcpu_features) or "none")
    differs("MIDRs", _midrs(previous), _midrs(current))
    for cap in sorted(set(previous.capabilities) | set(current.capabilities)):
        differs(cap, previous.capability(cap), current.capability(cap))
    differs("writable masks known", previous.masks_known, current.masks_known)
    now_writable: list[str] = []
    now_fixed: list[str] = []
    old_regs = {r.name: r for r in previous.registers}
    new_regs = {r.name: r for r in current.registers}
    names = sorted(set(old_regs) | set(new_regs),
                   key=lambda n: (old_regs.get(n) or new_regs[n]).encoding)
    for name in names:
        a, b = old_regs.get(name), new_regs.get(name)
        if a is None or b is None or a.value is None or b.value is None:
            if (a is not None and a.value is not None) != (b is not None and b.value is not None):
                out.append(f"{name}: {'known' if a and a.value is not None else 'unknown'} to "
                           f"the kernel -> {'known' if b and b.value is not None else 'unknown'}")
            continue
        reg = kb.by_encoding(*a.encoding)
        if reg is None or not reg.fields:
            differs(name, f"{a.value:#x}", f"{b.value:#x}")
            continue
        for f in reg.fields:
            differs(f"{name}.{f.name}", f.get(a.value), f.get(b.value))
            wa = a.writable is not None and (a.writable & f.mask) == f.mask
            wb = b.writable is not None and (b.writable & f.mask) == f.mask
            if wa != wb:
                (now_writable if wb else now_fixed).append(f"{name}.{f.name}")
    for fname in PLATFORM_FIELDS:
        differs(f"platform {fname}", _platform_value(getattr(previous.platform, fname)),
                _platform_value(getattr(current.platform, fname)))
    for fw in sorted(set(previous.firmware or {}) | set(current.firmware or {})):
        differs(f"firmware {fw}", _hex((previous.firmware or {}).get(fw)),
                _hex((current.firmware or {}).get(fw)))
    # writability changes by the dozen on a kernel upgrade: one line each way
    if now_writable:
        out.append(f"now writable ({len(now_writable)}): {', '.join(now_writable)}")
    if now_fixed:
        out.append(f"no longer writable ({len(now_fixed)}): {', '.join(now_fixed)}")
    return out


def _qemu(p: HostProfile) -> str:
    if p.qemu.status != "found":
        return p.qemu.status
    return f"{p.qemu.version} (SYSREG_* {p.qemu.sysreg})"


def _midrs(p: HostProfile) -> str:
    return ",".join(sorted({f"{c.midr:#010x}" for c in p.cpus if c.midr is not None})) or "unknown"


def _hex(v: int | None) -> str:
    return "absent" if v is None else f"{v:#x}"


def catalog_models() -> tuple[dict[str, CpuModel], list[str]]:
    """Every saved and named model by name, and a message for each that
    could not be read (a broken file must not hide the others)."""
    # modelstore.catalog() (saved and named models) is being added beside
    # this module; until it lands, the saved models alone
    names = getattr(modelstore, "catalog", modelstore.names)()
    models: dict[str, CpuModel] = {}
    problems: list[str] = []
    for name in names:
        try:
            models[name] = modelstore.find(name)
        except Error as err:
            problems.append(f"{name}: {err}")
    return models, problems
