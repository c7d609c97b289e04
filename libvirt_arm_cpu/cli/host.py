"""``libvirt-arm-cpu host``: this host's profile, decoded."""

from __future__ import annotations

import argparse
import json
import sys

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE, cached_profile
from libvirt_arm_cpu.kb.implementers import decode_midr
from libvirt_arm_cpu.formats.profile import read_profile, to_json
from libvirt_arm_cpu.model import HostProfile
from libvirt_arm_cpu.cli.report import decode_registers, render_text


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
    lines.append("vCPU features: " + (", ".join(p.vcpu_features) or "none"))
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
new QEMU, different CPUs, new libvirt-arm-cpu); probing needs /dev/kvm."""
    epilog = """\
examples:
  libvirt-arm-cpu host
  libvirt-arm-cpu host --profile tests/data/hosts/neoverse-n1-qemu7.2-linux6.12.xml
  libvirt-arm-cpu host --json"""

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

    def run(self, args: argparse.Namespace) -> int:
        if args.profile:
            profile = read_profile(args.profile)
        else:
            with or_give_a_profile("--profile FILE"):
                profile, fresh = cached_profile(args.cache, args.emulator, args.refresh,
                                                progress=lambda m: print(f"probe: {m}",
                                                                         file=sys.stderr))
        if args.json:
            print(json.dumps(to_json(profile), indent=2))
        else:
            print(render_profile(profile, args.all), end="")
        return 0
