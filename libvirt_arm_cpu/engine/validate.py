"""Check a translated domain's CPU against a host, and choose the method.

Pure, like :mod:`.translate` (which uses it): given the guest's register
values (a translated domain's metadata), the QEMU input the domain carries
now and a host profile, :func:`validate` says whether the host can present
that CPU, with which method (:func:`choose_method`: ``sysreg``, ``loader``
or ``none``), and with which QEMU input (:func:`properties_for`,
:func:`loader_environment`).  This is the libvirt hook's question on every
domain start, so it needs no feature catalog or dependency rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from libvirt_arm_cpu.engine.platform import NAMES as PLATFORM_NAMES
from libvirt_arm_cpu.engine.compare import IDENTICAL, INCOMPATIBLE, Comparison, Reason, compare
from libvirt_arm_cpu.engine.loader import LOADER_PATH, hidden_registers
from libvirt_arm_cpu.engine.loader import environment as loader_env
from libvirt_arm_cpu.errors import DataError, UsageError
from libvirt_arm_cpu.kb.registers import KnowledgeBase
from libvirt_arm_cpu.model import (METHOD_LOADER, METHOD_NONE, METHOD_SYSREG, CpuModel, HostProfile,
                                   Platform, Translation, qemu_cpu_argument)

__all__ = ["CpuMismatch", "METHOD_CHOICES", "Validation", "validate", "choose_method",
           "loader_found", "loader_environment", "firmware_changes", "properties_for",
           "implementation_reasons", "validate_translation"]

METHOD_CHOICES = ("auto", METHOD_SYSREG, METHOD_LOADER)


class CpuMismatch(DataError):
    """The domain's CPU cannot run on this host; ``reasons`` says why, field by field."""

    def __init__(self, message: str, reasons: list[Reason] | None = None) -> None:
        self.reasons = list(reasons or [])
        super().__init__(message)


def loader_found(host: HostProfile) -> bool:
    """Did the probe find the loader on *host*?"""
    return host.loader.status == "found"


def choose_method(host: HostProfile, requested: str = "auto", changes: bool = True,
                  prefer: str | None = None, implementation: bool = False) -> str:
    """The method for a guest on *host*.

    auto: *prefer* (the method a domain already uses) where it works here,
    else SYSREG_* where QEMU takes them, else the loader where installed,
    else none (which only works for a CPU equal to the host's: *changes*
    False; compare names both missing methods otherwise).  SYSREG_* cannot
    change MIDR/REVIDR/AIDR (*implementation*): only the loader can.

    :raise CpuMismatch: the requested method does not work on *host*.
    """
    sysreg = host.qemu.sysreg == "yes"
    loader = loader_found(host)
    if requested == METHOD_SYSREG:
        if changes and not sysreg:
            q = host.qemu
            raise CpuMismatch(f"method sysreg: the CPU needs ID register changes, but "
                              f"{_qemu_name(q)} on host {host.hostname} does not take "
                              f"SYSREG_* properties (try --method loader)")
        return METHOD_SYSREG
    if requested == METHOD_LOADER:
        if not loader:
            path = host.loader.path or LOADER_PATH
            raise CpuMismatch(f"method loader: the loader ({path}) is not installed on host "
                              f"{host.hostname} (its profile says missing; install it and "
                              f"probe again)")
        return METHOD_LOADER
    if requested != "auto":
        raise UsageError(f"method '{requested}' is not one of {', '.join(METHOD_CHOICES)}")
    # a method "works" when it can give the guest its values here; sysreg
    # without properties and none are both plain host-passthrough
    works = {METHOD_SYSREG: (sysreg and not implementation) or not changes,
             METHOD_LOADER: loader, METHOD_NONE: not changes}
    if prefer in works and works[prefer]:
        return prefer
    if works[METHOD_SYSREG] and sysreg:
        return METHOD_SYSREG
    if loader:
        return METHOD_LOADER
    return METHOD_NONE


def _qemu_name(q) -> str:
    return f"QEMU {q.version} ({q.path})" if q.status == "found" else f"QEMU ({q.status})"


