"""Compare: can this host run this CPU model, and if not, exactly why.

Pure, like :mod:`libvirt_arm_cpu.engine.baseline`.  The verdict follows the
s390x/libvirt vocabulary:

* ``identical``: the host presents exactly the model's values;
* ``superset``: it can run the model after lowering fields KVM lets
  userspace change;
* ``incompatible``: it cannot.

Every difference the host cannot make is a :class:`Reason` naming the
register and field, both values and the rule: the model needs a higher
value than the host has; the field is not writable on this host's kernel;
the kernel's rule refuses the value; MIDR/REVIDR/AIDR changes need
capability 239; the host's QEMU takes no SYSREG properties and the
loader is not installed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from operator import attrgetter

from libvirt_arm_cpu.kb import firmware
from libvirt_arm_cpu.engine import platform
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.engine.loader import LOADER_PATH, hidden_registers
from libvirt_arm_cpu.model import HostProfile, ProfileRegister
from libvirt_arm_cpu.kb.registers import KnowledgeBase, Register, encoding_of_kvm_id, generic_name
from libvirt_arm_cpu.kb.registers import U64_MAX as U64
from libvirt_arm_cpu.engine.rules import covers, field_accepts, register_refusal, taken_whole

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (3 ms a hook run)
if TYPE_CHECKING:       # compare_features' types: not on the hook's path
    from typing import Any
    from libvirt_arm_cpu.kb.features import FeatureCatalog
    from libvirt_arm_cpu.model import HostCpu

__all__ = ["IDENTICAL", "SUPERSET", "INCOMPATIBLE", "Reason", "Comparison", "compare",
           "compare_passthrough", "migration_reasons", "compare_many", "compare_features"]

IDENTICAL, SUPERSET, INCOMPATIBLE = "identical", "superset", "incompatible"


@dataclass
class Reason:
    """Why a host cannot run a model: one register, field or platform part."""

    register: str
    field: str | None
    kind: str       # needs-higher, not-writable, rule, needs-cap-239, absent, outside-fields, qemu
    host: int | None
    wanted: int | None
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass
class Comparison:
    """compare's verdict: identical, superset or incompatible, and why."""

    result: str
    reasons: list[Reason] = field(default_factory=list)     # why incompatible
    changes: list[str] = field(default_factory=list)        # what a superset lowers
    # "registers": judged field by field against a host profile; "features":
    # only against hwcap names (a libvirt host <cpu>), which is less precise
    precision: str = "registers"
    notes: list[str] = field(default_factory=list)          # what could not be judged

    def as_dict(self) -> dict:
        return {"result": self.result, "precision": self.precision, "changes": self.changes,
                "notes": self.notes,
                "reasons": [{"register": r.register, "field": r.field, "kind": r.kind,
                             "host": r.host, "wanted": r.wanted, "message": r.message}
                            for r in self.reasons]}


def _switched_off(model: CpuModel, host: HostProfile) -> list[str]:
    """The vCPU features *model* runs with off that *host* can switch off:
    the host's values are then those its probe measured with them off
    (libvirt's elements switch them, no register write); where the profile
    does not say, its default values (the fields then count as not
    writable, as before the probe measured it)."""
    return [f for f in model.vcpu_off if f in host.vcpu_features and host.can_switch_off(f)]


def on_host(model: CpuModel, host: HostProfile, kb: KnowledgeBase) -> CpuModel:
    """*model* as it is on *host*: each field it takes from the host
    (:attr:`CpuModel.host_fields`) has the host's value where that is at
    least the model's; below it keeps the model's, which compare then
    refuses by KVM's own rules.  A model without such fields is itself."""
    if not model.host_fields:
        return model
    have = host.values(_switched_off(model, host))
    values = dict(model.values)
    for name, fields in model.host_fields.items():
        if name not in have or name not in values:
            continue
        value = values[name]
        for fname in fields:
            f = kb.field(name, fname)
            h = f.get(have[name])
            if f.order(h) >= f.order(f.get(value)):
                value = f.put(value, h)
        values[name] = value
    return dataclasses.replace(model, values=values, host_fields={})


