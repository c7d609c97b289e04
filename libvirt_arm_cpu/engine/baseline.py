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

import functools
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter, itemgetter

from libvirt_arm_cpu.kb import firmware
from libvirt_arm_cpu.engine import platform
from libvirt_arm_cpu.engine.consistency import Columns, Consistency, make_consistent
from libvirt_arm_cpu.model import CpuModel, Platform
from libvirt_arm_cpu.kb.dependencies import RuleBook
from libvirt_arm_cpu.model import VCPU_FEATURES
from libvirt_arm_cpu.kb.registers import U64_MAX as U64
from libvirt_arm_cpu.kb.registers import (EXACT, HIGHER_OR_ZERO_SAFE, HIGHER_SAFE, LOWER_SAFE, Field, KnowledgeBase, Register)
from libvirt_arm_cpu.engine.rules import covers, field_accepts, register_refusal, taken_whole

__all__ = ["Conflict", "BaselineResult", "baseline", "Pool", "largest_compatible", "pools"]



@dataclass
class Conflict:
    """A field (or register) no value of which every input accepts, with each input's value."""

    register: str
    field: str | None                   # None: bits outside fields, or a whole register
    values: dict[str, int]              # host -> its value of the field (or register)
    reason: str
    decimal: bool = False               # values are counts or frequencies, not bits

    def __str__(self) -> str:
        what = f"{self.register}.{self.field}" if self.field else self.register
        show = str if self.decimal else (lambda v: f"{v:#x}")
        if len(self.values) <= _NAMED:
            vals = ", ".join(f"{h}={show(v)}" for h, v in self.values.items())
        else:       # a fleet: each value once, with a few of its hosts
            by_value: dict[int, list[str]] = {}
            for h, v in self.values.items():
                by_value.setdefault(v, []).append(h)
            vals = "; ".join(f"{show(v)}: {named_hosts(hosts, 3)}"
                             for v, hosts in by_value.items())
        return f"{what}: {self.reason} ({vals})"


_NAMED = 6      # hosts a message names one by one; beyond, a few and a count


def named_hosts(names: Sequence[str], at_most: int = _NAMED) -> str:
    """*names* for a message: all of a few, else the first and how many
    more (a fleet of 10,000 hosts makes a line, not 300 kB)."""
    if len(names) <= at_most:
        return ", ".join(names)
    return f"{', '.join(names[:at_most - 1])} and {len(names) - at_most + 1} more"


@dataclass
class BaselineResult:
    """A baseline's model, or why there is none."""

    model: CpuModel | None
    conflicts: list[Conflict] = field(default_factory=list)
    consistency: Consistency | None = None      # what the dependency repair did

    @property
    def ok(self) -> bool:
        return self.model is not None


# -- the inputs, as their distinct models ---------------------------------------
#
# A fleet has few distinct CPUs, and where its hosts all differ (each lowers a
# field or two) it still has few distinct values of each register.  So the
# engine works on the distinct models ("kinds"), register by register over
# the distinct values of that register, and reads the inputs again only to
# name hosts in messages.

# What one top-level call has worked out already, by key: (REGISTER, value,
# mask) or (REGISTER, pairs) -> the register combined; ("order", registers),
# ("off", id of a model, features), ("switched", REGISTER, pairs).
Memo = dict[tuple, tuple]


@dataclass
class _Fleet:
    """The distinct models of some inputs, in order of their first input."""

    kinds: list[CpuModel]           # the first input of each distinct content
    members: list[list[int]]        # each kind's input positions, ascending
    names: tuple[str, ...]          # the registers the rows give, in order
    rows: list[tuple[int, ...]]     # each kind's register values (0: it lacks one)
    wrows: list[tuple[int, ...]]    # ... and writable masks
    keys: list[tuple]               # each kind's content of values and masks
    regsets: list[tuple[str, ...]]  # each kind's registers (kinds share the tuple)
    within: _Fleet | None = None    # the fleet this is part of (subset())

    @functools.cached_property
    def uniform(self) -> dict[str, tuple[int, int]]:
        """The registers of one (value, writable mask) over every kind, with
        it: so too in every part of the fleet."""
        cols = self.columns
        return {n: next(iter(p)) for n in self.registers if len(p := cols.pairs(n)) == 1}

    @functools.cached_property
    def columns(self) -> Columns:
        return Columns(_transpose(self.names, self.rows), _transpose(self.names, self.wrows),
                       len(self.rows))

    @functools.cached_property
    def registers(self) -> frozenset[str]:
        """The registers some kind has (what the baseline combines)."""
        return frozenset().union(*{id(r): r for r in self.regsets}.values())

    def labels(self, labels: Sequence[str]) -> list[str]:
        """A label for each kind: its first input's, and how many are alike."""
        return [labels[m[0]] if len(m) == 1 else f"{labels[m[0]]} (+{len(m) - 1} alike)"
                for m in self.members]

    def subset(self, which: list[int]) -> _Fleet:
        """The kinds at *which* (ascending)."""
        if len(which) == len(self.kinds):
            return self
        return _Fleet([self.kinds[i] for i in which], [self.members[i] for i in which],
                      self.names, [self.rows[i] for i in which],
                      [self.wrows[i] for i in which], [self.keys[i] for i in which],
                      [self.regsets[i] for i in which],
                      self.within if self.within is not None else self)


