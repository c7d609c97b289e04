"""Baseline: the most capable CPU every given host can present to a guest.

Pure: takes CPU models (a host profile becomes one with
:meth:`CpuModel.from_profile`) and returns a model or the conflicts that
prevent one.  Each field is combined under the rule KVM applies to
userspace writes (:mod:`libvirt_arm_cpu.engine.rules`):

* a host whose mask does not cover the field must keep its own value;
* lower-safe fields take the lowest value (signed fields compare signed),
  higher-safe the highest, higher-or-zero-safe 0 when any host has 0 and
  the highest otherwise, exact fields the common value or the safe value;
* bits outside known fields must be equal everywhere;
* MIDR/REVIDR/AIDR may differ only where every host has capability 239 and
  covers the bits; the model then lists every implementation.

The result's writable mask is the AND of the inputs', which makes the
combination associative: ``baseline(a, baseline(b, c)) == baseline(a, b, c)``.

Fields a vCPU feature switches (SVE: ID_AA64PFR0_EL1.SVE and ZFR0; PAuth:
APA/API/GPA/GPI/APA3/GPA3; PMU: PMUVer, PerfMon...) are not writable
through KVM_SET_ONE_REG, but a guest can be created with the feature off.
When such a field conflicts, and every input can switch the feature off
(its profile measured what that gives), the feature is switched off on every
input and the combination runs again: the model then has
``vcpu_off=("sve",)`` and the values a guest reads with SVE off.  An input
whose profile does not record the effect keeps its values, as before.

Then the model is made consistent with the feature-dependency rules (SVE2
needs SVE, no SVE means ZFR0 is zero, ...) by lowering only, within what
every host accepts (:mod:`libvirt_arm_cpu.engine.consistency`); the result says
what was lowered and why, and what could not be repaired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from libvirt_arm_cpu.kb import firmware
from libvirt_arm_cpu.engine import platform
from libvirt_arm_cpu.engine.consistency import Consistency, make_consistent
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.kb.dependencies import RuleBook
from libvirt_arm_cpu.model import VCPU_FEATURES
from libvirt_arm_cpu.kb.registers import U64_MAX as U64
from libvirt_arm_cpu.kb.registers import (EXACT, HIGHER_OR_ZERO_SAFE, HIGHER_SAFE, LOWER_SAFE, Field, KnowledgeBase, Register)
from libvirt_arm_cpu.engine.rules import (covers, field_accepts, register_refusal, source_accepts,
                                          taken_whole)

__all__ = ["Conflict", "BaselineResult", "baseline", "Pool", "largest_compatible", "pools"]



@dataclass
class Conflict:
    register: str
    field: str | None                   # None: bits outside fields, or a whole register
    values: dict[str, int]              # host -> its value of the field (or register)
    reason: str
    decimal: bool = False               # values are counts or frequencies, not bits

    def __str__(self) -> str:
        what = f"{self.register}.{self.field}" if self.field else self.register
        vals = ", ".join(f"{h}={v}" if self.decimal else f"{h}={v:#x}"
                         for h, v in self.values.items())
        return f"{what}: {self.reason} ({vals})"


@dataclass
class BaselineResult:
    model: CpuModel | None
    conflicts: list[Conflict] = field(default_factory=list)
    consistency: Consistency | None = None      # what the dependency repair did

    @property
    def ok(self) -> bool:
        return self.model is not None


def _accepts(model: CpuModel, reg: str, f: Field, value: int) -> bool:
    return source_accepts(model.values, model.writable, reg, f, value)


def _pick(f: Field, accepted: list[int]) -> int:
    """The most capable of the values every host accepts."""
    policy = f.effective_policy
    if policy == LOWER_SAFE:
        return max(accepted, key=f.order)
    if policy == HIGHER_SAFE:
        return min(accepted, key=f.order)
    if policy == HIGHER_OR_ZERO_SAFE:
        nonzero = [v for v in accepted if v]
        return min(nonzero, key=f.order) if nonzero else 0
    if policy == EXACT and f.safe in accepted and len(accepted) > 1:
        accepted = [v for v in accepted if v != f.safe] or accepted
    return max(accepted, key=f.order)


def _combine_field(reg: str, f: Field, models: Sequence[CpuModel], labels: Sequence[str],
                   pairs: set[tuple[int, int]]) -> tuple[int | None, Conflict | None]:
    """The field's value in the baseline.  What a model accepts depends only
    on its own value of the field and whether it may change it: judged over
    the distinct (value, writable) *pairs* of the register, so 10,000 hosts
    cost what their few kinds cost; the models are read again only to
    explain a conflict."""
    kinds = {(f.get(v), covers(w, f)) for v, w in pairs}
    candidates = {own for own, _ in kinds} | {0}
    if f.safe is not None:
        candidates.add(f.safe)
    accepted = [c for c in sorted(candidates)
                if all(c == own or (cov and field_accepts(f, c, own)) for own, cov in kinds)]
    if accepted:
        return _pick(f, accepted), None
    own = [f.get(m.values.get(reg, 0)) for m in models]
    # Say why the natural choice (the policy's combination) fails, host by host.
    natural = min(own, key=f.order) if f.effective_policy in (LOWER_SAFE, EXACT) else \
        max(own, key=f.order)
    why = []
    for m, label, value in zip(models, labels, own):
        if value == natural:
            continue
        if not covers(m.writable.get(reg, 0), f):
            why.append(f"{label} cannot change it (not writable there)")
        else:
            why.append(f"{label} does not accept {natural} ({f.effective_policy})")
    return None, Conflict(reg, f.name, dict(zip(labels, own)),
                          "no value every host accepts: " + "; ".join(why))


def _combine_register(reg: Register | None, name: str, models: Sequence[CpuModel],
                      labels: Sequence[str], kb: KnowledgeBase
                      ) -> tuple[int, int, list[Conflict]]:
    values = [m.values.get(name, 0) for m in models]
    mask = U64
    for m in models:
        mask &= m.writable.get(name, 0)
    if reg is None or reg.kind == "unallocated" or not reg.fields:
        if len(set(values)) == 1:
            return values[0], mask, []
        return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                               "differs, and no field of it is known to change")]
    if reg.kind == "implementation-id":
        return _combine_implementation(name, models, labels, values, mask)
    if taken_whole(reg):
        return _combine_whole(reg, name, models, labels, values, mask, kb)
    conflicts = []
    result = 0
    pairs = set(zip(values, (m.writable.get(name, 0) for m in models)))
    for f in reg.fields:
        value, conflict = _combine_field(name, f, models, labels, pairs)
        if conflict:
            conflicts.append(conflict)
        else:
            result = f.put(result, value)       # type: ignore[arg-type]
    rest = {v & ~reg.field_mask & U64 for v in values}
    if len(rest) > 1:
        conflicts.append(Conflict(name, None, dict(zip(labels, values)),
                                  "bits outside every known field differ"))
    result |= values[0] & ~reg.field_mask & U64
    return result, mask, conflicts


def _combine_whole(reg: Register, name: str, models: Sequence[CpuModel], labels: Sequence[str],
                   values: list[int], mask: int, kb: KnowledgeBase
                   ) -> tuple[int, int, list[Conflict]]:
    """A register KVM takes as a whole (CLIDR_EL1: a cache hierarchy): the
    common value, else the lowest one every host can be given."""
    if len(set(values)) == 1:
        return values[0], mask, []
    blocked = [label for m, label in zip(models, labels)
               if not all(covers(m.writable.get(name, 0), f) for f in reg.fields)]
    if blocked:
        return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                               "differs, and " + ", ".join(blocked) + " cannot change it")]
    ctrs = [m.values.get("CTR_EL0", 0) for m in models]
    for candidate in sorted(set(values)):
        if register_refusal(kb, name, candidate, ctrs) is None:
            return candidate, mask, []
    return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                           "differs, and no host's value is one every host's KVM takes: "
                           + str(register_refusal(kb, name, min(values), ctrs)))]


def _combine_implementation(name: str, models: Sequence[CpuModel], labels: Sequence[str],
                            values: list[int], mask: int) -> tuple[int, int, list[Conflict]]:
    if len(set(values)) == 1:
        return values[0], mask, []
    differing = 0
    for v in values:
        differing |= v ^ values[0]
    blocked = [label for m, label in zip(models, labels)
               if not m.imp_id_writable or (m.writable.get(name, 0) & differing) != differing]
    if blocked:
        return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                               "differs, and " + ", ".join(blocked) + " cannot present another "
                               "value (needs KVM capability 239, Linux 6.15+)")]
    return min(values), mask, []


def baseline(models: Sequence[CpuModel], kb: KnowledgeBase, rules: RuleBook | None,
             labels: Sequence[str] | None = None) -> BaselineResult:
    """The most capable model every input accepts, or the conflicts.

    :param rules: the dependency rules the combination is repaired with
        (:func:`libvirt_arm_cpu.kb.load.dependencies`); None gives the plain
        field-by-field combination.

    Identical inputs are combined once (fleets have few distinct CPUs), so
    the cost grows with the number of distinct hosts, not of hosts.

    A conflict on a field a vCPU feature switches is resolved by switching
    the feature off everywhere, when every input can (module docstring).

    :param labels: names for the inputs in messages (default: their hosts).
    :raise ValueError: for an empty list.
    :raise UnknownName: for a register name the knowledge base cannot place.
    """
    if not models:
        raise ValueError("baseline of no hosts")
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    off = {f for m in models for f in m.vcpu_off}
    while True:
        stuck = [Conflict(f"vCPU feature {f}", None, {label: 1},
                          f"a guest of another input runs with {f} off, and what {label} "
                          f"presents then is not known (profile from an older probe: probe "
                          f"it again)")
                 for f in sorted(off) for m, label in zip(models, labels)
                 if not m.can_switch_off(f)]
        if stuck:
            return BaselineResult(None, stuck)
        result = _baseline(_switched(models, off), kb, labels, rules, off)
        if result.ok:
            return result
        more = _features_resolving(result.conflicts, _distinct(models), off, kb)
        if not more:
            return result
        off |= more


def _distinct(models: Sequence[CpuModel]) -> list[CpuModel]:
    """One model of each set sharing their dicts (read from identical
    profiles): what the vCPU-feature search needs to look at once."""
    return list({(id(m.values), id(m.writable), id(m.vcpu_effects), m.vcpu_off): m
                 for m in models}.values())


def _switched(models: Sequence[CpuModel], off: set[str]) -> list[CpuModel]:
    """Each model with *off* switched off; models sharing their dicts (read
    from identical profiles) keep sharing them."""
    if not off:
        return list(models)
    memo: dict[tuple[int, int], CpuModel] = {}
    out = []
    for m in models:
        key = (id(m.values), id(m.vcpu_effects))
        if key not in memo:
            memo[key] = m.switched_off(off)
        v = memo[key]
        out.append(v if v.hosts == m.hosts else replace(v, hosts=m.hosts))
    return out


def _switched_fields(models: Sequence[CpuModel], feature: str,
                     kb: KnowledgeBase) -> set[tuple[str, str | None]]:
    """(register, field) pairs switching *feature* off changes on some model,
    and (register, None) for each such register."""
    out: set[tuple[str, str | None]] = set()
    for m in models:
        for reg, value in m.vcpu_effects.get(feature, {}).items():
            register = kb.register(reg)
            out.add((reg, None))
            for f in register.fields:
                if f.get(value) != f.get(m.values.get(reg, 0)):
                    out.add((reg, f.name))
    return out


def _features_resolving(conflicts: list[Conflict], models: Sequence[CpuModel], off: set[str],
                        kb: KnowledgeBase) -> set[str]:
    """The vCPU features not yet off, that every input can switch off, and
    that switch a field of some conflict."""
    switched = _switched(models, off)
    out = set()
    for feature in VCPU_FEATURES:
        if feature in off or not all(m.can_switch_off(feature) for m in switched):
            continue
        fields = _switched_fields(switched, feature, kb)
        if any((c.register, c.field) in fields for c in conflicts):
            out.add(feature)
    return out


def _effects(model: CpuModel, uniq: Sequence[CpuModel], labels: Sequence[str],
             kb: KnowledgeBase) -> dict[str, dict[str, int]]:
    """What switching each remaining vCPU feature off gives the combined
    model: the fields it switches take the combination of the inputs'
    switched values (kept out when they have none); the rest stays."""
    out: dict[str, dict[str, int]] = {}
    for feature in VCPU_FEATURES:
        if feature in model.vcpu_off or not all(m.can_switch_off(feature) for m in uniq):
            continue
        fields = _switched_fields(uniq, feature, kb)
        # each input with the feature off, as values to combine (not named
        # models: a model's name is a digest, costly by the thousand)
        variants = [CpuModel({**m.values, **m.vcpu_effects[feature]}, m.writable, name="-")
                    for m in uniq]
        effect: dict[str, int] = {}
        ok = True
        for reg, name in sorted((r, n) for r, n in fields if n is not None):
            f = kb.register(reg).field(name)
            pairs = {(m.values.get(reg, 0), m.writable.get(reg, 0)) for m in variants}
            value, conflict = _combine_field(reg, f, variants, labels, pairs)
            if conflict is not None:
                ok = False
                break
            current = effect.get(reg, model.values.get(reg, 0))
            # never above the model's own value: the repair may have lowered it
            if f.order(value) < f.order(f.get(current)):      # type: ignore[arg-type]
                effect[reg] = f.put(current, value)           # type: ignore[arg-type]
        if ok:
            out[feature] = {r: v for r, v in effect.items() if v != model.values.get(r, 0)}
    return out


def _baseline(models: Sequence[CpuModel], kb: KnowledgeBase, labels: list[str],
              rules: RuleBook | None, off: set[str]) -> BaselineResult:
    # Models read from identical profiles share their dicts: group by identity
    # first (cheap), then by content.
    by_identity: dict[tuple, tuple[CpuModel, list[str]]] = {}
    for m, label in zip(models, labels):
        by_identity.setdefault((id(m.values), id(m.writable), m.imp_id_writable,
                                id(m.vcpu_effects), id(m.firmware), id(m.reg_list), m.platform),
                               (m, []))[1].append(label)
    distinct: dict[tuple, tuple[CpuModel, list[str]]] = {}
    for m, group in by_identity.values():
        key = (tuple(sorted(m.values.items())), tuple(sorted(m.writable.items())),
               m.imp_id_writable, tuple(sorted((f, tuple(sorted(e.items())))
                                               for f, e in m.vcpu_effects.items())),
               tuple(sorted(m.firmware.items(), key=lambda kv: kv[0])), m.reg_list, m.platform)
        distinct.setdefault(key, (m, []))[1].extend(group)
    uniq = [m for m, _ in distinct.values()]
    uniq_labels = [_short(ls) for _, ls in distinct.values()]
    regs = {n: kb.register(n) for n in set().union(*(m.values.keys() for m in uniq))}
    values, writable, conflicts = {}, {}, []
    for name in sorted(regs, key=lambda n: (regs[n].encoding, n)):
        v, mask, c = _combine_register(regs[name], name, uniq, uniq_labels, kb)
        conflicts.extend(c)
        values[name], writable[name] = v, mask
    common, issues = platform.meet([m.platform for m in uniq], uniq_labels)
    conflicts += [Conflict(i.name, None, i.values or {}, i.message, decimal=True)
                  for i in issues]
    if conflicts:
        return BaselineResult(None, conflicts)
    hosts = tuple(h for m in models for h in m.hosts)
    impls = tuple(sorted({i for m in uniq for i in m.implementations}))
    model = CpuModel(values, writable, all(m.imp_id_writable for m in uniq), hosts, impls,
                     vcpu_off=tuple(off))
    repair = None
    if rules is not None:
        repair = make_consistent(model, uniq, kb, rules, uniq_labels)
        model = repair.model
    lists = [m.reg_list for m in uniq if m.reg_list is not None]
    reg_list = frozenset.intersection(*lists) if len(lists) == len(uniq) else None
    model = replace(model, vcpu_effects=_effects(model, uniq, uniq_labels, kb),
                    firmware=_firmware(uniq), reg_list=reg_list, platform=common, name="")
    return BaselineResult(model, consistency=repair)


def _firmware(models: Sequence[CpuModel]) -> dict[str, int | None]:
    """The firmware pseudo-registers every model's host can give a guest
    (libvirt_arm_cpu.kb.firmware.combine); unmanaged (empty) when one model
    does not record them (a profile probed before they were)."""
    if any(not m.firmware for m in models):
        return {}
    names = sorted({n for m in models for n in m.firmware})
    return {n: firmware.combine([m.firmware.get(n) for m in models], n) for n in names}


def _short(labels: list[str]) -> str:
    return labels[0] if len(labels) == 1 else f"{labels[0]} (+{len(labels) - 1} alike)"


@dataclass
class Pool:
    indices: list[int]          # positions in the input
    result: BaselineResult


MAX_EXACT_GROUPS = 12


def _groups(models: Sequence[CpuModel]) -> list[list[int]]:
    """Input positions grouped by identical content (same CPU, kernel)."""
    seen: dict[tuple, list[int]] = {}
    keys: dict[tuple, tuple] = {}       # models sharing their dicts share a key
    for i, m in enumerate(models):
        ident = (id(m.values), id(m.writable), m.imp_id_writable, m.platform)
        key = keys.get(ident)
        if key is None:
            key = keys[ident] = (tuple(sorted(m.values.items())),
                                 tuple(sorted(m.writable.items())), m.imp_id_writable,
                                 m.platform)
        seen.setdefault(key, []).append(i)
    return list(seen.values())


def largest_compatible(models: Sequence[CpuModel], kb: KnowledgeBase, rules: RuleBook | None,
                       labels: Sequence[str] | None = None) -> Pool:
    """The largest set of inputs (by number of hosts) that has a baseline:
    what ``--exclude-incompatible`` keeps.  Exact over the distinct kinds of
    host when there are at most 12 of them (fleets have few), greedy above:
    drop the kind named in most conflicts until a baseline exists."""
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    groups = _groups(models)

    def attempt(chosen: list[list[int]]) -> Pool:
        idx = sorted(i for g in chosen for i in g)
        return Pool(idx, baseline([models[i] for i in idx], kb, rules, [labels[i] for i in idx]))

    if len(groups) <= MAX_EXACT_GROUPS:
        import itertools
        # Two kinds without a common model make every set holding both fail
        # too (a field no value of which both accept stays so; a vCPU feature
        # one cannot switch off stays so): judge the pairs once (rules left
        # out: they do not decide whether a baseline exists), then try only
        # the sets whose every pair has one -- 18 kinds took 5,491 baselines.
        reps = [models[g[0]] for g in groups]
        apart = {(a, b) for a, b in itertools.combinations(range(len(groups)), 2)
                 if not baseline([reps[a], reps[b]], kb, None).ok}
        subsets = []
        for r in range(len(groups), 0, -1):
            for combo in itertools.combinations(range(len(groups)), r):
                if not any(pair in apart for pair in itertools.combinations(combo, 2)):
                    subsets.append((sum(len(groups[g]) for g in combo), combo))
        subsets.sort(key=lambda s: (-s[0], s[1]))
        for _, combo in subsets:
            pool = attempt([groups[g] for g in combo])
            if pool.result.ok:
                return pool
        raise AssertionError("a single kind of host always has a baseline")
    chosen = list(groups)
    while True:
        pool = attempt(chosen)
        if pool.result.ok or len(chosen) == 1:
            return pool
        blamed: dict[int, int] = {}
        for c in pool.result.conflicts:
            for n, g in enumerate(chosen):
                if labels[g[0]] in " ".join(c.values):
                    blamed[n] = blamed.get(n, 0) + 1
        worst = max(range(len(chosen)), key=lambda n: (blamed.get(n, 0), -len(chosen[n])))
        chosen.pop(worst)


def pools(models: Sequence[CpuModel], kb: KnowledgeBase, rules: RuleBook | None,
          labels: Sequence[str] | None = None) -> list[Pool]:
    """Split the inputs into pools that each have a baseline, largest first."""
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    remaining = list(range(len(models)))
    out = []
    while remaining:
        pool = largest_compatible([models[i] for i in remaining], kb, rules,
                                  [labels[i] for i in remaining])
        taken = [remaining[i] for i in pool.indices]
        out.append(Pool(taken, pool.result))
        remaining = [i for i in remaining if i not in set(taken)]
    return out
