"""``cpu-compare``: can a host run a CPU model (or a host-passthrough guest of another host)?"""

from __future__ import annotations

import argparse
import json

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.service import load_input, resolve_cpu
from libvirt_arm_cpu.engine.compare import (IDENTICAL, INCOMPATIBLE, SUPERSET, compare, compare_features, compare_passthrough)
from libvirt_arm_cpu.errors import DataError, UsageError, path_label
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE, cached_profile
from libvirt_arm_cpu.formats.hostcpu import from_xml as host_cpu_from_xml, looks_like_host_cpu


class CompareCommand(Command):
    name = "cpu-compare"
    help = "can a host run this CPU model? identical, superset or incompatible, and why"
    description = """\
Compare a CPU model (a file from cpu-baseline, or a saved model's name) with
a host profile (default: this host's cached profile).  A host profile as the
CPU stands for a host-passthrough guest of that host: can stock QEMU migrate
it here (this host's KVM must take that host's values, MIDR included)?  identical: the host
presents exactly this CPU; superset: it can run it after lowering fields KVM
lets userspace change (and its QEMU takes SYSREG_* properties); incompatible:
it cannot, and every responsible field is listed."""
    epilog = """\
examples:
  libvirt-arm-cpu cpu-compare model.xml host-b.xml
  libvirt-arm-cpu cpu-compare arm64-1ae591bf1d2c --error
  libvirt-arm-cpu cpu-compare model.xml host-b.xml --kvm-only --json
  libvirt-arm-cpu cpu-compare host-a.xml host-b.xml  # host-passthrough guest of A onto B

exit codes (as virsh cpu-compare): 0 identical or superset; 1 incompatible
(with --error: as an error), or bad data; 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("cpu", metavar="CPU",
                            help="model file, saved model name, or a host profile (for a "
                                 "host-passthrough guest of that host)")
        parser.add_argument("profile", nargs="?", metavar="PROFILE",
                            help=f"host profile (default: this host, {DEFAULT_CACHE}); or "
                                 f"'virsh capabilities' output / its host <cpu>, compared at "
                                 f"feature level")
        parser.add_argument("--error", action="store_true",
                            help="report an incompatible CPU as an error")
        parser.add_argument("--kvm-only", action="store_true",
                            help="judge KVM alone, ignoring whether QEMU takes SYSREG_*")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        source, model, source_profile = resolve_cpu(args.cpu, kb)
        source = path_label(source)
        data = read_input(args.profile) if args.profile else b""
        if args.profile and looks_like_host_cpu(data) and b"urn:x-libvirt-arm-cpu" not in data:
            c = compare_features(model, host_cpu_from_xml(data, args.profile), kb_load.features())
        else:
            if args.profile:
                _, host = load_input(data, args.profile, args.profile, kb)
                if host is None:
                    raise UsageError(f"{path_label(args.profile)} is a CPU model, not a host "
                                     f"profile: give the CPU first and a host profile second "
                                     f"('libvirt-arm-cpu cpu-compare CPU PROFILE')")
            else:
                with or_give_a_profile("'libvirt-arm-cpu cpu-compare CPU PROFILE'"):
                    host, _ = cached_profile(DEFAULT_CACHE)
            if source_profile is not None:
                # a host-passthrough guest of that host, carried by stock QEMU
                c = compare_passthrough(source_profile, host, kb)
            else:
                c = compare(model, host, kb, check_qemu=not args.kvm_only)
        if args.json:
            print(json.dumps(c.as_dict(), indent=2))
            return 1 if c.result == INCOMPATIBLE else 0
        if c.result == IDENTICAL:
            print(f"CPU described in {source} is identical to the CPU provided by the host")
        elif c.result == SUPERSET:
            print(f"Host CPU is a superset of CPU described in {source}")
            for change in c.changes:
                print(f"  {'lowers ' if c.precision == 'registers' else ''}{change}")
        else:
            if args.error:
                raise DataError(f"the CPU described in {source} is incompatible with the host "
                                f"CPU{' (feature level)' if c.precision == 'features' else ''}: "
                                f"{c.reasons[0]}"
                                + (f" (and {len(c.reasons) - 1} more)" if len(c.reasons) > 1
                                   else ""))
            print(f"CPU described in {source} is incompatible with host CPU")
            for r in c.reasons:
                print(f"  {r}")
        if source_profile is not None:
            print(f"(CPU {source} is a host profile: a host-passthrough guest of that host, "
                  f"whose values this host's KVM must take from QEMU's migration stream)")
        if c.precision == "features":
            print(f"(compared at feature level only: {path_label(args.profile)} is a libvirt "
                  f"host CPU description, which shows hwcaps but not every field nor what the "
                  f"host's kernel lets change; a host profile is exact)")
        return 1 if c.result == INCOMPATIBLE else 0