def _transpose(names: tuple[str, ...], rows: list[tuple[int, ...]]) -> dict[str, Sequence[int]]:
    if rows and rows.count(rows[0]) == len(rows):        # one content (writable masks often)
        return {n: (v,) * len(rows) for n, v in zip(names, rows[0])}
    return dict(zip(names, zip(*rows)))


def _group(models: Sequence[CpuModel], members: Sequence[list[int]]) -> _Fleet:
    """The distinct models of *models*, each standing for the inputs at its
    *members*.  Distinct as they always were: values, writable masks,
    capability 239, vCPU-feature effects, firmware, register list and
    platform (and the features switched off: the same once switched); the
    first model of each stands for it."""
    reps, parts = _by_identity(models, members)
    # Values and masks as rows over one list of registers (C-level lookups
    # and comparisons); a dict with other registers is compared by its items.
    names = tuple(reps[0].values) if reps else ()
    rows = _rows([m.values for m in reps], names)
    vkeys = [r if r is not None else ("other", tuple(sorted(m.values.items())))
             for r, m in zip(rows, reps)]
    masks = [m.writable for m in reps]
    if masks and masks.count(masks[0]) == len(masks):
        # one content (a fleet of one kernel): compared as dicts, read once
        wrows = _rows(masks[:1], names) * len(masks)
        wkeys: list[object] = [0] * len(wrows)
    else:
        wrows = _rows(masks, names)
        seen: dict[tuple, int] = {}
        wkeys = [seen.setdefault(r if r is not None else ("other", tuple(sorted(m.writable.items()))),
                                 len(seen)) for r, m in zip(wrows, reps)]
    keys = list(zip(vkeys, wkeys))
    # platforms by identity, then value (few objects; hashing one is slow)
    distinct: dict[Platform, int] = {}
    token = {i: distinct.setdefault(p, len(distinct))
             for i, p in {id(m.platform): m.platform for m in reps}.items()}
    same: dict[tuple, list[int]] = {}
    for n, (m, key) in enumerate(zip(reps, keys)):
        same.setdefault((key, m.imp_id_writable, m.reg_list, token[id(m.platform)], m.vcpu_off),
                        []).append(n)
    kinds: list[list[int]] = []         # each kind: its models (positions in reps)
    for group in same.values():
        if len(group) == 1:
            kinds.append(group)
            continue
        # same values: effects and firmware decide (compared only here: rare)
        sub: dict[tuple, list[int]] = {}
        for n in group:
            m = reps[n]
            sub.setdefault((tuple(sorted((f, tuple(sorted(e.items())))
                                         for f, e in m.vcpu_effects.items())),
                            tuple(sorted(m.firmware.items(), key=lambda kv: kv[0]))),
                           []).append(n)
        kinds.extend(sub.values())
    if len(kinds) != len(reps):
        kinds.sort(key=lambda k: k[0])      # reps are in input order: so are kinds
    out_members = []
    for kind in kinds:
        if len(kind) == 1 and len(parts[kind[0]]) == 1:
            out_members.append(parts[kind[0]][0])
        else:
            out_members.append(sorted(i for n in kind for part in parts[n] for i in part))
    firsts = [k[0] for k in kinds]
    kinds_rows = [rows[n] for n in firsts]
    kinds_wrows = [wrows[n] for n in firsts]
    regsets = [names if r is not None else tuple(reps[n].values)
               for n, r in zip(firsts, kinds_rows)]
    if None in kinds_rows or None in kinds_wrows:
        # registers some model lacks, or has beyond the first's: rows over them all
        odd = [reps[n] for n, v, w in zip(firsts, kinds_rows, kinds_wrows) if v is None or w is None]
        extra = tuple(sorted(set().union(*(m.values.keys() | m.writable.keys() for m in odd))
                             - set(names)))
        full, pad = names + extra, (0,) * len(extra)
        kinds_rows = [r + pad if r is not None else tuple(reps[n].values.get(x, 0) for x in full)
                      for n, r in zip(firsts, kinds_rows)]
        kinds_wrows = [r + pad if r is not None else
                       tuple(reps[n].writable.get(x, 0) for x in full)
                       for n, r in zip(firsts, kinds_wrows)]
        names = full
    return _Fleet([reps[n] for n in firsts], out_members, names,
                  kinds_rows, kinds_wrows,  # type: ignore[arg-type]
                  [keys[n] for n in firsts], regsets)