def compare(model: CpuModel, host: HostProfile, kb: KnowledgeBase,
            check_qemu: bool = True, *, qemu_writes: bool = False,
            gic_version: int | None = None) -> Comparison:
    """The verdict for running *model* on *host*.

    :param check_qemu: also require that the host's QEMU takes SYSREG_*
        properties when anything must change (off: KVM's verdict alone, as
        try-apply sees it).
    :param qemu_writes: the values reach KVM through stock QEMU's own
        register writes (an incoming migration of a host-passthrough guest):
        nothing else is needed, and capability 239 counts as off, since QEMU
        never enables it.
    :param gic_version: the GIC the guest has (its domain's), when known.
    """
    return _compare(model, host, kb, check_qemu, qemu_writes, gic_version, None)


def _compare(model: CpuModel, host: HostProfile, kb: KnowledgeBase, check_qemu: bool,
             qemu_writes: bool, gic_version: int | None, judged: _Judged | None
             ) -> Comparison:
    """:func:`compare`, its registers judged by *judged* (many hosts of one
    model: :func:`compare_many`) or one by one (None)."""
    model = on_host(model, host, kb)
    cap239 = host.capability("KVM_CAP_ARM_WRITABLE_IMP_ID_REGS") > 0 and not qemu_writes
    if qemu_writes:
        check_qemu = False
    switch = _switched_off(model, host)
    vcpu_changes = [f"vCPU feature {f} off" for f in switch]
    if judged is None:
        reasons, changes = _registers(model, host, kb, cap239, qemu_writes, switch)
        more, notes_, sve, fw_changes = _beyond(model, host, gic_version)
    else:
        reasons, changes = judged.registers(host, cap239, switch)
        more, notes_, sve, fw_changes = judged.beyond(host)
    reasons += more
    notes = list(notes_)
    vcpu_changes += sve
    # QEMU is told the values either through SYSREG_* properties or through
    # the loader (libvirt_arm_cpu.engine.loader); without both nothing can change
    has_loader = host.loader.status == "found"
    if check_qemu and fw_changes and not reasons and not has_loader:
        reasons.append(Reason("", None, "qemu", None, None,
                              f"needs {len(fw_changes)} firmware register change(s), which only "
                              f"the loader makes, and it ({host.loader.path or LOADER_PATH}) "
                              f"is missing"))
    changes += fw_changes
    if check_qemu and changes and not reasons and host.qemu.sysreg != "yes" and not has_loader:
        q = host.qemu
        what = (f"QEMU {q.version} ({q.path}) does not take SYSREG_* properties"
                if q.status == "found" and q.sysreg == "no" else
                f"this host's QEMU cannot be told to change ID registers ({q.status}"
                + (f": {q.detail}" if q.detail else "") + ")")
        where = host.loader.path or LOADER_PATH
        reasons.append(Reason("", None, "qemu", None, None,
                              f"needs {len(changes)} ID register change(s), but neither "
                              f"SYSREG_* in QEMU nor the loader installed: {what}, and the "
                              f"loader ({where}) is missing"))
    changes += vcpu_changes     # after the QEMU check: no register write needed for these
    if reasons:
        return Comparison(INCOMPATIBLE, reasons, changes, notes=notes)
    return Comparison(SUPERSET if changes else IDENTICAL, [], changes, notes=notes)


# One register's verdict: (reasons, changes), both tuples (shared by the
# hosts a judgement is reused for).
_Verdict = tuple[tuple[Reason, ...], tuple[str, ...]]
_NOTHING: _Verdict = ((), ())


