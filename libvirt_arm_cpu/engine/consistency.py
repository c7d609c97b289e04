"""Make a CPU model obey the dependency rules, by lowering fields only.

A baseline (or a translated domain CPU) lowers fields one by one; that can
leave a model no real CPU would present: SVE2 advertised without SVE,
ZFR0 non-zero without SVE, SM3 without SM4.  :func:`make_consistent`
repairs such a model with the rules of :mod:`libvirt_arm_cpu.kb.dependencies`:

* A rule that a source host breaks with its own, unmodified values is not
  enforced (some real cores and KVM versions break some rules); it is
  reported as exempt.  Only what lowering introduces is repaired.
* A repair only ever lowers fields (never raises one: that would promise
  a feature a host lacks), and only to values every source host's kernel
  accepts (writable there, and allowed by KVM's rule from that host's
  value): the result still runs everywhere the model did.
* It prefers making the rule's ``then`` hold by lowering (zero ZFR0 when
  SVE is gone, lower BF16 to match its twin) over lowering the ``if`` side
  (drop SVE2 because SVE is gone); among the candidates, the one that
  breaks no other rule, then loses the fewest features (hwcaps and FEAT_*
  names: dropping AArch32 DotProd beats dropping AArch32 altogether),
  then touches the fewest fields.
* A violation no allowed lowering repairs is reported as unresolved, with
  the fields that block it.

Pure: takes data, returns data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.kb.features import Condition as FeatureCondition
from libvirt_arm_cpu.kb.features import FeatureCatalog, FeatureRef
from libvirt_arm_cpu.kb.features import Group as FeatureGroup
from libvirt_arm_cpu.kb.dependencies import Always, Condition, Group, Not, Rule, RuleBook, Test
from libvirt_arm_cpu.kb.registers import Field, KnowledgeBase, sign_extend
from libvirt_arm_cpu.kb.registers import U64_MAX as U64
from libvirt_arm_cpu.engine.rules import covers, field_accepts

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (2 ms a start)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Lowering", "Unresolved", "Consistency", "Columns", "make_consistent", "exempt_rules"]


# A move: (register, field name) -> the new, lower value.
Move = dict[tuple[str, str], int]


@dataclass(frozen=True)
class Lowering:
    """A field the dependency repair lowered, and the rule that asked it."""

    register: str
    field: str
    old: int
    new: int
    rule: str

    def __str__(self) -> str:
        return f"{self.register}.{self.field} {self.old} -> {self.new} (rule {self.rule})"


@dataclass(frozen=True)
class Unresolved:
    """A dependency rule the repair could not make hold, and why."""

    rule: Rule
    reason: str

    def __str__(self) -> str:
        return f"{self.rule.id}: {self.rule.describe()}: {self.reason}"


@dataclass
class Consistency:
    """What the dependency repair did to a model."""

    model: CpuModel
    lowered: list[Lowering] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    exempt: dict[str, list[str]] = field(default_factory=dict)  # rule id -> hosts that break it

    def as_dict(self) -> dict:
        return {"lowered": [vars(x) for x in self.lowered],
                "unresolved": [{"rule": u.rule.id, "reason": u.reason} for u in self.unresolved],
                "exempt": self.exempt}


@dataclass
class Columns:
    """Sources register by register: each register's values and writable
    masks, source by source in the sources' order (0 where a source lacks
    the register).  A fleet has few distinct values of each register even
    where its hosts all differ (10,000 hosts that each lower a field or two
    of the same CPU), so what depends on a register is judged over those."""

    values: dict[str, Sequence[int]]
    writable: dict[str, Sequence[int]]
    size: int
    _distinct: dict[tuple[bool, str], list[int]] = field(default_factory=dict, repr=False)
    _pairs: dict[str, set[tuple[int, int]]] = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, sources: Sequence[CpuModel]) -> Columns:
        names = set().union(*(s.values for s in sources), *(s.writable for s in sources))
        return cls({n: [s.values.get(n, 0) for s in sources] for n in names},
                   {n: [s.writable.get(n, 0) for s in sources] for n in names}, len(sources))

    def value(self, reg: str) -> Sequence[int]:
        col = self.values.get(reg)
        return col if col is not None else (0,) * self.size

    def mask(self, reg: str) -> Sequence[int]:
        col = self.writable.get(reg)
        return col if col is not None else (0,) * self.size

    def distinct(self, reg: str, masks: bool = False) -> list[int]:
        """The register's distinct values (writable masks with *masks*)."""
        got = self._distinct.get((masks, reg))
        if got is None:
            col = self.mask(reg) if masks else self.value(reg)
            # a column of one value (most are) is found without hashing it
            got = [] if not col else [col[0]] if col.count(col[0]) == len(col) else list(set(col))
            self._distinct[masks, reg] = got
        return got

    def pairs(self, reg: str) -> set[tuple[int, int]]:
        """The distinct (value, writable mask) pairs of the register."""
        got = self._pairs.get(reg)
        if got is None:
            if self.size <= 64:         # few sources: the pairs at once
                got = set(zip(self.value(reg), self.mask(reg)))
            else:                       # many: each column's distinct values first
                values, masks = self.distinct(reg), self.distinct(reg, masks=True)
                got = ({(v, masks[0]) for v in values} if len(masks) == 1 else
                       {(values[0], w) for w in masks} if len(values) == 1 else
                       set(zip(self.value(reg), self.mask(reg))))
            self._pairs[reg] = got
        return got


