"""Resolve a domain's <cpu> against a host: register values and SYSREG properties.

Pure: takes the domain's CPU (:class:`~libvirt_arm_cpu.domain.DomainCpu`),
a host profile and the data, returns a :class:`Resolution` or raises
:class:`CpuMismatch` naming every responsible feature or field.

* ``mode='custom'``: ``<model>`` names a saved CPU model (a cpu-baseline
  result); ``mode='host-model'``: the host's own CPU.
* ``<feature>`` names are hwcaps (``sve2``), ``FEAT_*`` names, or
  ``SYSREG_<REG>_<FIELD>`` with a ``value``.  Policies follow libvirt:
  ``require`` and ``force`` give the guest the feature (an error if the
  host lacks it), ``optional`` gives it if the host has it and removes it
  otherwise, ``disable`` removes it, ``forbid`` removes it and is an error
  if the host has it.  Removing lowers the fields the feature reads.
* Then the model is made consistent with the dependency rules (lowering
  only); a required feature that this removes is an error.
* The result must run on the host (:func:`~libvirt_arm_cpu.compare.compare`,
  including "does this QEMU take SYSREG properties" when anything must
  change); the properties are the fields whose value differs from the
  host's, which is what ``-cpu host,...`` needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .compare import INCOMPATIBLE, Comparison, Reason, compare
from .consistency import Lowering, Unresolved, make_consistent
from .cpumodel import CpuModel
from .dependencies import RuleBook
from .domain import CpuFeature, DomainCpu, qemu_cpu_argument
from .errors import DataError, UsageError
from .features import Feature, FeatureCatalog, FeatureRef, FieldCondition, Group
from .profile import HostProfile
from .registers import KnowledgeBase

__all__ = ["Resolution", "CpuMismatch", "resolve", "properties_for", "HOST_MODEL",
           "Validation", "validate"]

HOST_MODEL = "host-model"


class CpuMismatch(DataError):
    """The domain's CPU cannot run on this host; ``reasons`` says why, field by field."""

    def __init__(self, message: str, reasons: list[Reason] | None = None) -> None:
        self.reasons = list(reasons or [])
        super().__init__(message)


@dataclass
class Resolution:
    model: str                                  # the CPU model's name
    values: dict[str, int]                      # the guest's ID registers
    properties: list[tuple[str, int]]           # SYSREG_* for this host's QEMU
    comparison: Comparison                      # against this host
    lowered: list[Lowering] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        return not self.properties


def properties_for(values: dict[str, int], host: HostProfile,
                   kb: KnowledgeBase) -> list[tuple[str, int]]:
    """SYSREG_<REG>_<FIELD> = value for every field where *values* differ
    from the host's (the host presents the rest itself)."""
    have = host.values()
    props = []
    for name in sorted(values, key=lambda n: (kb.register(n).encoding, n)):
        reg = kb.register(name)
        if reg.kind != "feature-id" or values[name] == have.get(name, 0):
            continue
        for f in reg.fields:
            if f.get(values[name]) != f.get(have.get(name, 0)):
                props.append((f.qemu_property, f.get(values[name])))
    return props


