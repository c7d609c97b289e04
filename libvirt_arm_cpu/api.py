"""Python API for libvirt-python callers.

The CPU-model calls libvirt refuses on aarch64, with libvirt's own
arguments, flags and return values, so that a caller switches with one line::

    from libvirt_arm_cpu import api
    xml = api.baseline_hypervisor_cpu(conn, None, "aarch64", "virt", "kvm", profiles)
    res = api.compare_hypervisor_cpu(conn, None, "aarch64", "virt", "kvm", xml)
    dom = api.define_domain(conn, domain_xml)

What they take and answer, as ``virConnect.baselineHypervisorCPU`` and
``compareHypervisorCPU`` do:

* CPUs: host profiles (``libvirt-arm-cpu-helper probe``), CPU models
  (cpu-baseline), and what libvirt takes: a ``<cpu>`` (a guest's, or a host
  ``<cpu>`` of ``virsh capabilities``), and, as virsh does, a whole domain
  XML, ``virsh capabilities`` or ``virsh domcapabilities`` output (its
  host-model CPU).  A libvirt ``<cpu>`` carries no ID register values, only
  hwcap names: compare answers it at feature level and says so with a
  :class:`FeatureLevelWarning`; baseline cannot make a model of it and
  refuses it.
* ``arch``: None is the connection's host architecture.  aarch64 is
  answered here; another architecture goes to the connection's own method,
  unless the input is an aarch64 CPU (a host profile, a CPU model, a
  ``<cpu>`` saying aarch64), which is an error naming the architecture.
* ``virttype``: 'kvm' (or None).  'qemu' (TCG) is refused: a TCG guest gets
  one of QEMU's own CPU models, not KVM's ID registers.  ``machine``: None,
  'virt' or 'virt-X.Y'.  ``emulator``: None, or an aarch64 QEMU that exists
  on this machine (checked for local connections only).
* flags: unknown flags are refused, as libvirt's virCheckFlags does.
  ``VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES`` lists every feature (FEAT_*
  and AArch32 too); ``VIR_CONNECT_BASELINE_CPU_MIGRATABLE`` changes nothing,
  since every model is migratable by construction (only values every
  host's KVM accepts); ``VIR_CONNECT_COMPARE_CPU_VALIDATE_XML`` checks the
  ``<cpu>`` against libvirt's schema (cpu.rng, with this project's
  ``<registers>`` and ``SYSREG_*`` features) first;
  ``VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE`` raises
  :class:`CpuIncompatibleError` instead of returning _INCOMPATIBLE.

Every error raised on purpose is a ``libvirt.libvirtError``
(:class:`ArmCpuError` and its subclasses) with libvirt's code and domain and
a one-line message; :class:`CpuIncompatibleError` carries the responsible
fields in ``reasons``.

The host a connection reaches is described by its host profile: this
machine's (cached, probed when stale) for a local connection, unless
``host=`` gives another, a :class:`~libvirt_arm_cpu.model.HostProfile` or the
path of one.  A remote connection needs ``host=``.
"""

from __future__ import annotations

import platform
import re
import socket
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from urllib.parse import urlsplit

import libvirt

from libvirt_arm_cpu.engine.baseline import baseline
from libvirt_arm_cpu.engine.compare import (IDENTICAL, INCOMPATIBLE, SUPERSET, Reason)
from libvirt_arm_cpu.engine.validate import CpuMismatch, Validation
from libvirt_arm_cpu.engine.validate import validate as validate_values
from libvirt_arm_cpu.errors import Error, HostError, ParseError, UsageError
from libvirt_arm_cpu.formats.cpumodel import NAMESPACE as MODEL_NAMESPACE
from libvirt_arm_cpu.formats.cpumodel import to_xml as model_to_xml
from libvirt_arm_cpu.formats.domain import Domain
from libvirt_arm_cpu.formats.kinds import (CPU_MODEL, HOST_PROFILE, kind_of)
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.model import CpuModel, HostProfile
from libvirt_arm_cpu.service import (host_profile, model_features, precheck_defined,
                                     translate_domain)
from libvirt_arm_cpu.xmlsafe import parse_untrusted, shown
from libvirt_arm_cpu.cpuinputs import (FeaturesOnly, SchemaInvalid, TcgNotAnswered, baseline_inputs, check_hypervisor, compare_document)

