"""Baseline and compare beyond the ID registers: SVE vector lengths, IPA
size, MTE, PMU counters, GIC versions and ITS, nested virtualization,
AArch32 EL1 and the timer's frequency (:class:`~libvirt_arm_cpu.model.Platform`).

Pure.  What a migration needs of its destination (sources in
:class:`~libvirt_arm_cpu.model.Platform`):

* SVE: KVM takes a guest's vector-length set only when it equals the
  host's up to its largest length (arch/arm64/kvm/guest.c set_sve_vls), so
  the set hosts share is their common prefix, and a host runs a guest
  whose set is its own below the guest's largest;
* IPA size, PMU counters: the guest may rely on the smallest;
* MTE, ITS, EL2, AArch32 EL1: a guest may have them only where every host
  does; GIC: the versions every host offers;
* the timer: CNTFRQ_EL0 is the host's and no VMM setting changes it; a
  guest's clock would run fast or slow on a host of another frequency, so
  hosts that differ cannot share a model.

A field unknown on any side (a profile probed before these were) is left
unmanaged: never a refusal, a note.
"""

from __future__ import annotations

from dataclasses import dataclass

from libvirt_arm_cpu.model import Platform

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (on the hook's path)
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["NAMES", "PlatformIssue", "meet", "judge", "sve_common", "describe_lengths"]


# how each is named where a register's name would be (conflicts, reasons)
NAMES = {"sve": "SVE vector lengths", "ipa": "IPA size", "mte": "MTE", "pmu": "PMCR_EL0.N",
         "gic": "GIC", "its": "GIC ITS", "el2": "EL2", "aarch32-el1": "AArch32 EL1",
         "timer": "CNTFRQ_EL0"}


@dataclass(frozen=True)
class PlatformIssue:
    """One part beyond the ID registers that does not fit (or a baseline conflict)."""

    what: str           # sve, ipa, mte, pmu, gic, its, el2, aarch32-el1, timer
    message: str
    values: dict[str, int] | None = None    # input label -> its value (baseline conflicts)

    @property
    def name(self) -> str:
        return NAMES[self.what]


def describe_lengths(lengths: frozenset[int]) -> str:
    """'128, 256 bits'; a run of more than three multiples of 128 from 128
    up as '128 to 2048 bits (every multiple of 128)'."""
    if not lengths:
        return "none"
    top = max(lengths)
    if len(lengths) > 3 and lengths == frozenset(range(128, top + 1, 128)):
        return f"128 to {top} bits (every multiple of 128)"
    return ", ".join(str(v) for v in sorted(lengths)) + " bits"


def sve_common(sets: Sequence[frozenset[int]]) -> frozenset[int]:
    """The vector lengths every set has up to the first one some set lacks
    (what KVM lets a guest have on each of them)."""
    out: set[int] = set()
    every = set.union(*(set(s) for s in sets)) if sets else set()
    for length in sorted(every):
        if not all(length in s for s in sets):
            break
        out.add(length)
    return frozenset(out)


def _all(values: Sequence[bool | None]) -> bool | None:
    return None if any(v is None for v in values) else all(values)


def _least(values: Sequence[int | None]) -> int | None:
    return None if any(v is None for v in values) else min(v for v in values if v is not None)


def meet(platforms: Sequence[Platform], labels: Sequence[str]
         ) -> tuple[Platform, list[PlatformIssue]]:
    """What a guest may use on every one of *platforms*, and what no guest
    can be given on all of them (the conflicts)."""
    issues = []
    sve = None
    if all(p.sve_vls is not None for p in platforms):
        sve = sve_common([p.sve_vls for p in platforms if p.sve_vls is not None])
        if not sve and any(p.sve_vls for p in platforms) and all(p.sve_vls for p in platforms):
            issues.append(PlatformIssue("sve", "SVE vector lengths: no length every host "
                                        "offers from 128 bits up",
                                        {lb: p.sve_max for p, lb in zip(platforms, labels)}))
    gic = None
    if all(p.gic is not None for p in platforms):
        gic = frozenset.intersection(*(p.gic for p in platforms if p.gic is not None))
        if not gic:
            issues.append(PlatformIssue("gic", "no GIC version every host offers",
                                        {lb: max(p.gic or {0}) for p, lb in zip(platforms, labels)}))
    freqs = {p.cntfrq for p in platforms if p.cntfrq is not None}
    if len(freqs) > 1:
        issues.append(PlatformIssue(
            "timer", "the generic timer runs at different frequencies: a guest's clock would "
            "run fast or slow after a migration, and no VMM setting changes it",
            {lb: p.cntfrq for p, lb in zip(platforms, labels) if p.cntfrq is not None}))
    cntfrq = freqs.pop() if len(freqs) == 1 and all(p.cntfrq is not None for p in platforms) \
        else None
    return Platform(
        sve_vls=sve, ipa_bits=_least([p.ipa_bits for p in platforms]),
        mte=_all([p.mte for p in platforms]),
        pmu_counters=_least([p.pmu_counters for p in platforms]),
        pmu_counters_settable=_all([p.pmu_counters_settable for p in platforms]),
        gic=gic, its=_all([p.its for p in platforms]), el2=_all([p.el2 for p in platforms]),
        aarch32_el1=_all([p.aarch32_el1 for p in platforms]), cntfrq=cntfrq), issues


def _mhz(hz: int) -> str:
    return f"{hz / 1e6:g} MHz"


def judge(guest: Platform, host: Platform, gic_version: int | None = None
          ) -> tuple[list[PlatformIssue], list[str]]:
    """Why *host* cannot run a guest given *guest* (a model's platform, or
    what a translated domain was made with), and notes on what cannot be
    judged or only degrades.  *gic_version*: the GIC the domain asks for
    (``<gic version=...>``), when known."""
    issues: list[PlatformIssue] = []
    notes: list[str] = []

    def unknown(what: str) -> None:
        notes.append(f"{what}: not recorded in the host profile or the model (probed by an "
                     f"older libvirt-arm-cpu): not checked")

    if guest.sve_vls is not None and host.sve_vls is not None:
        top = guest.sve_max
        below = frozenset(v for v in host.sve_vls if v <= top)
        if below != guest.sve_vls:
            issues.append(PlatformIssue(
                "sve", f"SVE vector lengths: the guest has {describe_lengths(guest.sve_vls)}, "
                f"this host offers {describe_lengths(below)} up to {top} bits (KVM needs the "
                f"same set)"))
    elif guest.sve_vls:
        unknown("SVE vector lengths")
    if guest.ipa_bits is not None and host.ipa_bits is not None:
        if host.ipa_bits < guest.ipa_bits:
            issues.append(PlatformIssue("ipa", f"guest physical addresses: the guest may use "
                                        f"{guest.ipa_bits} bits, this host offers "
                                        f"{host.ipa_bits}"))
    for what, label in (("mte", "MTE (memory tagging)"), ("its", "a GICv3 ITS"),
                        ("el2", "nested virtualization (EL2)"),
                        ("aarch32_el1", "32-bit EL1 (AArch32 guests)")):
        g, h = getattr(guest, what), getattr(host, what)
        if g and h is not None and not h:
            issues.append(PlatformIssue(what.replace("_", "-"), f"the guest may have {label}; "
                                        f"this host does not offer it"))
        elif g and h is None:
            unknown(label)
    if guest.pmu_counters is not None and host.pmu_counters is not None:
        if host.pmu_counters < guest.pmu_counters:
            issues.append(PlatformIssue("pmu", f"PMU counters (PMCR_EL0.N): the guest has "
                                        f"{guest.pmu_counters}, this host {host.pmu_counters}"))
        elif host.pmu_counters > guest.pmu_counters and host.pmu_counters_settable is False:
            notes.append(f"PMU counters: this host's KVM cannot lower PMCR_EL0.N (before "
                         f"Linux 6.8): the guest sees {host.pmu_counters} counters, not "
                         f"{guest.pmu_counters}")
    wanted = {gic_version} if gic_version else guest.gic
    if wanted is not None and host.gic is not None and not wanted & host.gic:
        issues.append(PlatformIssue("gic", f"GIC version {describe_gic(wanted)}: this host "
                                    f"offers {describe_gic(host.gic)}"))
    if guest.cntfrq is not None and host.cntfrq is not None and guest.cntfrq != host.cntfrq:
        issues.append(PlatformIssue("timer", f"timer frequency (CNTFRQ_EL0): the guest's is "
                                    f"{_mhz(guest.cntfrq)}, this host's {_mhz(host.cntfrq)}: "
                                    f"its clock would run {'fast' if host.cntfrq > guest.cntfrq else 'slow'}"))
    return issues, notes


def describe_gic(versions: frozenset[int] | set[int]) -> str:
    return " or ".join(f"v{v}" for v in sorted(versions)) or "none"