_BITS_READ: dict[int, tuple[Rule, dict[str, int]]] = {}      # id of a rule -> it, its bits


def _bits_read(rule: Rule) -> dict[str, int]:
    """Register -> the bits of it the rule reads (a field's, or all).  Rules
    are immutable and loaded once: each is walked once."""
    got = _BITS_READ.get(id(rule))
    if got is not None and got[0] is rule:
        return got[1]
    out: dict[str, int] = {}
    todo: list[Condition] = [rule.when, *rule.then]
    while todo:
        c = todo.pop()
        if isinstance(c, Test):
            out[c.register] = out.get(c.register, 0) | (c.field.mask if c.field else U64)
            if c.ref is not None:
                out[c.ref.register] = out.get(c.ref.register, 0) | c.ref.mask
        elif isinstance(c, Group):
            todo.extend(c.terms)
        elif isinstance(c, Not):
            todo.append(c.term)
    _BITS_READ[id(rule)] = (rule, out)
    return out


def exempt_rules(sources: Sequence[CpuModel], book: RuleBook, labels: Sequence[str],
                 columns: Columns | None = None) -> dict[str, list[str]]:
    """Enforced rules that some source breaks with its own values.

    A rule reads a few fields, and a fleet has few distinct values of each:
    a register whose bits the rule reads are the same everywhere is fixed,
    and the rule is judged once a distinct combination of the others (most
    rules once), not once a source; the sources are only walked to name
    the ones that break it.  *columns*: the sources' (the caller's, when
    it has them)."""
    cols = columns if columns is not None else Columns.of(sources)
    every = list(labels)[:cols.size]
    if cols.size == 1:
        # one kind of source (a pool of identical hosts): nothing varies
        one = {r: col[0] for r, col in cols.values.items()}
        return {rule.id: list(every) for rule in book.enforced if rule.violated(one)}
    out: dict[str, list[str]] = {}
    combos: dict[tuple[str, ...], tuple[Sequence[Any], set[Any]]] = {}
    for rule in book.enforced:
        bits = _bits_read(rule)
        regs = sorted(bits)
        vary = tuple(r for r in regs if len({v & bits[r] for v in cols.distinct(r)}) > 1)
        fixed = {r: (cols.distinct(r) or [0])[0] for r in regs if r not in vary}
        if not vary:
            if rule.violated(fixed):
                out[rule.id] = list(every)
            continue
        if vary not in combos:
            # each source's values of those registers (one register: the
            # column itself), and their distinct combinations
            if len(vary) == 1:
                combos[vary] = cols.value(vary[0]), set(cols.distinct(vary[0]))
            else:
                rows = list(zip(*(cols.value(r) for r in vary)))
                combos[vary] = rows, set(rows)
        keys, present = combos[vary]
        verdicts: dict[tuple[int, ...], bool] = {}
        broken = set()
        for key in present:
            values = (key,) if len(vary) == 1 else key
            read = tuple(v & bits[r] for v, r in zip(values, vary))
            verdict = verdicts.get(read)
            if verdict is None:
                verdict = verdicts[read] = rule.violated({**fixed, **dict(zip(vary, values))})
            if verdict:
                broken.add(key)
        if broken:
            out[rule.id] = list(every) if len(broken) == len(present) else \
                [label for key, label in zip(keys, every) if key in broken]
    return out