__all__ = ["ArmCpuError", "ArmCpuXmlError", "ArmCpuSchemaError", "ArmCpuArgError",
           "ArmCpuUnsupportedError", "ArmCpuHostError", "CpuIncompatibleError",
           "FeatureLevelWarning", "define_domain", "translate_domain_xml", "validate_domain",
           "baseline_hypervisor_cpu", "compare_hypervisor_cpu"]

ARCH = "aarch64"

BASELINE_FLAGS = (libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES
                  | libvirt.VIR_CONNECT_BASELINE_CPU_MIGRATABLE)
COMPARE_FLAGS = (libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE
                 | libvirt.VIR_CONNECT_COMPARE_CPU_VALIDATE_XML)


# -- errors ----------------------------------------------------------------------

class ArmCpuError(libvirt.libvirtError):
    """Root of the errors this API raises on purpose: a
    ``libvirt.libvirtError`` whose ``get_error_code()``,
    ``get_error_domain()`` and ``get_error_message()`` answer as libvirt's
    would (``str()`` is the one-line message)."""

    code = libvirt.VIR_ERR_OPERATION_FAILED
    domain = libvirt.VIR_FROM_CPU

    def __init__(self, message: str) -> None:
        message = _one_line(message)
        Exception.__init__(self, message)
        self.err = (self.code, self.domain, message, libvirt.VIR_ERR_ERROR, None, None, None,
                    0, 0)


class ArmCpuXmlError(ArmCpuError):
    """The XML does not parse, or is not a CPU this reads (VIR_ERR_XML_ERROR)."""

    code = libvirt.VIR_ERR_XML_ERROR


class ArmCpuSchemaError(ArmCpuXmlError):
    """VIR_CONNECT_COMPARE_CPU_VALIDATE_XML: the <cpu> breaks libvirt's
    schema (VIR_ERR_XML_INVALID_SCHEMA from VIR_FROM_XML, as libvirt)."""

    code = libvirt.VIR_ERR_XML_INVALID_SCHEMA
    domain = libvirt.VIR_FROM_XML


class ArmCpuArgError(ArmCpuError):
    """A bad argument: unknown flags, architecture, virttype, machine or
    emulator, no host profile for a remote connection (VIR_ERR_INVALID_ARG)."""

    code = libvirt.VIR_ERR_INVALID_ARG


class ArmCpuUnsupportedError(ArmCpuError):
    """A question this does not answer: virttype 'qemu' (TCG), a baseline of
    CPUs without ID register values (VIR_ERR_CONFIG_UNSUPPORTED)."""

    code = libvirt.VIR_ERR_CONFIG_UNSUPPORTED


class ArmCpuHostError(ArmCpuError):
    """This machine's profile cannot be had (not aarch64, no /dev/kvm...):
    VIR_ERR_OPERATION_FAILED."""


class CpuIncompatibleError(ArmCpuError):
    """The CPU cannot run on the host; ``reasons`` lists every responsible
    field (register, field, kind, host value, wanted value, message)."""

    code = libvirt.VIR_ERR_CPU_INCOMPATIBLE

    def __init__(self, message: str, reasons: Sequence[Reason] = ()) -> None:
        super().__init__(message)
        self.reasons = list(reasons)


class FeatureLevelWarning(UserWarning):
    """compare_hypervisor_cpu judged a CPU without ID register values (a
    libvirt <cpu>: hwcap names only) by its feature names alone."""


_CLARK = re.compile(r"\{[^{}\s]*\}(?=[A-Za-z_])")


def _one_line(message: str) -> str:
    return " ".join(_CLARK.sub("", message).split())


@contextmanager
def _libvirt_errors() -> Iterator[None]:
    """This package's errors as the libvirtError subclasses above."""
    try:
        yield
    except libvirt.libvirtError:
        raise
    except CpuMismatch as e:
        raise CpuIncompatibleError(str(e), e.reasons) from None
    except SchemaInvalid as e:
        raise ArmCpuSchemaError(str(e)) from None
    except (FeaturesOnly, TcgNotAnswered) as e:
        raise ArmCpuUnsupportedError(str(e)) from None
    except ParseError as e:
        raise ArmCpuXmlError(str(e)) from None
    except UsageError as e:
        raise ArmCpuArgError(str(e)) from None
    except HostError as e:
        raise ArmCpuHostError(f"{e} (or pass host= with a host profile)") from None
    except Error as e:
        raise ArmCpuError(str(e)) from None


