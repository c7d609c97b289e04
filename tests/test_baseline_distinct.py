"""The engine works on distinct models and on each register's distinct values
(issue 15): it must give exactly what the straightforward computation, input
by input, gives -- the model, the conflicts with their hosts in order, the
repair, the pools.  The oracle below is that computation, written plainly;
it lives only here."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest

from libvirt_arm_cpu.engine import baseline as baseline_mod, consistency, platform
from libvirt_arm_cpu.engine.baseline import (BaselineResult, Conflict, Pool, baseline,
                                             largest_compatible, named_hosts, pools, why_not)
from libvirt_arm_cpu.engine.consistency import Columns, exempt_rules, make_consistent
from libvirt_arm_cpu.engine.rules import covers, register_refusal, source_accepts, taken_whole
from libvirt_arm_cpu.kb import firmware
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb.registers import (EXACT, LOWER_SAFE,
                                          U64_MAX)
from libvirt_arm_cpu.model import VCPU_FEATURES, CpuModel

from .test_baseline import KB, MODELS, variant

RULES = kb_load.dependencies()
NAMES = sorted(MODELS)


# -- the oracle ------------------------------------------------------------------

# which accepted value a field takes is not what the distinct-value work
# changed: the engine's own choice
o_pick = baseline_mod._pick


def o_field(reg, f, models, labels):
    own = [f.get(m.values.get(reg, 0)) for m in models]
    candidates = set(own) | {0} | ({f.safe} if f.safe is not None else set())
    accepted = [c for c in sorted(candidates)
                if all(source_accepts(m.values, m.writable, reg, f, c) for m in models)]
    if accepted:
        return o_pick(f, accepted), None
    natural = min(own, key=f.order) if f.effective_policy in (LOWER_SAFE, EXACT) else \
        max(own, key=f.order)
    fixed, refusing = [], []
    for m, label, value in zip(models, labels, own):
        if value == natural:
            continue
        (refusing if covers(m.writable.get(reg, 0), f) else fixed).append(label)
    return None, Conflict(reg, f.name, dict(zip(labels, own)),
                          "no value every host accepts: " + why_not(fixed, refusing, natural, f))


def o_register(reg, name, models, labels):
    values = [m.values.get(name, 0) for m in models]
    mask = U64_MAX
    for m in models:
        mask &= m.writable.get(name, 0)
    differ = len(set(values)) > 1
    if reg.kind == "unallocated" or not reg.fields:
        if not differ:
            return values[0], mask, []
        return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                               "differs, and no field of it is known to change")]
    if reg.kind == "implementation-id":
        if not differ:
            return values[0], mask, []
        differing = 0
        for v in values:
            differing |= v ^ values[0]
        blocked = [label for m, label in zip(models, labels)
                   if not m.imp_id_writable or (m.writable.get(name, 0) & differing) != differing]
        if blocked:
            return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                                   "differs, and " + named_hosts(blocked) + " cannot present "
                                   "another value (needs KVM capability 239, Linux 6.15+)")]
        return min(values), mask, []
    if taken_whole(reg):
        if not differ:
            return values[0], mask, []
        blocked = [label for m, label in zip(models, labels)
                   if not all(covers(m.writable.get(name, 0), f) for f in reg.fields)]
        if blocked:
            return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                                   "differs, and " + named_hosts(blocked) + " cannot change it")]
        ctrs = [m.values.get("CTR_EL0", 0) for m in models]
        for candidate in sorted(set(values)):
            if register_refusal(KB, name, candidate, ctrs) is None:
                return candidate, mask, []
        return 0, 0, [Conflict(name, None, dict(zip(labels, values)),
                               "differs, and no host's value is one every host's KVM takes: "
                               + str(register_refusal(KB, name, min(values), ctrs)))]
    conflicts, result = [], 0
    for f in reg.fields:
        value, conflict = o_field(name, f, models, labels)
        if conflict:
            conflicts.append(conflict)
        else:
            result = f.put(result, value)
    if len({v & ~reg.field_mask & U64_MAX for v in values}) > 1:
        conflicts.append(Conflict(name, None, dict(zip(labels, values)),
                                  "bits outside every known field differ"))
    return result | (values[0] & ~reg.field_mask & U64_MAX), mask, conflicts


def o_switched_fields(models, feature):
    out = set()
    for m in models:
        for reg, value in m.vcpu_effects.get(feature, {}).items():
            out.add((reg, None))
            for f in KB.register(reg).fields:
                if f.get(value) != f.get(m.values.get(reg, 0)):
                    out.add((reg, f.name))
    return out


def o_effects(model, uniq, labels):
    out = {}
    for feature in VCPU_FEATURES:
        if feature in model.vcpu_off or not all(m.can_switch_off(feature) for m in uniq):
            continue
        variants = [CpuModel({**m.values, **m.vcpu_effects[feature]}, m.writable, name="-")
                    for m in uniq]
        effect, ok = {}, True
        for reg, name in sorted((r, n) for r, n in o_switched_fields(uniq, feature) if n):
            f = KB.register(reg).field(name)
            value, conflict = o_field(reg, f, variants, labels)
            if conflict is not None:
                ok = False
                break
            current = effect.get(reg, model.values.get(reg, 0))
            if f.order(value) < f.order(f.get(current)):
                effect[reg] = f.put(current, value)
        if ok:
            out[feature] = {r: v for r, v in effect.items() if v != model.values.get(r, 0)}
    return out


def o_content(m):
    return (tuple(sorted(m.values.items())), tuple(sorted(m.writable.items())),
            m.imp_id_writable, tuple(sorted((f, tuple(sorted(e.items())))
                                            for f, e in m.vcpu_effects.items())),
            tuple(sorted(m.firmware.items(), key=lambda kv: kv[0])), m.reg_list, m.platform)


def o_short(labels):
    return labels[0] if len(labels) == 1 else f"{labels[0]} (+{len(labels) - 1} alike)"


def o_plain(models, labels, rules, off):
    distinct = {}
    for m, label in zip(models, labels):
        distinct.setdefault(o_content(m), (m, []))[1].append(label)
    uniq = [m for m, _ in distinct.values()]
    ulabels = [o_short(ls) for _, ls in distinct.values()]
    names = {n for m in uniq for n in m.values}
    values, writable, conflicts = {}, {}, []
    for name in sorted(names, key=lambda n: (KB.register(n).encoding, n)):
        v, mask, c = o_register(KB.register(name), name, uniq, ulabels)
        conflicts += c
        values[name], writable[name] = v, mask
    common, issues = platform.meet([m.platform for m in uniq], ulabels)
    conflicts += [Conflict(i.name, None, i.values or {}, i.message, decimal=True) for i in issues]
    if conflicts:
        return BaselineResult(None, conflicts)
    model = CpuModel(values, writable, all(m.imp_id_writable for m in uniq),
                     tuple(h for m in models for h in m.hosts),
                     tuple(sorted({i for m in uniq for i in m.implementations})),
                     vcpu_off=tuple(off))
    repair = None
    if rules is not None:
        repair = make_consistent(model, uniq, KB, rules, ulabels)
        model = repair.model
    lists = [m.reg_list for m in uniq if m.reg_list is not None]
    fw = {} if any(not m.firmware for m in uniq) else {
        n: firmware.combine([m.firmware.get(n) for m in uniq], n)
        for n in sorted({n for m in uniq for n in m.firmware})}
    model = dataclasses.replace(
        model, vcpu_effects=o_effects(model, uniq, ulabels), firmware=fw, platform=common,
        reg_list=frozenset.intersection(*lists) if len(lists) == len(uniq) else None, name="")
    return BaselineResult(model, consistency=repair)


def o_baseline(models, rules, labels=None):
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
        switched = [m.switched_off(off) for m in models]
        result = o_plain(switched, labels, rules, off)
        if result.ok:
            return result
        wanted = {(c.register, c.field) for c in result.conflicts}
        more = {f for f in VCPU_FEATURES
                if f not in off and all(m.can_switch_off(f) for m in switched)
                and wanted & o_switched_fields(switched, f)}
        if not more:
            return result
        off |= more


def o_largest(models, rules, labels=None):
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    seen = {}
    for i, m in enumerate(models):
        seen.setdefault((tuple(sorted(m.values.items())), tuple(sorted(m.writable.items())),
                         m.imp_id_writable, m.platform), []).append(i)
    groups = list(seen.values())

    def attempt(chosen):
        idx = sorted(i for g in chosen for i in g)
        return Pool(idx, o_baseline([models[i] for i in idx], rules, [labels[i] for i in idx]))

    if len(groups) <= 12:
        sets = sorted(((sum(len(groups[g]) for g in combo), combo)
                       for r in range(len(groups), 0, -1)
                       for combo in itertools.combinations(range(len(groups)), r)),
                      key=lambda s: (-s[0], s[1]))
        for _, combo in sets:
            pool = attempt([groups[g] for g in combo])
            if pool.result.ok:
                return pool
        raise AssertionError("no pool")
    chosen = list(groups)
    while True:
        pool = attempt(chosen)
        if pool.result.ok or len(chosen) == 1:
            return pool
        blamed = {}
        for c in pool.result.conflicts:
            for n, g in enumerate(chosen):
                if labels[g[0]] in " ".join(c.values):
                    blamed[n] = blamed.get(n, 0) + 1
        chosen.pop(max(range(len(chosen)), key=lambda n: (blamed.get(n, 0), -len(chosen[n]))))


def o_pools(models, rules, labels=None):
    labels = list(labels or ["+".join(m.hosts) or f"#{i}" for i, m in enumerate(models)])
    remaining, out = list(range(len(models))), []
    while remaining:
        pool = o_largest([models[i] for i in remaining], rules, [labels[i] for i in remaining])
        taken = [remaining[i] for i in pool.indices]
        out.append(Pool(taken, pool.result))
        remaining = [i for i in remaining if i not in set(taken)]
    return out


def o_exempt(sources, labels):
    out = {}
    for rule in RULES.enforced:
        broken = [label for s, label in zip(sources, labels) if rule.violated(s.values)]
        if broken:
            out[rule.id] = broken
    return out


# -- what is compared: everything, in order ----------------------------------------

def snap_model(m):
    if m is None:
        return None
    return (list(m.values.items()), list(m.writable.items()), m.imp_id_writable, m.hosts,
            m.implementations, m.name, m.vcpu_off,
            [(f, list(e.items())) for f, e in m.vcpu_effects.items()],
            list(m.firmware.items()), m.reg_list, m.platform)


def snap(r: BaselineResult):
    c = r.consistency
    return (snap_model(r.model),
            [(x.register, x.field, list(x.values.items()), x.reason, x.decimal, str(x))
             for x in r.conflicts],
            None if c is None else (snap_model(c.model), c.lowered,
                                    [(u.rule.id, u.reason) for u in c.unresolved],
                                    list(c.exempt.items())))


def snap_pools(ps):
    return [(p.indices, snap(p.result)) for p in ps]


# -- fleets: fixtures, their copies (shared dicts or equal ones), variants -------

def copy(m: CpuModel, label: str, shared: bool) -> CpuModel:
    """Another input of the same content: read from the same profile (the
    dicts shared), or from another file of the same content (equal dicts)."""
    if shared:
        return dataclasses.replace(m, hosts=(label,))
    return CpuModel(dict(m.values), dict(m.writable), m.imp_id_writable, (label,),
                    m.implementations, vcpu_off=m.vcpu_off,
                    vcpu_effects={f: dict(e) for f, e in m.vcpu_effects.items()},
                    firmware=dict(m.firmware), reg_list=m.reg_list, platform=m.platform)


def lacking(m: CpuModel, label: str, reg: str) -> CpuModel:
    """The model without one register (an older profile's)."""
    return CpuModel({k: v for k, v in m.values.items() if k != reg},
                    {k: v for k, v in m.writable.items() if k != reg}, m.imp_id_writable,
                    (label,), m.implementations, vcpu_effects=m.vcpu_effects,
                    firmware=m.firmware, reg_list=m.reg_list, platform=m.platform)


def lowered(base: CpuModel, seed: int, label: str) -> CpuModel:
    """Another host of the same CPU that lowers a few writable lower-safe
    fields (as the bench's all-distinct fleet): it still has a baseline
    with the others, which the repair may then lower further."""
    rnd = random.Random(seed)
    values = dict(base.values)
    for name in values:
        reg = KB.register(name)
        for f in reg.fields:
            if (reg.kind == "feature-id" and covers(base.writable[name], f) and not f.signed
                    and f.effective_policy == LOWER_SAFE and f.kvm_min is None
                    and f.name not in ("EL0", "EL1", "EL2", "EL3") and rnd.random() < 0.1):
                values[name] = f.put(values[name], rnd.randrange(f.get(values[name]) + 1))
    return dataclasses.replace(base, values=values, hosts=(label,), name="")


def fleet(rnd: random.Random, kinds: int, size: int, variants: float = 0.3,
          bases: list[str] | None = None) -> tuple[list[CpuModel], list[str]]:
    chosen = rnd.sample(bases or NAMES, kinds)
    models: list[CpuModel] = []
    for i in range(size):
        base = MODELS[rnd.choice(chosen)]
        label = f"h{i:03d}"
        roll = rnd.random()
        if roll < variants / 2:
            m = variant(base, rnd.randrange(4), label)      # few seeds: repeats too
            m = dataclasses.replace(m, vcpu_effects=base.vcpu_effects, firmware=base.firmware,
                                    reg_list=base.reg_list, platform=base.platform)
        elif roll < variants:
            m = lowered(base, rnd.randrange(6), label)
        elif roll < variants + 0.05:
            m = lacking(base, label, rnd.choice(sorted(base.values)))
        elif roll < variants + 0.1 and base.vcpu_effects:
            m = base.switched_off({rnd.choice(sorted(base.vcpu_effects))})
            m = dataclasses.replace(m, hosts=(label,))
        else:
            m = copy(base, label, shared=rnd.random() < 0.6)
        models.append(m)
    labels = [m.hosts[0] for m in models]
    if rnd.random() < 0.3:          # labels repeated, as a caller may give them
        labels = [lb[:3] for lb in labels]
    return models, labels


@pytest.mark.parametrize("seed", range(60))
def test_baseline_is_the_per_input_one(seed):
    rnd = random.Random(seed)
    models, labels = fleet(rnd, rnd.randint(1, 4), rnd.randint(1, 12))
    rules = RULES if seed % 4 else None
    assert snap(baseline(models, KB, rules, labels)) == snap(o_baseline(models, rules, labels))


@pytest.mark.parametrize("name", NAMES)
def test_each_fixture_with_its_variants(name):
    """One CPU, hosts that each lower some fields: every register has a few
    values, whole models are all distinct (the bench's all-distinct fleet),
    with a baseline the repair lowers; and with fields made unwritable too
    (conflicts naming hosts)."""
    base = MODELS[name]
    models = [base] + [lowered(base, s, f"v{s}") for s in range(16)]
    result = baseline(models, KB, RULES)
    assert result.ok and snap(result) == snap(o_baseline(models, RULES))
    models += [dataclasses.replace(variant(base, s, f"w{s}"), vcpu_effects=base.vcpu_effects,
                                   firmware=base.firmware, reg_list=base.reg_list,
                                   platform=base.platform) for s in range(4)]
    assert snap(baseline(models, KB, RULES)) == snap(o_baseline(models, RULES))


def test_a_repair_that_lowers_and_gives_up():
    """Lowerings, and rules left unresolved whose reasons name hosts alike."""
    a, b = MODELS["max-lpa2-off-qemu10.0-linux7.3"], MODELS["max-qemu10.0-linux7.3"]
    models = [a, b] + [lowered(b, s, f"v{s}") for s in range(6)] + [copy(a, "a2", False)]
    result = baseline(models, KB, RULES)
    assert result.ok and result.consistency.lowered and result.consistency.unresolved
    assert "(+1 alike)" in result.consistency.unresolved[0].reason
    assert snap(result) == snap(o_baseline(models, RULES))


@pytest.mark.parametrize("pair", list(itertools.combinations(NAMES, 2))[::3])
def test_pairs_of_fixtures(pair):
    """Conflicts (labels and their order), vCPU features switched off."""
    a, b = (MODELS[n] for n in pair)
    models = [a, copy(b, "b1", False), copy(a, "a2", True), copy(b, "b2", True)]
    assert snap(baseline(models, KB, RULES)) == snap(o_baseline(models, RULES))


@pytest.mark.parametrize("seed", range(12))
def test_largest_compatible_and_pools_are_the_per_input_ones(seed):
    rnd = random.Random(1000 + seed)
    models, labels = fleet(rnd, rnd.randint(2, 5), rnd.randint(2, 9), variants=0.15)
    rules = RULES if seed % 3 else None
    assert snap_pools([largest_compatible(models, KB, rules, labels)]) == \
        snap_pools([o_largest(models, rules, labels)])
    assert snap_pools(pools(models, KB, rules, labels)) == snap_pools(o_pools(models, rules, labels))


def test_largest_compatible_greedy_above_twelve_kinds():
    rnd = random.Random(7)
    models, labels = fleet(rnd, 14, 16, variants=0.0)
    models += [MODELS[n] for n in NAMES[:14]]
    labels += NAMES[:14]
    assert snap_pools([largest_compatible(models, KB, None, labels)]) == \
        snap_pools([o_largest(models, None, labels)])


def test_pools_greedy_above_twelve_kinds_with_the_rules():
    """Pools over more kinds than the exact search takes, completed with the
    rules: each set of kinds tried is a part of one fleet (its registers of
    one value combined once for all), most pools are of one kind (its rules
    judged on its own values)."""
    models = [MODELS[n] for n in NAMES[:13]]
    models += [copy(models[i], f"copy{i}", i % 2 == 0) for i in (0, 5, 9)]
    labels = NAMES[:13] + ["copy0", "copy5", "copy9"]
    got = pools(models, KB, RULES, labels)
    assert len(got) > 3
    # (the per-input oracle's exact search over the rest takes minutes: each
    # pool is checked as the largest of what remains, and its model as the
    # plain baseline of its hosts)
    remaining = list(range(len(models)))
    for p in got:
        first = largest_compatible([models[i] for i in remaining], KB, RULES,
                                   [labels[i] for i in remaining])
        assert p.indices == [remaining[i] for i in first.indices]
        assert snap(p.result) == snap(baseline([models[i] for i in p.indices], KB, RULES,
                                               [labels[i] for i in p.indices]))
        remaining = [i for i in remaining if i not in set(p.indices)]
    assert not remaining


def test_firmware_register_lists_and_platforms_combine():
    """What is combined beside the registers, over distinct models."""
    a, b = MODELS["neoverse-n1-qemu7.2-linux6.12"], MODELS["neoverse-n1-qemu7.2-linux7.3"]
    c = dataclasses.replace(lowered(b, 1, "c"), firmware={**b.firmware, "STD_BMAP": 0})
    d = dataclasses.replace(lowered(a, 2, "d"),
                            platform=dataclasses.replace(a.platform, pmu_counters=2))
    models = [a, copy(b, "b", False), c, d, copy(c, "c2", False), lowered(a, 3, "e")]
    result = baseline(models, KB, RULES)
    assert result.ok and result.model.firmware["STD_BMAP"] == 0
    assert snap(result) == snap(o_baseline(models, RULES))
    for other in (dataclasses.replace(d, firmware={}, hosts=("f",)),
                  dataclasses.replace(d, reg_list=None, hosts=("g",)),
                  dataclasses.replace(d, reg_list=frozenset(list(a.reg_list)[:-3]), hosts=("h",)),
                  dataclasses.replace(d, platform=dataclasses.replace(a.platform, cntfrq=10**9),
                                      hosts=("i",))):
        assert snap(baseline(models + [other], KB, RULES)) == \
            snap(o_baseline(models + [other], RULES))


def test_stuck_inputs_are_named_each_in_order():
    """A feature some input cannot switch off: each such input by its own label."""
    base = MODELS["max-qemu10.0-linux6.12"]
    off = dataclasses.replace(base.switched_off({"sve"}), hosts=("off",))
    unknown = [dataclasses.replace(base, vcpu_effects={}, hosts=(f"u{i}",)) for i in range(3)]
    models = [unknown[0], off, copy(unknown[1], "u1", True), unknown[2], base]
    assert snap(baseline(models, KB, RULES)) == snap(o_baseline(models, RULES))
    assert not baseline(models, KB, RULES).ok


@pytest.mark.parametrize("seed", range(20))
def test_exempt_rules_is_the_per_source_one(seed):
    rnd = random.Random(seed)
    models, labels = fleet(rnd, rnd.randint(1, 6), rnd.randint(1, 15), variants=0.5)
    assert list(exempt_rules(models, RULES, labels).items()) == \
        list(o_exempt(models, labels).items())


@pytest.mark.parametrize("seed", range(10))
def test_blockers_are_the_per_source_ones(seed):
    """Why a rule cannot be repaired, host by host (the plain reading)."""
    rnd = random.Random(seed)
    models, labels = fleet(rnd, rnd.randint(1, 4), rnd.randint(1, 8), variants=0.5)
    cols = Columns.of(models)
    accepts = consistency._acceptance(cols)
    values = dict(models[0].values)
    for rule in rnd.sample(RULES.enforced, 40):
        want = []
        for reg, name in sorted(rule.fields()):
            register = KB.register(reg)
            for f in (register.fields if name == "*" else (register.field(name),)):
                cur = f.get(values.get(reg, 0))
                lower = [v for v in range(f.max_value + 1) if f.order(v) < f.order(cur)]
                if not lower:
                    continue
                stuck = [lb for s, lb in zip(models, labels)
                         if not covers(s.writable.get(reg, 0), f)]
                if stuck:
                    want.append(f"{f} is not writable on {', '.join(stuck)}")
                elif not any(all(source_accepts(s.values, s.writable, reg, f, v) for s in models)
                             for v in lower):
                    want.append(f"KVM keeps {f} at {cur} ({f.effective_policy})")
        text = ("; ".join(want[:4]) + (f"; and {len(want) - 4} more" if len(want) > 4 else "")
                if want else "only raising a field would make it hold")
        assert consistency._blockers(rule, values, KB, cols, labels, accepts) == text
        for reg, name in rule.fields():
            if name == "*":
                continue
            f = KB.register(reg).field(name)
            for v in range(min(f.max_value + 1, 16)):
                assert accepts(reg, f, v) == all(
                    source_accepts(s.values, s.writable, reg, f, v) for s in models)


def test_columns_of_sources_lacking_registers():
    a = MODELS["neoverse-n1-qemu7.2-linux6.12"]
    b = lacking(a, "b", "ID_AA64ISAR0_EL1")
    cols = Columns.of([a, b])
    assert list(cols.value("ID_AA64ISAR0_EL1")) == [a.values["ID_AA64ISAR0_EL1"], 0]
    assert list(cols.value("NO_SUCH_REG")) == [0, 0]
    assert cols.pairs("ID_AA64ISAR0_EL1") == {(a.values["ID_AA64ISAR0_EL1"],
                                               a.writable["ID_AA64ISAR0_EL1"]), (0, 0)}
