"""``libvirt-arm-cpu host``: this host's profile, decoded."""

from __future__ import annotations

import argparse
import json
import sys

import os

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu import drift
from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.errors import Error, UsageError
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE, cached_profile
from libvirt_arm_cpu.kb.implementers import decode_midr
from libvirt_arm_cpu.formats.profile import read_profile, to_json, write_profile
from libvirt_arm_cpu.model import HostProfile, Platform
from libvirt_arm_cpu.cli.report import decode_registers, render_text

# host --check's reference profile sits next to the cache: host.xml -> host.xml.previous
PREVIOUS_SUFFIX = ".previous"


def render_profile(p: HostProfile, all_registers: bool = False) -> str:
    kb = kb_load.registers()
    lines = [f"Host {p.hostname} ({p.machine}), Linux {p.kernel_release}, probed {p.probed_at} "
             f"by libvirt-arm-cpu {p.tool_version}"]
    q = p.qemu
    if q.status == "found":
        lines.append(f"QEMU {q.version} ({q.path}): SYSREG_* properties: {q.sysreg}"
                     + (f" ({q.detail})" if q.detail else ""))
    else:
        lines.append(f"QEMU: {q.status}" + (f" ({q.detail})" if q.detail else ""))
    lines.append(f"ID register loader: {p.loader.status}"
                 + (f" ({p.loader.path})" if p.loader.path else ""))
    lines.append("vCPU features: " + (", ".join(p.vcpu_features) or "none"))
    lines.append("beyond the ID registers: " + describe_platform(p.platform))
    lines.append("KVM capabilities: " + ", ".join(f"{k}={v}" for k, (_, v)
                                                   in p.capabilities.items()))
    midrs: dict[int | None, list[int]] = {}
    for c in p.cpus:
        midrs.setdefault(c.midr, []).append(c.cpu)
    for midr, cpus in midrs.items():
        name = str(decode_midr(midr, kb_load.implementers(), kb_load.registers())) if midr is not None else "MIDR unknown"
        lines.append(f"CPUs {_ranges(cpus)}: {name}" + (f" (MIDR {midr:#010x})" if midr else ""))
    if p.heterogeneous:
        lines.append("warning: the CPUs differ (big.LITTLE): a guest sees the CPU its vCPU "
                     "thread runs on; pin vCPUs or baseline across the kinds")
    if not p.masks_known:
        lines.append("writable masks: unknown (kernel without KVM capability 230, before "
                     "Linux 6.7): guests here can only get this host's exact CPU")
    lines.append("")
    values = []
    masks = {}
    for r in p.registers:
        reg = kb.by_encoding(*r.encoding)
        if reg is None or r.value is None or (not all_registers and not r.value):
            continue
        values.append(reg.decode(r.value))
        masks[reg.name] = r.writable
    report = decode_registers(values, kb_load.features(), masks)
    return "\n".join(lines) + "\n" + render_text(report)


def describe_platform(pl: Platform) -> str:
    """One line: what a guest here is given beyond the ID registers."""
    if not pl.known():
        return "not recorded (probed by an older libvirt-arm-cpu: probe again)"

    def yn(v: bool | None) -> str:
        return "unknown" if v is None else "yes" if v else "no"

    parts = []
    if pl.sve_vls is not None:
        parts.append(f"SVE {min(pl.sve_vls)}-{pl.sve_max} bits ({len(pl.sve_vls)} lengths)"
                     if pl.sve_vls else "SVE none")
    if pl.ipa_bits is not None:
        parts.append(f"IPA {pl.ipa_bits} bits")
    if pl.pmu_counters is not None:
        parts.append(f"PMU {pl.pmu_counters} counters"
                     + (" (KVM can lower the number)" if pl.pmu_counters_settable else ""))
    if pl.gic is not None:
        parts.append("GIC " + (", ".join(f"v{v}" for v in sorted(pl.gic)) or "none")
                     + (f", ITS {yn(pl.its)}" if pl.its is not None else ""))
    parts += [f"MTE {yn(pl.mte)}", f"EL2 {yn(pl.el2)}", f"AArch32 EL1 {yn(pl.aarch32_el1)}"]
    if pl.cntfrq is not None:
        parts.append(f"timer {pl.cntfrq / 1e6:g} MHz")
    return "; ".join(parts)