def _by_identity(models: Sequence[CpuModel], members: Sequence[list[int]]
                 ) -> tuple[list[CpuModel], list[list[list[int]]]]:
    """Models read from one profile share their dicts: one of each, with
    the members of all."""
    if len({id(m.values) for m in models}) == len(models):
        return list(models), [[mem] for mem in members]
    index: dict[tuple, int] = {}
    reps: list[CpuModel] = []
    parts: list[list[list[int]]] = []
    for m, mem in zip(models, members):
        ident = (id(m.values), id(m.writable), m.imp_id_writable, id(m.vcpu_effects),
                 id(m.firmware), id(m.reg_list), id(m.platform), m.vcpu_off)
        n = index.get(ident)
        if n is None:
            index[ident] = len(reps)
            reps.append(m)
            parts.append([mem])
        else:
            parts[n].append(mem)
    return reps, parts


def _rows(dicts: list[dict[str, int]], names: tuple[str, ...]) -> list[tuple[int, ...] | None]:
    """Each dict's values in the order of *names*; None for a dict whose
    keys are not exactly those."""
    def each(d: dict[str, int]) -> tuple[int, ...]:
        return tuple(d[n] for n in names)

    # itemgetter gives a tuple for two names or more
    get: Callable[[dict[str, int]], tuple[int, ...]] = itemgetter(*names) if len(names) > 1 else each
    if set(map(len, dicts)) <= {len(names)}:
        try:
            return list(map(get, dicts))
        except KeyError:
            pass
    out: list[tuple[int, ...] | None] = []
    for d in dicts:
        try:
            out.append(get(d) if len(d) == len(names) else None)
        except KeyError:
            out.append(None)
    return out


def _fleet(models: Sequence[CpuModel]) -> _Fleet:
    return _group(models, [[i] for i in range(len(models))])


def _switch(fleet: _Fleet, off: set[str], memo: Memo) -> _Fleet:
    """The fleet with the vCPU features *off* switched off; kinds that then
    read the same become one.  A kind switched once is reused, and so
    share its dicts.  The switched kinds are named for what they are, not
    by digest (their names are never shown or saved: the baseline's model
    is named when it is made; a digest costs 0.15 ms a kind)."""
    if not off:
        return fleet
    label = ",".join(sorted(off))
    switched = []
    for m in fleet.kinds:
        key = ("off", id(m), frozenset(off))
        got = memo.get(key)
        if got is None or got[0] is not m:
            got = memo[key] = (m, m.switched_off(off, f"{m.name} ({label} off)"))
        switched.append(got[1])
    if all(s is m for s, m in zip(switched, fleet.kinds)):
        return fleet
    return _group(switched, fleet.members)


# -- combining register by register -------------------------------------------

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


def _field_value(f: Field, pairs: set[tuple[int, int]] | frozenset[tuple[int, int]],
                 memo: Memo | None = None) -> int | None:
    """The field's value in the baseline, None when no value suits every
    input.  What an input accepts depends only on its own value of the
    field and whether it may change it: judged over the distinct (value,
    writable) *pairs* of the register; with *memo*, once for each distinct
    set of (own value, may change it) (the sets of kinds a search for pools
    tries have the same few of those for most fields)."""
    kinds = frozenset([(f.get(v), covers(w, f)) for v, w in pairs])
    if memo is None:
        return _field_choice(f, kinds)
    key = ("field", id(f), kinds)
    got = memo.get(key)
    if got is None or got[0] is not f:
        got = memo[key] = (f, _field_choice(f, kinds))
    return got[1]


def _field_choice(f: Field, kinds: frozenset[tuple[int, bool]]) -> int | None:
    """:func:`_field_value` over the inputs' distinct (own value, may
    change it) *kinds*."""
    candidates = {own for own, _ in kinds} | {0}
    if f.safe is not None:
        candidates.add(f.safe)
    accepted = [c for c in sorted(candidates)
                if all(c == own or (cov and field_accepts(f, c, own)) for own, cov in kinds)]
    return _pick(f, accepted) if accepted else None


