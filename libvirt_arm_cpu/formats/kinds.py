"""What kind of input a file is, when it is not the kind a command expected.

Users hand a host profile to a command that wants a CPU model, a register
dump to one that wants a profile, and so on.  The readers refuse the file
first (they never guess); then :func:`kind_of` looks at it once more and
:func:`wrong_kind` says what it is and what to run to get what was
expected.  Also here: element names as messages show them (never
ElementTree's ``{uri}name`` notation).
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET

from libvirt_arm_cpu import namespaces
from libvirt_arm_cpu.errors import WrongKind

__all__ = ["HOST_PROFILE", "CPU_MODEL", "REGISTER_DUMP", "kind_of", "wrong_kind",
           "element_name", "plain_names"]

_PROFILE_NAMESPACE = namespaces.HOST_PROFILE
_MODEL_NAMESPACE = namespaces.CPU_MODEL


# -- what a file is, when it is not what was expected --------------------------

HOST_PROFILE = "a host profile"
CPU_MODEL = "a CPU model"
REGISTER_DUMP = "a register dump"

# The patterns here are compiled when first used (re keeps them): compiling
# them all on import costs the hook's check a millisecond, and it uses none.
# a text dump's line (formats.dump): NAME=VALUE, NAME: VALUE or NAME VALUE
_DUMP_LINE = r"[A-Za-z][A-Za-z0-9_]*(?:\s*[=:]\s*|\s+)[0-9][0-9A-Fa-fxXbBoO_]*\Z"
_MODEL_ROOT = rb"<cpu[\s>/]"


def kind_of(data: bytes, root: ET.Element | None = None) -> str | None:
    """Which of this project's inputs *data* is: :data:`HOST_PROFILE`,
    :data:`CPU_MODEL` (cpu-baseline's ``<cpu>``) or :data:`REGISTER_DUMP`
    (``NAME=VALUE`` lines, Firecracker JSON); None for anything else.  Cheap:
    a few bytes are looked at, or *root*, the element already parsed (the
    readers ask only once they have refused *data*)."""
    if root is not None:
        if root.tag == "{%s}hostprofile" % _PROFILE_NAMESPACE:
            return HOST_PROFILE
        if root.tag == "cpu" and root.find("{%s}registers" % _MODEL_NAMESPACE) is not None:
            return CPU_MODEL
        return None
    head = data[:4096].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head.startswith(b"<"):
        if b"<hostprofile" in head[:400]:
            return HOST_PROFILE
        if re.search(_MODEL_ROOT, head[:400]) and _MODEL_NAMESPACE.encode() in data:
            return CPU_MODEL
        return None
    if head.startswith(b"{"):
        return REGISTER_DUMP if b'"reg_modifiers"' in data else None   # Firecracker's
    for line in head.decode("utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return REGISTER_DUMP if re.match(_DUMP_LINE, line) else None
    return None


def wrong_kind(path: str, found: str, expected: str) -> WrongKind:
    """The error for *path*, which is *found* where *expected* goes, saying
    what to run to make what was expected."""
    if found == REGISTER_DUMP:
        stem = os.path.splitext(path)[0] if path != "-" else "host"
        profile = stem + ".xml" if stem + ".xml" != path else stem + "-profile.xml"
        hint = f"turn it into a host profile with 'libvirt-arm-cpu import {path} -o {profile}'"
        if HOST_PROFILE not in expected:
            hint += f", then make a model with 'libvirt-arm-cpu cpu-baseline {profile}'"
    elif found == HOST_PROFILE:
        if CPU_MODEL in expected:
            hint = f"make a model with 'libvirt-arm-cpu cpu-baseline {path}'"
        else:
            hint = "use it as it is (import makes host profiles from register dumps)"
    elif found == CPU_MODEL and REGISTER_DUMP in expected:
        hint = "import reads NAME=VALUE lines or Firecracker cpu-template-helper JSON"
    else:
        hint = ("a host profile is written by 'libvirt-arm-cpu-helper probe' on that host, or "
                "made from its register dump by 'libvirt-arm-cpu import'")
    return WrongKind(path, found, expected, hint)


def element_name(tag: str) -> str:
    """An element's name as messages show it: ``hostprofile xmlns='urn:...'``
    for ElementTree's ``{urn:...}hostprofile`` (never that notation)."""
    if tag.startswith("{") and "}" in tag:
        uri, local = tag[1:].split("}", 1)
        return f"{local} xmlns='{uri}'"
    return tag


_CLARK = r"\{[^{}\s]*\}(?=[A-Za-z_])"


def plain_names(text: str) -> str:
    """*text* (a schema validator's message, say) with every ``{uri}name``
    written as its prefix-free local name."""
    return re.sub(_CLARK, "", text)
