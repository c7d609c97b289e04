"""A libvirt domain XML, as far as CPU models are concerned.

One class per element we read or write (virtinst's way): :class:`DomainCpu`
is ``<cpu>`` with its ``<model>`` and ``<feature>`` s, :class:`Translation`
is this project's element in ``<metadata>``, :class:`PassthroughCpu` the
``<cpu mode='host-passthrough'>`` a translation writes, :class:`Pmu` the
``<features><pmu>`` switch, :class:`QemuCommandline` the
``<qemu:commandline>`` with its ``<qemu:arg>`` and ``<qemu:env>`` s, and
:class:`Domain` the document with the edits a translation makes and undoes:

* ``<cpu>`` becomes ``<cpu mode='host-passthrough'>`` (keeping topology,
  NUMA and cache children, which host-passthrough takes as well), with the
  vCPU features the model switches off written the way libvirt writes them
  itself: ``<feature policy='disable' name='sve'/>``, ``name='pauth'``
  (libvirt 10.6+), and ``<features><pmu state='off'/>``;
* the method's QEMU input goes to ``<qemu:commandline>``: for ``sysreg`` a
  second ``-cpu host,...,SYSREG_...`` (QEMU keeps the last ``-cpu``, so it
  repeats the vCPU options libvirt wrote in the first), for ``loader`` two
  ``<qemu:env>`` (``LD_PRELOAD`` and the loader's register list);
* the original ``<cpu>`` (verbatim), the original ``<pmu>`` if one was
  replaced, and the resolved register values go to ``<metadata>`` under
  ``urn:x-libvirt-arm-cpu:domain:1``.

Everything else in the document is left as it is.  Parsing refuses
DOCTYPEs and entities (:mod:`libvirt_arm_cpu.xmlsafe`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import replace

from libvirt_arm_cpu import namespaces
from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.kb.firmware import SETTABLE as FIRMWARE_SETTABLE
from libvirt_arm_cpu.kb.registers import format_ids, parse_ids
from libvirt_arm_cpu.model import (METADATA_FORMAT, sve_length_feature, METHOD_LOADER, METHOD_SYSREG, METHODS, VCPU_FEATURES, CpuFeature,
                                   DomainCpu, Translation)
from libvirt_arm_cpu.formats import platform as platform_xml
from libvirt_arm_cpu.formats.kinds import element_name
from libvirt_arm_cpu.xmlsafe import LightElement, parse_light, parse_untrusted, shown

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from libvirt_arm_cpu.xmlsafe import Readable

__all__ = ["NAMESPACE", "QEMU_NAMESPACE", "FORMAT_VERSION", "POLICIES", "PAUTH_LIBVIRT_VERSION",
           "cpu_from_element", "translation_element", "translation_from_element",
           "PassthroughCpu", "Pmu", "QemuCommandline", "Domain"]

NAMESPACE = namespaces.DOMAIN_METADATA
QEMU_NAMESPACE = namespaces.QEMU_COMMANDLINE
FORMAT_VERSION = METADATA_FORMAT
_NS = "{" + NAMESPACE + "}"
_QNS = "{" + QEMU_NAMESPACE + "}"

POLICIES = ("force", "require", "optional", "disable", "forbid")
# <cpu> children a host-passthrough CPU takes as well
_KEPT_CPU_CHILDREN = ("topology", "numa", "cache", "maxphysaddr")


# libvirt's element for each vCPU feature (model.VCPU_FEATURES):
# src/cpu_map/arm_features.xml ('sve'; 'pauth' since libvirt 10.6, NEWS
# v10.6.0) and <features><pmu state='off'/> (formatdomain "pmu").
_LIBVIRT_CPU_FEATURE = {"sve": "sve", "ptrauth": "pauth"}      # pmu: <features><pmu>
PAUTH_LIBVIRT_VERSION = 10_006_000


def cpu_from_element(cpu: Readable, path: str) -> DomainCpu:
    """A domain's ``<cpu>`` element as a :class:`DomainCpu`."""
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
    return DomainCpu(mode, cpu.get("match"),
               (model.text or "").strip() if model is not None else None,
               model.get("fallback") if model is not None else None, feats)