def loader_environment(values: dict[str, int], host: HostProfile, kb: KnowledgeBase,
                       firmware_values: dict[str, int | None] | None = None,
                       reg_list: frozenset[int] | None = None, off: tuple[str, ...] = ()
                       ) -> dict[str, str]:
    """The loader's variables for a guest with *values* on *host*: every
    register of the model this host's kernel knows (the loader writes them
    all, so a host whose own values changed cannot give the guest others;
    a register the kernel lacks is one compare has already required zero),
    the model's firmware pseudo-registers this kernel has (one the model
    keeps out of the guest's list only where the kernel lists it), and the
    system registers this kernel lists for the guest's vCPU (features *off*
    switched off) that the model's *reg_list* does not have."""
    have = host.values()
    fw = {n: v for n, v in (firmware_values or {}).items()
          if host.firmware is None or host.firmware.get(n) is not None}
    listed = host.reg_ids(off)
    hidden = hidden_registers(listed, reg_list) \
        if reg_list is not None and listed is not None else frozenset()
    return loader_env({n: v for n, v in values.items() if n in have}, kb,
                      host.loader.path or LOADER_PATH, fw, hidden)


def firmware_changes(firmware_values: dict[str, int | None], host: HostProfile) -> bool:
    """Does the model's firmware differ from what *host* gives a guest by
    itself?  Only the loader can change it."""
    if not firmware_values:
        return False
    if host.firmware is None:
        return True
    return any(host.firmware.get(n) != v for n, v in firmware_values.items())


def properties_for(values: dict[str, int], host: HostProfile,
                   kb: KnowledgeBase, off: tuple[str, ...] = ()) -> list[tuple[str, int]]:
    """SYSREG_<REG>_<FIELD> = value for every field where *values* differ
    from the host's (the host presents the rest itself, with the vCPU
    features *off* switched off)."""
    have = host.values(off)
    props = []
    for name in sorted(values, key=lambda n: (kb.register(n).encoding, n)):
        reg = kb.register(name)
        if reg.kind != "feature-id" or values[name] == have.get(name, 0):
            continue
        for f in reg.fields:
            if f.get(values[name]) != f.get(have.get(name, 0)):
                props.append((f.qemu_property, f.get(values[name])))
    return props


def implementation_reasons(values: dict[str, int], host: dict[str, int],
                            kb: KnowledgeBase) -> list[Reason]:
    """MIDR/REVIDR/AIDR that differ: KVM may allow it (capability 239),
    but QEMU's SYSREG series has no property for them yet."""
    out = []
    for reg in (r.name for r in kb.of_kind("implementation-id")):
        if reg in values and values[reg] != host.get(reg, 0):
            out.append(Reason(reg, None, "qemu", host.get(reg, 0), values[reg],
                              f"{reg}: needs {values[reg]:#x}, host has {host.get(reg, 0):#x}; "
                              f"QEMU has no property to change implementation registers"))
    return out


@dataclass
class Validation:
    """A translated domain checked against a host (the hook's question)."""

    comparison: Comparison
    properties: list[tuple[str, int]]       # what this host's QEMU must be given (sysreg)
    current: list[str]                      # the -cpu arguments the domain has
    method: str = METHOD_SYSREG             # the method this host uses for the guest
    env: dict[str, str] = field(default_factory=dict)          # what the loader must get
    current_env: dict[str, str] = field(default_factory=dict)  # the loader env the domain has
    current_method: str = METHOD_SYSREG     # the method the domain was translated with
    vcpu_off: tuple[str, ...] = ()
    sve_lengths: frozenset[int] | None = None   # the guest's SVE vector lengths (its model's)

    @property
    def ok(self) -> bool:
        return self.comparison.result != INCOMPATIBLE

    @property
    def reasons(self) -> list[Reason]:
        return self.comparison.reasons

    @property
    def expected_argument(self) -> str | None:
        if self.method != METHOD_SYSREG or not self.properties:
            return None
        return qemu_cpu_argument(self.properties, self.vcpu_off, self.sve_lengths)

    @property
    def needs_rewrite(self) -> bool:
        """Does the domain's QEMU input (method, -cpu arguments, loader
        environment) differ from what this host needs?"""
        expected = self.expected_argument
        return (self.current != ([expected] if expected else [])
                or self.current_env != self.env
                or (self.current_method != self.method
                    and METHOD_LOADER in (self.current_method, self.method)))

    def describe_expected(self) -> str:
        """What this host needs, in words (for the hook's refusal)."""
        if self.method == METHOD_LOADER:
            return "the loader's environment for this host's registers"
        return f"-cpu {self.expected_argument}" if self.expected_argument else \
            "no QEMU arguments"


