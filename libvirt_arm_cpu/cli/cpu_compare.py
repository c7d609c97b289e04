"""``cpu-compare``: can a host run a CPU model (or a host-passthrough guest of another host)?"""

from __future__ import annotations

import argparse
import json
import os
import sys

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.cli.base import Command, add_cache_arguments, or_give_a_profile
from libvirt_arm_cpu.cli.hypervisor import CpuArg, compare_with_host_cpu, libvirt_host_cpu, read_cpu_arg
from libvirt_arm_cpu.cpuinputs import compare_cpu_input
from libvirt_arm_cpu.service import bulk, load_hosts, load_input, model_cache
from libvirt_arm_cpu.engine.compare import (IDENTICAL, INCOMPATIBLE, SUPERSET, Comparison, compare, compare_features, compare_many, compare_passthrough)
from libvirt_arm_cpu.errors import DataError, UsageError, path_label
from libvirt_arm_cpu.formats.kinds import CPU_MODEL, kind_of
from libvirt_arm_cpu.kb.registers import KnowledgeBase
from libvirt_arm_cpu.model import CpuModel, HostProfile
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
  libvirt-arm-cpu cpu-compare model.xml /srv/profiles/ --json   # every host of a fleet

Several PROFILEs, or a directory of them (*.xml, as cpu-baseline reads
them, through the same profile cache: --cache-dir, --no-cache), give one
verdict per host: a first line counting them, then "HOST  VERDICT" a host
and the reasons of each incompatible one (--json: every host's verdict,
changes and reasons).  Hosts of the same content are compared once.

exit codes (as virsh cpu-compare): 0 identical or superset (several hosts:
every host); 1 incompatible (several hosts: any; with --error: as an error),
or bad data (with --validate: a <cpu> libvirt's schema refuses); 2 bad
usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("cpu", metavar="CPU",
                            help="model file, saved model name, or a host profile (for a "
                                 "host-passthrough guest of that host); or a libvirt <cpu>, "
                                 "domain XML, capabilities or domcapabilities file")
        parser.add_argument("profile", nargs="*", metavar="PROFILE",
                            help=f"host profile (default: this host, {DEFAULT_CACHE}); or "
                                 f"'virsh capabilities' output / its host <cpu> / 'virsh "
                                 f"domcapabilities' output, compared at feature level; "
                                 f"several profiles or directories of them: a verdict each")
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
        add_cache_arguments(parser)

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        cpu = read_cpu_arg(args.cpu, kb, validate=args.validate)
        source = path_label(cpu.source)
        if len(args.profile) > 1 or any(os.path.isdir(p) for p in args.profile):
            return self._many(args, kb, cpu, source)
        args.profile = args.profile[0] if args.profile else None
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

    def _many(self, args: argparse.Namespace, kb: KnowledgeBase, cpu: CpuArg,
              source: str) -> int:
        """A verdict for each host of several profiles and directories."""
        with bulk():
            hosts = load_hosts(args.profile, kb, args.validate,
                               model_cache(kb, args.cache_dir, not args.no_cache),
                               other=_hosts_only, jobs=None)
            labels = [label for label, _ in hosts]
            profiles: list[HostProfile] = [p for _, p in hosts]  # type: ignore[misc]
            if cpu.profile is None and cpu.item is None:
                assert cpu.model is not None
                verdicts = compare_many(cpu.model, profiles, kb, check_qemu=not args.kvm_only)
            else:
                verdicts = _each(cpu, profiles, kb, not args.kvm_only)
        bad = [i for i, c in enumerate(verdicts) if c.result == INCOMPATIBLE]
        if args.error and bad:
            c = verdicts[bad[0]]
            raise DataError(f"the CPU described in {source} is incompatible with {len(bad)} of "
                            f"{len(hosts)} hosts, first {labels[bad[0]]}: {c.reasons[0]}"
                            + (f" (and {len(c.reasons) - 1} more)" if len(c.reasons) > 1
                               else ""))
        if args.json:
            shown: dict[int, dict] = {}     # hosts of one content: one Comparison
            json.dump({"cpu": source, "hosts": len(hosts),
                       "results": _counts(verdicts),
                       "verdicts": [{"host": label, **(shown.get(id(c)) or
                                                       shown.setdefault(id(c), c.as_dict()))}
                                    for label, c in zip(labels, verdicts)]},
                      sys.stdout, indent=2)
            print()
            return 1 if bad else 0
        counts = _counts(verdicts)
        width = max(map(len, labels))
        lines = [f"{len(hosts) - len(bad)} of {len(hosts)} hosts can run the CPU described in "
                 f"{source} ({counts[IDENTICAL]} identical, {counts[SUPERSET]} superset, "
                 f"{counts[INCOMPATIBLE]} incompatible)"]
        for label, c in zip(labels, verdicts):
            lines.append(f"{label:<{width}}  {c.result}")
            if c.result == INCOMPATIBLE:
                lines += [f"  {r}" for r in c.reasons]
            if cpu.item is not None:
                lines += [f"  (note: {note})" for note in c.notes]
        if cpu.profile is not None:
            lines.append(f"(CPU {source} is a host profile: a host-passthrough guest of that "
                         f"host, whose values each host's KVM must take from QEMU's migration "
                         f"stream)")
        if any(c.precision == "features" for c in verdicts):
            lines.append(f"(compared at feature level only: {source} is a libvirt <cpu> "
                         f"without ID register values, whose feature names show neither every "
                         f"field nor what a host's kernel lets change; a libvirt-arm-cpu model "
                         f"is exact)")
        sys.stdout.write("\n".join(lines) + "\n")
        return 1 if bad else 0


def _hosts_only(data: bytes, path: str, label: str, kb: KnowledgeBase, seen: dict,
                validate: bool) -> list[tuple[str, CpuModel, HostProfile | None]]:
    """cpu-compare's hosts, when several: host profiles only."""
    if kind_of(data) == CPU_MODEL:
        raise UsageError(f"{path_label(path)} is a CPU model, not a host profile: give the CPU "
                         f"first and host profiles after ('libvirt-arm-cpu cpu-compare CPU "
                         f"PROFILE...')")
    raise UsageError(f"{path_label(path)} is not a host profile: several hosts are compared by "
                     f"their profiles (a libvirt host CPU description is compared alone, "
                     f"'libvirt-arm-cpu cpu-compare CPU FILE')")


def _each(cpu: CpuArg, hosts: list[HostProfile], kb: KnowledgeBase,
          check_qemu: bool) -> list[Comparison]:
    """The verdict of a host profile's passthrough guest, or of a libvirt
    <cpu>, on each host; each distinct profile object once."""
    done: dict[int, Comparison] = {}
    out = []
    for host in hosts:
        c = done.get(id(host))
        if c is None:
            if cpu.profile is not None:
                c = compare_passthrough(cpu.profile, host, kb)
            else:
                assert cpu.item is not None
                c = compare_cpu_input(cpu.item, host, kb, cpu.source, check_qemu=check_qemu)
            done[id(host)] = c
        out.append(c)
    return out


def _counts(verdicts: list[Comparison]) -> dict[str, int]:
    counts = {IDENTICAL: 0, SUPERSET: 0, INCOMPATIBLE: 0}
    for c in verdicts:
        counts[c.result] += 1
    return counts
