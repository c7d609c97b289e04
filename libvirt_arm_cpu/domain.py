"""A libvirt domain XML, as far as CPU models are concerned.

One class per element we read or write (virtinst's way): :class:`DomainCpu`
is ``<cpu>`` with its ``<model>`` and ``<feature>`` s, :class:`Translation`
is this project's element in ``<metadata>``, :class:`Domain` the document
with the three edits a translation makes and undoes:

* ``<cpu>`` becomes ``<cpu mode='host-passthrough'>`` (keeping topology,
  NUMA and cache children, which host-passthrough takes as well);
* the SYSREG properties go to ``<qemu:commandline>`` as a second
  ``-cpu host,SYSREG_...`` (QEMU keeps the last ``-cpu``);
* the original ``<cpu>`` (verbatim) and the resolved register values go to
  ``<metadata>`` under ``urn:x-libvirt-arm-cpu:domain:1``.

Everything else in the document is left as it is.  Parsing refuses
DOCTYPEs and entities (:mod:`libvirt_arm_cpu.xmlsafe`).
"""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace

from .errors import ParseError
from .xmlsafe import parse_untrusted

__all__ = ["NAMESPACE", "QEMU_NAMESPACE", "FORMAT_VERSION", "CpuFeature", "DomainCpu",
           "Translation", "Domain", "POLICIES"]

NAMESPACE = "urn:x-libvirt-arm-cpu:domain:1"
QEMU_NAMESPACE = "http://libvirt.org/schemas/domain/qemu/1.0"
FORMAT_VERSION = 1
_NS = "{" + NAMESPACE + "}"
_QNS = "{" + QEMU_NAMESPACE + "}"

POLICIES = ("force", "require", "optional", "disable", "forbid")
# <cpu> children a host-passthrough CPU takes as well
_KEPT_CPU_CHILDREN = ("topology", "numa", "cache", "maxphysaddr")


@dataclass(frozen=True)
class CpuFeature:
    policy: str
    name: str
    value: str | None = None       # SYSREG_<REG>_<FIELD> features carry a value


@dataclass
class DomainCpu:
    mode: str
    match: str | None
    model: str | None
    fallback: str | None
    features: list[CpuFeature] = field(default_factory=list)

    @classmethod
    def from_element(cls, cpu: ET.Element, path: str) -> DomainCpu:
        model = cpu.find("model")
        mode = cpu.get("mode") or ("custom" if model is not None else "")
        feats = []
        for f in cpu.findall("feature"):
            name = (f.get("name") or "").strip()
            policy = f.get("policy") or "require"
            if not name:
                raise ParseError(path, None, "<cpu><feature> without a name")
            if policy not in POLICIES:
                raise ParseError(path, None, f"<feature name='{name}'>: policy '{policy}' is "
                                 f"not one of {', '.join(POLICIES)}")
            feats.append(CpuFeature(policy, name, f.get("value")))
        return cls(mode, cpu.get("match"),
                   (model.text or "").strip() if model is not None else None,
                   model.get("fallback") if model is not None else None, feats)