def _ranges(nums: list[int]) -> str:
    """1,2,3,5 -> '1-3,5'."""
    nums = sorted(nums)
    out: list[str] = []
    start = prev = nums[0]
    for n in nums[1:] + [nums[-1] + 2]:     # a sentinel past the end closes the last run
        if n != prev + 1:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = n
        prev = n
    return ",".join(out)


class HostCommand(Command):
    name = "host"
    help = "show this host's profile (probed by the helper), decoded"
    description = f"""\
Show what this host's KVM presents to a guest: identity, QEMU and its SYSREG_*
support, KVM capabilities, CPUs, and every ID register decoded, with the
fields KVM lets userspace change marked 'w'.  Reads the cached profile
({DEFAULT_CACHE}) and probes again when it is stale (new kernel, reboot,
new QEMU, different CPUs, new libvirt-arm-cpu); probing needs /dev/kvm.

With --check (after a kernel, firmware or QEMU upgrade): which saved and
named CPU models this host no longer runs and which it newly runs, comparing
a reference profile (--previous, default the cache's name plus '.previous')
with the current one, and what changed between them.  The first check
records the reference: the cache as it was before this check probed again,
else the current profile.  The reference stays until --accept moves it to
the current profile, so a monitoring check keeps reporting a lost model
until someone has looked."""
    epilog = f"""\
examples:
  libvirt-arm-cpu host
  libvirt-arm-cpu host --profile tests/data/hosts/neoverse-n1-qemu7.2-linux6.12.xml
  libvirt-arm-cpu host --json
  libvirt-arm-cpu host --check                  # after an upgrade; cron or a monitoring agent
  libvirt-arm-cpu host --check --accept         # the current profile is the reference now
  libvirt-arm-cpu host --check --json --previous tests/data/hosts/max-qemu10.0-linux7.3.xml \\
      --profile tests/data/hosts/max-lpa2-off-qemu10.0-linux7.3.xml

exit codes of --check (as virsh cpu-compare's; a Nagios-style check reads 0 as
OK and 1 as WARNING):
  0  no saved or named CPU model that ran with the reference profile fails to
     run now (models the host newly runs are reported, and exit 0)
  1  at least one such model no longer runs here (listed, with the fields
     responsible); or bad data (a message on stderr, nothing on stdout)
  2  bad usage
  3-8  this host could not be probed (see libvirt-arm-cpu-helper --help)
The reference is {DEFAULT_CACHE}{PREVIOUS_SUFFIX} by default."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--profile", metavar="FILE",
                            help="show this profile instead of the local host's")
        parser.add_argument("--cache", default=DEFAULT_CACHE, metavar="FILE",
                            help=f"the cached profile (default {DEFAULT_CACHE})")
        parser.add_argument("--refresh", action="store_true", help="probe again even if fresh")
        parser.add_argument("--emulator", metavar="PATH", help="QEMU binary for the probe")
        parser.add_argument("--all", action="store_true",
                            help="also show registers that read as zero")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        check = parser.add_argument_group("drift (--check)")
        check.add_argument("--check", action="store_true",
                           help="which CPU models this host no longer runs, and newly runs, "
                                "since the reference profile")
        check.add_argument("--previous", metavar="FILE",
                           help="the reference profile (default: the cache's name plus "
                                f"'{PREVIOUS_SUFFIX}'; needed with --profile)")
        check.add_argument("--accept", action="store_true",
                           help="after the check, make the current profile the reference")
        check.add_argument("--kvm-only", action="store_true",
                           help="judge KVM alone, ignoring whether QEMU takes SYSREG_* "
                                "(as cpu-compare --kvm-only)")

    def run(self, args: argparse.Namespace) -> int:
        if args.check:
            return self._check(args)
        if args.previous or args.accept or args.kvm_only:
            raise UsageError("--previous, --accept and --kvm-only go with --check")
        profile = _this_host(args, "--profile FILE")
        if args.json:
            print(json.dumps(to_json(profile), indent=2))
        else:
            print(render_profile(profile, args.all), end="")
        return 0

    def _check(self, args: argparse.Namespace) -> int:
        if args.all:
            raise UsageError("--all does not go with --check")
        if args.profile and not args.previous:
            raise UsageError("--check --profile FILE compares with --previous FILE: give both "
                             "(or neither, for this host)")
        reference = args.previous or args.cache + PREVIOUS_SUFFIX
        previous: HostProfile | None = None
        record = args.accept
        if os.path.exists(reference):
            previous = read_profile(reference)
        elif args.profile:
            raise UsageError(f"{reference}: no such file (the reference profile)")
        else:
            record = True       # the first check: the cache as it was is the reference
            if os.path.exists(args.cache):
                try:
                    previous = read_profile(args.cache, validate_schema=False)
                except Error:
                    previous = None     # a broken cache is probed again below
        current = _this_host(args, "--profile FILE --previous FILE")
        first = previous is None
        if previous is None:
            previous = current
        models, problems = drift.catalog_models()
        for problem in problems:
            print(f"warning: CPU model not read: {problem}", file=sys.stderr)
        d = drift.check(previous, current, models, kb_load.registers(), kb_load.features(),
                        check_qemu=not args.kvm_only)
        if record:
            write_profile(previous if not args.accept else current, reference)
        if args.json:
            data = d.as_dict()
            data["reference"] = reference
            data["unreadable"] = problems
            print(json.dumps(data, indent=2))
        else:
            print(render_drift(d, reference, first, args.accept, local=not args.profile), end="")
        return d.exit_code


def _this_host(args: argparse.Namespace, instead: str) -> HostProfile:
    """--profile FILE, else this host's cached profile (probed again when
    stale); *instead*: what to give on a machine that cannot probe."""
    if args.profile:
        return read_profile(args.profile)
    with or_give_a_profile(instead):
        profile, _ = cached_profile(args.cache, args.emulator, args.refresh,
                                    progress=lambda m: print(f"probe: {m}", file=sys.stderr))
    return profile


def render_drift(d: drift.Drift, reference: str, first: bool, accepted: bool,
                 local: bool = True) -> str:
    p, c = d.previous, d.current
    lines = [f"host {c.hostname}: profile of {p.probed_at} (Linux {p.kernel_release}) -> "
             f"{c.probed_at} (Linux {c.kernel_release})"]
    if first:
        lines.append(f"no reference profile yet: this one is recorded as {reference}")
    total = len(d.runnable) + len(d.not_runnable)

    def models(n: int) -> str:
        return f"{n} CPU model{'s' if n != 1 else ''}"

    if d.lost:
        lines.append(f"no longer runs {models(len(d.lost))}:")
        for ch in d.lost:
            reasons = ch.after.reasons
            more = f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""
            lines.append(f"  {ch.name}: {reasons[0] if reasons else 'incompatible'}{more}")
    if d.gained:
        lines.append(f"newly runs {models(len(d.gained))}: "
                     + ", ".join(ch.name for ch in d.gained))
    if not d.lost and not d.gained:
        lines.append("no CPU model changed")
    lines.append(f"runs {len(d.runnable)} of {models(total)}"
                 + (": " + ", ".join(d.runnable) if d.runnable else ""))
    if d.features_lost:
        lines.append("host-passthrough guests lose: " + ", ".join(d.features_lost))
    if d.features_gained:
        lines.append("host-passthrough guests gain: " + ", ".join(d.features_gained))
    if d.host_changes:
        lines.append("what changed in the profile:")
        lines += [f"  {x}" for x in d.host_changes]
    if accepted:
        lines.append(f"the current profile is now the reference ({reference})")
    elif local and (d.lost or d.gained or d.host_changes):
        lines.append(f"(reference {reference}; 'libvirt-arm-cpu host --check --accept' makes "
                     f"the current profile the reference)")
    return "\n".join(lines) + "\n"