def translation_element(t: Translation) -> ET.Element:
    """The ``<metadata>`` element of a :class:`Translation`."""
    # format 1 where a reader of format 1 understands it (sysreg, no vCPU
    # feature off), so hooks not yet upgraded still check such domains
    plain = (t.method == METHOD_SYSREG and not t.vcpu_off and not t.original_pmu
             and not t.firmware and t.reg_list is None and not t.platform.known())
    attrs = {"version": "1" if plain else str(FORMAT_VERSION), "model": t.model}
    if not plain:
        attrs["method"] = t.method
    root = ET.Element(_NS + "cpu", attrs)
    ET.SubElement(root, _NS + "original").text = t.original_cpu
    if t.original_pmu:
        ET.SubElement(root, _NS + "original-pmu").text = t.original_pmu
    ET.SubElement(root, _NS + "host", {"name": t.host, "fingerprint": t.fingerprint})
    for name in sorted(t.vcpu_off):
        ET.SubElement(root, _NS + "vcpu-feature", {"name": name, "state": "off"})
    for name in sorted(t.values):
        ET.SubElement(root, _NS + "register", {"name": name,
                                               "value": f"0x{t.values[name]:016x}"})
    for name, fw in sorted(t.firmware.items()):
        ET.SubElement(root, _NS + "firmware",
                      {"name": name, "value": "absent" if fw is None else f"{fw:#x}"})
    if t.reg_list is not None:
        ET.SubElement(root, _NS + "register-list").text = format_ids(t.reg_list)
    platform_xml.to_element(root, t.platform, _NS)
    for name, value in t.properties:
        ET.SubElement(root, _NS + "property", {"name": name, "value": f"{value:#x}"})
    return root


def translation_from_element(elem: Readable, path: str) -> Translation:
    """Read this project's ``<metadata>`` element of a domain."""
    try:
        version = int(elem.get("version", "1"))
    except ValueError:
        raise ParseError(path, None, f"<metadata><cpu xmlns='{NAMESPACE}'> has version "
                         f"'{elem.get('version')}', not a number") from None
    if version > FORMAT_VERSION:
        raise ParseError(path, None, f"the domain's CPU metadata is format {version}, "
                         f"written by a newer libvirt-arm-cpu (this one reads format "
                         f"{FORMAT_VERSION}): upgrade libvirt-arm-cpu on this host")
    # format 1 knew the SYSREG method only
    method = elem.get("method", METHOD_SYSREG)
    if method not in METHODS:
        raise ParseError(path, None, f"the domain's CPU metadata names method '{method}', "
                         f"not one of {', '.join(METHODS)}")
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
    wide = [n for n, v in values.items() if not 0 <= v < 1 << 64]
    if wide or "" in values:
        raise ParseError(path, None, f"the domain's CPU metadata has <register name="
                         f"'{(wide or [''])[0]}'>: expected a name and a 64-bit value")
    fw: dict[str, int | None] = {}
    for f in elem.iter(_NS + "firmware"):
        name, text = f.get("name", ""), f.get("value", "")
        if name not in FIRMWARE_SETTABLE or name in fw or not (
                text == "absent" or re.fullmatch(r"0x[0-9a-fA-F]{1,16}", text)):
            raise ParseError(path, None, f"the domain's CPU metadata has <firmware "
                             f"name='{name}' value='{text}'>: expected one of "
                             f"{', '.join(FIRMWARE_SETTABLE)}, each once, with a 0x hex "
                             f"value or 'absent'")
        fw[name] = None if text == "absent" else int(text, 16)
    reg_list = None
    lst = elem.find(_NS + "register-list")
    if lst is not None:
        try:
            reg_list = parse_ids(lst.text)
        except ValueError:
            raise ParseError(path, None, "the domain's CPU metadata has a <register-list> "
                             "that is not KVM register ids in hex") from None
    off = []
    for v in elem.iter(_NS + "vcpu-feature"):
        name = v.get("name", "")
        if name not in VCPU_FEATURES or v.get("state", "off") != "off":
            raise ParseError(path, None, f"the domain's CPU metadata has <vcpu-feature "
                             f"name='{name}' state='{v.get('state')}'>: expected one of "
                             f"{', '.join(VCPU_FEATURES)}, state 'off'")
        off.append(name)
    return Translation(elem.findtext(_NS + "original") or "", values, props,
               host.get("name", "") if host is not None else "",
               host.get("fingerprint", "") if host is not None else "",
               elem.get("model", ""), version, method, tuple(sorted(off)),
               elem.findtext(_NS + "original-pmu") or "", fw, reg_list,
               platform_xml.from_element(elem.find(_NS + "platform"), path, _NS))