@dataclass
class Translation:
    """What translate resolved, kept in the domain's <metadata>."""

    original_cpu: str                       # the <cpu> element as written, "" if none
    values: dict[str, int]                  # the guest's ID registers
    properties: list[tuple[str, int]]       # SYSREG_* given to QEMU on the host below
    host: str = ""                          # host name the properties were made for
    fingerprint: str = ""                   # that host profile's fingerprint
    model: str = ""                         # the CPU model's name
    version: int = FORMAT_VERSION

    def to_element(self) -> ET.Element:
        root = ET.Element(_NS + "cpu", {"version": str(self.version), "model": self.model})
        ET.SubElement(root, _NS + "original").text = self.original_cpu
        ET.SubElement(root, _NS + "host", {"name": self.host, "fingerprint": self.fingerprint})
        for name in sorted(self.values):
            ET.SubElement(root, _NS + "register", {"name": name,
                                                   "value": f"0x{self.values[name]:016x}"})
        for name, value in self.properties:
            ET.SubElement(root, _NS + "property", {"name": name, "value": f"{value:#x}"})
        return root

    @classmethod
    def from_element(cls, elem: ET.Element, path: str) -> Translation:
        try:
            version = int(elem.get("version", "1"))
        except ValueError:
            raise ParseError(path, None, f"<metadata><cpu xmlns='{NAMESPACE}'> has version "
                             f"'{elem.get('version')}', not a number") from None
        if version > FORMAT_VERSION:
            raise ParseError(path, None, f"the domain's CPU metadata is format {version}, "
                             f"written by a newer libvirt-arm-cpu (this one reads format "
                             f"{FORMAT_VERSION}): upgrade libvirt-arm-cpu on this host")
        host = elem.find(_NS + "host")
        values, props = {}, []
        try:
            for r in elem.iter(_NS + "register"):
                values[r.get("name", "")] = int(r.get("value", ""), 16)
            for p in elem.iter(_NS + "property"):
                props.append((p.get("name", ""), int(p.get("value", ""), 0)))
        except ValueError:
            raise ParseError(path, None, "the domain's CPU metadata has a register or "
                             "property value that is not a number") from None
        return cls(elem.findtext(_NS + "original") or "", values, props,
                   host.get("name", "") if host is not None else "",
                   host.get("fingerprint", "") if host is not None else "",
                   elem.get("model", ""), version)


def qemu_cpu_argument(properties: list[tuple[str, int]]) -> str:
    return "host" + "".join(f",{name}={value:#x}" for name, value in properties)


class Domain:
    """A domain XML document and the CPU edits of a translation."""

    def __init__(self, root: ET.Element, path: str) -> None:
        self.root = root
        self.path = path

    @classmethod
    def parse(cls, data: bytes, path: str = "<domain>") -> Domain:
        root = parse_untrusted(data, path)
        if root.tag != "domain":
            raise ParseError(path, None, f"root element is <{root.tag}>, expected <domain>")
        return cls(root, path)

    @property
    def name(self) -> str:
        return (self.root.findtext("name") or "").strip()

    @property
    def virt_type(self) -> str:
        return self.root.get("type", "")

    @property
    def arch(self) -> str:
        os_type = self.root.find("os/type")
        return os_type.get("arch", "") if os_type is not None else ""

    @property
    def cpu(self) -> DomainCpu | None:
        elem = self.root.find("cpu")
        return DomainCpu.from_element(elem, self.path) if elem is not None else None

    def _metadata_element(self) -> ET.Element | None:
        meta = self.root.find("metadata")
        return meta.find(_NS + "cpu") if meta is not None else None

    @property
    def translation(self) -> Translation | None:
        elem = self._metadata_element()
        return Translation.from_element(elem, self.path) if elem is not None else None

    def cpu_arguments(self) -> list[str]:
        """The -cpu values in <qemu:commandline> (normally ours alone)."""
        cmd = self.root.find(_QNS + "commandline")
        if cmd is None:
            return []
        args = [a.get("value", "") for a in cmd.findall(_QNS + "arg")]
        return [args[i + 1] for i in range(len(args) - 1) if args[i] == "-cpu"]

    # -- edits -----------------------------------------------------------------

    def original(self) -> Domain:
        """This domain with a translation undone: the original <cpu> back, our
        metadata and QEMU arguments gone.  A domain without one is returned as is."""
        t = self.translation
        if t is None:
            return self
        root = _copy(self.root)
        meta = root.find("metadata")
        assert meta is not None
        for child in list(meta):
            if child.tag == _NS + "cpu":
                meta.remove(child)
        if not len(meta):
            _remove(root, meta)
        _drop_cpu_arguments(root, qemu_cpu_argument(t.properties))
        cpu = root.find("cpu")
        if t.original_cpu:
            restored = parse_untrusted(t.original_cpu.encode(), self.path + " (original <cpu>)")
            if cpu is not None:
                restored.tail = cpu.tail
                root[list(root).index(cpu)] = restored
            else:
                _insert_in_order(root, restored)
        elif cpu is not None:
            _remove(root, cpu)
        return Domain(root, self.path)

    def translated(self, t: Translation) -> Domain:
        """This domain (its original, if translated before) with *t* applied."""
        base = self.original()
        root = _copy(base.root)
        cpu = root.find("cpu")
        t = replace(t, original_cpu=_serialize(cpu) if cpu is not None else "")
        new_cpu = ET.Element("cpu", {"mode": "host-passthrough", "check": "none"})
        if cpu is not None:
            for child in cpu:
                if child.tag in _KEPT_CPU_CHILDREN:
                    new_cpu.append(_copy(child))
            new_cpu.text, new_cpu.tail = cpu.text, cpu.tail
            root[list(root).index(cpu)] = new_cpu
        else:
            _insert_in_order(root, new_cpu)
        meta = root.find("metadata")
        if meta is None:
            meta = ET.Element("metadata")
            _insert_in_order(root, meta)
        meta.append(t.to_element())
        _add_cpu_arguments(root, t.properties)
        return Domain(root, self.path)

    def with_arguments(self, t: Translation) -> Domain:
        """This translated domain with *t*'s metadata and QEMU arguments and
        nothing else changed (the migrate/restore filter: libvirt checks the
        rest against the running or saved guest)."""
        old = self.translation
        assert old is not None
        root = _copy(self.root)
        meta = root.find("metadata")
        assert meta is not None
        elem = meta.find(_NS + "cpu")
        meta[list(meta).index(elem)] = t.to_element()
        _drop_cpu_arguments(root, qemu_cpu_argument(old.properties))
        _add_cpu_arguments(root, t.properties)
        return Domain(root, self.path)

    def tostring(self) -> bytes:
        ET.register_namespace("arm", NAMESPACE)
        ET.register_namespace("qemu", QEMU_NAMESPACE)
        root = _copy(self.root)
        ET.indent(root, space="  ")
        return ET.tostring(root, encoding="unicode").encode() + b"\n"