def _field_conflict(reg: str, f: Field, values: Sequence[int], masks: Sequence[int],
                    labels: Sequence[str], explain: bool) -> Conflict:
    """The field's conflict: each input's value, and (*explain*) why no
    value suits every input, input by input."""
    own = [f.get(v) for v in values]
    if not explain:
        return Conflict(reg, f.name, dict(zip(labels, own)), "")
    # Say why the natural choice (the policy's combination) fails, host by host.
    natural = min(own, key=f.order) if f.effective_policy in (LOWER_SAFE, EXACT) else \
        max(own, key=f.order)
    fixed: list[str] = []
    refusing: list[str] = []
    for w, label, value in zip(masks, labels, own):
        if value == natural:
            continue
        (refusing if covers(w, f) else fixed).append(label)
    return Conflict(reg, f.name, dict(zip(labels, own)),
                    "no value every host accepts: " + why_not(fixed, refusing, natural, f))


def why_not(fixed: Sequence[str], refusing: Sequence[str], natural: int, f: Field) -> str:
    """Why *natural* is not every host's: *fixed* cannot change the field,
    *refusing* can but KVM's rule does not take *natural* there."""
    why = []
    if fixed:
        why.append(f"{named_hosts(fixed)} cannot change it (not writable there)")
    if refusing:
        verb = "does" if len(refusing) == 1 else "do"
        why.append(f"{named_hosts(refusing)} {verb} not accept {natural} ({f.effective_policy})")
    return "; ".join(why)


def _combine_register(reg: Register, name: str, fieldwise: bool, fleet: _Fleet,
                      labels: Sequence[str], kb: KnowledgeBase, memo: Memo, explain: bool
                      ) -> tuple[int, int, list[Conflict]]:
    """The register's value and writable mask in the baseline, or the
    conflicts.  It depends only on the register's distinct (value, writable)
    pairs where it is combined field by field, or where every input has the
    same value: worked out once a call for each such set of pairs.
    *explain*: say why a field conflicts, input by input."""
    cols = fleet.columns
    pairs = cols.pairs(name)
    if len(pairs) == 1:
        ((value, mask),) = pairs
        key: tuple = (name, value, mask)
    elif fieldwise:
        key = (name, frozenset(pairs))
    else:
        return _combine_differing(reg, name, fleet, pairs, labels, kb)
    got = memo.get(key)
    if got is None:
        got = memo[key] = _register_outcome(reg, pairs, memo) if fieldwise else \
            (value, mask, (), False)
    result, mask, bad, rest_differs = got
    if not bad and not rest_differs:
        return result, mask, []
    conflicts = [_field_conflict(name, reg.fields[n], cols.value(name), cols.mask(name), labels,
                                 explain) for n in bad]
    if rest_differs:
        conflicts.append(Conflict(name, None, dict(zip(labels, cols.value(name))),
                                  "bits outside every known field differ"))
    return result, mask, conflicts


def _fieldwise(reg: Register) -> bool:
    """Is the register combined field by field?"""
    return reg.kind not in ("unallocated", "implementation-id") and bool(reg.fields) and \
        not taken_whole(reg)


def _register_outcome(reg: Register, pairs: set[tuple[int, int]] | frozenset[tuple[int, int]],
                      memo: Memo | None = None) -> tuple[int, int, tuple[int, ...], bool]:
    """A register combined field by field over its distinct (value,
    writable) *pairs*: its value, its mask, which fields (positions) no
    value suits, and whether bits outside the fields differ."""
    mask = U64
    for _, w in pairs:
        mask &= w
    result = 0
    bad = []
    for n, f in enumerate(reg.fields):
        bits = f.mask
        own = {v & bits for v, _ in pairs}
        if len(own) == 1 and all(w & bits != bits for _, w in pairs):
            result |= own.pop()     # the same everywhere, and nowhere writable: it
            continue
        value = _field_value(f, pairs, memo)
        if value is None:
            bad.append(n)
        else:
            result = f.put(result, value)
    rest = {v & ~reg.field_mask & U64 for v, _ in pairs}
    # the bits outside fields are every input's when they are the same
    return result | next(iter(rest)), mask, tuple(bad), len(rest) > 1


def _combine_differing(reg: Register, name: str, fleet: _Fleet, pairs: set[tuple[int, int]],
                       labels: Sequence[str], kb: KnowledgeBase
                       ) -> tuple[int, int, list[Conflict]]:
    """A register not combined field by field, whose inputs differ."""
    mask = U64
    for _, w in pairs:
        mask &= w
    if reg.kind == "implementation-id":
        return _combine_implementation(name, fleet, labels, mask)
    if taken_whole(reg):
        return _combine_whole(reg, name, fleet.columns, labels, mask, kb)
    if len({v for v, _ in pairs}) == 1:
        return next(iter(pairs))[0], mask, []
    return 0, 0, [Conflict(name, None, dict(zip(labels, fleet.columns.value(name))),
                           "differs, and no field of it is known to change")]


