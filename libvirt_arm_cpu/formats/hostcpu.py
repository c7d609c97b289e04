"""A libvirt host CPU description (``virsh capabilities``' ``<host><cpu>``).

On aarch64 libvirt describes the host CPU by model name (from MIDR), vendor
and the hwcap names of /proc/cpuinfo as ``<feature name='...'/>``.  That is
all a host without this project's helper offers, so compare can still judge
it at feature level: less precise than a host profile (no field values
beyond what hwcaps tell, no writable masks), and marked so.
"""

from __future__ import annotations


from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.model import HostCpu
from libvirt_arm_cpu.formats.kinds import element_name
from libvirt_arm_cpu.xmlsafe import parse_untrusted, shown

__all__ = ["from_xml", "looks_like_host_cpu"]


def looks_like_host_cpu(data: bytes) -> bool:
    head = data[:600].lstrip()
    return head.startswith((b"<capabilities", b"<cpu")) or b"<capabilities" in head[:200]


def from_xml(data: bytes, path: str = "<host cpu>") -> HostCpu:
    """Read ``virsh capabilities`` output or its ``<cpu>`` element.

    :raise ParseError: malformed XML (or a DOCTYPE, entities, an encoding
        Python lacks: the safe reader), no host CPU, or not an aarch64 host.
    """
    root = parse_untrusted(data, path)
    if root.tag == "capabilities":
        cpu = root.find("host/cpu")
        if cpu is None:
            raise ParseError(path, None, "<capabilities> has no <host><cpu>")
    elif root.tag == "cpu":
        cpu = root
    else:
        raise ParseError(path, None, f"root element is <{shown(element_name(root.tag))}>, expected <capabilities> "
                         f"or a host <cpu>")
    arch = (cpu.findtext("arch") or "").strip()
    if arch and arch != "aarch64":
        raise ParseError(path, None, f"host CPU of a {shown(arch)} machine, not aarch64")
    feats = frozenset((f.get("name") or "").strip().lower() for f in cpu.findall("feature")
                      if f.get("policy", "require") in ("require", "force"))
    return HostCpu(arch or "aarch64", (cpu.findtext("model") or "").strip(),
                   (cpu.findtext("vendor") or "").strip(), feats - {""})
