"""The libvirt QEMU hook: check a translated domain's CPU against this host.

libvirt runs ``/etc/libvirt/hooks/qemu.d/*`` with ``NAME OP SUBOP EXTRA``
and the domain XML on stdin (libvirt's docs/hooks.rst).  The script in
``hooks/`` answers every domain without this project's metadata at once
(exit 0, no output) and hands the rest to :func:`run`:

* ``prepare begin``: refuse the start (exit 1, one line on stderr, which
  libvirt shows inside "Hook script execution failed") when this host
  cannot present the domain's CPU, or its QEMU arguments were made for
  another host; else ask KVM itself (try-apply) where it can;
* ``migrate begin`` (on the destination) and ``restore begin``: the same
  check; print the domain XML with this host's QEMU input (SYSREG arguments
  or the loader's environment, whichever method works here) when it must
  change, nothing when not (libvirt: empty output = unchanged);
* ``reconnect begin``: never fail (that would kill a running guest): log;
* everything else: exit 0.

It never calls back into libvirt (that deadlocks).  Settings:
:mod:`libvirt_arm_cpu.settings`; mode ``warn`` logs instead of refusing.
"""

from __future__ import annotations

import gc
import sys

from libvirt_arm_cpu import methodcache
from libvirt_arm_cpu.errors import Error
from libvirt_arm_cpu.hooklog import Log

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["run", "CHECKED"]

# (operation, sub-operation) pairs the hook acts on
CHECKED = {("prepare", "begin"), ("migrate", "begin"), ("restore", "begin"),
           ("reconnect", "begin")}
REFUSE = 1


def run(argv: Sequence[str], data: bytes, out=None, err=None) -> int:
    """The hook for a domain whose XML mentions this project's namespace.
    Returns the exit status; writes a rewritten XML to *out* (stdout)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if len(argv) < 3:
        Log("auto")("warning", f"hook called with unexpected arguments {list(argv)!r} "
                                f"(expected NAME OPERATION SUB-OPERATION EXTRA): ignored")
        return 0
    name, op, subop = argv[0], argv[1], argv[2]
    if (op, subop) not in CHECKED:
        return 0
    # No cyclic garbage collection while the hook runs: importing the engine
    # and building the profile make tens of thousands of objects, and the
    # collector passes over them all several times (milliseconds of a run
    # that lasts tens of them, and leaves nothing behind)
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run(name, op, data, out, err)
    finally:
        if collecting:
            gc.enable()
        methodcache.save()      # what _check compiled, for the next domain's


def _run(name: str, op: str, data: bytes, out, err) -> int:
    from libvirt_arm_cpu import settings as settings_mod
    try:
        conf = settings_mod.load()
    except Error as e:
        # a broken settings file is reported, and the domain checked with the
        # defaults (enforce, this host's cached profile), never skipped
        Log("auto")("error", f"{e}; using the defaults")
        conf = settings_mod.Settings()
    if conf.mode == "off":
        return 0
    log = Log(conf.log)
    # The XML is read once, by expat alone (importing ElementTree would cost
    # more than the parse); a start exactly like one allowed before is then
    # allowed again without importing the engine (host.verdicts).  XML that
    # does not parse is left to the check, which says why.
    from libvirt_arm_cpu.host import verdicts
    from libvirt_arm_cpu.xmlsafe import parse_light
    try:
        root = parse_light(data, f"domain '{name}' XML")
    except Error:
        root = None
    memo_key = verdicts.key(op, root, conf) if root is not None else None
    known = verdicts.recall(conf, memo_key) if memo_key is not None else None
    if known is not None:
        if known[0]:
            log("info", f"domain '{name}': {known[0]} (as before)")
        return 0
    if op == "reconnect":
        # libvirtd restarted with the guest running: never fail (that would
        # kill it), but say when its CPU no longer fits this host (a kernel
        # or QEMU upgrade under a running guest), so the operator knows it
        # cannot be restarted or migrated here as it is
        try:
            refusal, _, allowed = _check(name, op, data, root, conf, log)
            if refusal:
                log("warning", f"{refusal} (the running guest is left alone)")
            elif allowed is not None and memo_key is not None:
                verdicts.remember(conf, memo_key, *allowed)
        except BaseException as e:      # noqa: BLE001 - never fail a reconnect
            log("warning", f"domain '{name}': reconnect check failed: {e}")
        return 0
    try:
        refusal, rewritten, allowed = _check(name, op, data, root, conf, log)
    except Error as e:
        refusal, rewritten, allowed = f"domain '{name}': {e}", None, None
    if refusal:
        if conf.mode == "warn":
            log("warning", refusal + " (mode warn: allowed)")
            return 0
        log("error", refusal)
        print(f"libvirt-arm-cpu: {refusal}", file=err)
        return REFUSE
    if rewritten is not None:
        out.write(rewritten.decode())
        out.flush()
    elif allowed is not None and memo_key is not None:
        verdicts.remember(conf, memo_key, *allowed)
    return 0


def _check(name: str, op: str, data: bytes, root, conf, log
           ) -> tuple[str | None, bytes | None, tuple[str, str] | None]:
    """:func:`libvirt_arm_cpu.host.startcheck.check`: by the resident
    checker when one runs (it has the engine loaded: host.resident), else
    here, with the value types' methods compiled before (a third of a check)."""
    # imported here: a domain without our metadata never gets this far
    from libvirt_arm_cpu.host import resident
    answer = resident.ask(conf, name, op, data, log)
    if answer is not None:
        return answer
    methodcache.install()
    from libvirt_arm_cpu.host.startcheck import check
    return check(name, op, data, root, conf, log)