def _combine_whole(reg: Register, name: str, cols: Columns, labels: Sequence[str], mask: int,
                   kb: KnowledgeBase) -> tuple[int, int, list[Conflict]]:
    """A register KVM takes as a whole (CLIDR_EL1: a cache hierarchy): the
    common value, else the lowest one every host can be given."""
    values = cols.distinct(name)
    if len(values) == 1:
        return values[0], mask, []
    whole = {w for w in cols.distinct(name, masks=True)
             if all(covers(w, f) for f in reg.fields)}
    blocked = [label for w, label in zip(cols.mask(name), labels) if w not in whole]
    if blocked:
        return 0, 0, [Conflict(name, None, dict(zip(labels, cols.value(name))),
                               "differs, and " + named_hosts(blocked) + " cannot change it")]
    ctrs = cols.distinct("CTR_EL0")
    for candidate in sorted(values):
        if register_refusal(kb, name, candidate, ctrs) is None:
            return candidate, mask, []
    return 0, 0, [Conflict(name, None, dict(zip(labels, cols.value(name))),
                           "differs, and no host's value is one every host's KVM takes: "
                           + str(register_refusal(kb, name, min(values), ctrs)))]


def _combine_implementation(name: str, fleet: _Fleet, labels: Sequence[str], mask: int
                            ) -> tuple[int, int, list[Conflict]]:
    cols = fleet.columns
    values = cols.distinct(name)
    if len(values) == 1:
        return values[0], mask, []
    first = cols.value(name)[0]
    differing = 0
    for v in values:
        differing |= v ^ first
    blocked = [label for m, w, label in zip(fleet.kinds, cols.mask(name), labels)
               if not m.imp_id_writable or (w & differing) != differing]
    if blocked:
        return 0, 0, [Conflict(name, None, dict(zip(labels, cols.value(name))),
                               "differs, and " + named_hosts(blocked) + " cannot present another "
                               "value (needs KVM capability 239, Linux 6.15+)")]
    return min(values), mask, []


def _meet(kinds: Sequence[CpuModel], labels: Sequence[str]
          ) -> tuple[Platform, list[platform.PlatformIssue]]:
    """platform.meet, over the distinct platforms (what a guest may use
    depends on which there are); over every kind when there are issues,
    which name hosts."""
    distinct = list(dict.fromkeys({id(m.platform): m.platform for m in kinds}.values()))
    common, issues = platform.meet(distinct, [""] * len(distinct))
    if issues:
        return platform.meet([m.platform for m in kinds], labels)
    return common, issues


# -- vCPU features ------------------------------------------------------------

def _switched_fields(effects: Sequence[dict[str, int]], cols: Columns, kb: KnowledgeBase,
                     memo: Memo) -> set[tuple[str, str | None]]:
    """(register, field) pairs switching a feature off changes on some
    model (*effects*: each model's, *cols* their registers), and
    (register, None) for each such register."""
    out: set[tuple[str, str | None]] = set()
    for reg in set().union(*effects):
        out.add((reg, None))
        # distinct (value once off, value now) pairs: None where it stays
        pairs = frozenset((e, v) for e, v in set(zip(map(dict.get, effects, itertools.repeat(reg)),
                                                      cols.value(reg))) if e is not None)
        changed = memo.get(("switched", reg, pairs))
        if changed is None:
            changed = memo["switched", reg, pairs] = tuple(
                f.name for f in kb.register(reg).fields
                if any(f.get(e) != f.get(v) for e, v in pairs))
        out.update((reg, name) for name in changed)
    return out


def _can_switch_off(kinds: Sequence[CpuModel], feature: str) -> bool:
    """Can every kind switch *feature* off?  (Most record its effect: asked
    of their effects at once first.)"""
    return all(map(dict.__contains__, [m.vcpu_effects for m in kinds], itertools.repeat(feature))) \
        or all(m.can_switch_off(feature) for m in kinds)


def _features_resolving(conflicts: list[Conflict], fleet: _Fleet, off: set[str],
                        kb: KnowledgeBase, memo: Memo) -> set[str]:
    """The vCPU features not yet off, that every input can switch off, and
    that switch a field of some conflict (*fleet*: with *off* switched off)."""
    wanted = {(c.register, c.field) for c in conflicts}
    out = set()
    for feature in VCPU_FEATURES:
        if feature in off or not _can_switch_off(fleet.kinds, feature):
            continue
        effects = [m.vcpu_effects.get(feature, {}) for m in fleet.kinds]
        if wanted & _switched_fields(effects, fleet.columns, kb, memo):
            out.add(feature)
    return out


