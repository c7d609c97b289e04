"""The cached profile of this host, refreshed when it goes stale.

The probe takes seconds (a scratch VM, QEMU's QMP); validating a domain on
every start must not.  The profile is cached (default
``/var/cache/libvirt-arm-cpu/host.xml``) with a fingerprint of what it
depends on -- kernel release, boot id, the QEMU binary (path, size, mtime),
every CPU's MIDR, the tool's version -- and probed again when any differs.
"""

from __future__ import annotations

import os

from libvirt_arm_cpu.errors import Error, ParseError
from libvirt_arm_cpu.fileio import atomic_write, read_own
from libvirt_arm_cpu.formats import compact
from libvirt_arm_cpu.paths import kb_dir

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from libvirt_arm_cpu.kb.registers import KnowledgeBase
    from libvirt_arm_cpu.model import HostProfile
    from libvirt_arm_cpu.settings import Settings

# The XML reader, the fingerprint and the knowledge base loader are imported
# where used: a hook start answered by the compact copy needs none of them.

__all__ = ["DEFAULT_CACHE", "cached_profile", "configured_profile", "is_fresh", "hook_inputs",
           "COMPACT_SUFFIX"]

DEFAULT_CACHE = "/var/cache/libvirt-arm-cpu/host.xml"
# the compact copy of a profile and the knowledge base (formats.compact) sits
# next to the profile: host.xml -> host.xml.compact
COMPACT_SUFFIX = ".compact"


def is_fresh(profile: HostProfile, emulator: str | None = None) -> bool:
    from libvirt_arm_cpu.host.fingerprint import current_fingerprint
    return profile.fingerprint.digest == current_fingerprint(emulator).digest


def cached_profile(path: str = DEFAULT_CACHE, emulator: str | None = None,
                   refresh: bool = False, progress=None) -> tuple[HostProfile, bool]:
    """The host's profile and whether it was probed just now.

    A cache that is missing, unreadable, invalid or stale is replaced by a
    fresh probe (written atomically).
    """
    from libvirt_arm_cpu.formats.profile import read_profile, write_profile
    if not refresh and os.path.exists(path):
        try:
            profile = read_profile(path, validate_schema=False)
        except ParseError:
            profile = None
        if profile is not None and is_fresh(profile, emulator):
            return profile, False
    from libvirt_arm_cpu.host.probe import probe_host    # seconds of work; imported only then
    profile = probe_host(emulator, progress=progress)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_profile(profile, path)
    # and the hook's compact copy, so that its first check after a probe
    # reads no XML
    stamps = _stamps(path)
    if stamps is not None:
        from libvirt_arm_cpu.kb import load as kb_load
        _write_compact(path, profile, kb_load.registers(), stamps)
    return profile, True


def configured_profile(conf: Settings) -> HostProfile:
    """The profile the settings name (the hook's way: the settings are read
    once, a broken file falls back to the defaults): this host's cache,
    probed again when stale, unless the settings say never."""
    if conf.refresh:
        return cached_profile(conf.profile)[0]
    from libvirt_arm_cpu.formats.profile import read_profile
    return read_profile(conf.profile, validate_schema=False)


def hook_inputs(conf: Settings) -> tuple[HostProfile, KnowledgeBase]:
    """The configured profile and the register knowledge base, as the hook
    needs them on every domain start: from their compact copy when it was
    made from exactly these two files (and the profile is still fresh,
    when the settings refresh it), else from the XML, leaving a new copy
    behind for the next start where the profile's folder is writable."""
    copy = _read_compact(conf.profile)
    if copy is not None and (not conf.refresh or is_fresh(copy[0])):
        return copy
    before = _stamps(conf.profile)
    from libvirt_arm_cpu.kb import load as kb_load
    profile = configured_profile(conf)
    kb = kb_load.registers()
    after = _stamps(conf.profile)
    if before is not None and before == after:     # not replaced while we read it
        _write_compact(conf.profile, profile, kb, after)
    return profile, kb


def _stamps(profile_path: str) -> tuple[compact.Stamp, compact.Stamp] | None:
    """What identifies the versions of the profile and of the knowledge base
    a compact copy is made from; None when either cannot be read."""
    try:
        return (compact.stamp(profile_path),
                compact.stamp(os.path.join(kb_dir(), "registers.xml")))
    except OSError:
        return None


def _write_compact(profile_path: str, profile: HostProfile, kb: KnowledgeBase,
                   stamps: tuple[compact.Stamp, compact.Stamp]) -> None:
    """Leave the compact copy of *profile* (read from *profile_path*, whose
    file and the knowledge base's have *stamps*) beside it."""
    try:
        atomic_write(profile_path + COMPACT_SUFFIX, compact.dumps(profile, kb, *stamps),
                     mode=0o644, durable=False)
    except (OSError, Error):
        pass            # a copy is an optimisation: a read-only folder is fine


# The last compact copy decoded: its bytes, the stamps it was checked
# against, and what it gave.  The resident checker (host.resident) reads
# the copy for every domain it checks; the values are frozen, so the same
# bytes give the same objects again.
_last: tuple[bytes, tuple[compact.Stamp, compact.Stamp],
             tuple[HostProfile, KnowledgeBase]] | None = None


def _read_compact(profile_path: str) -> tuple[HostProfile, KnowledgeBase] | None:
    # trusted like the profile beside it, so held to its owner: ours, and
    # writable by nobody else
    data = read_own(profile_path + COMPACT_SUFFIX)
    stamps = _stamps(profile_path) if data is not None else None
    if data is None or stamps is None:
        return None
    global _last
    if _last is not None and _last[0] == data and _last[1] == stamps:
        return _last[2]
    got = compact.loads(data, *stamps)
    if got is not None:
        _last = (data, stamps, got)
    return got