def _acceptance(cols: Columns) -> Callable[[str, Field, int], bool]:
    """``accepts(reg, field, new)``: does every source accept *new* for the
    field?  What a source accepts depends only on its own value of the
    field and whether it may change it, so each field is judged over the
    distinct (value, writable) pairs of its register."""
    kinds: dict[tuple[str, str], set[tuple[int, bool]]] = {}

    def accepts(reg: str, f: Field, new: int) -> bool:
        k = kinds.get((reg, f.name))
        if k is None:
            k = kinds[(reg, f.name)] = {(f.get(v), covers(w, f)) for v, w in cols.pairs(reg)}
        return all(new == own or (cov and field_accepts(f, new, own)) for own, cov in k)

    return accepts


def make_consistent(model: CpuModel, sources: Sequence[CpuModel], kb: KnowledgeBase,
                    book: RuleBook, labels: Sequence[str] | None = None,
                    columns: Columns | None = None) -> Consistency:
    """Lower fields of *model* until it obeys every enforced rule that all
    *sources* obey, within what every source's kernel accepts.

    :param sources: the hosts the model must still run on (for a baseline:
        its inputs; for a translated CPU: the host).
    :param columns: the sources' registers, when the caller has them.
    """
    labels = list(labels or ["+".join(s.hosts) or f"#{i}" for i, s in enumerate(sources)])
    cols = columns if columns is not None else Columns.of(sources)
    exempt = exempt_rules(sources, book, labels, cols)
    rules = [r for r in book.enforced if r.id not in exempt]
    values = dict(model.values)
    lowered: list[Lowering] = []

    every_source_accepts = _acceptance(cols)

    def allowed(reg: str, f: Field, new: int) -> bool:
        return (f.order(new) < f.order(f.get(values.get(reg, 0)))
                and every_source_accepts(reg, f, new))

    def feasible(move: Move) -> bool:
        return bool(move) and all(allowed(r, kb.register(r).field(n), v)
                                  for (r, n), v in move.items())

    unresolved: dict[str, Unresolved] = {}
    # Each repair strictly lowers a field, so this ends; the bound is a guard.
    for _ in range(10_000):
        broken = [r for r in rules if r.violated(values) and r.id not in unresolved]
        if not broken:
            break
        rule = broken[0]
        move = _best_move(rule, values, kb, feasible, rules, book.catalog)
        if move is None:
            unresolved[rule.id] = Unresolved(rule, _blockers(rule, values, kb, cols, labels,
                                                             every_source_accepts))
            continue
        for (reg, name), new in sorted(move.items()):
            f = kb.register(reg).field(name)
            old = f.get(values.get(reg, 0))
            values[reg] = f.put(values.get(reg, 0), new)
            lowered.append(Lowering(reg, name, old, new, rule.id))
        # A lowering may also repair a rule given up on before.
        unresolved = {k: u for k, u in unresolved.items() if u.rule.violated(values)}
    result = replace(model, values=values, name="") if lowered else model
    return Consistency(result, lowered, list(unresolved.values()), exempt)


# Features a repair never takes away: the translation granules.  An
# operating system is built for one page size (Linux: CONFIG_ARM64_{4K,16K,
# 64K}_PAGES, arch/arm64/Kconfig; Debian's arm64 kernels use 4K), so a guest
# CPU without it does not boot at all.  A rule only removing one would
# repair is left unresolved (a warning naming it) instead: found on a
# Neoverse-V1 and `max` baseline, where "EL2 and TGran4K need S2TGran4K"
# was repaired by removing 4K and 64K pages (KVM keeps EL2 and the stage-2
# granule fields as they are, so nothing else repairs it).
NEVER_REMOVED = frozenset({"FEAT_TGran4K", "FEAT_TGran16K", "FEAT_TGran64K"})