def resolve(cpu: DomainCpu, host: HostProfile, kb: KnowledgeBase, catalog: FeatureCatalog,
            rules: RuleBook, find_model: Callable[[str], CpuModel]) -> Resolution:
    """The guest CPU *cpu* describes, on *host*.

    :raise UsageError: a mode this does not translate, a missing model.
    :raise UnknownName: an unknown model, feature or SYSREG name (with the
        closest known one).
    :raise CpuMismatch: the CPU cannot run on this host.
    """
    host_model = CpuModel.from_profile(host, kb, host.hostname)
    if cpu.mode == "host-model":
        base, name = host_model, HOST_MODEL
    elif cpu.mode == "custom":
        if not cpu.model:
            raise UsageError("<cpu mode='custom'> has no <model>: name a saved CPU model "
                             "(libvirt-arm-cpu cpu-baseline --save)")
        base, name = find_model(cpu.model), cpu.model
    elif not cpu.mode:
        raise UsageError("the domain's <cpu> has neither a mode nor a <model>: nothing to "
                         "translate")
    else:
        raise UsageError(f"<cpu mode='{cpu.mode}'> is not translated (only custom and "
                         f"host-model are; host-passthrough and maximum are the host's CPU "
                         f"already)")
    values = {r: v for r, v in base.values.items() if kb.register(r).kind != "affinity"}
    host_values = host_model.values
    notes: list[str] = []
    wanted: list[Feature] = []
    errors: list[str] = []
    for feat in cpu.features:
        if feat.name.upper().startswith("SYSREG_"):
            _apply_sysreg(values, feat, kb)
            continue
        f = catalog.feature(feat.name)
        if f.condition is None:
            raise UsageError(f"feature {feat.name}: {f.requires()}")
        on_host = f.holds(host_values, catalog) is True
        if feat.policy in ("require", "force"):
            if not on_host:
                errors.append(f"feature {f.key} ({f.requires()}): policy '{feat.policy}', "
                              f"but the host CPU does not have it")
                continue
            _enable(values, f, host_values, catalog)
            wanted.append(f)
        elif feat.policy == "optional":
            if on_host:
                _enable(values, f, host_values, catalog)
            elif _disable(values, f, catalog, kb):
                notes.append(f"optional feature {f.key} left out: the host CPU lacks it")
        elif feat.policy == "forbid" and on_host:
            errors.append(f"feature {f.key}: policy 'forbid', but the host CPU has it")
        elif not _disable(values, f, catalog, kb):
            errors.append(f"feature {f.key} ({f.requires()}): cannot be removed by lowering "
                          f"fields")
    if errors:
        raise CpuMismatch(f"the domain's CPU cannot run on host {host.hostname}: "
                          + "; ".join(errors))
    model = CpuModel(values, dict(host_model.writable), host_model.imp_id_writable,
                     (host.hostname,), host_model.implementations)
    repair = make_consistent(model, [host_model], kb, rules, [host.hostname])
    values = repair.model.values
    for f in wanted:
        if f.holds(values, catalog) is not True:
            why = [str(low) for low in repair.lowered]
            raise CpuMismatch(f"feature {f.key} is required, but the dependency rules remove "
                              f"it: {'; '.join(why[:3])}")
    result = CpuModel(values, dict(host_model.writable), host_model.imp_id_writable,
                      (host.hostname,), host_model.implementations)
    verdict = compare(result, host, kb, check_qemu=True)
    if verdict.result == INCOMPATIBLE:
        raise CpuMismatch(f"CPU model '{name}' cannot run on host {host.hostname}: "
                          + "; ".join(map(str, verdict.reasons[:4]))
                          + (f" (and {len(verdict.reasons) - 4} more)"
                             if len(verdict.reasons) > 4 else ""), verdict.reasons)
    imp = _implementation_reasons(values, host_values)
    if imp:
        raise CpuMismatch(f"CPU model '{name}' cannot run on host {host.hostname}: {imp[0]}", imp)
    return Resolution(name, values, properties_for(values, host, kb), verdict,
                      repair.lowered, repair.unresolved, notes)


def _apply_sysreg(values: dict[str, int], feat: CpuFeature, kb: KnowledgeBase) -> None:
    prop = feat.name
    fld = kb.field_by_qemu_property(prop)
    reg = fld.register
    if feat.policy in ("disable", "forbid"):
        value = fld.max_value if fld.signed else 0
    elif feat.value is None:
        raise UsageError(f"<feature name='{prop}'> needs a value attribute (the field value, "
                         f"e.g. value='0x1')")
    else:
        try:
            value = int(feat.value, 0)
        except ValueError:
            raise UsageError(f"<feature name='{prop}' value='{feat.value}'>: not a number "
                             f"(write 0x... for hex)") from None
    values[reg] = fld.put(values.get(reg, 0), value)