def _register(kb: KnowledgeBase, name: str, reg: Register, wanted: int, have: int | None,
              mask: int | None, cap239: bool, qemu_writes: bool, masks_known: bool,
              ctr: tuple[int, ...]) -> _Verdict:
    """Register *name* (*reg*) of a model (value *wanted*) on a host that
    has *have* (None: its kernel does not know it) with writable *mask*;
    *ctr*: the CTR_EL0 values a whole-register rule may meet."""
    if have is None:
        if wanted:
            return ((Reason(name, None, "absent", None, wanted,
                            f"{name}: this host's kernel does not know the register"),), ())
        return _NOTHING
    if have == wanted:
        return _NOTHING
    if reg.kind == "implementation-id":
        diff = have ^ wanted
        if not cap239 or mask is None or (mask & diff) != diff:
            why = ("QEMU never enables KVM capability 239, which changing it needs"
                   if qemu_writes else
                   "changing it needs KVM capability 239 (Linux 6.15+)")
            return ((Reason(name, None, "needs-cap-239", have, wanted,
                            f"{name}: needs {wanted:#x}, host has {have:#x}; {why}"),), ())
        return ((), (f"{name} {have:#x} -> {wanted:#x}",))
    reasons: list[Reason] = []
    changes: list[str] = []
    for f in reg.fields:
        h, w = f.get(have), f.get(wanted)
        if h == w:
            continue
        where = f"{name}.{f.name}"
        if not covers(mask, f):
            kind = "needs-higher" if f.order(w) > f.order(h) else "not-writable"
            msg = (f"{where}: needs {w}, host has {h}, and this host's kernel does not let "
                   f"it change" + ("" if masks_known else " (writable masks unknown: "
                                   "kernel before 6.7)"))
            reasons.append(Reason(name, f.name, kind, h, w, msg))
        elif not field_accepts(f, w, h):
            kind = "needs-higher" if f.order(w) > f.order(h) else "rule"
            reasons.append(Reason(name, f.name, kind, h, w,
                                  f"{where}: needs {w}, host has {h}; KVM refuses it "
                                  f"({f.effective_policy})"))
        else:
            changes.append(f"{where} {h} -> {w}")
    if taken_whole(reg) and not reasons:
        refusal = register_refusal(kb, name, wanted, list(ctr))
        if refusal:
            reasons.append(Reason(name, None, "rule", have, wanted,
                                  f"{name}: needs {wanted:#x}, host has {have:#x}; {refusal}"))
    stray = (have ^ wanted) & ~reg.field_mask & U64
    if stray:
        reasons.append(Reason(name, None, "outside-fields", have, wanted,
                              f"{name}: bits {stray:#x} outside every known field differ"))
    return tuple(reasons), tuple(changes)


def _registers(model: CpuModel, host: HostProfile, kb: KnowledgeBase, cap239: bool,
               qemu_writes: bool, switch: list[str],
               memo: dict[tuple, _Verdict] | None = None) -> tuple[list[Reason], list[str]]:
    """The reasons and changes of *model*'s registers on *host* (vCPU
    features *switch* off), in the order of their names; *memo*: verdicts
    of hosts judged before, by what decides them."""
    host_regs = {r.name: r for r in host.registers}
    host_values = host.values(switch)
    # every CTR_EL0 a whole-register rule may meet: the host's and the model's
    ctr = ((host_regs["CTR_EL0"].value or 0, model.values.get("CTR_EL0", 0))
           if "CTR_EL0" in host_regs else (0,))
    reasons: list[Reason] = []
    changes: list[str] = []
    for name, wanted in sorted(model.values.items()):
        reg = kb.register(name)
        if reg.kind == "affinity":
            continue
        hr = host_regs.get(name)
        have = host_values.get(name) if hr is not None else None
        mask = hr.writable if hr is not None else 0
        if memo is None:
            r, c = _register(kb, name, reg, wanted, have, mask, cap239, qemu_writes,
                             host.masks_known, ctr)
        else:
            key = (name, have, mask, cap239, qemu_writes, host.masks_known,
                   ctr if have != wanted and taken_whole(reg) else None)
            got = memo.get(key)
            if got is None:
                got = memo[key] = _register(kb, name, reg, wanted, have, mask, cap239, qemu_writes,
                                            host.masks_known, ctr)
            r, c = got
        reasons += r
        changes += c
    return reasons, changes


