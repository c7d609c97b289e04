"""The libvirt hook's memory of the starts it has allowed.

Checking a translated domain (:func:`libvirt_arm_cpu.engine.validate
.validate_translation`) is a pure function of its inputs: the domain's CPU
metadata and the QEMU input it carries, this host's profile, the register
knowledge base, the settings that change the check, and -- for try-apply,
which asks KVM -- the running kernel.  So the hook remembers each allowance
under a digest of all of them, and a start whose inputs are exactly those of
one allowed before is allowed again without importing the engine: what
costs the hook most is Python importing its code, not the check.

The key holds:

* the operation (not the domain's name: the check reads it for its
  messages alone, so a domain with the CPU of one allowed before, a new
  guest of a fleet's model, is allowed as that one was);
* the domain's ``<metadata>`` element of this project, its
  ``<qemu:commandline>``, its ``<cpu>`` (the SVE lengths) and its
  ``<features><gic>``, element by element (tags, attributes, text): the
  only parts of the domain XML the check reads;
* the profile's and the knowledge base's path, size and modification time,
  the settings' profile, refresh and try-apply, the package's version;
* the kernel release and boot id, and (when the profile is refreshed) the
  QEMU binary's path, size and modification time: what makes a cached
  profile stale.

Only allowances are remembered: a refusal is checked again every time, and
says why.  An allowance that needs the loader checks that it is still on
disk.  Nothing here imports the value types, the formats or the engine;
the memory sits beside the profile (``host.xml.verdicts``), is written
atomically, holds at most :data:`MAX_ENTRIES`, and is believed only when
this user owns it and nobody else can write it, like the profile's compact
copy.
"""

from __future__ import annotations

import marshal
import os

from libvirt_arm_cpu import __version__, namespaces
from libvirt_arm_cpu.deferred import blake2b
from libvirt_arm_cpu.errors import Error
from libvirt_arm_cpu.fileio import atomic_write, read_text, which
from libvirt_arm_cpu.paths import kb_dir, readable_file
from libvirt_arm_cpu.settings import Settings

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from libvirt_arm_cpu.xmlsafe import LightElement

__all__ = ["SUFFIX", "MAX_ENTRIES", "FORMAT", "key", "recall", "remember"]

SUFFIX = ".verdicts"
MAX_ENTRIES = 512
FORMAT = 3          # 2: the key holds <cpu> and the GIC too; 3: not the name
_MAGIC = b"LACV"
_META = "{%s}cpu" % namespaces.DOMAIN_METADATA
_COMMANDLINE = "{%s}commandline" % namespaces.QEMU_COMMANDLINE

Entry = tuple[str, str]     # (the log line after "domain 'NAME': ", the loader's path or "")


def _stat(path: str) -> str:
    st = os.stat(path)
    return f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}"




def _qemu() -> str:
    path = which("qemu-system-aarch64")      # as host.fingerprint.find_qemu
    return _stat(path) if path else "none"


def _element(elem: LightElement, out: list[str]) -> None:
    """*elem* and its children as text, unambiguously (lengths first)."""
    for part in (elem.tag, *sorted(f"{k}={v}" for k, v in elem.attrib.items()),
                 elem.text or "", elem.tail.strip() if elem.tail else ""):
        out.append(f"{len(part)}:{part}")
    out.append(f"[{len(elem)}")
    for child in elem:
        _element(child, out)
    out.append("]")


def key(op: str, root: LightElement, conf: Settings) -> bytes | None:
    """The digest of everything the check of the domain XML whose tree is
    *root* (:func:`libvirt_arm_cpu.xmlsafe.parse_light`) reads; None when
    it cannot be made (the full check will say what is wrong)."""
    try:
        meta = root.find("metadata")
        ours = meta.find(_META) if meta is not None else None
        if root.tag != "domain" or ours is None:
            return None
        parts = [str(FORMAT), __version__, op, conf.profile, str(conf.refresh),
                 str(conf.try_apply), _stat(conf.profile),
                 _stat(os.path.join(kb_dir(), "registers.xml")), os.uname().release,
                 read_text("/proc/sys/kernel/random/boot_id")]
        if conf.refresh:
            parts.append(_qemu())
        _element(ours, parts)
        # and what else the check reads: the <cpu> (its SVE lengths) and the GIC
        gic = root.find("features/gic")
        for elem in (root.find(_COMMANDLINE), root.find("cpu"), gic):
            parts.append("-" if elem is None else "+")
            if elem is not None:
                _element(elem, parts)
    except (OSError, Error):
        return None
    return blake2b("\0".join(parts).encode("utf-8", "surrogateescape"), digest_size=32).digest()


def _path(conf: Settings) -> str:
    return conf.profile + SUFFIX


def _load(conf: Settings) -> dict[bytes, Entry]:
    try:
        with open(_path(conf), "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                return {}
            data = f.read()
        if not data.startswith(_MAGIC):
            return {}
        memo = marshal.loads(data[len(_MAGIC):])
    except (OSError, ValueError, EOFError, TypeError):
        return {}
    if not isinstance(memo, dict):
        return {}
    return {k: v for k, v in memo.items() if isinstance(k, bytes) and isinstance(v, tuple)
            and len(v) == 2 and all(isinstance(x, str) for x in v)}


def recall(conf: Settings, k: bytes) -> Entry | None:
    """The allowance remembered under *k*, if its loader (if any) is still
    installed."""
    entry = _load(conf).get(k)
    if entry is None:
        return None
    loader = entry[1]
    if loader and not readable_file(loader):     # engine.loader.installed
        return None
    return entry


def remember(conf: Settings, k: bytes, message: str, loader: str = "") -> None:
    """Remember an allowance (best effort: a read-only folder is fine)."""
    memo = _load(conf)
    memo.pop(k, None)
    memo[k] = (message, loader)
    while len(memo) > MAX_ENTRIES:          # the oldest first
        del memo[next(iter(memo))]
    try:
        atomic_write(_path(conf), _MAGIC + marshal.dumps(memo), mode=0o644, durable=False)
    except (OSError, Error):
        pass