def _enable(values: dict[str, int], f: Feature, host: dict[str, int],
            catalog: FeatureCatalog) -> None:
    """Give the guest *f* by taking, for each field that gives the host the
    feature, the host's value where it is higher."""
    if f.holds(values, catalog) is True:
        return
    for fld in f.satisfied_by(host, catalog):
        mine, theirs = fld.get(values.get(fld.register, 0)), fld.get(host.get(fld.register, 0))
        if fld.order(theirs) > fld.order(mine):
            values[fld.register] = fld.put(values.get(fld.register, 0), theirs)


def _disable(values: dict[str, int], f: Feature, catalog: FeatureCatalog,
             kb: KnowledgeBase) -> bool:
    """Remove *f* by lowering fields; False when lowering cannot."""
    if f.holds(values, catalog) is not True:
        return True
    moves = _falsify(f.condition, values, catalog)
    if moves is None:
        return False
    for fld, v in moves:
        values[fld.register] = fld.put(values.get(fld.register, 0), v)
    return f.holds(values, catalog) is not True


def _falsify(cond, values: dict[str, int], catalog: FeatureCatalog):
    if isinstance(cond, FeatureRef):
        return _falsify(catalog.feature(cond.name).condition, values, catalog)
    if isinstance(cond, FieldCondition):
        if cond.holds(values, catalog) is not True:
            return []
        fld = cond.field
        below = [v for v in _named(fld) if fld.order(v) < cond.lo]
        if not below:
            return None
        return [(fld, max(below, key=fld.order))]
    if isinstance(cond, Group):
        if cond.op == "any":        # every true term must go
            out = []
            for t in cond.terms:
                m = _falsify(t, values, catalog)
                if m is None:
                    return None
                out.extend(m)
            return out
        for t in cond.terms:        # all: one false term is enough
            m = _falsify(t, values, catalog)
            if m is not None:
                return m
        return None
    return None


def _named(fld) -> list[int]:
    named = {v for v, _ in fld.values}
    return sorted(named | {fld.max_value if fld.signed else 0}) if named else \
        list(range(fld.max_value + 1))


IMPLEMENTATION_REGISTERS = ("MIDR_EL1", "REVIDR_EL1", "AIDR_EL1")


def _implementation_reasons(values: dict[str, int], host: dict[str, int]) -> list[Reason]:
    """MIDR/REVIDR/AIDR that differ: KVM may allow it (capability 239),
    but QEMU's SYSREG series has no property for them yet."""
    out = []
    for reg in IMPLEMENTATION_REGISTERS:
        if reg in values and values[reg] != host.get(reg, 0):
            out.append(Reason(reg, None, "qemu", host.get(reg, 0), values[reg],
                              f"{reg}: needs {values[reg]:#x}, host has {host.get(reg, 0):#x}; "
                              f"QEMU has no property to change implementation registers"))
    return out


@dataclass
class Validation:
    """A translated domain checked against a host (the hook's question)."""

    comparison: Comparison
    properties: list[tuple[str, int]]       # what this host's QEMU must be given
    current: list[str]                      # the -cpu arguments the domain has

    @property
    def ok(self) -> bool:
        return self.comparison.result != INCOMPATIBLE

    @property
    def reasons(self) -> list[Reason]:
        return self.comparison.reasons

    @property
    def expected_argument(self) -> str | None:
        return qemu_cpu_argument(self.properties) if self.properties else None

    @property
    def needs_rewrite(self) -> bool:
        """Do the domain's QEMU arguments differ from what this host needs?"""
        expected = self.expected_argument
        return self.current != ([expected] if expected else [])


def validate(values: dict[str, int], cpu_arguments: list[str], host: HostProfile,
             kb: KnowledgeBase) -> Validation:
    """Can *host* present the guest CPU *values* (from a translated domain's
    metadata), and with which SYSREG properties?"""
    model = CpuModel(dict(values), {})
    c = compare(model, host, kb, check_qemu=True)
    imp = _implementation_reasons(values, host.values())
    if imp:
        c = Comparison(INCOMPATIBLE, c.reasons + imp, c.changes)
    props = properties_for(values, host, kb) if c.result != INCOMPATIBLE else []
    return Validation(c, props, list(cpu_arguments))
