"""The cached profile of this host, refreshed when it goes stale.

The probe takes seconds (a scratch VM, QEMU's QMP); validating a domain on
every start must not.  The profile is cached (default
``/var/cache/libvirt-arm-cpu/host.xml``) with a fingerprint of what it
depends on -- kernel release, boot id, the QEMU binary (path, size, mtime),
every CPU's MIDR, the tool's version -- and probed again when any differs.
"""

from __future__ import annotations

import os

from libvirt_arm_cpu.errors import ParseError
from libvirt_arm_cpu.formats.profile import read_profile, write_profile
from libvirt_arm_cpu.host.fingerprint import current_fingerprint
from libvirt_arm_cpu.model import HostProfile
from libvirt_arm_cpu.settings import Settings

__all__ = ["DEFAULT_CACHE", "cached_profile", "configured_profile", "is_fresh"]

DEFAULT_CACHE = "/var/cache/libvirt-arm-cpu/host.xml"


def is_fresh(profile: HostProfile, emulator: str | None = None) -> bool:
    return profile.fingerprint.digest == current_fingerprint(emulator).digest


def cached_profile(path: str = DEFAULT_CACHE, emulator: str | None = None,
                   refresh: bool = False, progress=None) -> tuple[HostProfile, bool]:
    """The host's profile and whether it was probed just now.

    A cache that is missing, unreadable, invalid or stale is replaced by a
    fresh probe (written atomically).
    """
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
    return profile, True


def configured_profile(conf: Settings) -> HostProfile:
    """The profile the settings name (the hook's way: the settings are read
    once, a broken file falls back to the defaults): this host's cache,
    probed again when stale, unless the settings say never."""
    if conf.refresh:
        return cached_profile(conf.profile)[0]
    return read_profile(conf.profile, validate_schema=False)
