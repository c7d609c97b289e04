"""Resolve a domain's <cpu> against a host: register values and SYSREG properties.

Pure: takes the domain's CPU (:class:`~libvirt_arm_cpu.formats.domain.DomainCpu`),
a host profile and the data, returns a :class:`Resolution` or raises
:class:`CpuMismatch` naming every responsible feature or field.

* ``mode='custom'``: ``<model>`` names a saved CPU model (a cpu-baseline
  result); ``mode='host-model'``: the host's own CPU.
* ``<feature>`` names are hwcaps (``sve2``), ``FEAT_*`` names, or
  ``SYSREG_<REG>_<FIELD>`` with a ``value``; QEMU's legacy properties
  ``sve``, ``pauth`` and ``pmu`` (disabled: the vCPU feature is switched
  off), ``sveNNN`` (the SVE vector lengths) and ``mte`` mean what QEMU
  means by them.  Policies follow libvirt:
  ``require`` and ``force`` give the guest the feature (an error if the
  host lacks it), ``optional`` gives it if the host has it and removes it
  otherwise, ``disable`` removes it, ``forbid`` removes it and is an error
  if the host has it.  Removing lowers the fields the feature reads.
* Then the model is made consistent with the dependency rules (lowering
  only); a required feature that this removes is an error.
* The result must run on the host (:func:`~libvirt_arm_cpu.engine.compare.compare`,
  including "can this host's QEMU be told to change ID registers" when
  anything must change).
* The method (:func:`choose_method`): ``sysreg`` where the host's QEMU takes
  SYSREG_* properties (the fields whose value differs from the host's, which
  is what ``-cpu host,...`` needs), else ``loader`` where the loader is
  installed (every register the host knows, as the loader's environment:
  :func:`libvirt_arm_cpu.engine.loader.environment`), else ``none`` (a CPU equal to
  the host's: plain host-passthrough).  MIDR/REVIDR/AIDR may differ from the
  host's only with the loader (it enables KVM capability 239 where the
  kernel has it); QEMU's SYSREG series has no property for them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from libvirt_arm_cpu.engine.compare import IDENTICAL, INCOMPATIBLE, Comparison, compare, on_host
from libvirt_arm_cpu.engine.consistency import (Lowering, Unresolved, falsify, feature_condition,
                                                make_consistent)
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.kb.dependencies import RuleBook
from libvirt_arm_cpu.model import METHOD_LOADER, METHOD_SYSREG, CpuFeature, DomainCpu, qemu_cpu_argument
from libvirt_arm_cpu.errors import UsageError
from libvirt_arm_cpu.kb.features import Feature, FeatureCatalog
from libvirt_arm_cpu.model import HostProfile, Platform, sve_length_feature
from libvirt_arm_cpu.engine.validate import (CpuMismatch, choose_method, firmware_changes,
                                             implementation_reasons, loader_environment,
                                             properties_for)
from libvirt_arm_cpu.kb.registers import KnowledgeBase

__all__ = ["Resolution", "resolve", "HOST_MODEL"]

HOST_MODEL = "host-model"


@dataclass
class Resolution:
    """What translate resolved a domain's <cpu> to on one host."""

    model: str                                  # the CPU model's name
    values: dict[str, int]                      # the guest's ID registers
    properties: list[tuple[str, int]]           # SYSREG_* for this host's QEMU (sysreg)
    comparison: Comparison                      # against this host
    lowered: list[Lowering] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    method: str = METHOD_SYSREG                 # sysreg | loader | none
    env: dict[str, str] = field(default_factory=dict)   # the loader's variables (loader)
    vcpu_off: tuple[str, ...] = ()              # vCPU features switched off
    firmware: dict[str, int | None] = field(default_factory=dict)   # the model's (loader)
    reg_list: frozenset[int] | None = None      # the model's register list (loader)
    platform: Platform = field(default_factory=Platform)    # the model's, beyond ID registers

    @property
    def identical(self) -> bool:
        """Does the host present this CPU without being told anything?"""
        return self.comparison.result == IDENTICAL

    @property
    def qemu_cpu(self) -> str | None:
        """The SYSREG method's second -cpu value (None: no second -cpu)."""
        if self.method != METHOD_SYSREG or not self.properties:
            return None
        return qemu_cpu_argument(self.properties, self.vcpu_off, self.platform.sve_vls)