def _effects(model: CpuModel, fleet: _Fleet, kb: KnowledgeBase, memo: Memo
             ) -> dict[str, dict[str, int]]:
    """What switching each remaining vCPU feature off gives the combined
    model: the fields it switches take the combination of the inputs'
    switched values (kept out when they have none); the rest stays."""
    cols = fleet.columns
    out: dict[str, dict[str, int]] = {}
    for feature in VCPU_FEATURES:
        if feature in model.vcpu_off or not _can_switch_off(fleet.kinds, feature):
            continue
        effects = [m.vcpu_effects[feature] for m in fleet.kinds]
        fields = _switched_fields(effects, cols, kb, memo)
        effect: dict[str, int] = {}
        ok = True
        for reg, name in sorted((r, n) for r, n in fields if n is not None):
            f = kb.register(reg).field(name)
            # each input's value with the feature off: its effect's, else its own
            switched = map(dict.get, effects, itertools.repeat(reg), cols.value(reg))
            value = _field_value(f, set(zip(switched, cols.mask(reg))))
            if value is None:
                ok = False
                break
            current = effect.get(reg, model.values.get(reg, 0))
            # never above the model's own value: the repair may have lowered it
            if f.order(value) < f.order(f.get(current)):
                effect[reg] = f.put(current, value)
        if ok:
            out[feature] = {r: v for r, v in effect.items() if v != model.values.get(r, 0)}
    return out


# -- baseline -----------------------------------------------------------------

def baseline(models: Sequence[CpuModel], kb: KnowledgeBase, rules: RuleBook | None,
             labels: Sequence[str] | None = None) -> BaselineResult:
    """The most capable model every input accepts, or the conflicts.

    :param rules: the dependency rules the combination is repaired with
        (:func:`libvirt_arm_cpu.kb.load.dependencies`); None gives the plain
        field-by-field combination.

    Identical inputs are combined once (fleets have few distinct CPUs), and
    each register over its distinct values, so the cost grows with the
    number of distinct hosts and values, not of hosts.

    A conflict on a field a vCPU feature switches is resolved by switching
    the feature off everywhere, when every input can (module docstring).

    :param labels: names for the inputs in messages (default: their hosts).
    :raise ValueError: for an empty list.
    :raise UnknownName: for a register name the knowledge base cannot place.
    """
    if not models:
        raise ValueError("baseline of no hosts")
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    memo: Memo = {}
    return _complete(_resolve(_fleet(models), labels, kb, memo), kb, rules,
                     lambda: _hosts(models), memo)


def _hosts(models: Sequence[CpuModel]) -> tuple[str, ...]:
    return tuple(itertools.chain.from_iterable(map(attrgetter("hosts"), models)))


@dataclass
class _Resolved:
    """The combination of a fleet, once no more vCPU features help."""

    fleet: _Fleet                   # the inputs with `off` switched off
    labels: list[str]               # one for each of its kinds
    off: set[str]
    values: dict[str, int] = field(default_factory=dict)
    writable: dict[str, int] = field(default_factory=dict)
    platform: Platform = field(default_factory=Platform)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicts


def _resolve(fleet: _Fleet, labels: Sequence[str], kb: KnowledgeBase, memo: Memo,
             explain: bool = True) -> _Resolved:
    """Combine the fleet, switching vCPU features off while that resolves
    conflicts.  Whether there is a baseline, and the conflicts, do not
    depend on the dependency rules: those only lower the result.
    *explain*: conflicting fields say why, input by input (else only each
    input's value: enough to know whether there is a baseline, and whom a
    conflict names)."""
    off = {f for m in fleet.kinds for f in m.vcpu_off}
    while True:
        stuck = [Conflict(f"vCPU feature {f}", None, {labels[i]: 1},
                          f"a guest of another input runs with {f} off, and what {labels[i]} "
                          f"presents then is not known (profile from an older probe: probe "
                          f"it again)")
                 for f in sorted(off)
                 for i in sorted(i for m, mem in zip(fleet.kinds, fleet.members)
                                 if not m.can_switch_off(f) for i in mem)]
        if stuck:
            return _Resolved(fleet, fleet.labels(labels), off, conflicts=stuck)
        cur = _switch(fleet, off, memo)
        result = _combine(cur, cur.labels(labels), off, kb, memo, explain)
        if result.ok:
            return result
        more = _features_resolving(result.conflicts, cur, off, kb, memo)
        if not more:
            return result
        off = off | more