class PassthroughCpu:
    """``<cpu mode='host-passthrough' check='none'>``: the children of the
    original that host-passthrough takes too, and one ``<feature
    policy='disable'>`` per vCPU feature libvirt switches with a CPU feature."""

    def __init__(self, off: tuple[str, ...], sve_lengths: frozenset[int] | None = None) -> None:
        self.off = off
        # libvirt's sveNNN features (QEMU's -cpu host,sveNNN=on): naming the
        # guest's lengths switches the host's others off
        self.sve_lengths = frozenset() if "sve" in off else frozenset(sve_lengths or ())

    def element(self, original: ET.Element | None) -> ET.Element:
        cpu = ET.Element("cpu", {"mode": "host-passthrough", "check": "none"})
        if original is not None:
            for child in original:
                if child.tag in _KEPT_CPU_CHILDREN:
                    cpu.append(_copy(child))
            cpu.text, cpu.tail = original.text, original.tail
        for name in sorted(self.off):
            if name in _LIBVIRT_CPU_FEATURE:
                # libvirt's schema puts <feature> after <topology> etc. in any order
                ET.SubElement(cpu, "feature", {"policy": "disable",
                                               "name": _LIBVIRT_CPU_FEATURE[name]})
        for length in sorted(self.sve_lengths):
            ET.SubElement(cpu, "feature", {"policy": "require", "name": f"sve{length}"})
        return cpu


class Pmu:
    """``<features><pmu state='on|off'/>``: libvirt's PMU switch (-cpu ...,pmu=off)."""

    @staticmethod
    def find(root: Readable) -> Readable | None:
        feats = root.find("features")
        return feats.find("pmu") if feats is not None else None

    @staticmethod
    def switched_off(root: Readable) -> bool:
        pmu = Pmu.find(root)
        return pmu is not None and pmu.get("state") == "off"

    @staticmethod
    def set_off(root: ET.Element) -> str:
        """Switch the PMU off; returns the <pmu> element it replaced ("" if none)."""
        feats = root.find("features")
        if feats is None:
            feats = ET.Element("features")
            _insert_in_order(root, feats)
        old = feats.find("pmu")
        text = _serialize(old) if old is not None else ""
        if old is not None:
            feats.remove(old)
        ET.SubElement(feats, "pmu", {"state": "off"})
        return text

    @staticmethod
    def restore(root: ET.Element, original: str, path: str) -> None:
        feats = root.find("features")
        if feats is None:
            return
        mine = feats.find("pmu")
        if mine is not None:
            feats.remove(mine)
        if original:
            feats.append(parse_untrusted(original.encode(), path + " (original <pmu>)"))
        elif not len(feats) and not feats.attrib:
            root.remove(feats)


class QemuCommandline:
    """``<qemu:commandline>``: ``<qemu:arg value=...>`` s and ``<qemu:env
    name=... value=...>`` s (libvirt's schema interleaves the two)."""

    def __init__(self, root: ET.Element) -> None:
        self.root = root

    def _elem(self, create: bool = False) -> ET.Element | None:
        cmd = self.root.find(_QNS + "commandline")
        if cmd is None and create:
            cmd = ET.SubElement(self.root, _QNS + "commandline")
        return cmd

    @staticmethod
    def cpu_arguments(root: Readable) -> list[str]:
        """The -cpu values given to QEMU in the domain *root* (normally ours alone)."""
        cmd = root.find(_QNS + "commandline")
        if cmd is None:
            return []
        args = [a.get("value", "") for a in cmd.findall(_QNS + "arg")]
        return [args[i + 1] for i in range(len(args) - 1) if args[i] == "-cpu"]

    @staticmethod
    def env(root: Readable) -> dict[str, str]:
        """The <qemu:env> variables of the domain *root*."""
        cmd = root.find(_QNS + "commandline")
        if cmd is None:
            return {}
        return {e.get("name", ""): e.get("value", "") for e in cmd.findall(_QNS + "env")}

    def add_cpu_argument(self, value: str) -> None:
        cmd = self._elem(create=True)
        assert cmd is not None
        ET.SubElement(cmd, _QNS + "arg", {"value": "-cpu"})
        ET.SubElement(cmd, _QNS + "arg", {"value": value})

    def drop_cpu_argument(self, value: str) -> None:
        cmd = self._elem()
        if cmd is None:
            return
        args = cmd.findall(_QNS + "arg")
        for i in range(len(args) - 1):
            if args[i].get("value") == "-cpu" and args[i + 1].get("value") == value:
                cmd.remove(args[i])
                cmd.remove(args[i + 1])
                break
        self._drop_if_empty()

    def set_env(self, env: dict[str, str]) -> None:
        """Set each variable (replacing one of the same name)."""
        if not env:
            return
        self.drop_env(tuple(env))
        cmd = self._elem(create=True)
        assert cmd is not None
        for name, value in env.items():
            ET.SubElement(cmd, _QNS + "env", {"name": name, "value": value})

    def drop_env(self, names: tuple[str, ...]) -> None:
        cmd = self._elem()
        if cmd is None:
            return
        for e in cmd.findall(_QNS + "env"):
            if e.get("name") in names:
                cmd.remove(e)
        self._drop_if_empty()

    def _drop_if_empty(self) -> None:
        cmd = self._elem()
        if cmd is not None and not len(cmd):
            self.root.remove(cmd)