def _best_move(rule: Rule, values: dict[str, int], kb: KnowledgeBase,
               feasible: Callable[[Move], bool], others: Sequence[Rule],
               catalog: FeatureCatalog) -> Move | None:
    then_moves = _satisfy(Group("all", rule.then), values, kb, feasible)
    if_moves = _falsify(rule.when, values, kb, feasible)
    before = {f.key for f in catalog.present(values)}
    broken_before = {r.id for r in others if r.violated(values)}
    for moves in (then_moves, if_moves):
        ranked = []
        for move in moves:
            trial = dict(values)
            for (reg, name), new in move.items():
                f = kb.register(reg).field(name)
                trial[reg] = f.put(trial.get(reg, 0), new)
            if rule.violated(trial):
                continue
            newly_broken = sum(1 for r in others
                               if r.id not in broken_before and r.violated(trial))
            gone = before - {f.key for f in catalog.present(trial)}
            if gone & NEVER_REMOVED:
                continue
            ranked.append(((newly_broken, len(gone), len(move), sorted(move.items())), move))
        if ranked:
            return min(ranked, key=lambda x: x[0])[1]
    return None


def _merge(moves: list[Move]) -> Move:
    out: Move = {}
    for move in moves:
        for key, v in move.items():
            out[key] = min(out.get(key, v), v)
    return out


def _below(f: Field, v: int, signed: bool) -> list[int]:
    """The field's values below *v* in the test's order, highest first: the
    repair takes the first one every host accepts (an exact field, say,
    only accepts its safe value)."""
    def key(x: int) -> int:
        return sign_extend(x, f.width) if signed else x
    return sorted((x for x in f.meaningful_values() if key(x) < key(v)), key=key, reverse=True)




def feature_condition(cond: FeatureCondition, catalog: FeatureCatalog) -> Condition:
    """A feature's condition (features.xml: field ranges, groups, references)
    in the rules' terms, so one falsifier serves both: a field range
    [lo, hi] is ``field >= lo and field <= hi`` compared as the field is
    signed, a reference is the referenced feature's condition."""
    if isinstance(cond, FeatureRef):
        ref = catalog.feature(cond.name).condition
        return feature_condition(ref, catalog) if ref is not None else Not(Always())
    if isinstance(cond, FeatureGroup):
        return Group(cond.op, tuple(feature_condition(c, catalog) for c in cond.terms))
    f = cond.field
    low = Test(f.register, f, "ge", f.from_order(cond.lo), signed=f.signed)
    if cond.hi is None:
        return low
    return Group("all", (low, Test(f.register, f, "le", f.from_order(cond.hi), signed=f.signed)))


def falsify(cond: Condition, values: dict[str, int], kb: KnowledgeBase,
            feasible: Callable[[Move], bool] | None = None) -> list[Move]:
    """Alternative moves (field -> lower value) that make *cond* fail,
    the first one preferred; [{}] when it fails already, [] when lowering
    cannot make it fail.  *feasible* filters moves (default: any)."""
    return _falsify(cond, values, kb, feasible or (lambda m: True))


def _satisfy(cond: Condition, values: dict[str, int], kb: KnowledgeBase,
             feasible: Callable[[Move], bool]) -> list[Move]:
    """Alternative moves that make *cond* hold by lowering."""
    if cond.holds(values):
        return [{}]
    if isinstance(cond, Always):
        return []
    if isinstance(cond, Not):
        return _falsify(cond.term, values, kb, feasible)
    if isinstance(cond, Group):
        # any: one term is enough; all: every term at once
        return _group(cond, cond.op == "any", _satisfy, values, kb, feasible)
    return [m for m in _satisfy_test(cond, values, kb) if feasible(m)]