def _combine(fleet: _Fleet, labels: list[str], off: set[str], kb: KnowledgeBase,
             memo: Memo, explain: bool) -> _Resolved:
    """Every register of the fleet combined (in the knowledge base's order),
    and the platforms met; conflicts name the kinds by *labels*."""
    order = memo.get(("order", fleet.registers))
    if order is None:
        regs = [(n, kb.register(n)) for n in fleet.registers]
        order = memo["order", fleet.registers] = tuple(
            (n, r, _fieldwise(r)) for n, r in sorted(regs, key=lambda nr: (nr[1].encoding, nr[0])))
    out = _Resolved(fleet, labels, off)
    cols = fleet.columns
    todo = order
    if fleet.within is not None:
        # part of a fleet (the sets --exclude-incompatible and --pools try):
        # the registers one (value, mask) over the whole fleet are combined once
        _, _, values, masks, todo = _uniform_part(order, fleet.within, memo)
        out.values, out.writable = values.copy(), masks.copy()
    for name, reg, fieldwise in todo:
        values, masks = cols.values[name], cols.writable[name]
        if values.count(values[0]) == len(values) and masks.count(masks[0]) == len(masks):
            # one (value, mask) everywhere (most registers): never a conflict
            out.values[name], out.writable[name] = _one_pair(name, reg, fieldwise, values[0],
                                                             masks[0], memo)
            continue
        v, mask, c = _combine_register(reg, name, fieldwise, fleet, labels, kb, memo, explain)
        out.conflicts.extend(c)
        out.values[name], out.writable[name] = v, mask
    out.platform, issues = _meet(fleet.kinds, labels)
    out.conflicts += [Conflict(i.name, None, i.values or {}, i.message, decimal=True)
                      for i in issues]
    return out


def _uniform_part(order: tuple, whole: _Fleet, memo: Memo) -> tuple:
    """(*order*, *whole*, values, writable masks, the rest of *order*): the
    registers of *order* one (value, mask) over the *whole* fleet, combined;
    the rest still to combine, in the dicts as 0 so that they keep their
    place in *order* (a model's registers are in the knowledge base's order)."""
    key = ("uniform", id(order), id(whole))
    got = memo.get(key)
    if got is not None and got[0] is order and got[1] is whole:
        return got
    same = whole.uniform
    values: dict[str, int] = {}
    masks: dict[str, int] = {}
    rest = []
    for name, reg, fieldwise in order:
        pair = same.get(name)
        if pair is None:
            values[name] = masks[name] = 0
            rest.append((name, reg, fieldwise))
            continue
        values[name], masks[name] = _one_pair(name, reg, fieldwise, *pair, memo)
    got = memo[key] = (order, whole, values, masks, tuple(rest))
    return got


def _one_pair(name: str, reg: Register, fieldwise: bool, value: int, mask: int,
              memo: Memo) -> tuple[int, int]:
    """The value and mask of a register every input has as *value* and
    *mask* (never a conflict), worked out once a call."""
    key = (name, value, mask)
    got = memo.get(key)
    if got is None:
        got = memo[key] = _register_outcome(reg, {(value, mask)}) if fieldwise else \
            (value, mask, (), False)
    return got[0], got[1]


def _complete(res: _Resolved, kb: KnowledgeBase, rules: RuleBook | None,
              hosts: Callable[[], tuple[str, ...]], memo: Memo) -> BaselineResult:
    """The baseline model of a resolved combination: implementations,
    dependency repair, vCPU-feature effects, firmware, register list."""
    if not res.ok:
        return BaselineResult(None, res.conflicts)
    uniq = res.fleet.kinds
    impls = tuple(sorted(set().union(*{m.implementations for m in uniq})))
    model = CpuModel(res.values, res.writable, all(m.imp_id_writable for m in uniq), hosts(),
                     impls, vcpu_off=tuple(res.off))
    repair = None
    if rules is not None:
        repair = make_consistent(model, uniq, kb, rules, res.labels, res.fleet.columns)
        model = repair.model
    lists = {id(m.reg_list): m.reg_list for m in uniq}
    reg_list = None if None in lists.values() else \
        frozenset.intersection(*(x for x in lists.values() if x is not None))
    model = replace(model, vcpu_effects=_effects(model, res.fleet, kb, memo),
                    firmware=_firmware(uniq), reg_list=reg_list, platform=res.platform, name="")
    return BaselineResult(model, consistency=repair)


def _firmware(models: Sequence[CpuModel]) -> dict[str, int | None]:
    """The firmware pseudo-registers every model's host can give a guest
    (libvirt_arm_cpu.kb.firmware.combine: of the distinct values); unmanaged
    (empty) when one model does not record them (a profile probed before
    they were)."""
    tables = [m.firmware for m in models]
    if not all(tables):
        return {}
    return {n: firmware.combine(list(set(map(dict.get, tables, itertools.repeat(n)))), n)
            for n in sorted(set().union(*tables))}


# -- pools --------------------------------------------------------------------

@dataclass
class Pool:
    """Inputs that have a baseline together, and that baseline."""

    indices: list[int]          # positions in the input
    result: BaselineResult


MAX_EXACT_GROUPS = 12


