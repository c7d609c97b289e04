"""Reading many host profiles fast: fleets have few distinct CPUs.

Profiles of hosts with the same CPU, kernel and QEMU differ only in their
identity (host name, probe time, boot id).  :func:`profile_key` names what
baseline and compare depend on (the QEMU element, and everything from the
capabilities to the registers), so a reader can parse and schema-validate
each distinct content once and give the other files the same objects after
:func:`check_identity` of their own part; baseline and compare then work per
distinct content (10,000 hosts cost about what their few CPUs cost).
"""

from __future__ import annotations

import re

from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.formats.profile import NAMESPACE
from libvirt_arm_cpu.xmlsafe import MAX_BYTES, parse_untrusted

__all__ = ["profile_key", "check_identity"]

_QEMU = re.compile(rb"<qemu\b.*?(?:/>|</qemu>)", re.S)
_TAIL = re.compile(rb"\s*</hostprofile>\s*\Z")


def profile_key(data: bytes) -> bytes | None:
    """What decides a profile's meaning for baseline and compare, or None
    when the document does not have the expected shape."""
    start = data.find(b"<vcpu-features")     # vCPU-feature-off records count too
    end = data.rfind(b"</registers>")
    qemu = _QEMU.search(data, 0, start if start > 0 else len(data))
    if start < 0 or end < start or qemu is None:
        return None
    import hashlib      # here: a run the profile cache answers reads no file (OpenSSL: 3 ms)
    h = hashlib.sha1(qemu.group(0))
    h.update(data[start:end])
    return h.digest()


def check_identity(data: bytes, path: str) -> str:
    """Well-formedness and the root/identity of the part before the shared
    content, through the safe reader (no DOCTYPE, no entities); returns the
    host name.  The shared content must follow it directly and only the
    closing tag come after; a file laid out otherwise (a comment at the end,
    say) or too large is parsed whole."""
    cut = data.find(b"<capabilities")
    start = data.find(b"<vcpu-features")
    end = data.rfind(b"</registers>")
    if (len(data) <= MAX_BYTES and 0 <= start <= cut <= end
            and _TAIL.match(data, end + len(b"</registers>"))):
        root = parse_untrusted(data[:cut] + b"</hostprofile>", path)
    else:
        root = parse_untrusted(data, path)
    ident = root.find("{%s}identity" % NAMESPACE)
    if root.tag != "{%s}hostprofile" % NAMESPACE or ident is None:
        raise ParseError(path, None, "not a host profile")
    return ident.get("hostname", "")
