"""Python API for libvirt-python callers.

The CPU-model calls libvirt refuses on aarch64, with libvirt's own
arguments, flags and return values, so that a caller switches with one line::

    from libvirt_arm_cpu import api
    xml = api.baseline_hypervisor_cpu(conn, None, "aarch64", "virt", "kvm", profiles)
    res = api.compare_hypervisor_cpu(conn, None, "aarch64", "virt", "kvm", xml)
    dom = api.define_domain(conn, domain_xml)

For any other architecture they call the connection's own method, so mixed
fleets can use these everywhere.  Errors are :class:`CpuIncompatibleError`
(a ``libvirt.libvirtError`` with code ``VIR_ERR_CPU_INCOMPATIBLE``) carrying
the responsible fields in ``reasons``, or ``libvirt_arm_cpu.errors.Error``
for bad input.

The host a connection reaches is described by its host profile: this
machine's (cached, probed when stale) unless ``host=`` gives another, a
:class:`~libvirt_arm_cpu.formats.profile.HostProfile` or the path of one (needed for
a remote connection).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import libvirt

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu.engine.baseline import baseline
from libvirt_arm_cpu.service import find_model, host_profile, load_input, model_features, translate_domain
from libvirt_arm_cpu.engine.compare import IDENTICAL, INCOMPATIBLE, SUPERSET, Reason, compare
from libvirt_arm_cpu.formats.cpumodel import NAMESPACE as MODEL_NAMESPACE
from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml, to_xml as model_to_xml
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.formats.domain import Domain, cpu_from_element
from libvirt_arm_cpu.errors import UsageError
from libvirt_arm_cpu.model import HostProfile
from libvirt_arm_cpu.engine.translate import resolve
from libvirt_arm_cpu.engine.validate import CpuMismatch, Validation
from libvirt_arm_cpu.engine.validate import validate as validate_values
from libvirt_arm_cpu.xmlsafe import parse_untrusted

__all__ = ["CpuIncompatibleError", "define_domain", "translate_domain_xml", "validate_domain",
           "baseline_hypervisor_cpu", "compare_hypervisor_cpu"]

ARCH = "aarch64"


class CpuIncompatibleError(libvirt.libvirtError):
    """The CPU cannot run on the host; ``reasons`` lists every responsible
    field (register, field, kind, host value, wanted value, message)."""

    def __init__(self, message: str, reasons: Sequence[Reason] = ()) -> None:
        Exception.__init__(self, message)
        self.err = (libvirt.VIR_ERR_CPU_INCOMPATIBLE, libvirt.VIR_FROM_CPU, message,
                    libvirt.VIR_ERR_ERROR, None, None, None, 0, 0)
        self.reasons = list(reasons)


def _host(host: HostProfile | str | None) -> HostProfile:
    if isinstance(host, HostProfile):
        return host
    return host_profile(host)


def translate_domain_xml(xml: str, host: HostProfile | str | None = None) -> str:
    """The domain XML that libvirt on aarch64 runs (see ``libvirt-arm-cpu
    translate``).  :raise CpuIncompatibleError: the CPU cannot run on the host."""
    try:
        translated, _ = translate_domain(xml.encode(), "<domain XML>", _host(host))
    except CpuMismatch as e:
        raise CpuIncompatibleError(str(e), e.reasons) from None
    return translated.tostring().decode()


def define_domain(conn: libvirt.virConnect, xml: str, flags: int = 0, *,
                  host: HostProfile | str | None = None) -> libvirt.virDomain:
    """``conn.defineXMLFlags(xml, flags)`` after translating the domain's CPU."""
    return conn.defineXMLFlags(translate_domain_xml(xml, host), flags)


def validate_domain(conn_or_profile: libvirt.virConnect | HostProfile | str,
                    xml: str) -> Validation:
    """Can the host run this translated domain's CPU (the hook's check)?

    *conn_or_profile*: a connection (its host: this machine's profile), a
    host profile, or a profile's path.  The result's ``ok``, ``reasons`` and
    ``needs_rewrite`` say what the hook would do.
    """
    host = _host(None if isinstance(conn_or_profile, libvirt.virConnect) else conn_or_profile)
    dom = Domain.parse(xml.encode(), "<domain XML>")
    t = dom.translation
    if t is None:
        raise UsageError("the domain has no libvirt-arm-cpu metadata: translate or define it "
                         "with libvirt_arm_cpu first")
    return validate_values(t.values, dom.cpu_arguments(), host, kb_load.registers())


