"""``cpu-compare``: can a host run a CPU model (or a host-passthrough guest of another host)?"""

from __future__ import annotations

import argparse
import json

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.cli.hypervisor import compare_with_host_cpu, libvirt_host_cpu, read_cpu_arg
from libvirt_arm_cpu.cpuinputs import compare_cpu_input
from libvirt_arm_cpu.service import load_input
from libvirt_arm_cpu.engine.compare import (IDENTICAL, INCOMPATIBLE, SUPERSET, compare, compare_features, compare_passthrough)
from libvirt_arm_cpu.errors import DataError, UsageError, path_label
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE, cached_profile


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
it cannot, and every responsible field is listed.

The CPU may also be what virsh cpu-compare takes: a libvirt <cpu>, a domain
XML, 'virsh capabilities' or 'virsh domcapabilities' output (its first CPU).
A <cpu mode='custom'> naming a saved model is resolved as translate does;
host-passthrough is the host's own CPU; a <cpu> that lists hwcap names only
(a host CPU, libvirt's own models such as virsh cpu-baseline's on aarch64)
is compared at feature level, and the answer says so."""
    epilog = """\
examples:
  libvirt-arm-cpu cpu-compare model.xml host-b.xml
  libvirt-arm-cpu cpu-compare arm64-1ae591bf1d2c --error
  libvirt-arm-cpu cpu-compare model.xml host-b.xml --kvm-only --json
  libvirt-arm-cpu cpu-compare host-a.xml host-b.xml  # host-passthrough guest of A onto B
  libvirt-arm-cpu cpu-compare guest.xml host-b.xml --validate   # a domain's <cpu>

exit codes (as virsh cpu-compare): 0 identical or superset; 1 incompatible
(with --error: as an error), or bad data (with --validate: a <cpu> libvirt's
schema refuses); 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("cpu", metavar="CPU",
                            help="model file, saved model name, or a host profile (for a "
                                 "host-passthrough guest of that host); or a libvirt <cpu>, "
                                 "domain XML, capabilities or domcapabilities file")
        parser.add_argument("profile", nargs="?", metavar="PROFILE",
                            help=f"host profile (default: this host, {DEFAULT_CACHE}); or "
                                 f"'virsh capabilities' output / its host <cpu> / 'virsh "
                                 f"domcapabilities' output, compared at feature level")
        parser.add_argument("--error", action="store_true",
                            help="report an incompatible CPU as an error")
        parser.add_argument("--validate", action="store_true",
                            help="validate the XML against its schema: the CPU's against "
                                 "libvirt's (cpu.rng, with this project's <registers> and "
                                 "SYSREG_* features), a host profile's against profile.xsd "
                                 "(the reader's own checks always run)")
        parser.add_argument("--kvm-only", action="store_true",
                            help="judge KVM alone, ignoring whether QEMU takes SYSREG_*")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        cpu = read_cpu_arg(args.cpu, kb, validate=args.validate)
        source = path_label(cpu.source)
        data = read_input(args.profile) if args.profile else b""
        host_cpu = libvirt_host_cpu(data, args.profile) if args.profile else None
        if host_cpu is not None:
            if cpu.item is not None:
                c = compare_with_host_cpu(cpu.item, host_cpu, cpu.source)
            else:
                assert cpu.model is not None
                c = compare_features(cpu.model, host_cpu, kb_load.features())
        else:
            if args.profile:
                # the reader's own checks; the schema (30 ms) with --validate
                _, host = load_input(data, args.profile, args.profile, kb,
                                     validate=args.validate)
                if host is None:
                    raise UsageError(f"{path_label(args.profile)} is a CPU model, not a host "
                                     f"profile: give the CPU first and a host profile second "
                                     f"('libvirt-arm-cpu cpu-compare CPU PROFILE')")
            else:
                with or_give_a_profile("'libvirt-arm-cpu cpu-compare CPU PROFILE'"):
                    host, _ = cached_profile(DEFAULT_CACHE)
            if cpu.profile is not None:
                # a host-passthrough guest of that host, carried by stock QEMU
                c = compare_passthrough(cpu.profile, host, kb)
            elif cpu.item is not None:
                c = compare_cpu_input(cpu.item, host, kb, cpu.source,
                                      check_qemu=not args.kvm_only)
            else:
                assert cpu.model is not None
                c = compare(cpu.model, host, kb, check_qemu=not args.kvm_only)
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
        if cpu.profile is not None:
            print(f"(CPU {source} is a host profile: a host-passthrough guest of that host, "
                  f"whose values this host's KVM must take from QEMU's migration stream)")
        if cpu.item is not None:
            for note in c.notes:
                print(f"(note: {note})")
        if c.precision == "features":
            if host_cpu is not None:
                print(f"(compared at feature level only: {path_label(args.profile)} is a "
                      f"libvirt host CPU description, which shows hwcaps but not every field "
                      f"nor what the host's kernel lets change; a host profile is exact)")
            else:
                print(f"(compared at feature level only: {source} is a libvirt <cpu> without "
                      f"ID register values, whose feature names show neither every field nor "
                      f"what the host's kernel lets change; a libvirt-arm-cpu model is exact)")
        return 1 if c.result == INCOMPATIBLE else 0
