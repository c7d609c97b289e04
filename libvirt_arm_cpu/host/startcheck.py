"""The libvirt hook's check of a domain on this host, and the same check
made when a domain is defined here.

:func:`check` is what the hook (:mod:`libvirt_arm_cpu.hook`) asks for a
translated domain's start, migration in, restore or reconnect: can this
host present its CPU (:func:`libvirt_arm_cpu.engine.validate
.validate_translation` against the hook's profile), with the QEMU input the
domain carries (else: refuse a start, rewrite a migration's XML), and does
KVM itself accept the values (try-apply, where configured)?

:func:`precheck` makes the start's check when a domain is defined on this
host (``libvirt-arm-cpu define``, :func:`libvirt_arm_cpu.api.define_domain`)
and remembers an allowance as the hook does (:mod:`.verdicts`): the check
is a pure function of what its key holds, and libvirt gives the hook, on
the start, the elements the key reads as it gave them to define (the test
bed holds this).  So the first start is answered as a start allowed
before, and a start the hook would refuse is named when the domain is
defined, not when it is started.
"""

from __future__ import annotations

import os

from libvirt_arm_cpu.host import verdicts
from libvirt_arm_cpu.xmlsafe import parse_light

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (the hook's path)
if TYPE_CHECKING:
    from collections.abc import Callable

    from libvirt_arm_cpu.settings import Settings
    from libvirt_arm_cpu.xmlsafe import LightElement

__all__ = ["check", "precheck", "load_engine"]


def load_engine() -> None:
    """Import what :func:`check` imports when it runs (the resident
    checker loads it all before its first request), and what try-apply
    does where KVM is there to ask."""
    import libvirt_arm_cpu.engine.validate
    import libvirt_arm_cpu.formats.domain
    import libvirt_arm_cpu.host.hostcache
    import libvirt_arm_cpu.model  # noqa: F401
    if os.uname().machine == "aarch64" and os.path.exists("/dev/kvm"):
        import libvirt_arm_cpu.host.probe
        import libvirt_arm_cpu.host.tryapply  # noqa: F401


def check(name: str, op: str, data: bytes, root: LightElement | None, conf: Settings,
          log: Callable[[str, str], None]
          ) -> tuple[str | None, bytes | None, tuple[str, str] | None]:
    """The check of the domain *name* (XML *data*, whose tree by
    :func:`libvirt_arm_cpu.xmlsafe.parse_light` is *root*, or None: read
    here) for the hook's operation *op* (prepare, migrate, restore,
    reconnect), with the hook's settings *conf*; *log* (level, message)
    gets the lines the hook logs.

    Returns (the refusal, or None; the rewritten XML of a migration or
    restore, or None; what to remember of an allowance that rewrote
    nothing -- the line logged without the domain's name, and the loader it
    needs -- or None).
    """
    # imported here, and only what checking needs: not the service layer,
    # the feature catalog or the dependency rules (translating needs those)
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


def precheck(name: str, data: bytes, conf: Settings) -> str | None:
    """The hook's check of a start of the domain *name* (XML *data*, as
    libvirt formats it: ``virDomainGetXMLDesc``), made now; an allowance is
    remembered as the hook remembers it.  Returns the refusal the start
    would get, or None (allowed, or not a translated domain).  Nothing when
    the hook is off or its profile is not there (the hook probes, not
    this).

    :raise Error: what the check could not read (the hook would refuse the
        start with it).
    """
    if conf.mode == "off" or not os.path.exists(conf.profile):
        return None
    root = parse_light(data, f"domain '{name}' XML")
    key = verdicts.key("prepare", root, conf)
    if key is None or verdicts.recall(conf, key) is not None:
        return None
    refusal, _, allowed = check(name, "prepare", data, root, conf, lambda _level, _line: None)
    if allowed is not None:
        verdicts.remember(conf, key, *allowed)
    return refusal
