"""The XML form of :class:`~libvirt_arm_cpu.model.Platform`: what a guest is
given beyond the ID registers, in a host profile, a CPU model and a
translated domain's metadata (the same element in each, in each one's
namespace; schema ``xml/schemas/platform.xsd``)::

    <platform>
      <sve lengths='128 256 512'/>          <!-- lengths='': no SVE -->
      <ipa bits='48'/>
      <mte supported='no'/>
      <pmu counters='6' settable='yes'/>
      <gic versions='3' its='yes'/>
      <el2 supported='no'/>
      <aarch32-el1 supported='yes'/>
      <timer frequency='1000000000'/>
    </platform>

An element left out is not known (not probed); no <platform> at all: a file
written before the probe measured any of it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.model import SVE_LENGTHS, Platform
from libvirt_arm_cpu.xmlsafe import shown

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from libvirt_arm_cpu.xmlsafe import Readable

__all__ = ["to_element", "from_element", "to_json"]

_YES_NO = {"yes": True, "no": False}


def _yn(v: bool) -> str:
    return "yes" if v else "no"


def to_element(parent: ET.Element, p: Platform, ns: str) -> ET.Element | None:
    """Append <platform> to *parent* (namespace *ns*, "{urn}" form); nothing
    when *p* knows nothing."""
    if not p.known():
        return None
    root = ET.SubElement(parent, ns + "platform")

    def sub(tag: str, **attrs: str) -> None:
        ET.SubElement(root, ns + tag, {k.replace("_", "-"): v for k, v in attrs.items()})

    if p.sve_vls is not None:
        sub("sve", lengths=" ".join(str(v) for v in sorted(p.sve_vls)))
    if p.ipa_bits is not None:
        sub("ipa", bits=str(p.ipa_bits))
    if p.mte is not None:
        sub("mte", supported=_yn(p.mte))
    if p.pmu_counters is not None:
        attrs = {"counters": str(p.pmu_counters)}
        if p.pmu_counters_settable is not None:
            attrs["settable"] = _yn(p.pmu_counters_settable)
        sub("pmu", **attrs)
    if p.gic is not None:
        attrs = {"versions": " ".join(str(v) for v in sorted(p.gic))}
        if p.its is not None:
            attrs["its"] = _yn(p.its)
        sub("gic", **attrs)
    if p.el2 is not None:
        sub("el2", supported=_yn(p.el2))
    if p.aarch32_el1 is not None:
        sub("aarch32-el1", supported=_yn(p.aarch32_el1))
    if p.cntfrq is not None:
        sub("timer", frequency=str(p.cntfrq))
    return root


def from_element(elem: Readable | None, path: str, ns: str) -> Platform:
    """The <platform> element read and checked (an empty Platform for None).

    :raise ParseError: a value out of its range, naming the element.
    """
    if elem is None:
        return Platform()

    def child(tag: str) -> Readable | None:
        return elem.find(ns + tag)

    def bad(tag: str, attr: str, value: str, expected: str) -> ParseError:
        return ParseError(path, None, f"<platform><{tag} {attr}='{shown(value)}'>: expected "
                          f"{expected}")

    def number(tag: str, attr: str, low: int, high: int) -> int | None:
        e = child(tag)
        if e is None:
            return None
        text = e.get(attr, "")
        if not re.fullmatch(r"[0-9]{1,20}", text) or not low <= int(text) <= high:
            raise bad(tag, attr, text, f"a whole number from {low} to {high}")
        return int(text)

    def flag(tag: str, attr: str = "supported") -> bool | None:
        e = child(tag)
        if e is None or (attr != "supported" and e.get(attr) is None):
            return None
        text = e.get(attr, "")
        if text not in _YES_NO:
            raise bad(tag, attr, text, "yes or no")
        return _YES_NO[text]

    def numbers(tag: str, attr: str, allowed: frozenset[int], what: str) -> frozenset[int] | None:
        e = child(tag)
        if e is None:
            return None
        text = e.get(attr, "")
        words = text.split()
        if not all(w.isdigit() and int(w) in allowed for w in words):
            raise bad(tag, attr, text, what)
        return frozenset(int(w) for w in words)

    return Platform(
        sve_vls=numbers("sve", "lengths", SVE_LENGTHS,
                        "vector lengths in bits, multiples of 128 up to 2048"),
        ipa_bits=number("ipa", "bits", 32, 52),
        mte=flag("mte"),
        pmu_counters=number("pmu", "counters", 0, 31),
        pmu_counters_settable=flag("pmu", "settable"),
        gic=numbers("gic", "versions", frozenset({2, 3, 4, 5}), "GIC versions (2, 3)"),
        its=flag("gic", "its"),
        el2=flag("el2"),
        aarch32_el1=flag("aarch32-el1"),
        cntfrq=number("timer", "frequency", 1, 1 << 32),
    )


def to_json(p: Platform) -> dict | None:
    if not p.known():
        return None
    return {"sve_lengths": None if p.sve_vls is None else sorted(p.sve_vls),
            "ipa_bits": p.ipa_bits, "mte": p.mte, "pmu_counters": p.pmu_counters,
            "pmu_counters_settable": p.pmu_counters_settable,
            "gic_versions": None if p.gic is None else sorted(p.gic), "its": p.its,
            "el2": p.el2, "aarch32_el1": p.aarch32_el1, "timer_frequency": p.cntfrq}
