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
import os
import sys

from libvirt_arm_cpu import methodcache
from libvirt_arm_cpu.errors import Error

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["run", "CHECKED"]

# (operation, sub-operation) pairs the hook acts on
CHECKED = {("prepare", "begin"), ("migrate", "begin"), ("restore", "begin"),
           ("reconnect", "begin")}
REFUSE = 1


class _Log:
    def __init__(self, how: str) -> None:
        self.syslog = None
        if how == "syslog" or (how == "auto" and os.path.exists("/dev/log")):
            import syslog
            syslog.openlog("libvirt-arm-cpu", syslog.LOG_PID, syslog.LOG_DAEMON)
            self.syslog = syslog

    def __call__(self, level: str, message: str) -> None:
        if self.syslog is not None:
            prio = {"error": self.syslog.LOG_ERR, "warning": self.syslog.LOG_WARNING}.get(
                level, self.syslog.LOG_INFO)
            self.syslog.syslog(prio, message)
        else:
            print(f"libvirt-arm-cpu: {level}: {message}", file=sys.stderr)


def run(argv: Sequence[str], data: bytes, out=None, err=None) -> int:
    """The hook for a domain whose XML mentions this project's namespace.
    Returns the exit status; writes a rewritten XML to *out* (stdout)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if len(argv) < 3:
        _Log("auto")("warning", f"hook called with unexpected arguments {list(argv)!r} "
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
        _Log("auto")("error", f"{e}; using the defaults")
        conf = settings_mod.Settings()
    if conf.mode == "off":
        return 0
    log = _Log(conf.log)
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
    """(refusal message or None, rewritten XML or None, what to remember of
    an allowance that rewrote nothing: the line logged and the loader it
    needs, or None).  *root*: the XML *data* as read by
    :func:`libvirt_arm_cpu.xmlsafe.parse_light` (None: read it here)."""
    # imported here: a domain without our metadata never gets this far
    # and only what checking needs: not the service layer, the feature
    # catalog or the dependency rules (translating needs those); the value
    # types with their methods compiled before (a third of a check)
    methodcache.install()
    from libvirt_arm_cpu.engine.compare import IDENTICAL
    from libvirt_arm_cpu.engine.loader import ENV_PRELOAD, ENV_VALUES, LOADER_PATH, installed
    from libvirt_arm_cpu.engine.validate import validate_translation
    from libvirt_arm_cpu.errors import UnknownName
    from libvirt_arm_cpu.formats.domain import Domain
    from libvirt_arm_cpu.host.hostcache import hook_inputs
    from libvirt_arm_cpu.model import METHOD_LOADER, Translation

    source = f"domain '{name}' XML"
    dom = Domain.read(data, source, root)
    t = dom.translation
    if t is None:               # the namespace appeared elsewhere: not ours to judge
        return None, None, None
    host, kb = hook_inputs(conf)
    try:
        v = validate_translation(t, dom.cpu_arguments(), dom.loader_env(), host, kb,
                                 dom.gic_version, dom.sve_lengths)
    except UnknownName as e:
        return f"domain '{name}': its CPU metadata names {e}", None, None
    where = f"host {host.hostname or '?'}"
    verb = {"prepare": "start", "migrate": "migrate in", "restore": "restore",
            "reconnect": "run"}[op]
    if not v.ok:
        reasons = "; ".join(str(r) for r in v.reasons[:4])
        more = f" (and {len(v.reasons) - 4} more)" if len(v.reasons) > 4 else ""
        return (f"domain '{name}' cannot {verb} on {where} (CPU model '{t.model}'): "
                f"{reasons}{more}"), None, None
    if v.method == METHOD_LOADER and op != "reconnect":
        # the profile may be older than an uninstall: QEMU would fail to
        # preload it (or, worse, start without it and refuse every KVM_RUN)
        path = v.env.get(ENV_PRELOAD, LOADER_PATH)
        if not installed(path):
            return (f"domain '{name}' cannot {verb} on {where} (CPU model '{t.model}'): "
                    f"it needs the ID register loader, and {path} is not installed "
                    f"(install libvirt-arm-cpu's loader, then 'libvirt-arm-cpu-helper probe')"
                    ), None, None
    loader = v.env.get(ENV_PRELOAD, LOADER_PATH) if v.method == METHOD_LOADER else ""
    checked = f"CPU checked on {where}: {v.comparison.result}"     # remembered without the name
    if op in ("migrate", "restore"):
        if not v.needs_rewrite:
            log("info", f"domain '{name}': {checked}")
            return None, None, (checked, loader)
        new = Translation(t.original_cpu, t.values, v.properties, host.hostname,
                          host.fingerprint.digest, t.model, method=v.method,
                          vcpu_off=t.vcpu_off, original_pmu=t.original_pmu,
                          firmware=t.firmware, reg_list=t.reg_list, platform=t.platform)
        how = (f"loader, {len(v.env.get(ENV_VALUES, '').split())} registers"
               if v.method == METHOD_LOADER else f"{len(v.properties)} SYSREG properties")
        log("info", f"domain '{name}': CPU input rewritten for {where} ({how})")
        return None, dom.with_arguments(new, v.env).tostring(), None
    if op == "prepare":
        if v.needs_rewrite:
            return (f"domain '{name}': its QEMU input ({t.method}) was made for host "
                    f"'{t.host}', not {where} (this host needs "
                    f"{v.describe_expected()}): translate it again here "
                    f"(libvirt-arm-cpu define)"), None, None
        if conf.try_apply and v.comparison.result != IDENTICAL and \
                os.uname().machine == "aarch64" and os.path.exists("/dev/kvm"):
            have = host.values(t.vcpu_off)
            refusal = _try_apply({n: x for n, x in t.values.items() if x != have.get(n, 0)},
                                 kb, t.vcpu_off)
            if refusal:
                return (f"domain '{name}' cannot start on {where}: KVM refuses {refusal}",
                        None, None)
        log("info", f"domain '{name}': {checked}")
        return None, None, (checked, loader)
    return None, None, ("", loader)         # reconnect: allowed, nothing to say


def _try_apply(values: dict[str, int], kb, off: tuple[str, ...] = ()) -> str | None:
    """KVM's own verdict on a scratch VM (its vCPU with the features *off*
    switched off, as the guest's) for the registers that differ from the
    host's; None when it accepts them all."""
    from libvirt_arm_cpu.host.probe import open_kvm
    from libvirt_arm_cpu.host.tryapply import try_apply
    with open_kvm() as kvm:
        result = try_apply(kvm, kb, values, kvm.default_features().without(off))
    if result.ok:
        return None
    bad = [v for v in result.verdicts if v.status not in ("unchanged", "accepted")]
    return "; ".join(f"{v.register} = {v.wanted:#x} ({v.status}"
                     + (f", {v.errno}" if v.errno else "") + ")" for v in bad[:4])