# What compare finds beyond the ID registers: (reasons, notes, vCPU changes,
# firmware changes)
_Beyond = tuple[tuple[Reason, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]


def _beyond(model: CpuModel, host: HostProfile, gic_version: int | None) -> _Beyond:
    """The platform's and the firmware registers' part of the verdict."""
    reasons: list[Reason] = []
    notes: list[str] = []
    host_platform = host.platform.without(model.vcpu_off)
    issues, platform_notes = platform.judge(model.platform, host_platform, gic_version)
    reasons += [Reason(i.name, None, "platform", None, None, i.message) for i in issues]
    notes += platform_notes
    sve: tuple[str, ...] = ()
    if model.platform.sve_vls and host_platform.sve_max > model.platform.sve_max:
        # libvirt's sveNNN features, not a register write: after the QEMU check
        sve = (f"SVE vector lengths up to {model.platform.sve_max} bits "
               f"(this host: {host_platform.sve_max})",)
    fw_changes = _firmware(model, host, reasons, notes)
    return tuple(reasons), tuple(notes), sve, tuple(fw_changes)


def _firmware(model: CpuModel, host: HostProfile, reasons: list[Reason],
              notes: list[str]) -> list[str]:
    """The model's firmware pseudo-registers on *host*: refusals go to
    *reasons*, what cannot be judged to *notes*; returns the changes."""
    if not model.firmware:
        return []
    if host.firmware is None:
        notes.append("the model's firmware pseudo-registers not judged: this host's profile "
                     "does not record them (probe again with this version)")
        return []
    reasons += [Reason(f.register, None, "firmware", f.dest, f.source, f.message)
                for f in firmware.model_refusals(model.firmware, host.firmware)]
    changes = []
    for name, want in sorted(model.firmware.items()):
        have = host.firmware.get(name)
        if want == have or (want is None and have is None):
            continue
        changes.append(f"firmware {name} "
                       f"{'absent' if have is None else firmware.describe(name, have)} -> "
                       f"{'hidden' if want is None else firmware.describe(name, want)}")
    return changes


def migration_reasons(source: HostProfile, dest: HostProfile, kb: KnowledgeBase,
                      model_firmware: dict[str, int | None] | None = None,
                      model_list: frozenset[int] | None = None, off: tuple[str, ...] = ()
                      ) -> tuple[list[Reason], list[str]]:
    """What stops QEMU's migration stream from *source* to *dest* whatever
    the guest's ID register values, and what could not be judged.

    The source's QEMU sends every register its KVM lists for the guest's
    vCPU (features *off* switched off), and the destination's QEMU fails the
    load on one its own KVM does not list (target/arm/machine.c
    cpu_post_load: "register in their list but not ours"; a longer list
    fails even earlier).  A model with *model_list* has the loader keep the
    other system registers out of the source's list.  The firmware
    pseudo-registers (Spectre mitigation levels, PSCI, hypercall services)
    must be ones the destination's KVM honours (libvirt_arm_cpu.kb.firmware):
    the host's, except those a model with *model_firmware* sets."""
    reasons: list[Reason] = []
    notes: list[str] = []
    src, dst = source.reg_ids(off), dest.reg_ids(off)
    if src is not None and dst is not None:
        fw_ids = {r.kvm_id for r in firmware.FIRMWARE_REGISTERS}
        hidden = hidden_registers(src, model_list) if model_list is not None else frozenset()
        for reg_id in sorted(src - hidden - dst - fw_ids):
            enc = encoding_of_kvm_id(reg_id)
            reg = kb.by_encoding(*enc) if enc else None
            name = reg.name if reg else (generic_name(*enc) if enc else f"{reg_id:#x}")
            reasons.append(Reason(name, None, "absent", None, None,
                                  f"{name}: the source's kernel lists it for the guest's vCPU, "
                                  f"this host's does not (QEMU fails the incoming state)"))
    else:
        which = " and ".join(n for n, p in (("the source", source), ("this host", dest))
                             if p.reg_list is None)
        notes.append(f"register lists not compared: the profile of {which} does not record "
                     f"them (probe again with this version); ID registers only")
        known = {r.name for r in dest.registers if r.value is not None}
        reasons += [Reason(r.name, None, "absent", None, r.value,
                           f"{r.name}: the source's kernel lists it, this host's does not "
                           f"(QEMU fails the incoming state)")
                    for r in source.registers if r.value is not None and r.name not in known]
    if source.firmware is None or dest.firmware is None:
        which = " and ".join(n for n, p in (("the source", source), ("this host", dest))
                             if p.firmware is None)
        notes.append(f"firmware pseudo-registers not judged: the profile of {which} does not "
                     f"record them (probe again with this version)")
    else:
        sent = firmware.stream(source.firmware, model_firmware or {})
        reasons += [Reason(f.register, None, "firmware", f.dest, f.source, f.message)
                    for f in firmware.refusals(sent, dest.firmware)]
    return reasons, notes


def compare_passthrough(source: HostProfile, dest: HostProfile, kb: KnowledgeBase,
                        off: tuple[str, ...] = ()) -> Comparison:
    """Can a host-passthrough guest of *source* move to *dest* on stock
    QEMU?  The destination QEMU writes the source's values into its KVM
    before the guest runs; its kernel takes exactly the changes its rules
    allow (so a guest moves from a lower host to a higher one, not back), and
    MIDR/REVIDR/AIDR must match since QEMU never enables capability 239.
    *off*: vCPU features the guest runs with off on both hosts (the same
    `-cpu host,...` line on both)."""
    # the firmware registers travel in the stream: migration_reasons judges them
    model = dataclasses.replace(CpuModel.from_profile(source, kb, off=off), firmware={})
    c = compare(model, dest, kb, qemu_writes=True)
    stream, notes = migration_reasons(source, dest, kb, off=off)
    if not stream:
        return Comparison(c.result, c.reasons, c.changes, c.precision, notes)
    return Comparison(INCOMPATIBLE, stream + c.reasons, c.changes, c.precision, notes)


def compare_many(model: CpuModel, hosts: list[HostProfile], kb: KnowledgeBase,
                 check_qemu: bool = True) -> list[Comparison]:
    """:func:`compare` for each host, the same answers: hosts that are the
    same profile object (see :mod:`libvirt_arm_cpu.formats.fleet`) are
    compared once, and a register is judged once for all the hosts that
    have the same value and mask (a fleet's distinct profiles differ in a
    few registers; those the profile cache rebuilds share their register
    objects, which are then judged once each)."""
    done: dict[int, Comparison] = {}
    # a model taking fields from each host is another model on each
    judged = _Judged(model, kb) if not model.host_fields else None
    out = []
    for host in hosts:
        c = done.get(id(host))
        if c is None:
            c = done[id(host)] = _compare(model, host, kb, check_qemu, False, None, judged)
        out.append(c)
    return out


_NAME = attrgetter("name")
_IGNORED = False        # a host register the model does not judge (falsy, not a verdict)


class _Judged:
    """One model's register verdicts over many hosts (no qemu_writes).

    By register object (``id``; the hosts, alive during
    :func:`compare_many`, keep each object and so its id): a host whose
    registers are all known answers with C-level lookups, about 10 us for
    its ~190 registers.  A host outside that fast path (vCPU features to
    switch off, a CLIDR_EL1-like register that differs, a name twice, a
    register of the model missing) is judged as :func:`compare` does, each
    verdict still looked up by what decides it."""

    def __init__(self, model: CpuModel, kb: KnowledgeBase) -> None:
        self.model, self.kb = model, kb
        self.pos: dict[str, int] | None = None      # judged register -> place, on first use
        self.by_id: dict[tuple[bool, bool], dict[int, Any]] = {}
        self.memo: dict[tuple, _Verdict] = {}
        self.entries: dict[tuple, Any] = {}      # by name, value, mask and context
        self.beyonds: dict[tuple, _Beyond] = {}
        self.alive: list[HostProfile] = []

    def registers(self, host: HostProfile, cap239: bool, switch: list[str]
                  ) -> tuple[list[Reason], list[str]]:
        if self.pos is None:
            # as compare meets them: sorted, kb.register's errors on the first host
            self.pos = {name: i for i, name in enumerate(sorted(self.model.values))
                        if self.kb.register(name).kind != "affinity"}
        regs = host.registers
        if not switch:
            by_id = self.by_id.setdefault((cap239, host.masks_known), {})
            try:
                got = list(map(by_id.__getitem__, map(id, regs)))
            except KeyError:
                got = [self._entry(by_id, r, cap239, host.masks_known) for r in regs]
            # every register of the model there once (a register judged per
            # host counts as not there: the host is judged as compare does)
            if (len(got) - got.count(_IGNORED) == len(self.pos)
                    and len(set(map(_NAME, regs))) == len(regs)):
                found: list[Any] = sorted(filter(None, got))
                return [r for e in found for r in e[1]], [c for e in found for c in e[2]]
        return _registers(self.model, host, self.kb, cap239, False, switch, self.memo)

    def beyond(self, host: HostProfile) -> _Beyond:
        """:func:`_beyond`, once for each platform and firmware values (in
        their order)."""
        fw = host.firmware
        quick = (id(host.platform), id(fw))       # the profile cache shares both
        got = self.beyonds.get(quick)
        if got is None:
            key = (host.platform, None if fw is None else tuple(fw.items()))
            got = self.beyonds.get(key)
            if got is None:
                got = self.beyonds[key] = _beyond(self.model, host, None)
            self.beyonds[quick] = got
            self.alive.append(host)          # (the ids stay theirs)
        return got

    def _entry(self, by_id: dict[int, Any], r: ProfileRegister, cap239: bool,
               masks_known: bool) -> Any:
        """What the fast path keeps of register *r*: _IGNORED (not the
        model's, or judged per host), () (nothing to say) or (place,
        reasons, changes); one object for every register of the same name,
        value and mask."""
        entry = by_id.get(id(r))
        if entry is not None:
            return entry
        key = (r.name, r.value, r.writable, cap239, masks_known)
        entry = self.entries.get(key)
        if entry is None:
            entry = self.entries[key] = self._judge(r, cap239, masks_known)
        by_id[id(r)] = entry
        return entry

    def _judge(self, r: ProfileRegister, cap239: bool, masks_known: bool) -> Any:
        assert self.pos is not None
        place = self.pos.get(r.name)
        if place is None:
            return _IGNORED
        wanted = self.model.values[r.name]
        reg = self.kb.register(r.name)
        if r.value is not None and r.value != wanted and taken_whole(reg):
            return _IGNORED       # its rule meets the host's CTR_EL0: judged per host
        key = (r.name, r.value, r.writable, cap239, False, masks_known, None)
        v = self.memo.get(key)
        if v is None:
            v = self.memo[key] = _register(self.kb, r.name, reg, wanted, r.value, r.writable,
                                           cap239, False, masks_known, ())
        return (place, *v) if v[0] or v[1] else ()


def compare_features(model: CpuModel, host: HostCpu, catalog: FeatureCatalog) -> Comparison:
    """The verdict at feature level, for a host known only by libvirt's
    host <cpu> (hwcap names from /proc/cpuinfo).

    incompatible: the model has an hwcap the host lacks; identical: the
    same hwcaps; superset: the host has more.  Less precise than
    :func:`compare`: hwcaps do not show every field, nor what the host's
    kernel lets change, so "superset" means "nothing visible is missing".
    """
    wanted = {f.key for f in catalog.present(model.values) if f.kind == "hwcap"}
    missing = sorted(wanted - host.features)
    extra = sorted(host.features - wanted)
    reasons = [Reason("", None, "missing-feature", None, None,
                      f"feature {name} ({', '.join(map(str, catalog.feature(name).fields(catalog)))}"
                      f"): the model has it, the host CPU does not")
               for name in missing]
    if reasons:
        return Comparison(INCOMPATIBLE, reasons, [], "features")
    return Comparison(SUPERSET if extra else IDENTICAL, [],
                      [f"hides {name}" for name in extra], "features")