def validate(values: dict[str, int], cpu_arguments: list[str], host: HostProfile,
             kb: KnowledgeBase, *, vcpu_off: tuple[str, ...] = (),
             current_env: dict[str, str] | None = None, current_method: str = METHOD_SYSREG,
             method: str = "auto", firmware_values: dict[str, int | None] | None = None,
             reg_list: frozenset[int] | None = None, platform: Platform | None = None,
             gic_version: int | None = None,
             sve_lengths: frozenset[int] | None = None) -> Validation:
    """Can *host* present the guest CPU *values* (from a translated domain's
    metadata), with which method, and with which QEMU input?  *method* auto
    keeps the domain's *current_method* where it works on this host."""
    # named: the compare needs no digest of it (and the hook no hashlib)
    model = CpuModel(dict(values), {}, name="guest", firmware=dict(firmware_values or {}),
                     platform=platform or Platform())
    if vcpu_off:
        model = replace(model, vcpu_off=tuple(vcpu_off))
    c = compare(model, host, kb, check_qemu=True, gic_version=gic_version)
    wanted = model.platform.sve_vls
    if sve_lengths is not None and wanted and "sve" not in vcpu_off and sve_lengths != wanted:
        # the domain's <cpu> is what QEMU gets: edited since translate?
        c = Comparison(INCOMPATIBLE, c.reasons + [Reason(
            PLATFORM_NAMES["sve"], None, "platform", None, None,
            f"the domain's <cpu> gives the guest SVE lengths "
            f"{', '.join(map(str, sorted(sve_lengths))) or 'of the host'}, not its model's "
            f"({', '.join(map(str, sorted(wanted)))} bits): translate it again "
            f"(libvirt-arm-cpu define)")], c.changes, notes=c.notes)
    chosen = METHOD_NONE
    imp = implementation_reasons(values, host.values(tuple(vcpu_off)), kb)
    if c.result != INCOMPATIBLE:
        try:
            chosen = choose_method(host, method, c.result != IDENTICAL, prefer=current_method,
                                   implementation=bool(imp) or firmware_changes(
                                       dict(firmware_values or {}), host))
        except CpuMismatch as e:
            c = Comparison(INCOMPATIBLE, [Reason("", None, "method", None, None, str(e))],
                           c.changes)
    if imp and (chosen == METHOD_SYSREG or (chosen == METHOD_NONE and not loader_found(host))):
        # only the loader changes them: name them where it cannot be used
        c = Comparison(INCOMPATIBLE, c.reasons + imp, c.changes)
    ok = c.result != INCOMPATIBLE
    props = properties_for(values, host, kb, tuple(vcpu_off)) \
        if ok and chosen == METHOD_SYSREG else []
    env = loader_environment(values, host, kb, firmware_values, reg_list, tuple(vcpu_off)) \
        if ok and chosen == METHOD_LOADER else {}
    return Validation(c, props, list(cpu_arguments), chosen, env, dict(current_env or {}),
                      current_method, tuple(vcpu_off), (platform or Platform()).sve_vls)


def validate_translation(t: Translation, cpu_arguments: list[str], current_env: dict[str, str],
                         host: HostProfile, kb: KnowledgeBase,
                         gic_version: int | None = None,
                         sve_lengths: frozenset[int] | None = None) -> Validation:
    """:func:`validate` for a translated domain: its metadata *t* and the
    QEMU input it carries now (*cpu_arguments*, the loader's *current_env*)."""
    return validate(t.values, cpu_arguments, host, kb, vcpu_off=t.vcpu_off,
                    current_env=current_env, current_method=t.method,
                    firmware_values=t.firmware, reg_list=t.reg_list, platform=t.platform,
                    gic_version=gic_version, sve_lengths=sve_lengths)