# libvirt's order of top-level domain elements, where ours must go
_ORDER = ("name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory",
          "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus",
          "iothreads", "cputune", "numatune", "resource", "sysinfo", "bootloader", "os",
          "idmap", "features", "cpu", "clock")


def _insert_in_order(root: ET.Element, elem: ET.Element) -> None:
    """Put *elem* where libvirt's schema wants it (elements it does not
    list here, such as <devices>, come later)."""
    rank = _ORDER.index(elem.tag)
    for i, child in enumerate(root):
        if (_ORDER.index(child.tag) if child.tag in _ORDER else len(_ORDER)) > rank:
            root.insert(i, elem)
            return
    root.append(elem)


def _add_cpu_arguments(root: ET.Element, properties: list[tuple[str, int]]) -> None:
    if not properties:
        return
    cmd = root.find(_QNS + "commandline")
    if cmd is None:
        cmd = ET.SubElement(root, _QNS + "commandline")
    ET.SubElement(cmd, _QNS + "arg", {"value": "-cpu"})
    ET.SubElement(cmd, _QNS + "arg", {"value": qemu_cpu_argument(properties)})


def _drop_cpu_arguments(root: ET.Element, value: str) -> None:
    cmd = root.find(_QNS + "commandline")
    if cmd is None:
        return
    args = cmd.findall(_QNS + "arg")
    for i in range(len(args) - 1):
        if args[i].get("value") == "-cpu" and args[i + 1].get("value") == value:
            cmd.remove(args[i])
            cmd.remove(args[i + 1])
            break
    if not len(cmd):
        _remove(root, cmd)


def _remove(parent: ET.Element, child: ET.Element) -> None:
    parent.remove(child)


def _copy(elem: ET.Element) -> ET.Element:
    return copy.deepcopy(elem)


def _serialize(elem: ET.Element) -> str:
    clone = _copy(elem)
    clone.tail = None
    return ET.tostring(clone, encoding="unicode")