def _groups(fleet: _Fleet) -> list[list[int]]:
    """The fleet's kinds grouped by identical content (same CPU, kernel):
    values, writable masks, capability 239 and platform."""
    seen: dict[tuple, list[int]] = {}
    for k, (m, key) in enumerate(zip(fleet.kinds, fleet.keys)):
        seen.setdefault((key, m.imp_id_writable, m.platform), []).append(k)
    return list(seen.values())


def largest_compatible(models: Sequence[CpuModel], kb: KnowledgeBase, rules: RuleBook | None,
                       labels: Sequence[str] | None = None) -> Pool:
    """The largest set of inputs (by number of hosts) that has a baseline:
    what ``--exclude-incompatible`` keeps.  Exact over the distinct kinds of
    host when there are at most 12 of them (fleets have few), greedy above:
    drop the kind named in most conflicts until a baseline exists."""
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    fleet = _fleet(models)
    return _largest(models, labels, fleet, _groups(fleet), kb, rules, {}, {})


def _largest(models: Sequence[CpuModel], labels: list[str], fleet: _Fleet,
             groups: list[list[int]], kb: KnowledgeBase, rules: RuleBook | None,
             memo: Memo, apart_memo: dict[tuple[int, int], bool]) -> Pool:
    """largest_compatible over *groups* of the fleet's kinds.  Sets of kinds
    are judged without the rules (they do not decide whether a baseline
    exists); the set kept is then completed with them.  *apart_memo*: pairs
    of groups (by first input) already judged."""
    members = [fleet.members[g[0]] if len(g) == 1 else
               sorted(i for k in g for i in fleet.members[k]) for g in groups]

    def attempt(chosen: Sequence[int], explain: bool) -> _Resolved:
        return _resolve(fleet.subset(sorted(k for g in chosen for k in groups[g])), labels, kb,
                        memo, explain)

    def pool(chosen: Sequence[int], res: _Resolved) -> Pool:
        idx = sorted(i for g in chosen for i in members[g])
        return Pool(idx, _complete(res, kb, rules, lambda: _hosts([models[i] for i in idx]),
                                   memo))

    if len(groups) <= MAX_EXACT_GROUPS:
        # Two kinds without a common model make every set holding both fail
        # too (a field no value of which both accept stays so; a vCPU feature
        # one cannot switch off stays so): judge the pairs once (each by the
        # group's first input), then try only the sets whose every pair has
        # one -- 18 kinds took 5,491 baselines.
        def apart_pair(a: int, b: int) -> bool:
            key = (members[a][0], members[b][0])
            got = apart_memo.get(key)
            if got is None:
                # each group's first kind (the model of its first input)
                pair = fleet.subset([groups[a][0], groups[b][0]])
                got = apart_memo[key] = not _resolve(pair, labels, kb, memo, False).ok
            return got

        apart = {(a, b) for a, b in itertools.combinations(range(len(groups)), 2)
                 if apart_pair(a, b)}
        subsets = []
        for r in range(len(groups), 0, -1):
            for combo in itertools.combinations(range(len(groups)), r):
                if not any(pair in apart for pair in itertools.combinations(combo, 2)):
                    subsets.append((sum(len(members[g]) for g in combo), combo))
        subsets.sort(key=lambda s: (-s[0], s[1]))
        for _, combo in subsets:
            res = attempt(combo, False)
            if res.ok:
                return pool(combo, res)
        raise AssertionError("a single kind of host always has a baseline")
    chosen = list(range(len(groups)))
    while True:
        res = attempt(chosen, False)
        if res.ok:
            return pool(chosen, res)
        if len(chosen) == 1:
            return pool(chosen, attempt(chosen, True))
        blamed: dict[int, int] = {}
        for c in res.conflicts:
            named = " ".join(c.values)
            for n, g in enumerate(chosen):
                if labels[members[g][0]] in named:
                    blamed[n] = blamed.get(n, 0) + 1
        worst = max(range(len(chosen)),
                    key=lambda n: (blamed.get(n, 0), -len(members[chosen[n]])))
        chosen.pop(worst)


def pools(models: Sequence[CpuModel], kb: KnowledgeBase, rules: RuleBook | None,
          labels: Sequence[str] | None = None) -> list[Pool]:
    """Split the inputs into pools that each have a baseline, largest first.
    A pool is whole groups of identical inputs: the groups, and which pairs
    of them have a common model, are worked out once for all pools."""
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    fleet = _fleet(models)
    remaining = _groups(fleet)
    memo: Memo = {}
    apart: dict[tuple[int, int], bool] = {}
    out = []
    while remaining:
        pool = _largest(models, labels, fleet, remaining, kb, rules, memo, apart)
        out.append(pool)
        taken = set(pool.indices)
        remaining = [g for g in remaining if fleet.members[g[0]][0] not in taken]
    return out
