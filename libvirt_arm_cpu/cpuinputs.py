"""libvirt's <cpu> inputs, as virsh and libvirt-python give them.

What the Python API (``api.py``) and the ``hypervisor-cpu-*`` / ``cpu-*``
commands (``cli/``) take alike: a libvirt-arm-cpu CPU model, a guest's or a
host's libvirt ``<cpu>``, a whole domain XML, ``virsh capabilities`` or
``domcapabilities`` output; which of them is which, and the hypervisor
arguments libvirt's *HypervisorCPU calls carry (virttype, machine,
emulator, arch).  A service of both edges, here once.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu.errors import ParseError, UnknownName, UsageError, WrongKind
from libvirt_arm_cpu.formats.cpumodel import NAMESPACE as MODEL_NAMESPACE
from libvirt_arm_cpu.formats.cpumodel import from_xml as model_from_xml
from libvirt_arm_cpu.formats.kinds import (CPU_MODEL, HOST_PROFILE, REGISTER_DUMP, element_name,
                                           kind_of, wrong_kind)
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu.model import CpuModel, DomainCpu, HostCpu, HostProfile
from libvirt_arm_cpu.service import find_model, load_input
from libvirt_arm_cpu.xmlsafe import parse_untrusted, shown

# Comparing and domains are imported where used: cpu-baseline over a fleet
# of profiles needs neither, and their imports are milliseconds of its start.
TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from libvirt_arm_cpu.engine.compare import Comparison

_REGISTERS = "{%s}registers" % MODEL_NAMESPACE
_SAVED_NAME = re.compile(r"arm64-[0-9a-f]{12}\Z")
_CPU_FIRST = re.compile(rb"\A\s*<cpu[\s>/]")
_MACHINE = re.compile(r"virt(?:-\d+(?:\.\d+)*)?\Z")


class SchemaInvalid(ParseError):
    """A <cpu> that breaks libvirt's schema (cpu.rng): what --validate and
    VIR_CONNECT_COMPARE_CPU_VALIDATE_XML refuse."""

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, None, f"XML document failed to validate against schema: "
                                     f"{detail}")


class FeaturesOnly(WrongKind):
    """A libvirt <cpu> without ID register values where they are needed."""


class TcgNotAnswered(UsageError):
    """virttype 'qemu': TCG guests get QEMU's CPU models, not KVM's."""


@dataclass(frozen=True)
class CpuInput:
    """One <cpu> as what it is: a libvirt-arm-cpu model (its <registers>),
    or a libvirt <cpu>: a guest's (*cpu*), or a host's (*host_cpu*: from
    'virsh capabilities', hwcap names only)."""

    model: CpuModel | None
    cpu: DomainCpu | None = None
    host_cpu: bool = False


def check_hypervisor(virttype: str | None, machine: str | None, emulator: str | None,
                     here: bool) -> None:
    """The hypervisor arguments of virsh's hypervisor-cpu-* and libvirt's
    *HypervisorCPU calls; *here*: the emulator is a path on this machine.

    :raise TcgNotAnswered: virttype 'qemu'; :raise UsageError: the others.
    """
    if virttype not in (None, "kvm"):
        if virttype == "qemu":
            raise TcgNotAnswered("virttype 'qemu' (TCG) is not answered: libvirt-arm-cpu's CPU "
                                 "models are the ID registers KVM gives a guest; a TCG guest "
                                 "gets one of QEMU's own CPU models (cortex-a57, neoverse-n1, "
                                 "max...), which libvirt answers for")
        raise UsageError(f"virttype '{shown(virttype)}': libvirt-arm-cpu answers for KVM only "
                         f"(virttype 'kvm')")
    if machine is not None and not _MACHINE.match(machine):
        raise UsageError(f"machine '{shown(machine)}' is not a machine type of aarch64 KVM "
                         f"guests: expected 'virt' or a versioned 'virt-X.Y'")
    if emulator is not None:
        name = os.path.basename(emulator)
        if name.startswith("qemu-system-") and name != "qemu-system-aarch64":
            raise UsageError(f"emulator '{shown(emulator)}' is not an aarch64 QEMU "
                             f"(qemu-system-aarch64)")
        if here and not (os.path.isfile(emulator) and os.access(emulator, os.X_OK)):
            raise UsageError(f"emulator '{shown(emulator)}': no such executable on this "
                             f"machine")


def _arch_of(arch: str | None, what: str, path: str) -> None:
    arch = (arch or "").strip()
    if arch and arch != "aarch64":
        raise ParseError(path, None, f"{what} architecture is {shown(arch)}, not aarch64: "
                                     f"libvirt-arm-cpu describes aarch64 CPUs only")


def _cpu_of(root: ET.Element, path: str) -> ET.Element:
    """The <cpu> of one document, as virsh's cpu-compare and cpu-baseline
    find it."""
    if root.tag == "cpu":
        _arch_of(root.findtext("arch"), "the host CPU's", path)
        return root
    if root.tag == "domain":
        from libvirt_arm_cpu.formats.domain import Domain
        dom = Domain(root, path)
        _arch_of(dom.arch, "the domain's", path)
        cpu = dom.original().tree().find("cpu")    # a translated domain: its own <cpu>
        if cpu is None:
            raise ParseError(path, None, "the domain has no <cpu>: its CPU is QEMU's default, "
                                         "nothing to compare")
        return cpu
    if root.tag == "capabilities":
        cpu = root.find("host/cpu")
        if cpu is None:
            raise ParseError(path, None, "<capabilities> has no <host><cpu>")
        _arch_of(cpu.findtext("arch"), "the host CPU's", path)
        return cpu
    if root.tag == "domainCapabilities":
        _arch_of(root.findtext("arch"), "the domain capabilities'", path)
        mode = root.find("cpu/mode[@name='host-model']")
        if mode is None or mode.get("supported") != "yes":
            raise ParseError(path, None, "'virsh domcapabilities' output without a supported "
                                         "host-model CPU describes no CPU: give 'virsh "
                                         "capabilities' output or the host's profile")
        cpu = ET.Element("cpu")         # virsh's way: the <mode> as a <cpu>
        cpu.extend(list(mode))
        return cpu
    raise ParseError(path, None, f"root element is <{shown(element_name(root.tag))}>: expected "
                                 f"a <cpu>, a domain XML, or 'virsh capabilities' or 'virsh "
                                 f"domcapabilities' output")


def libvirt_cpus(data: bytes, path: str) -> tuple[ET.Element, list[ET.Element]]:
    """The document's root and its <cpu> elements, found as virsh finds
    them: a <cpu> (several in one file, too), a domain's <cpu> (the original
    one of a domain translated by libvirt-arm-cpu), the host <cpu> of 'virsh
    capabilities', the host-model CPU of 'virsh domcapabilities'.

    :raise ParseError: not XML, none of these, or not an aarch64 one.
    """
    try:
        root = parse_untrusted(data, path)
        roots = [root]
    except ParseError as err:
        if not _CPU_FIRST.match(data[:64]):
            raise
        try:        # several <cpu> elements one after the other, as virsh takes them
            root = parse_untrusted(b"<cpus>" + data + b"</cpus>", path)
        except ParseError:
            raise err from None
        roots = list(root)
        if any(r.tag != "cpu" for r in roots):
            raise err from None
    return root, [_cpu_of(r, path) for r in roots]


_CPU_ATTRIBUTES = {"mode": ("custom", "host-model", "host-passthrough", "maximum"),
                   "match": ("minimum", "exact", "strict"), "check": ("none", "partial", "full"),
                   "migratable": ("on", "off")}
_GUEST_CHILDREN = ("model", "vendor", "topology", "numa", "cache", "maxphysaddr", _REGISTERS)
_HOST_CHILDREN = ("arch", "features", "model", "vendor", "microcode", "signature", "counter",
                  "topology", "maxphysaddr")
_FEATURE_NAME = re.compile(r"(?:aarch32:)?[A-Za-z0-9_.-]+\Z")
_CHILD_ATTRIBUTES: dict[str, dict[str, tuple[str, ...] | str]] = {
    "model": {"fallback": ("allow", "forbid"), "vendor_id": "vendor_id"},
    "topology": {"sockets": "+", "dies": "+", "clusters": "+", "cores": "+", "threads": "+"},
    "cache": {"level": ("1", "2", "3"), "mode": ("emulate", "passthrough", "disable")},
    "maxphysaddr": {"mode": ("emulate", "passthrough"), "bits": "0", "limit": "0"},
    "vendor": {}, "arch": {}, "features": {},
}
_REQUIRED = {"topology": ("sockets", "cores", "threads"), "cache": ("mode",),
             "maxphysaddr": ("mode",)}


def check_cpu_schema(cpu: ET.Element, path: str) -> None:
    """*cpu* against libvirt's schema for a guest or host <cpu> (cpu.rng,
    cputypes.rng), with this project's additions: the <registers> element
    of a CPU model (its reader checks it), ``SYSREG_*`` features with a
    value, ``aarch32:`` feature names.

    :raise SchemaInvalid: naming the first element or attribute it breaks.
    """
    host = cpu.get("mode") is None and cpu.find("arch") is not None
    kind = "host" if host else "guest"
    for name, value in cpu.attrib.items():
        choices = None if host else _CPU_ATTRIBUTES.get(name)
        if choices is None:
            raise SchemaInvalid(path, f"<cpu> has attribute '{shown(element_name(name))}', "
                                      f"which libvirt's {kind} <cpu> does not take")
        if value not in choices:
            raise SchemaInvalid(path, f"<cpu {name}='{shown(value)}'>: expected one of "
                                      f"{', '.join(choices)}")
    if (cpu.text or "").strip():
        raise SchemaInvalid(path, "<cpu> has text of its own")
    once = _HOST_CHILDREN if host else _GUEST_CHILDREN
    seen: set[str] = set()
    for child in cpu:
        tag = child.tag
        where = f"<{shown(element_name(tag))}>"
        if tag in once:
            if tag in seen:
                raise SchemaInvalid(path, f"<cpu> has more than one {where}")
            seen.add(tag)
        elif tag != "feature" and not (host and tag == "pages"):
            raise SchemaInvalid(path, f"<cpu> has a {where} child, which libvirt's {kind} <cpu> "
                                      f"does not take")
        if tag == _REGISTERS or (host and tag in ("features", "pages", "microcode",
                                                  "signature", "counter")):
            continue
        if tag == "feature":
            _check_feature(child, host, path)
        elif tag == "numa":
            cells = child.findall("cell")
            if not cells or any(not (c.get("memory") or "").isdigit() for c in cells):
                raise SchemaInvalid(path, "<numa>: expected <cell> elements, each with a "
                                          "memory size in KiB")
        else:
            _check_attributes(child, {} if host and tag == "model" else
                              _CHILD_ATTRIBUTES.get(tag, {}), _REQUIRED.get(tag, ()), path)
            if len(child):
                raise SchemaInvalid(path, f"{where} has a child element, which libvirt's "
                                          f"schema does not allow")
    if host and "arch" not in seen:
        raise SchemaInvalid(path, "host <cpu> without <arch>")


def _check_attributes(elem: ET.Element, allowed: dict[str, tuple[str, ...] | str],
                      required: tuple[str, ...], path: str) -> None:
    tag = shown(element_name(elem.tag))
    for name in required:
        if elem.get(name) is None:
            raise SchemaInvalid(path, f"<{tag}> lacks attribute '{name}'")
    for name, value in elem.attrib.items():
        rule = allowed.get(name)
        if rule is None:
            raise SchemaInvalid(path, f"<{tag}> has attribute '{shown(element_name(name))}', "
                                      f"which libvirt's schema does not allow")
        if isinstance(rule, tuple):
            ok, expected = value in rule, f"one of {', '.join(rule)}"
        elif rule == "vendor_id":
            ok, expected = len(value) == 12 and "," not in value, "12 characters, no comma"
        else:
            ok = value.isdigit() and int(value) >= int(rule == "+")
            expected = "a positive number" if rule == "+" else "a number"
        if not ok:
            raise SchemaInvalid(path, f"<{tag} {name}='{shown(value)}'>: expected {expected}")


def _check_feature(feat: ET.Element, host: bool, path: str) -> None:
    name = feat.get("name")
    if name is None or not _FEATURE_NAME.match(name):
        raise SchemaInvalid(path, f"<feature name='{shown(name or '')}'>: expected a feature "
                                  f"name (letters, digits, '-', '_', '.')")
    allowed = {"name"}
    if not host:
        from libvirt_arm_cpu.formats.domain import POLICIES
        policy = feat.get("policy")
        if policy not in POLICIES:
            raise SchemaInvalid(path, f"<feature name='{shown(name)}'>: policy "
                                      f"'{shown(policy or '')}' is not one of "
                                      f"{', '.join(POLICIES)}")
        allowed |= {"policy", "value"} if name.upper().startswith("SYSREG_") else {"policy"}
    extra = sorted(set(feat.attrib) - allowed)
    if extra:
        raise SchemaInvalid(path, f"<feature name='{shown(name)}'> has attribute "
                                  f"'{shown(element_name(extra[0]))}', which libvirt's schema "
                                  f"does not allow")
    if len(feat) or (feat.text or "").strip():
        raise SchemaInvalid(path, f"<feature name='{shown(name)}'> is not empty")


def cpu_input(cpu: ET.Element, path: str, data: bytes | None = None) -> CpuInput:
    """*cpu* (from :func:`libvirt_cpus`) as what it is; *data*: the
    document, when *cpu* is its root (a model is read from it as written)."""
    mode = cpu.get("mode")
    if mode is not None and mode not in _CPU_ATTRIBUTES["mode"]:
        raise ParseError(path, None, f"<cpu mode='{shown(mode)}'>: not a mode libvirt knows "
                                     f"({', '.join(_CPU_ATTRIBUTES['mode'])})")
    if cpu.find(_REGISTERS) is not None:
        return CpuInput(model_from_xml(data if data is not None else ET.tostring(cpu), path,
                                       kb_load.features()))
    from libvirt_arm_cpu.formats.domain import cpu_from_element
    host = cpu.get("mode") is None and cpu.find("arch") is not None
    return CpuInput(None, cpu_from_element(cpu, path), host)


def saved_model(name: str | None) -> CpuModel | None:
    """The saved CPU model *name*; None for a name that is not one (libvirt's
    own models, such as 'Neoverse-N1').

    :raise UsageError: a libvirt-arm-cpu model's name (arm64-...) not saved.
    """
    if not name:
        return None
    try:
        path = modelstore.path_of(name)
    except UsageError:
        return None
    return find_model(name) if os.path.exists(path) or _SAVED_NAME.match(name) else None


def _described(item: CpuInput) -> str:
    cpu = item.cpu
    assert cpu is not None
    if item.host_cpu:
        return "a libvirt host CPU"
    if cpu.mode == "custom" and cpu.model:
        return f"libvirt's CPU model '{shown(cpu.model)}'"
    return "a libvirt <cpu>"


def compare_cpu_features(item: CpuInput, host: HostProfile | HostCpu, path: str) -> Comparison:
    """A libvirt <cpu> without ID register values against *host*, at feature
    level (engine.compare.compare_features the other way round): every
    feature it requires or forces must be on the host, every one it forbids
    off ('disable' and 'optional' ask nothing); identical when it requires
    exactly the host's hwcaps, superset when the host has more.

    :raise FeaturesOnly: it lists no feature: nothing to compare.
    """
    from libvirt_arm_cpu.engine.compare import IDENTICAL, INCOMPATIBLE, SUPERSET, Comparison, Reason
    cpu = item.cpu
    assert cpu is not None
    if not cpu.features:
        raise FeaturesOnly(path, f"{_described(item)} listing no features, and no ID register "
                                 f"values", "a CPU that can be compared",
                           "give 'virsh cpu-baseline --features' output, a libvirt-arm-cpu "
                           "model (cpu-baseline), or the host's profile")
    catalog = kb_load.features()
    values = host.values() if isinstance(host, HostProfile) else None
    if isinstance(host, HostProfile):
        assert values is not None
        have = {f.key for f in catalog.present(values) if f.kind == "hwcap"}
        where = f"host {host.hostname}"
    else:
        have, where = set(host.features), "the host CPU"
    reasons: list[Reason] = []
    notes: list[str] = []
    wanted: set[str] = set()
    if cpu.model and not item.host_cpu:
        notes.append(f"CPU model '{cpu.model}' is libvirt's name, not a libvirt-arm-cpu model: "
                     f"only the features the <cpu> lists are compared")
    for feat in cpu.features:
        try:
            f = catalog.feature(feat.name)
        except UnknownName as err:
            if feat.policy in ("require", "force"):
                reasons.append(Reason("", None, "unknown-feature", None, None,
                                      f"feature {feat.name}: {err}, so {where} cannot be shown "
                                      f"to have it"))
            else:
                notes.append(f"feature {feat.name} ({feat.policy}) not judged: {err}")
            continue
        if values is not None:
            on = f.holds(values, catalog)
        else:
            on = f.key in have if f.kind == "hwcap" else None
        if on is None:
            notes.append(f"feature {f.key} not judged: "
                         + (f.requires() if f.condition is None else
                            "a libvirt host CPU lists hwcap names only"))
            continue
        if feat.policy in ("require", "force"):
            wanted.add(f.key)
            if not on:
                fields = ", ".join(map(str, f.fields(catalog)))
                reasons.append(Reason("", None, "missing-feature", None, None,
                                      f"feature {f.key}{f' ({fields})' if fields else ''}: the "
                                      f"CPU requires it, {where} does not have it"))
        elif feat.policy == "forbid" and on:
            reasons.append(Reason("", None, "forbidden-feature", None, None,
                                  f"feature {f.key}: the CPU forbids it, {where} has it"))
    if reasons:
        return Comparison(INCOMPATIBLE, reasons, [], "features", notes)
    extra = sorted(have - wanted)
    return Comparison(SUPERSET if extra else IDENTICAL, [], [f"hides {n}" for n in extra],
                      "features", notes)


def compare_cpu_input(item: CpuInput, host: HostProfile, kb: registers.KnowledgeBase,
                      path: str, check_qemu: bool = True) -> Comparison:
    """The verdict for *item* on *host*: a model field by field; a guest
    <cpu> naming a saved model, or host-model, as translate resolves it;
    host-passthrough and maximum are the host's own CPU (identical); the
    rest (hwcap names only) at feature level."""
    from libvirt_arm_cpu.engine.compare import IDENTICAL, INCOMPATIBLE, Comparison, Reason, compare
    from libvirt_arm_cpu.engine.translate import resolve
    from libvirt_arm_cpu.engine.validate import CpuMismatch
    if item.model is not None:
        return compare(item.model, host, kb, check_qemu=check_qemu)
    cpu = item.cpu
    assert cpu is not None
    if not item.host_cpu:
        if cpu.mode in ("host-passthrough", "maximum"):
            return Comparison(IDENTICAL, notes=[f"<cpu mode='{cpu.mode}'> is the CPU of the "
                                                f"host it runs on"])
        if cpu.mode == "host-model" or (cpu.mode == "custom"
                                        and saved_model(cpu.model) is not None):
            try:
                return resolve(cpu, host, kb, kb_load.features(), kb_load.dependencies(),
                               find_model).comparison
            except CpuMismatch as e:
                return Comparison(INCOMPATIBLE, e.reasons or [
                    Reason("", None, "feature", None, None, str(e))])
    return compare_cpu_features(item, host, path)


def compare_document(data: bytes, path: str, host: HostProfile, kb: registers.KnowledgeBase,
                     validate: bool = False, check_qemu: bool = True) -> Comparison:
    """compareHypervisorCPU's question for the (first) CPU of *data*: a host
    profile (a host-passthrough guest of that host, moving to *host*), a CPU
    model, or a libvirt <cpu>, domain, capabilities or domcapabilities.
    *validate*: check the <cpu> against libvirt's schema first."""
    from libvirt_arm_cpu.engine.compare import compare_passthrough
    kind = kind_of(data)
    if kind == REGISTER_DUMP:
        raise wrong_kind(path, REGISTER_DUMP, f"{CPU_MODEL} or {HOST_PROFILE}")
    if kind == HOST_PROFILE:
        _, source = load_input(data, path, path, kb)
        assert source is not None
        return compare_passthrough(source, host, kb)
    root, cpus = libvirt_cpus(data, path)
    if validate:
        check_cpu_schema(cpus[0], path)
    return compare_cpu_input(cpu_input(cpus[0], path, data if cpus[0] is root else None),
                             host, kb, path, check_qemu)