def _falsify(cond: Condition, values: dict[str, int], kb: KnowledgeBase,
             feasible: Callable[[Move], bool]) -> list[Move]:
    """Alternative moves that make *cond* fail by lowering."""
    if not cond.holds(values):
        return [{}]
    if isinstance(cond, Always):
        return []
    if isinstance(cond, Not):
        return _satisfy(cond.term, values, kb, feasible)
    if isinstance(cond, Group):
        # all: one false term is enough; any: every term at once
        return _group(cond, cond.op == "all", _falsify, values, kb, feasible)
    return [m for m in _falsify_test(cond, values) if feasible(m)]


def _group(cond: Group, one_term_enough: bool, each: Callable[..., list[Move]],
           values: dict[str, int], kb: KnowledgeBase,
           feasible: Callable[[Move], bool]) -> list[Move]:
    if one_term_enough:
        return [m for t in cond.terms for m in each(t, values, kb, feasible) if m]
    parts = []
    for t in cond.terms:
        alts = each(t, values, kb, feasible)
        if not alts:
            return []
        parts.append(alts[0])
    merged = _merge(parts)
    return [merged] if feasible(merged) else []


def _satisfy_test(t: Test, values: dict[str, int], kb: KnowledgeBase) -> list[Move]:
    if t.field is None:
        # whole register == 0: every field to 0, and nothing outside fields
        reg = kb.register(t.register)
        raw = values.get(t.register, 0)
        if t.op != "eq" or t.value != 0 or raw & ~reg.field_mask & U64:
            return []
        return [{(t.register, f.name): 0 for f in reg.fields if f.get(raw)}]
    f, cur = t.field, t.read(values)
    if t.ref is not None:
        other = t.ref.get(values.get(t.ref.register, 0))
        if t.op == "eq":
            if t.key(f, cur) > t.key(t.ref, other):
                return [{(t.register, f.name): other}]
            return [{(t.ref.register, t.ref.name): cur}]
        if t.op == "le":
            return [{(t.register, f.name): other}]
        return []
    v = t.value or 0
    if t.op == "eq":
        return [{(t.register, f.name): v}]
    if t.op == "le":
        return [{(t.register, f.name): v}] + [{(t.register, f.name): x}
                                              for x in _below(f, v, t.signed)]
    if t.op == "lt":
        return [{(t.register, f.name): x} for x in _below(f, v, t.signed)]
    if t.op == "ne":
        return [{(t.register, f.name): x} for x in _below(f, cur, t.signed) if x != v]
    return []


def _falsify_test(t: Test, values: dict[str, int]) -> list[Move]:
    if t.field is None or t.ref is not None:
        return []
    f, v = t.field, t.value or 0
    if t.op in ("ge", "eq"):
        return [{(t.register, f.name): x} for x in _below(f, v, t.signed)]
    if t.op == "gt":
        return [{(t.register, f.name): v}] + [{(t.register, f.name): x}
                                              for x in _below(f, v, t.signed)]
    if t.op == "ne":
        return [{(t.register, f.name): v}]
    return []


def _blockers(rule: Rule, values: dict[str, int], kb: KnowledgeBase, cols: Columns,
              labels: Sequence[str], accepts: Callable[[str, Field, int], bool]) -> str:
    """Why no lowering repairs *rule*: what keeps each of its fields."""
    why = []
    for reg, name in sorted(rule.fields()):
        register = kb.register(reg)
        for f in (register.fields if name == "*" else (register.field(name),)):
            cur = f.get(values.get(reg, 0))
            lower = [v for v in range(f.max_value + 1) if f.order(v) < f.order(cur)]
            if not lower:
                continue
            covering = {w for w in cols.distinct(reg, masks=True) if covers(w, f)}
            stuck = [label for w, label in zip(cols.mask(reg), labels) if w not in covering]
            if stuck:
                why.append(f"{f} is not writable on {', '.join(stuck)}")
            elif not any(accepts(reg, f, v) for v in lower):
                why.append(f"KVM keeps {f} at {cur} ({f.effective_policy})")
    if not why:
        return "only raising a field would make it hold"
    return "; ".join(why[:4]) + (f"; and {len(why) - 4} more" if len(why) > 4 else "")