def resolve(cpu: DomainCpu, host: HostProfile, kb: KnowledgeBase, catalog: FeatureCatalog,
            rules: RuleBook, find_model: Callable[[str], CpuModel],
            method: str = "auto") -> Resolution:
    """The guest CPU *cpu* describes, on *host*, with *method* (auto, sysreg
    or loader: see :func:`choose_method`).

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
        base, name = on_host(find_model(cpu.model), host, kb), cpu.model
        if not base.platform.known():
            # a model that does not fix what a guest has beyond its ID
            # registers (a named model, or one saved before those were
            # recorded) gives it this host's: the translation records them,
            # so the hook judges them where the guest starts or migrates
            base = replace(base, platform=host.platform.without(base.vcpu_off))
    elif not cpu.mode:
        raise UsageError("the domain's <cpu> has neither a mode nor a <model>: nothing to "
                         "translate")
    else:
        raise UsageError(f"<cpu mode='{cpu.mode}'> is not translated (only custom and "
                         f"host-model are; host-passthrough and maximum are the host's CPU "
                         f"already)")
    base, plat, legacy_notes = _legacy_properties(cpu.features, base, name, host)
    values = {r: v for r, v in base.values.items() if kb.register(r).kind != "affinity"}
    fw = dict(base.firmware)
    reg_list = base.reg_list
    off = tuple(sorted(base.vcpu_off))
    if off:
        # the host as a guest with those vCPU features off sees it
        host_model = CpuModel.from_profile(host, kb, host.hostname, off=off)
    have = host_model.values
    notes: list[str] = list(legacy_notes)
    wanted: list[Feature] = []
    errors: list[str] = []
    for feat in cpu.features:
        if is_legacy_property(feat.name):
            continue
        if feat.name.upper().startswith("SYSREG_"):
            _apply_sysreg(values, feat, kb)
            continue
        f = catalog.feature(feat.name)
        if f.condition is None:
            raise UsageError(f"feature {feat.name}: {f.requires()}")
        host_has = f.holds(have, catalog) is True
        if feat.policy in ("require", "force"):
            if not host_has:
                errors.append(f"feature {f.key} ({f.requires()}): policy '{feat.policy}', "
                              f"but the host CPU does not have it")
                continue
            _enable(values, f, have, catalog)
            wanted.append(f)
        elif feat.policy == "optional":
            if host_has:
                _enable(values, f, have, catalog)
            elif _disable(values, f, catalog, kb):
                notes.append(f"optional feature {f.key} left out: the host CPU lacks it")
        elif feat.policy == "forbid" and host_has:
            errors.append(f"feature {f.key}: policy 'forbid', but the host CPU has it")
        elif not _disable(values, f, catalog, kb):
            errors.append(f"feature {f.key} ({f.requires()}): cannot be removed by lowering "
                          f"fields")
    if errors:
        raise CpuMismatch(f"the domain's CPU cannot run on host {host.hostname}: "
                          + "; ".join(errors))
    model = _model(values, host_model, host, off, fw, plat)
    repair = make_consistent(model, [host_model], kb, rules, [host.hostname])
    # A rule the model obeyed and the domain's own <feature> policies broke,
    # which lowering cannot repair here: the guest would see a CPU no Arm
    # core is (FEAT_VHE without FEAT_LSE, say).  The domain asked for it:
    # refuse, naming the rule (a model's own unresolved rules, from its
    # baseline, stay warnings).
    caused = [u for u in repair.unresolved if not u.rule.violated(base.values)]
    if caused:
        raise CpuMismatch(
            f"the domain's <feature> policies break a dependency rule that CPU model '{name}' "
            f"obeys, and lowering fields on host {host.hostname} cannot repair it: "
            + "; ".join(str(u) for u in caused[:3])
            + " (disable the features that depend on it too, or keep it)")
    values = repair.model.values
    for f in wanted:
        if f.holds(values, catalog) is not True:
            why = [str(low) for low in repair.lowered]
            raise CpuMismatch(f"feature {f.key} is required, but the dependency rules remove "
                              f"it: {'; '.join(why[:3])}")
    result = _model(values, host_model, host, off, fw, plat)
    verdict = compare(result, host, kb, check_qemu=True)
    if verdict.result == INCOMPATIBLE:
        raise CpuMismatch(f"CPU model '{name}' cannot run on host {host.hostname}: "
                          + "; ".join(map(str, verdict.reasons[:4]))
                          + (f" (and {len(verdict.reasons) - 4} more)"
                             if len(verdict.reasons) > 4 else ""), verdict.reasons)
    imp = implementation_reasons(values, have, kb)
    fw_changes = firmware_changes(fw, host)
    chosen = choose_method(host, method, verdict.result != IDENTICAL,
                           implementation=bool(imp) or fw_changes)
    if chosen == METHOD_SYSREG:
        if imp:
            raise CpuMismatch(f"CPU model '{name}' cannot run on host {host.hostname}: "
                              f"{imp[0]}", imp)
        if fw_changes:
            raise CpuMismatch(f"CPU model '{name}' sets firmware pseudo-registers "
                              f"({', '.join(sorted(fw))}), which only the loader can give a "
                              f"guest (use --method loader)")
    props = properties_for(values, host, kb, off) if chosen == METHOD_SYSREG else []
    env = loader_environment(values, host, kb, fw, reg_list, off) \
        if chosen == METHOD_LOADER else {}
    return Resolution(name, values, props, verdict, repair.lowered, repair.unresolved, notes,
                      chosen, env, off, fw, reg_list, plat)


def _model(values: dict[str, int], host_model: CpuModel, host: HostProfile,
           off: tuple[str, ...], fw: dict[str, int | None] | None = None,
           platform: Platform | None = None) -> CpuModel:
    """The guest CPU as a model of this host (its masks), with the vCPU
    features *off* switched off where the model type knows them."""
    m = CpuModel(values, dict(host_model.writable), host_model.imp_id_writable,
                 (host.hostname,), host_model.implementations, firmware=dict(fw or {}),
                 platform=platform or Platform())
    return replace(m, vcpu_off=off) if off else m


# QEMU's -cpu properties for what is not an ID register field, which libvirt
# passes on as <feature> names (QEMU docs/system/arm/cpu-features.rst; libvirt
# src/cpu_map/arm_features.xml: sve, sveNNN, pauth): each switches a vCPU
# feature (KVM_ARM_VCPU_INIT) or limits the SVE vector lengths, so they are
# given that meaning, not lowered as fields (KVM refuses writes to SVE,
# PAuth and PMUVer).  mte: the guest may have MTE (the VM capability).
_VCPU_PROPERTY = {"sve": "sve", "pauth": "ptrauth", "pmu": "pmu"}
def is_legacy_property(name: str) -> bool:
    return name in _VCPU_PROPERTY or name == "mte" or sve_length_feature(name) is not None


def _legacy_properties(features: list[CpuFeature], base: CpuModel, name: str,
                       host: HostProfile) -> tuple[CpuModel, Platform, list[str]]:
    """*base* with the domain's legacy properties applied: the vCPU features
    ``disable``/``forbid`` switch off, the SVE lengths ``sveNNN`` allow, MTE.

    :raise CpuMismatch: a property the model or host cannot honour.
    """
    notes: list[str] = []
    errors: list[str] = []
    legacy = [f for f in features if is_legacy_property(f.name)]
    off: set[str] = set()
    for f in legacy:
        feature = _VCPU_PROPERTY.get(f.name)
        if feature is None:
            continue
        offered = feature in host.vcpu_features and feature not in base.vcpu_off
        if f.policy in ("disable", "forbid"):
            if f.policy == "forbid" and offered:
                errors.append(f"feature {f.name}: policy 'forbid', but the host CPU has it")
            off.add(feature)
        elif f.policy == "optional" and not offered:
            # the guest has it where the host offers it, as libvirt's optional
            if feature not in base.vcpu_off:
                notes.append(f"optional feature {f.name} left out: the host CPU lacks it")
        elif f.policy in ("require", "force") and not offered:
            where = (f"CPU model '{name}' runs with it off" if feature in base.vcpu_off else
                     f"host {host.hostname}'s KVM does not offer it")
            errors.append(f"feature {f.name}: policy '{f.policy}', but {where}")
    new = off - set(base.vcpu_off)
    unknown = sorted(f for f in new if not base.can_switch_off(f))
    if unknown:
        errors.append(f"feature {unknown[0]}: switching it off is not recorded for CPU model "
                      f"'{name}' (its profiles come from an older probe: probe them again)")
    elif new:
        base = base.switched_off(new)
    plat = base.platform
    lengths = [f for f in legacy if sve_length_feature(f.name) is not None]
    if lengths and "sve" in base.vcpu_off:
        errors.append(f"feature {lengths[0].name}: the guest runs without SVE (its model or "
                      f"<feature policy='disable' name='sve'/>)")
    elif lengths and plat.sve_vls is None:
        errors.append(f"feature {lengths[0].name}: the SVE vector lengths of CPU model "
                      f"'{name}' are not recorded (its profiles come from an older probe)")
    elif lengths:
        vls = set(plat.sve_vls or ())
        # every disable first: a required length they remove is an error
        for f in sorted(lengths, key=lambda f: f.policy not in ("disable", "forbid")):
            n = sve_length_feature(f.name) or 0
            if f.policy in ("disable", "forbid"):
                # KVM takes only a prefix of the host's lengths: no longer one
                vls = {v for v in vls if v < n}
            elif f.policy in ("require", "force"):
                if n not in vls:
                    errors.append(f"feature {f.name}: the guest's SVE vector lengths "
                                  f"({', '.join(map(str, sorted(vls))) or 'none'} bits) do not "
                                  f"include {n}")
                vls = {v for v in vls if v <= n}
        if not vls and not errors:
            errors.append("the <feature> sveNNN policies leave the guest no SVE vector "
                          "length (disable 'sve' instead)")
        plat = replace(plat, sve_vls=frozenset(vls))
        if plat.sve_vls != base.platform.sve_vls:
            notes.append(f"SVE vector lengths up to {plat.sve_max} bits "
                         f"(<feature> sveNNN policies)")
    for f in legacy:
        if f.name != "mte":
            continue
        if f.policy == "forbid" and plat.mte:
            errors.append("feature mte: policy 'forbid', but the host CPU has it")
        elif f.policy in ("disable", "forbid"):
            plat = replace(plat, mte=False)
        elif f.policy == "optional" and not plat.mte:
            plat = replace(plat, mte=False)
            notes.append("optional feature mte left out: the host CPU lacks it")
        elif f.policy in ("require", "force") and plat.mte is not True:
            errors.append(f"feature mte: policy '{f.policy}', but "
                          + (f"its support is not recorded for CPU model '{name}'"
                             if plat.mte is None else "the host CPU does not have it (KVM "
                             "offers MTE to no guest of the model's hosts)"))
    if errors:
        raise CpuMismatch(f"the domain's CPU cannot run on host {host.hostname}: "
                          + "; ".join(errors))
    return base, plat, notes


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
    """Remove *f* by lowering fields; False when lowering cannot.  The
    feature's condition is falsified by the dependency repair's own
    falsifier (one way to lower fields until a condition fails)."""
    if f.holds(values, catalog) is not True or f.condition is None:
        return f.condition is not None
    moves = falsify(feature_condition(f.condition, catalog), values, kb)
    if not moves:
        return False
    for (reg, name), v in moves[0].items():
        fld = kb.field(reg, name)
        values[reg] = fld.put(values.get(reg, 0), v)
    return f.holds(values, catalog) is not True


