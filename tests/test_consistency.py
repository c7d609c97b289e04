"""The dependency rules (xml/dependencies.xml) and the lowering-only repair.

Every rule gets its own test: a host that obeys it, the same host with one
field lowered so that it breaks it, and the repair.  The repair must lower
only, stay within what the host's kernel accepts, and make the rule hold,
or report it unresolved exactly when no such lowering of the rule's fields
exists (checked by brute force, independently of the repair's search).
"""

from __future__ import annotations

import itertools
import random

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.engine.consistency import make_consistent
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.kb.dependencies import Group, Not, Test
from libvirt_arm_cpu.engine.rules import source_accepts

from .test_baseline import MODELS

KB = kb_load.registers()
BOOK = kb_load.dependencies()
U64 = (1 << 64) - 1


def _tests(cond):
    if isinstance(cond, Test):
        yield cond
    elif isinstance(cond, Group):
        for t in cond.terms:
            yield from _tests(t)
    elif isinstance(cond, Not):
        yield from _tests(cond.term)


def _candidates(rule) -> dict:
    """Per field the rule reads: the values worth trying (0, 1, all ones,
    and around every constant the rule compares it with)."""
    out: dict = {}
    for t in [*_tests(rule.when), *(x for c in rule.then for x in _tests(c))]:
        fields = [t.field] if t.field else list(KB.register(t.register).fields)
        for f in fields:
            vals = out.setdefault(f, {0, 1, f.max_value})
            if t.value is not None and t.field is not None:
                vals |= {v & f.max_value for v in (t.value - 1, t.value, t.value + 1)}
        if t.ref is not None:
            out.setdefault(t.ref, {0, 1, t.ref.max_value})
    return {f: sorted(v) for f, v in out.items()}


def _put(values: dict, f, v) -> dict:
    out = dict(values)
    out[f.register] = f.put(out.get(f.register, 0), v)
    return out


def witness(rule, tries: int = 20000):
    """(host, lowered): a host that obeys *rule* and the same host with one
    field lowered that breaks it; None if none was found."""
    cands = _candidates(rule)
    fields = list(cands)
    rnd = random.Random(rule.id)
    for _ in range(tries):
        host: dict = {}
        for f in fields:
            host = _put(host, f, rnd.choice(cands[f]))
        if rule.violated(host):
            continue
        f = rnd.choice(fields)
        cur = f.get(host.get(f.register, 0))
        lower = [v for v in cands[f] if f.order(v) < f.order(cur)]
        if lower:
            broken = _put(host, f, rnd.choice(lower))
            if rule.violated(broken):
                return host, broken
    return None


def model(values: dict, label: str = "") -> CpuModel:
    return CpuModel(dict(values), {r: U64 for r in values}, hosts=(label,) if label else ())


def repairable_by_brute_force(rule, values: dict, host: dict) -> bool:
    """Is there a lowering of one or two of the rule's fields, accepted by
    the host's kernel rules, after which the rule holds?"""
    cands = _candidates(rule)
    writable = {r: U64 for r in host}
    options = []
    for f in cands:
        cur = f.get(values.get(f.register, 0))
        named = {x for x, _ in f.values} | {0, f.max_value if f.signed else 0}
        for v in range(f.max_value + 1 if f.width <= 4 else 0):
            if f.values and v not in named:
                continue        # reserved encodings are never a repair
            if f.order(v) < f.order(cur) and \
                    source_accepts(host, writable, f.register, f, v):
                options.append((f, v))
    for n in (1, 2):
        for combo in itertools.combinations(options, n):
            if n == 2 and combo[0][0] == combo[1][0]:
                continue
            trial = dict(values)
            for f, v in combo:
                trial = _put(trial, f, v)
            if not rule.violated(trial):
                return True
    return False


def test_every_rule_is_loaded_with_its_origin():
    assert len(BOOK) == 412          # feature_dependencies.json: stats.rules
    for rule in BOOK:
        assert rule.origin, rule.id
        assert rule.then, rule.id
    kinds = {r.kind for r in BOOK if not r.enforced}
    assert kinds == {"llvm-implies"}


@pytest.mark.parametrize("rule_id", [r.id for r in BOOK])
def test_rule(rule_id):
    rule = BOOK.rule(rule_id)
    found = witness(rule)
    if found is None:
        # Lowering one field cannot break it (an exclusion, an upper bound,
        # two levels of one field): then no lowering of its fields from a
        # host that obeys it may break it either, checked exhaustively on
        # the candidate values where the grid is small.
        cands = _candidates(rule)
        grid = 1
        for vals in cands.values():
            grid *= len(vals)
        assert grid <= 200_000, f"{rule_id}: no witness found, and the grid is too large"
        fields = list(cands)
        for combo in itertools.product(*cands.values()):
            host: dict = {}
            for f, v in zip(fields, combo):
                host = _put(host, f, v)
            if rule.violated(host):
                continue
            for f in fields:
                cur = f.get(host.get(f.register, 0))
                for v in cands[f]:
                    if f.order(v) < f.order(cur):
                        assert not rule.violated(_put(host, f, v)), (rule_id, host, f, v)
        return
    host, broken = found
    assert not rule.violated(host) and rule.violated(broken)
    result = make_consistent(model(broken), [model(host, "h")], KB, BOOK)
    out = result.model.values
    # lowering only, and only to values the host's kernel accepts
    for reg in set(out) | set(broken):
        for f in KB.register(reg).fields:
            new, old = f.get(out.get(reg, 0)), f.get(broken.get(reg, 0))
            if new != old:
                assert f.order(new) < f.order(old), (rule_id, str(f), old, new)
                assert source_accepts(host, {r: U64 for r in host}, reg, f, new), (rule_id, str(f))
    if not rule.enforced:       # advisory: never acted on
        assert not any(low.rule == rule_id for low in result.lowered)
        assert rule_id not in {u.rule.id for u in result.unresolved}
        return
    if rule.violated(out):
        assert rule.id in {u.rule.id for u in result.unresolved}
        assert not repairable_by_brute_force(rule, broken, host), \
            f"{rule_id}: a lowering repairs it, but the repair gave up"
    else:
        assert all(low.new is not None for low in result.lowered)
    # whatever the host obeys, the result obeys, or it says why not
    unresolved = {u.rule.id for u in result.unresolved}
    for other in BOOK.violations(out):
        assert other.id in result.exempt or other.id in unresolved, (rule_id, other.id)


