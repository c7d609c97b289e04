"""A CPU model: the ID register values a guest is given, and what may still change.

A model is what baseline computes and compare checks: register values, and
per register the bits every host it came from lets userspace change (the
AND of their writable masks), so a model can itself be baselined with more
hosts (baseline is associative).  A host profile turns into a model of
exactly that host (:meth:`CpuModel.from_profile`).

A model also names the vCPU features (``sve``, ``ptrauth``, ``pmu``) a guest
of it runs with switched off (``vcpu_off``): KVM does not let userspace
write the SVE and PAuth fields, so switching the feature off at vCPU
creation (QEMU's ``sve=off``...) is the only way to hide them.  For the
features still on, ``vcpu_effects`` says what the values become when the
feature is switched off too (measured by the probe): what baseline needs to
combine hosts with and without the feature.

Its XML form is a libvirt ``<cpu mode='custom' match='exact'>`` whose
``<feature>`` s are hwcap names and whose exact values sit in a
``<registers>`` element of the project's namespace
(``urn:x-libvirt-arm-cpu:cpu:1``), so it round-trips: ``vcpu-off="ptrauth
sve"`` on it (absent: none), and one ``<switch feature="pmu">`` per
effect, holding ``<value register= value=>`` children; one ``<firmware
name= value=>`` per firmware pseudo-register the model sets (value
``absent``: kept out of the guest's register list); a ``<platform>``
(:mod:`libvirt_arm_cpu.formats.platform`) with what a guest of the model may
use beyond the ID registers.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from libvirt_arm_cpu import namespaces
from libvirt_arm_cpu.errors import ParseError, UnknownName
from libvirt_arm_cpu.kb.features import FeatureCatalog
from libvirt_arm_cpu.kb.firmware import SETTABLE
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.model import VCPU_FEATURES, CpuModel
from libvirt_arm_cpu.kb.registers import U64_MAX, format_ids, parse_ids
from libvirt_arm_cpu.formats import platform as platform_xml
from libvirt_arm_cpu.formats.kinds import (CPU_MODEL, HOST_PROFILE, REGISTER_DUMP, element_name,
                                           kind_of, wrong_kind)
from libvirt_arm_cpu.xmlsafe import parse_untrusted, shown

__all__ = ["NAMESPACE", "to_xml", "from_xml", "read_model"]

NAMESPACE = namespaces.CPU_MODEL
_NS = "{" + NAMESPACE + "}"


def _q(tag: str) -> str:
    return _NS + tag


def to_xml(model: CpuModel, features: list[str]) -> bytes:
    """libvirt's <cpu> with the model's exact values in our namespace.

    :raise UsageError: the model takes fields from its host (an
        architecture level): it has no exact values to write.
    """
    if model.host_fields:
        from libvirt_arm_cpu.errors import UsageError
        raise UsageError(f"CPU model {model.name} takes fields from the host it runs on, so "
                         f"it cannot be written as exact values: translate it for a host")
    ET.register_namespace("arm", NAMESPACE)
    cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
    ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = model.name
    for name in features:
        ET.SubElement(cpu, "feature", {"policy": "require", "name": name})
    attrs = {"imp-id-writable": "yes" if model.imp_id_writable else "no"}
    if model.vcpu_off:
        attrs["vcpu-off"] = " ".join(model.vcpu_off)
    regs = ET.SubElement(cpu, _q("registers"), attrs)
    for host in model.hosts:
        ET.SubElement(regs, _q("host"), {"name": host})
    for midr in model.implementations:
        ET.SubElement(regs, _q("implementation"), {"midr": f"{midr:#010x}"})
    for feature, effect in sorted(model.vcpu_effects.items()):
        sw = ET.SubElement(regs, _q("switch"), {"feature": feature})
        for name, value in sorted(effect.items()):
            ET.SubElement(sw, _q("value"), {"register": name, "value": f"0x{value:016x}"})
    for name, fw in sorted(model.firmware.items()):
        ET.SubElement(regs, _q("firmware"), {"name": name,
                                             "value": "absent" if fw is None else f"{fw:#x}"})
    if model.reg_list is not None:
        ET.SubElement(regs, _q("register-list")).text = format_ids(model.reg_list)
    platform_xml.to_element(regs, model.platform, _NS)
    for name in sorted(model.values):
        ET.SubElement(regs, _q("register"), {"name": name,
                                             "value": f"0x{model.values[name]:016x}",
                                             "writable": f"0x{model.writable.get(name, 0):016x}"})
    ET.indent(cpu, space="  ")
    return ET.tostring(cpu, encoding="unicode").encode() + b"\n"


_REGISTER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")


def _tag(e: ET.Element) -> str:
    return e.tag[len(_NS):] if e.tag.startswith(_NS) else e.tag


def _name_of(e: ET.Element, attr: str, path: str, register: bool = True) -> str:
    """*e*'s *attr* naming a register (or, not *register*, a host), which
    it must have."""
    name = e.get(attr)
    if name is None:
        raise ParseError(path, None, f"<{_tag(e)}> lacks '{attr}'")
    if not name.isprintable() or (register and not _REGISTER_NAME.match(name)):
        what = "a register name" if register else "a name without control characters"
        raise ParseError(path, None, f"<{_tag(e)} {attr}='{shown(name)}'>: expected {what}")
    return name


def _u64(e: ET.Element, attr: str, path: str, where: str, default: str | None = None) -> int:
    """*e*'s *attr*, a 64-bit register's value in hex (0x optional); *where*
    names the element in errors."""
    text = e.get(attr, default)
    if text is None:
        raise ParseError(path, None, f"{where} lacks '{attr}'")
    try:
        value = int(text, 16)
    except ValueError:
        raise ParseError(path, None, f"{where}: {attr} '{shown(text)}' is not a hex "
                         f"number") from None
    if not 0 <= value <= U64_MAX:
        raise ParseError(path, None, f"{where}: {attr} '{shown(text)}' does not fit a 64-bit "
                         f"register")
    return value


def from_xml(data: bytes, path: str = "<cpu>", catalog: FeatureCatalog | None = None) -> CpuModel:
    """Read a model written by :func:`to_xml` (through the safe reader: no
    DOCTYPE, no entities).  With *catalog*, its ``<feature>`` names are
    checked against it (they are informative: the values are the model).

    :raise WrongKind: for a host profile or a register dump (saying what
        to run);
    :raise ParseError: when it is not a <cpu> with our <registers> element,
        an element lacks its name, or a value is not 64-bit hex.
    """
    try:
        cpu = parse_untrusted(data, path)
    except ParseError:
        if kind_of(data) == REGISTER_DUMP:
            raise wrong_kind(path, REGISTER_DUMP, CPU_MODEL) from None
        raise
    if cpu.tag != "cpu":
        if kind_of(data, cpu) == HOST_PROFILE:
            raise wrong_kind(path, HOST_PROFILE, CPU_MODEL)
        raise ParseError(path, None, f"root element is <{shown(element_name(cpu.tag))}>, "
                         f"expected <cpu>")
    regs = cpu.find(_q("registers"))
    if regs is None:
        raise ParseError(path, None, f"<cpu> has no <registers xmlns='{NAMESPACE}'>: not a "
                         f"libvirt-arm-cpu model (make one with cpu-baseline)")
    values, writable = {}, {}
    for r in regs.findall(_q("register")):
        name = _name_of(r, "name", path)
        where = f"<register name='{shown(name)}'>"
        if name in values:
            raise ParseError(path, None, f"{where} appears twice")
        values[name] = _u64(r, "value", path, where)
        writable[name] = _u64(r, "writable", path, where, "0x0")
    for feat in cpu.findall("feature"):
        if catalog is None:
            break
        try:
            catalog.feature(feat.get("name", ""))
        except UnknownName as err:
            raise ParseError(path, None, f"<feature name='{shown(feat.get('name', ''))}'>: "
                             f"{err}") from None
    off = tuple((regs.get("vcpu-off") or "").split())
    effects: dict[str, dict[str, int]] = {}
    for sw in regs.findall(_q("switch")):
        feature = sw.get("feature", "")
        if feature not in VCPU_FEATURES or feature in effects or feature in off:
            raise ParseError(path, None, f"<switch feature='{shown(feature)}'>: expected a vCPU "
                             f"feature ({', '.join(VCPU_FEATURES)}) not in vcpu-off, each once")
        effect = effects[feature] = {}
        for v in sw.findall(_q("value")):
            reg = _name_of(v, "register", path)
            effect[reg] = _u64(v, "value", path,
                               f"<switch feature='{feature}'><value register='{shown(reg)}'>")
    bad = [f for f in off if f not in VCPU_FEATURES]
    if bad or list(off) != sorted(set(off)):
        raise ParseError(path, None, f"<registers vcpu-off='{shown(regs.get('vcpu-off', ''))}'>: "
                         f"expected vCPU features ({', '.join(VCPU_FEATURES)}), sorted, each once")
    firmware: dict[str, int | None] = {}
    for f in regs.findall(_q("firmware")):
        name = f.get("name", "")
        if name not in SETTABLE or name in firmware:
            raise ParseError(path, None, f"<firmware name='{shown(name)}'>: expected one of "
                             f"{', '.join(SETTABLE)}, each once")
        where = f"<firmware name='{name}'>"
        firmware[name] = None if f.get("value") == "absent" else _u64(f, "value", path, where)
    reg_list = None
    lst = regs.find(_q("register-list"))
    if lst is not None:
        try:
            reg_list = parse_ids(lst.text)
        except ValueError:
            raise ParseError(path, None, "<register-list>: expected KVM register ids (64-bit) "
                             "in hex, separated by spaces") from None
    hosts = tuple(_name_of(h, "name", path, register=False) for h in regs.iter(_q("host")))
    midrs = tuple(_u64(i, "midr", path, "<implementation>")
                  for i in regs.iter(_q("implementation")))
    model = cpu.find("model")
    return CpuModel(values, writable, regs.get("imp-id-writable") == "yes", hosts, midrs,
                    name=(model.text or "").strip() if model is not None else "",
                    vcpu_off=off, vcpu_effects=effects, firmware=firmware, reg_list=reg_list,
                    platform=platform_xml.from_element(regs.find(_q("platform")), path, _NS))


def read_model(path: str, catalog: FeatureCatalog | None = None) -> CpuModel:
    return from_xml(read_input(path), path, catalog)
