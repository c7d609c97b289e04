"""A CPU model: the ID register values a guest is given, and what may still change.

A model is what baseline computes and compare checks: register values, and
per register the bits every host it came from lets userspace change (the
AND of their writable masks), so a model can itself be baselined with more
hosts (baseline is associative).  A host profile turns into a model of
exactly that host (:meth:`CpuModel.from_profile`).

Its XML form is a libvirt ``<cpu mode='custom' match='exact'>`` whose
``<feature>`` s are hwcap names and whose exact values sit in a
``<registers>`` element of the project's namespace
(``urn:x-libvirt-arm-cpu:cpu:1``), so it round-trips.
"""

from __future__ import annotations

import hashlib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from .errors import ParseError, UnknownName
from .features import load as load_features
from .fileio import read_input
from .profile import HostProfile
from .registers import KnowledgeBase

__all__ = ["CpuModel", "NAMESPACE", "to_xml", "from_xml", "read_model"]

NAMESPACE = "urn:x-libvirt-arm-cpu:cpu:1"
_NS = "{" + NAMESPACE + "}"


@dataclass
class CpuModel:
    values: dict[str, int]                      # register -> value
    writable: dict[str, int]                    # register -> bits every source may change
    imp_id_writable: bool = False               # every source has KVM capability 239
    hosts: tuple[str, ...] = ()                 # where it came from
    implementations: tuple[int, ...] = ()       # MIDRs the guest may run on
    name: str = field(default="")

    def __post_init__(self) -> None:
        if not self.name:
            self.name = self.digest_name()

    def digest_name(self) -> str:
        text = ";".join(f"{k}={v:x}" for k, v in sorted(self.values.items()))
        return "arm64-" + hashlib.sha256(text.encode()).hexdigest()[:12]

    @classmethod
    def from_profile(cls, p: HostProfile, kb: KnowledgeBase, label: str | None = None) -> CpuModel:
        """The model of exactly this host.  MPIDR (per-vCPU topology) is left
        out; unknown masks (kernels before 6.7) mean nothing may change."""
        values, writable = {}, {}
        for r in p.registers:
            reg = kb.by_encoding(*r.encoding)
            if reg is not None and reg.kind == "affinity":
                continue
            values[r.name] = r.value or 0
            writable[r.name] = r.writable or 0
        midrs = tuple(sorted({c.midr for c in p.cpus if c.midr is not None}
                             | {values.get("MIDR_EL1", 0)}))
        return cls(values, writable, p.capability("KVM_CAP_ARM_WRITABLE_IMP_ID_REGS") > 0,
                   (label or p.hostname,), midrs)


def _q(tag: str) -> str:
    return _NS + tag


def to_xml(model: CpuModel, features: list[str]) -> bytes:
    """libvirt's <cpu> with the model's exact values in our namespace."""
    ET.register_namespace("arm", NAMESPACE)
    cpu = ET.Element("cpu", {"mode": "custom", "match": "exact"})
    ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = model.name
    for name in features:
        ET.SubElement(cpu, "feature", {"policy": "require", "name": name})
    regs = ET.SubElement(cpu, _q("registers"), {
        "imp-id-writable": "yes" if model.imp_id_writable else "no"})
    for host in model.hosts:
        ET.SubElement(regs, _q("host"), {"name": host})
    for midr in model.implementations:
        ET.SubElement(regs, _q("implementation"), {"midr": f"{midr:#010x}"})
    for name in sorted(model.values):
        ET.SubElement(regs, _q("register"), {"name": name,
                                             "value": f"0x{model.values[name]:016x}",
                                             "writable": f"0x{model.writable.get(name, 0):016x}"})
    ET.indent(cpu, space="  ")
    return ET.tostring(cpu, encoding="unicode").encode() + b"\n"


def from_xml(data: bytes, path: str = "<cpu>") -> CpuModel:
    """Read a model written by :func:`to_xml`.

    :raise ParseError: when it is not a <cpu> with our <registers> element.
    """
    try:
        cpu = ET.fromstring(data)
    except ET.ParseError as err:
        raise ParseError(path, err.position[0], f"not well-formed XML: {err}") from err
    if cpu.tag != "cpu":
        raise ParseError(path, None, f"root element is <{cpu.tag}>, expected <cpu>")
    regs = cpu.find(_q("registers"))
    if regs is None:
        raise ParseError(path, None, f"<cpu> has no <registers xmlns='{NAMESPACE}'>: not a "
                         f"libvirt-arm-cpu model (make one with cpu-baseline)")
    values, writable = {}, {}
    for r in regs.iter(_q("register")):
        name = r.get("name")
        try:
            values[name] = int(r.get("value", ""), 16)
            writable[name] = int(r.get("writable", "0x0"), 16)
        except ValueError:
            raise ParseError(path, None, f"register {name}: value '{r.get('value')}' is not "
                             f"a hex number") from None
    catalog = load_features()
    for feat in cpu.findall("feature"):
        try:
            catalog.feature(feat.get("name", ""))
        except UnknownName as err:
            raise ParseError(path, None, f"<feature name='{feat.get('name')}'>: {err}") from None
    model = cpu.find("model")
    return CpuModel(values, writable, regs.get("imp-id-writable") == "yes",
                    tuple(h.get("name", "") for h in regs.iter(_q("host"))),
                    tuple(int(i.get("midr", "0"), 16) for i in regs.iter(_q("implementation"))),
                    name=(model.text or "").strip() if model is not None else "")


def read_model(path: str) -> CpuModel:
    return from_xml(read_input(path), path)