def test_rules_a_host_breaks_itself_are_exempt_not_repaired():
    v1 = MODELS["neoverse-v1-qemu10.0-linux6.12"]
    own = {r.id for r in BOOK.violations(v1.values)}
    assert own                       # QEMU's neoverse-v1 breaks some AArch32 mirror rules
    result = make_consistent(v1, [v1], KB, BOOK, ["v1"])
    assert not result.lowered and not result.unresolved
    assert set(result.exempt) == own and all(v == ["v1"] for v in result.exempt.values())


def test_repair_of_a_real_host_lowering():
    """Lower, on the real max host's values and masks, each field a rule
    reads, wherever the host's kernel allows it and the rule breaks: the
    repair makes the rule hold (or says why not) with lowerings that host
    accepts."""
    host = MODELS["max-qemu10.0-linux7.3"]
    applied = 0
    for rule in BOOK.enforced:
        if BOOK.rule(rule.id).violated(host.values):
            continue
        for reg, name in sorted(rule.fields()):
            if name == "*":
                continue
            f = KB.register(reg).field(name)
            cur = f.get(host.values.get(reg, 0))
            for v in range(f.max_value + 1):
                if f.order(v) >= f.order(cur) or \
                        not source_accepts(host.values, host.writable, reg, f, v):
                    continue
                broken = _put(host.values, f, v)
                if not rule.violated(broken):
                    continue
                m = CpuModel(broken, dict(host.writable), hosts=("user",))
                result = make_consistent(m, [host], KB, BOOK, ["max"])
                assert not rule.violated(result.model.values) or \
                    rule.id in {u.rule.id for u in result.unresolved}
                for low in result.lowered:
                    lf = KB.register(low.register).field(low.field)
                    assert source_accepts(host.values, host.writable, low.register, lf, low.new)
                applied += 1
    assert applied > 0


def test_feature_conditions_in_the_rules_terms_mean_the_same():
    """translate removes a feature with the repair's falsifier, through
    feature_condition: for every feature and every bundled host, with one
    field at a time set to each of its values, the rule form holds exactly
    when the feature does."""
    from libvirt_arm_cpu.engine.consistency import feature_condition
    catalog = kb_load.features()
    rnd = random.Random(7)
    checked = 0
    for model in MODELS.values():
        for f in catalog.features:
            if f.condition is None:
                continue
            cond = feature_condition(f.condition, catalog)
            fields = sorted({(x.register, x.name) for x in f.fields(catalog)})
            for reg, name in fields:
                fld = KB.field(reg, name)
                for v in rnd.sample(range(fld.max_value + 1), min(4, fld.max_value + 1)):
                    values = dict(model.values)
                    values[reg] = fld.put(values.get(reg, 0), v)
                    assert cond.holds(values) == (f.holds(values, catalog) is True), (f.name, reg, name, v)
                    checked += 1
    assert checked > 1000


def test_falsify_removes_a_feature_by_lowering_only():
    from libvirt_arm_cpu.engine.consistency import falsify, feature_condition
    catalog = kb_load.features()
    values = dict(MODELS["neoverse-n1-qemu7.2-linux6.12"].values)
    dotprod = catalog.feature("asimddp")
    assert dotprod.holds(values, catalog) is True
    moves = falsify(feature_condition(dotprod.condition, catalog), values, KB)
    assert moves and all(KB.field(r, n).order(v) < KB.field(r, n).order(KB.field(r, n).get(values[r]))
                         for (r, n), v in moves[0].items())
    for (r, n), v in moves[0].items():
        values[r] = KB.field(r, n).put(values[r], v)
    assert dotprod.holds(values, catalog) is False


@pytest.mark.parametrize("name", sorted(MODELS))
def test_one_source_is_exempt_from_the_rules_it_breaks_itself(name):
    """One kind of source (a pool of identical hosts) is judged rule by rule
    on its values; the same source twice goes the general way (the values
    each rule reads, combination by combination): the same rules, each
    naming every source."""
    from libvirt_arm_cpu.engine.consistency import Columns, exempt_rules
    book = kb_load.dependencies()
    m = MODELS[name]
    one = exempt_rules([m], book, ["a"])
    two = exempt_rules([m, m], book, ["a", "b"], Columns.of([m, m]))
    assert one == {rule: ["a"] for rule in two}
    assert all(v == ["a", "b"] for v in two.values())
    broken = {r.id for r in book.enforced if r.violated(m.values)}
    assert set(one) == broken