def baseline_model(item: CpuInput, path: str) -> CpuModel:
    """The model a baseline takes for *item*: its own, or the saved model a
    custom <cpu> without <feature> policies names.

    :raise FeaturesOnly: a <cpu> with too little for a model.
    """
    if item.model is not None:
        return item.model
    cpu = item.cpu
    assert cpu is not None
    expected = f"{HOST_PROFILE} or {CPU_MODEL}"
    if cpu.mode in ("host-passthrough", "host-model", "maximum") and not item.host_cpu:
        raise FeaturesOnly(path, f"a <cpu mode='{cpu.mode}'> (the CPU of whichever host runs "
                                 f"it)", expected, "give that host's profile")
    saved = saved_model(cpu.model) if cpu.mode == "custom" and not item.host_cpu else None
    if saved is not None:
        if not cpu.features:
            return saved
        raise FeaturesOnly(path, f"a <cpu> naming CPU model '{cpu.model}' with <feature> "
                                 f"policies", expected,
                           "the policies are resolved against one host: translate the domain "
                           "there, or give the model itself")
    raise FeaturesOnly(path, f"{_described(item)} (hwcap names, no ID register values)",
                       expected, "give each host's profile ('libvirt-arm-cpu-helper probe' on "
                                 "it) or a libvirt-arm-cpu model (cpu-baseline)")


def baseline_inputs(data: bytes, path: str, label: str, kb: registers.KnowledgeBase,
                    seen: dict[bytes, tuple[CpuModel, HostProfile]] | None = None,
                    validate: bool = True) -> list[tuple[str, CpuModel, HostProfile | None]]:
    """The models of one baseline input, each with a label: a host profile
    (*validate*: against the schema too, see service.load_input), a CPU
    model, several <cpu> in one file, or a libvirt document whose <cpu>
    names a saved model."""
    if kind_of(data) in (HOST_PROFILE, REGISTER_DUMP):
        return [(label, *load_input(data, path, label, kb, seen, validate))]
    root, cpus = libvirt_cpus(data, path)
    return [(label if len(cpus) == 1 else f"{label}#{k}",
             baseline_model(cpu_input(cpu, path, data if cpu is root else None), path), None)
            for k, cpu in enumerate(cpus, start=1)]