def _cpu_input(xml: str, kb: registers.KnowledgeBase, index: int) -> CpuModel:
    data = xml.encode()
    where = f"xmlCPUs[{index}]"
    if b"<hostprofile" not in data[:400] and MODEL_NAMESPACE.encode() not in data:
        raise UsageError(f"{where}: neither a libvirt-arm-cpu host profile nor a CPU model "
                         f"from cpu-baseline (a libvirt host <cpu> lists hwcaps only, too "
                         f"little for a baseline: probe the host with libvirt-arm-cpu-helper)")
    model, profile = load_input(data, where, where, kb)
    return model if profile is None else replace(model, hosts=(profile.hostname or where,))


def baseline_hypervisor_cpu(conn: libvirt.virConnect, emulator: str | None, arch: str | None,
                            machine: str | None, virttype: str | None,
                            xmlCPUs: Sequence[str], flags: int = 0) -> str:
    """As ``virConnect.baselineHypervisorCPU``: the most capable CPU every
    input can run, as <cpu mode='custom' match='exact'>.  Inputs are host
    profiles (libvirt-arm-cpu-helper probe) or earlier results.
    VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES lists FEAT_* names too; every
    result is migratable, so VIR_CONNECT_BASELINE_CPU_MIGRATABLE changes nothing."""
    if arch != ARCH:
        return conn.baselineHypervisorCPU(emulator, arch, machine, virttype, list(xmlCPUs),
                                          flags)
    if not xmlCPUs:
        raise UsageError("baseline of no CPUs")
    kb = kb_load.registers()
    models = [_cpu_input(x, kb, i) for i, x in enumerate(xmlCPUs)]
    result = baseline(models, kb, kb_load.dependencies())
    if not result.ok:
        reasons = [Reason(c.register, c.field, "conflict", None, None, str(c))
                   for c in result.conflicts]
        raise CpuIncompatibleError(f"no CPU model runs on all {len(models)} hosts: "
                                   f"{result.conflicts[0]}"
                                   + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1
                                      else ""), reasons)
    assert result.model is not None
    expand = bool(flags & libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
    return model_to_xml(result.model, model_features(result.model, expand)).decode()


def compare_hypervisor_cpu(conn: libvirt.virConnect, emulator: str | None, arch: str | None,
                           machine: str | None, virttype: str | None, xmlCPU: str,
                           flags: int = 0, *, host: HostProfile | str | None = None) -> int:
    """As ``virConnect.compareHypervisorCPU``: VIR_CPU_COMPARE_IDENTICAL,
    _SUPERSET or _INCOMPATIBLE for the host the connection reaches (this
    machine, or ``host=``).  *xmlCPU* is a cpu-baseline result or a guest
    <cpu mode='custom'> naming a saved model with <feature> policies.
    VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE raises instead of returning
    _INCOMPATIBLE."""
    if arch != ARCH:
        return conn.compareHypervisorCPU(emulator, arch, machine, virttype, xmlCPU, flags)
    profile = _host(host)
    kb = kb_load.registers()
    data = xmlCPU.encode()
    reasons: list[Reason]
    if MODEL_NAMESPACE.encode() in data:
        c = compare(model_from_xml(data, "xmlCPU"), profile, kb)
        verdict, reasons = c.result, c.reasons
    else:
        cpu = cpu_from_element(parse_untrusted(data, "xmlCPU"), "xmlCPU")
        try:
            r = resolve(cpu, profile, kb, kb_load.features(), kb_load.dependencies(), find_model)
            verdict, reasons = (IDENTICAL if r.identical else SUPERSET), []
        except CpuMismatch as e:
            verdict, reasons = INCOMPATIBLE, e.reasons or [Reason("", None, "feature", None,
                                                                  None, str(e))]
    if verdict == INCOMPATIBLE:
        if flags & libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE:
            raise CpuIncompatibleError("the CPU is incompatible with the host CPU: "
                                       + "; ".join(map(str, reasons[:4])), reasons)
        return libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
    return {IDENTICAL: libvirt.VIR_CPU_COMPARE_IDENTICAL,
            SUPERSET: libvirt.VIR_CPU_COMPARE_SUPERSET}[verdict]

