"""Baseline: the most capable CPU every given host can present to a guest.

Pure: takes CPU models (a host profile becomes one with
:meth:`CpuModel.from_profile`) and returns a model or the conflicts that
prevent one.  Each field is combined under the rule KVM applies to
userspace writes (:mod:`libvirt_arm_cpu.rules`):

* a host whose mask does not cover the field must keep its own value;
* lower-safe fields take the lowest value (signed fields compare signed),
  higher-safe the highest, higher-or-zero-safe 0 when any host has 0 and
  the highest otherwise, exact fields the common value or the safe value;
* bits outside known fields must be equal everywhere;
* MIDR/REVIDR/AIDR may differ only where every host has capability 239 and
  covers the bits; the model then lists every implementation.

The result's writable mask is the AND of the inputs', which makes the
combination associative: ``baseline(a, baseline(b, c)) == baseline(a, b, c)``.

Then the model is made consistent with the feature-dependency rules (SVE2
needs SVE, no SVE means ZFR0 is zero, ...) by lowering only, within what
every host accepts (:mod:`libvirt_arm_cpu.consistency`); the result says
what was lowered and why, and what could not be repaired.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .consistency import Consistency, make_consistent
from .cpumodel import CpuModel
from .dependencies import RuleBook
from .dependencies import load as load_rules
from .registers import (EXACT, HIGHER_OR_ZERO_SAFE, HIGHER_SAFE, LOWER_SAFE, Field,
                        KnowledgeBase, Register)
from .rules import covers, register_refusal, source_accepts, taken_whole

__all__ = ["Conflict", "BaselineResult", "baseline", "Pool", "largest_compatible", "pools"]

U64 = (1 << 64) - 1


@dataclass
class Conflict:
    register: str
    field: str | None                   # None: bits outside fields, or a whole register
    values: dict[str, int]              # host -> its value of the field (or register)
    reason: str

    def __str__(self) -> str:
        what = f"{self.register}.{self.field}" if self.field else self.register
        vals = ", ".join(f"{h}={v:#x}" for h, v in self.values.items())
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


def _combine_field(reg: str, f: Field, models: Sequence[CpuModel],
                   labels: Sequence[str]) -> tuple[int | None, Conflict | None]:
    own = [f.get(m.values.get(reg, 0)) for m in models]
    candidates = set(own) | {0}
    if f.safe is not None:
        candidates.add(f.safe)
    accepted = [c for c in sorted(candidates) if all(_accepts(m, reg, f, c) for m in models)]
    if accepted:
        return _pick(f, accepted), None
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
                      labels: Sequence[str]) -> tuple[int, int, list[Conflict]]:
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
        return _combine_whole(reg, name, models, labels, values, mask)
    conflicts = []
    result = 0
    for f in reg.fields:
        value, conflict = _combine_field(name, f, models, labels)
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
                   values: list[int], mask: int) -> tuple[int, int, list[Conflict]]:
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
        if register_refusal(name, candidate, ctrs) is None:
            return candidate, mask, []
    return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                           "differs, and no host's value is one every host's KVM takes: "
                           + str(register_refusal(name, min(values), ctrs)))]


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


def baseline(models: Sequence[CpuModel], kb: KnowledgeBase,
             labels: Sequence[str] | None = None, consistent: bool = True,
             rules: RuleBook | None = None) -> BaselineResult:
    """The most capable model every input accepts, or the conflicts.

    :param consistent: repair the combination with the dependency rules
        (*rules*, default: the installed ones); False gives the plain
        field-by-field combination.

    Identical inputs are combined once (fleets have few distinct CPUs), so
    the cost grows with the number of distinct hosts, not of hosts.

    :param labels: names for the inputs in messages (default: their hosts).
    :raise ValueError: for an empty list.
    :raise UnknownName: for a register name the knowledge base cannot place.
    """
    if not models:
        raise ValueError("baseline of no hosts")
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    # Models read from identical profiles share their dicts: group by identity
    # first (cheap), then by content.
    by_identity: dict[tuple, tuple[CpuModel, list[str]]] = {}
    for m, label in zip(models, labels):
        by_identity.setdefault((id(m.values), id(m.writable), m.imp_id_writable),
                               (m, []))[1].append(label)
    distinct: dict[tuple, tuple[CpuModel, list[str]]] = {}
    for m, group in by_identity.values():
        key = (tuple(sorted(m.values.items())), tuple(sorted(m.writable.items())),
               m.imp_id_writable)
        distinct.setdefault(key, (m, []))[1].extend(group)
    uniq = [m for m, _ in distinct.values()]
    uniq_labels = [_short(ls) for _, ls in distinct.values()]
    regs = {n: kb.register(n) for m in uniq for n in m.values}
    values, writable, conflicts = {}, {}, []
    for name in sorted(regs, key=lambda n: (regs[n].encoding, n)):
        v, mask, c = _combine_register(regs[name], name, uniq, uniq_labels)
        conflicts.extend(c)
        values[name], writable[name] = v, mask
    if conflicts:
        return BaselineResult(None, conflicts)
    hosts = tuple(h for m in models for h in m.hosts)
    impls = tuple(sorted({i for m in uniq for i in m.implementations}))
    model = CpuModel(values, writable, all(m.imp_id_writable for m in uniq), hosts, impls)
    if not consistent:
        return BaselineResult(model)
    repair = make_consistent(model, uniq, kb, rules or load_rules(), uniq_labels)
    return BaselineResult(repair.model, consistency=repair)


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
    for i, m in enumerate(models):
        key = (tuple(sorted(m.values.items())), tuple(sorted(m.writable.items())),
               m.imp_id_writable)
        seen.setdefault(key, []).append(i)
    return list(seen.values())


def largest_compatible(models: Sequence[CpuModel], kb: KnowledgeBase,
                       labels: Sequence[str] | None = None) -> Pool:
    """The largest set of inputs (by number of hosts) that has a baseline:
    what ``--exclude-incompatible`` keeps.  Exact over the distinct kinds of
    host when there are at most 12 of them (fleets have few), greedy above:
    drop the kind named in most conflicts until a baseline exists."""
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    groups = _groups(models)

    def attempt(chosen: list[list[int]]) -> Pool:
        idx = sorted(i for g in chosen for i in g)
        return Pool(idx, baseline([models[i] for i in idx], kb, [labels[i] for i in idx]))

    if len(groups) <= MAX_EXACT_GROUPS:
        import itertools
        subsets = []
        for r in range(len(groups), 0, -1):
            for combo in itertools.combinations(range(len(groups)), r):
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


def pools(models: Sequence[CpuModel], kb: KnowledgeBase,
          labels: Sequence[str] | None = None) -> list[Pool]:
    """Split the inputs into pools that each have a baseline, largest first."""
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    remaining = list(range(len(models)))
    out = []
    while remaining:
        pool = largest_compatible([models[i] for i in remaining], kb,
                                  [labels[i] for i in remaining])
        taken = [remaining[i] for i in pool.indices]
        out.append(Pool(taken, pool.result))
        remaining = [i for i in remaining if i not in set(taken)]
    return out