# -- the connection and its host ---------------------------------------------------

def _uri(conn: libvirt.virConnect | None) -> str:
    return conn.getURI() if conn is not None else "(no connection)"


def _is_remote(conn: libvirt.virConnect | None) -> bool:
    """Does *conn* reach another machine (a host name in its URI)?"""
    if conn is None:
        return False
    host = urlsplit(conn.getURI()).hostname
    return bool(host) and host not in ("localhost", "127.0.0.1", "::1", socket.gethostname())


def _connection_arch(conn: libvirt.virConnect | None) -> str:
    """The architecture of the host *conn* reaches (this machine's without one)."""
    if conn is None:
        machine = platform.machine()
        return ARCH if machine == "arm64" else machine
    caps = parse_untrusted(conn.getCapabilities().encode(), f"capabilities of {_uri(conn)}")
    return (caps.findtext("host/cpu/arch") or "").strip() or "unknown"


_AARCH64_INPUT = re.compile(rb"<arch>\s*aarch64\s*</arch>|\barch=[\"']aarch64[\"']")


def _aarch64_input(xml: str) -> bool:
    """Is *xml* plainly an aarch64 CPU: a host profile, a CPU model, or a
    libvirt document that says aarch64?"""
    data = xml.encode(errors="replace") if isinstance(xml, str) else b""
    return kind_of(data) in (HOST_PROFILE, CPU_MODEL) or MODEL_NAMESPACE.encode() in data \
        or bool(_AARCH64_INPUT.search(data))


def _answered_here(conn: libvirt.virConnect | None, arch: str | None, xmls: Sequence[str]) -> bool:
    """True: aarch64, answered here; False: another architecture, for the
    connection's own method.

    :raise ArmCpuArgError: another architecture with an aarch64 input, or
        without a connection to ask.
    """
    if arch == ARCH:
        return True
    if arch is None:
        arch = _connection_arch(conn)
        if arch == ARCH:
            return True
        whose = (f"arch=None is the architecture of the host {_uri(conn)} reaches, "
                 f"{shown(arch)}" if conn is not None else
                 f"arch=None is this machine's architecture, {shown(arch)}")
    else:
        whose = f"arch '{shown(str(arch))}'"
    if conn is None or any(_aarch64_input(x) for x in xmls):
        raise ArmCpuArgError(f"{whose}: libvirt_arm_cpu answers for aarch64 only"
                             + (", and the input is an aarch64 CPU (pass arch='aarch64')"
                                if conn is not None else ""))
    return False


def _check_flags(flags: int, allowed: int, function: str) -> None:
    """libvirt's virCheckFlags."""
    if not isinstance(flags, int) or flags < 0:
        raise ArmCpuArgError(f"flags {flags!r} in function {function}: expected an int >= 0")
    if flags & ~allowed:
        raise ArmCpuArgError(f"unsupported flags ({flags & ~allowed:#x}) in function {function}")


def _checked(conn: libvirt.virConnect | None, emulator: str | None, machine: str | None,
             virttype: str | None) -> None:
    for name, value in (("emulator", emulator), ("machine", machine), ("virttype", virttype)):
        if value is not None and not isinstance(value, str):
            raise ArmCpuArgError(f"{name} {value!r}: expected a string or None")
    # the emulator is a path on the host the connection reaches
    check_hypervisor(virttype, machine, emulator, here=not _is_remote(conn))


def _host(host: HostProfile | str | None, conn: libvirt.virConnect | None = None) -> HostProfile:
    """*host*, or this machine's profile for a local connection.

    :raise ArmCpuArgError: a remote connection without *host*.
    """
    if isinstance(host, HostProfile):
        return host
    if host is None and _is_remote(conn):
        raise ArmCpuArgError(f"the connection {_uri(conn)} reaches another machine: pass host= "
                             f"with that host's profile ('libvirt-arm-cpu-helper probe' there); "
                             f"this machine's profile does not describe it")
    return host_profile(host)