# the environment variables of the loader method (contract with loader.py)
LOADER_ENV = ("LD_PRELOAD", "LIBVIRT_ARM_CPU_ID_REGS")


class Domain:
    """A domain XML document and the CPU edits of a translation."""

    def __init__(self, root: Readable, path: str) -> None:
        self.root = root
        self.path = path
        # the document, while *root* is a LightElement (Domain.read): the
        # first edit reads it again with ElementTree
        self._data: bytes | None = None

    @classmethod
    def parse(cls, data: bytes, path: str = "<domain>") -> Domain:
        return cls.from_root(parse_untrusted(data, path), path)

    @classmethod
    def read(cls, data: bytes, path: str = "<domain>", root: LightElement | None = None
             ) -> Domain:
        """:meth:`parse` for reading: the tree by expat alone
        (:func:`libvirt_arm_cpu.xmlsafe.parse_light`; *root* when read so
        already), which spares the libvirt hook ElementTree's import on a
        domain's check.  Edits read the document again with ElementTree."""
        dom = cls.from_root(parse_light(data, path) if root is None else root, path)
        dom._data = data
        return dom

    def tree(self) -> ET.Element:
        """The document as ElementTree's tree (what edits work on: a
        domain :meth:`read` is read again with ElementTree)."""
        if self._data is not None:
            self.root, self._data = parse_untrusted(self._data, self.path), None
        return self.root        # type: ignore[return-value]

    @classmethod
    def from_root(cls, root: Readable, path: str = "<domain>") -> Domain:
        """A document already read by :func:`libvirt_arm_cpu.xmlsafe.parse_untrusted`
        (or by ``parse_light``, for reading only: :meth:`read` keeps the
        bytes that edits need)."""
        if root.tag != "domain":
            raise ParseError(path, None, f"root element is <{shown(element_name(root.tag))}>, expected <domain>")
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
        return cpu_from_element(elem, self.path) if elem is not None else None

    @property
    def sve_lengths(self) -> frozenset[int]:
        """The SVE vector lengths its ``<cpu>`` gives the guest (libvirt's
        ``sveNNN`` features, required or forced; QEMU switches the rest off)."""
        cpu = self.root.find("cpu")
        out = set()
        for f in cpu.findall("feature") if cpu is not None else ():
            length = sve_length_feature(f.get("name") or "")
            if length and f.get("policy", "require") in ("require", "force"):
                out.add(length)
        return frozenset(out)

    @property
    def gic_version(self) -> int | None:
        """The GIC the domain asks for (``<features><gic version='3'/>``);
        None for none, 'host' or a version this does not know."""
        gic = self.root.find("features/gic")
        version = gic.get("version", "") if gic is not None else ""
        return int(version) if version in ("2", "3", "4", "5") else None

    @property
    def pmu_off(self) -> bool:
        """Does the domain switch the PMU off itself (<features><pmu state='off'/>)?"""
        return Pmu.switched_off(self.root)

    def _metadata_element(self) -> Readable | None:
        meta = self.root.find("metadata")
        return meta.find(_NS + "cpu") if meta is not None else None

    @property
    def translation(self) -> Translation | None:
        elem = self._metadata_element()
        return translation_from_element(elem, self.path) if elem is not None else None

    def cpu_arguments(self) -> list[str]:
        """The -cpu values in <qemu:commandline> (normally ours alone)."""
        return QemuCommandline.cpu_arguments(self.root)

    def qemu_env(self) -> dict[str, str]:
        """The <qemu:env> variables QEMU is started with."""
        return QemuCommandline.env(self.root)

    def loader_env(self) -> dict[str, str]:
        """The loader method's variables among them."""
        return {k: v for k, v in self.qemu_env().items() if k in LOADER_ENV}

    # -- edits -----------------------------------------------------------------

    def original(self) -> Domain:
        """This domain with a translation undone: the original <cpu> (and
        <pmu>) back, our metadata, QEMU arguments and environment gone.  A
        domain without one is returned as is."""
        t = self.translation
        if t is None:
            return self
        root = _copy(self.tree())
        meta = root.find("metadata")
        assert meta is not None
        for child in list(meta):
            if child.tag == _NS + "cpu":
                meta.remove(child)
        if not len(meta):
            root.remove(meta)
        _undo_qemu_input(root, t)
        if "pmu" in t.vcpu_off:
            Pmu.restore(root, t.original_pmu, self.path)
        cpu = root.find("cpu")
        if t.original_cpu:
            restored = parse_untrusted(t.original_cpu.encode(), self.path + " (original <cpu>)")
            if cpu is not None:
                restored.tail = cpu.tail
                root[list(root).index(cpu)] = restored
            else:
                _insert_in_order(root, restored)
        elif cpu is not None:
            root.remove(cpu)
        return Domain(root, self.path)

    def translated(self, t: Translation, env: dict[str, str] | None = None) -> Domain:
        """This domain (its original, if translated before) with *t* applied;
        *env*: the loader method's variables (``loader.environment``)."""
        base = self.original()
        root = _copy(base.tree())
        cpu = root.find("cpu")
        t = replace(t, original_cpu=_serialize(cpu) if cpu is not None else "")
        new_cpu = PassthroughCpu(t.vcpu_off, t.platform.sve_vls).element(cpu)
        if cpu is not None:
            root[list(root).index(cpu)] = new_cpu
        else:
            _insert_in_order(root, new_cpu)
        if "pmu" in t.vcpu_off:
            t = replace(t, original_pmu=Pmu.set_off(root))
        meta = root.find("metadata")
        if meta is None:
            meta = ET.Element("metadata")
            _insert_in_order(root, meta)
        meta.append(translation_element(t))
        _apply_qemu_input(root, t, env)
        return Domain(root, self.path)

    def with_arguments(self, t: Translation, env: dict[str, str] | None = None) -> Domain:
        """This translated domain with *t*'s metadata and QEMU input (arguments
        or environment: the method may change) and nothing else changed (the
        migrate/restore filter: libvirt checks the rest against the running
        or saved guest)."""
        old = self.translation
        assert old is not None
        root = _copy(self.tree())
        meta = root.find("metadata")
        assert meta is not None
        elem = meta.find(_NS + "cpu")
        assert elem is not None
        meta[list(meta).index(elem)] = translation_element(t)
        _undo_qemu_input(root, old)
        _apply_qemu_input(root, t, env)
        return Domain(root, self.path)

    def tostring(self) -> bytes:
        ET.register_namespace("arm", NAMESPACE)
        ET.register_namespace("qemu", QEMU_NAMESPACE)
        root = _copy(self.tree())
        ET.indent(root, space="  ")
        return ET.tostring(root, encoding="unicode").encode() + b"\n"


def _apply_qemu_input(root: ET.Element, t: Translation, env: dict[str, str] | None) -> None:
    cmd = QemuCommandline(root)
    if t.qemu_cpu:
        cmd.add_cpu_argument(t.qemu_cpu)
    if t.method == METHOD_LOADER:
        assert env, "the loader method needs its environment"
        cmd.set_env(env)


def _undo_qemu_input(root: ET.Element, t: Translation) -> None:
    cmd = QemuCommandline(root)
    if t.qemu_cpu:
        cmd.drop_cpu_argument(t.qemu_cpu)
    if t.method == METHOD_LOADER:
        cmd.drop_env(LOADER_ENV)


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


def _copy(elem: ET.Element) -> ET.Element:
    import copy     # translating only: not on the hook's path
    return copy.deepcopy(elem)


def _serialize(elem: ET.Element) -> str:
    clone = _copy(elem)
    clone.tail = None
    return ET.tostring(clone, encoding="unicode")