def _label(profile: HostProfile, where: str) -> str:
    """A profile's name in messages: its hostname, unless that says nothing
    (a machine without one reports "(none)")."""
    name = (profile.hostname or "").strip()
    return name if name and name not in ("(none)", "localhost", "localhost.localdomain") \
        else where


# -- the calls ---------------------------------------------------------------------

def translate_domain_xml(xml: str, host: HostProfile | str | None = None) -> str:
    """The domain XML that libvirt on aarch64 runs (see ``libvirt-arm-cpu
    translate``).  :raise CpuIncompatibleError: the CPU cannot run on the host."""
    with _libvirt_errors():
        translated, _ = translate_domain(xml.encode(), "<domain XML>", _host(host))
        return translated.tostring().decode()


def define_domain(conn: libvirt.virConnect, xml: str, flags: int = 0, *,
                  host: HostProfile | str | None = None) -> libvirt.virDomain:
    """``conn.defineXMLFlags(xml, flags)`` after translating the domain's CPU
    (for the host *conn* reaches: pass *host* for a remote connection).

    On a local connection the libvirt hook's check of the domain's start is
    made at once and an allowance remembered, so its first start is answered
    from the hook's memory (:func:`validate_domain` says what a refusal
    would name; a check that cannot be made now is simply made at the start)."""
    with _libvirt_errors():
        profile = _host(host, conn)
    dom = conn.defineXMLFlags(translate_domain_xml(xml, profile), flags)
    try:
        precheck_defined(conn, dom)
    except Error:
        pass                # the hook checks the start itself, and says why
    return dom


def validate_domain(conn_or_profile: libvirt.virConnect | HostProfile | str,
                    xml: str) -> Validation:
    """Can the host run this translated domain's CPU (the hook's check)?

    *conn_or_profile*: a local connection (its host: this machine's
    profile), a host profile, or a profile's path.  The result's ``ok``,
    ``reasons`` and ``needs_rewrite`` say what the hook would do.
    """
    with _libvirt_errors():
        if isinstance(conn_or_profile, libvirt.virConnect):
            host = _host(None, conn_or_profile)
        else:
            host = _host(conn_or_profile)
        dom = Domain.parse(xml.encode(), "<domain XML>")
        t = dom.translation
        if t is None:
            raise UsageError("the domain has no libvirt-arm-cpu metadata: translate or define "
                             "it with libvirt_arm_cpu first")
        return validate_values(t.values, dom.cpu_arguments(), host, kb_load.registers())


def baseline_hypervisor_cpu(conn: libvirt.virConnect | None, emulator: str | None,
                            arch: str | None, machine: str | None, virttype: str | None,
                            xmlCPUs: Sequence[str], flags: int = 0) -> str:
    """As ``virConnect.baselineHypervisorCPU``: the most capable CPU every
    input can run, as <cpu mode='custom' match='exact'>.

    Inputs: host profiles, CPU models (earlier results), and a libvirt
    ``<cpu mode='custom'>`` (or domain XML) naming a saved model without
    <feature> policies.  A libvirt <cpu> that only lists hwcap names (a host
    <cpu> of ``virsh capabilities``, libvirt's own models) has too little for
    a model: :class:`ArmCpuUnsupportedError`.  Hosts are named in errors by
    their hostname, or ``xmlCPUs[i]``.

    VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES lists every feature (FEAT_* and
    AArch32 too); every result is migratable by construction, so
    VIR_CONNECT_BASELINE_CPU_MIGRATABLE is accepted and changes nothing.

    :raise CpuIncompatibleError: no model runs on every input (``reasons``:
        every conflicting field).
    """
    with _libvirt_errors():
        if isinstance(xmlCPUs, (str, bytes)) or not isinstance(xmlCPUs, Sequence) \
                or not xmlCPUs or not all(isinstance(x, str) for x in xmlCPUs):
            raise ArmCpuArgError("xmlCPUs in baseline_hypervisor_cpu: expected a non-empty list "
                                 "of XML strings")
        if not _answered_here(conn, arch, xmlCPUs):
            assert conn is not None
            return conn.baselineHypervisorCPU(emulator, arch, machine, virttype, list(xmlCPUs),
                                              flags)
        _check_flags(flags, BASELINE_FLAGS, "baseline_hypervisor_cpu")
        _checked(conn, emulator, machine, virttype)
        kb = kb_load.registers()
        models: list[CpuModel] = []
        labels: list[str] = []
        for i, xml in enumerate(xmlCPUs):
            where = f"xmlCPUs[{i}]"
            for label, model, profile in baseline_inputs(xml.encode(), where, where, kb):
                if profile is not None:
                    label = _label(profile, where)
                    model = replace(model, hosts=(label,))
                elif label == where and model.name:
                    label = model.name
                if label in labels:
                    label = f"{label} ({where})"
                models.append(model)
                labels.append(label)
        result = baseline(models, kb, kb_load.dependencies(), labels)
        if not result.ok:
            reasons = [Reason(c.register, c.field, "conflict", None, None, str(c))
                       for c in result.conflicts]
            raise CpuIncompatibleError(
                f"no CPU model runs on all {len(models)} hosts: {result.conflicts[0]}"
                + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""), reasons)
        assert result.model is not None
        expand = bool(flags & libvirt.VIR_CONNECT_BASELINE_CPU_EXPAND_FEATURES)
        return model_to_xml(result.model, model_features(result.model, expand)).decode()


def compare_hypervisor_cpu(conn: libvirt.virConnect | None, emulator: str | None,
                           arch: str | None, machine: str | None, virttype: str | None,
                           xmlCPU: str, flags: int = 0, *,
                           host: HostProfile | str | None = None) -> int:
    """As ``virConnect.compareHypervisorCPU``: VIR_CPU_COMPARE_IDENTICAL,
    _SUPERSET or _INCOMPATIBLE for the host the connection reaches (this
    machine for a local one, or ``host=``, which a remote one needs).

    *xmlCPU*: a CPU model (cpu-baseline), a guest <cpu> (mode custom naming
    a saved model, with <feature> policies; host-model; host-passthrough),
    a host profile (a host-passthrough guest of that host moving here), or a
    libvirt <cpu> without ID register values (a host <cpu>, libvirt's own
    model names: judged at feature level, with a
    :class:`FeatureLevelWarning`); whole domain XML, ``virsh capabilities``
    and ``virsh domcapabilities`` output too (their first CPU, as virsh).

    VIR_CONNECT_COMPARE_CPU_VALIDATE_XML checks the <cpu> against libvirt's
    schema first (:class:`ArmCpuSchemaError`);
    VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE raises
    :class:`CpuIncompatibleError` instead of returning _INCOMPATIBLE.
    """
    with _libvirt_errors():
        if not isinstance(xmlCPU, str):
            raise ArmCpuArgError("xmlCPU in compare_hypervisor_cpu: expected an XML string")
        if not _answered_here(conn, arch, [xmlCPU]):
            assert conn is not None
            return conn.compareHypervisorCPU(emulator, arch, machine, virttype, xmlCPU, flags)
        _check_flags(flags, COMPARE_FLAGS, "compare_hypervisor_cpu")
        _checked(conn, emulator, machine, virttype)
        profile = _host(host, conn)
        c = compare_document(xmlCPU.encode(), "xmlCPU", profile, kb_load.registers(),
                             validate=bool(flags & libvirt.VIR_CONNECT_COMPARE_CPU_VALIDATE_XML))
        level = " (feature level)" if c.precision == "features" else ""
        if level:
            warnings.warn(f"xmlCPU compared with host {profile.hostname} at feature level only: "
                          f"it has no ID register values, only feature names"
                          + (f" ({c.notes[0]})" if c.notes else ""),
                          FeatureLevelWarning, stacklevel=2)
        if c.result == INCOMPATIBLE:
            if flags & libvirt.VIR_CONNECT_COMPARE_CPU_FAIL_INCOMPATIBLE:
                raise CpuIncompatibleError(f"the CPU is incompatible with host CPU{level}: "
                                           + "; ".join(map(str, c.reasons[:4]))
                                           + (f" (and {len(c.reasons) - 4} more)"
                                              if len(c.reasons) > 4 else ""), c.reasons)
            return libvirt.VIR_CPU_COMPARE_INCOMPATIBLE
        return {IDENTICAL: libvirt.VIR_CPU_COMPARE_IDENTICAL,
                SUPERSET: libvirt.VIR_CPU_COMPARE_SUPERSET}[c.result]
