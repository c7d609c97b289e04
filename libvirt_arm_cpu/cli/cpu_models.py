"""``cpu-models``: the named CPU models, and which of them a host can run (and why not)."""

from __future__ import annotations

import argparse
import json

from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, compare
from libvirt_arm_cpu.errors import UnknownName, UsageError, path_label
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE, cached_profile
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.service import load_input


class CpuModelsCommand(Command):
    name = "cpu-models"
    help = "list the named CPU models (neoverse-v1-v1...), and which a host can run"
    description = """\
List the named CPU models, each version a fixed set of ID register values
that never changes once released (xml/models.xml): cores (neoverse-v1,
cortex-a72, a64fx...) as a KVM guest of that core reads them, and Arm
architecture levels (armv8.0-a ... armv9.6-a), which take from the host
the fields KVM does not let userspace lower, each at least the level's
value (--json lists them as host_fields).  A domain's
<cpu mode='custom'><model> takes a name: 'neoverse-v1-v1' (that version),
or 'neoverse-v1' (the latest version, resolved when the domain is
translated).  Saved models (cpu-baseline --save) of the same name come first.

With --host, say for each model whether this host (or the host profile
PROFILE) can run it, and for each it cannot, the registers and fields
responsible, as cpu-compare judges them (usable models, as virsh
domcapabilities shows them on x86)."""
    epilog = """\
examples:
  libvirt-arm-cpu cpu-models
  libvirt-arm-cpu cpu-models --all-versions
  libvirt-arm-cpu cpu-models --host tests/data/hosts/neoverse-n1-qemu7.2-linux7.3.xml
  libvirt-arm-cpu cpu-models --json armv8.2-a     # what the level takes from its host
  libvirt-arm-cpu cpu-models --host - --json < host.xml

exit codes: 0 listed; 1 bad data; 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("names", nargs="*", metavar="NAME",
                            help="only these models (a name, or a name-vN version)")
        parser.add_argument("--host", nargs="?", const="", metavar="PROFILE",
                            help=f"which models this host can run (default profile: "
                                 f"{DEFAULT_CACHE})")
        parser.add_argument("--all-versions", action="store_true",
                            help="every released version, not only the latest")
        parser.add_argument("--kvm-only", action="store_true",
                            help="with --host: judge KVM alone, ignoring whether QEMU can be "
                                 "told the values")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        named = kb_load.named_models()
        if args.names:
            picked = []
            for name in args.names:
                m = modelstore.named_model(name)
                if m is None:
                    raise UnknownName("named CPU model", name, named.all_names())
                picked.append(m)
        elif args.all_versions:
            picked = sorted(named.models, key=lambda m: (m.name, m.version))
        else:
            picked = named.latest()
        host = None
        if args.host is not None:
            kb = kb_load.registers()
            if args.host:
                _, host = load_input(read_input(args.host), args.host, args.host, kb,
                                     validate=False)
                if host is None:
                    raise UsageError(f"{path_label(args.host)} is a CPU model, not a host "
                                     f"profile ('libvirt-arm-cpu cpu-compare MODEL' compares "
                                     f"one with this host)")
            else:
                with or_give_a_profile("'--host PROFILE'"):
                    host, _ = cached_profile(DEFAULT_CACHE)
        rows = []
        for m in picked:
            src = named.source(m.source)
            row: dict = {"name": m.versioned, "model": m.name, "version": m.version,
                         "kind": m.kind, "title": m.title,
                         "latest": named.versions(m.name)[-1].version == m.version,
                         "source": {"file": src.file, "origin": src.origin,
                                    "sha256": src.sha256} if src else m.source,
                         "digest": m.digest}
            if m.vcpu_off:
                row["vcpu_off"] = list(m.vcpu_off)
            if m.host_fields:
                row["host_fields"] = [f"{r}.{f}" for r, fs in m.host_fields.items() for f in fs]
            if host is not None:
                c = compare(modelstore.from_named(m), host, kb, check_qemu=not args.kvm_only)
                row["usable"] = c.result != INCOMPATIBLE
                row["result"] = c.result
                row["reasons"] = c.as_dict()["reasons"]
            rows.append(row)
        if args.json:
            out: dict = {"models": rows}
            if host is not None:
                out["host"] = host.hostname
            print(json.dumps(out, indent=2))
            return 0
        width = max((len(r["name"]) for r in rows), default=0)
        if host is not None:
            usable = sum(1 for r in rows if r["usable"])
            print(f"{usable} of {len(rows)} named CPU models run on {host.hostname}")
        for r in rows:
            if host is None:
                print(f"{r['name']:<{width}}  {r['kind']:<12}  {r['title']}")
                continue
            verdict = "yes" if r["usable"] else "no"
            print(f"{r['name']:<{width}}  {verdict:<3}  {r['result']}")
            for reason in r["reasons"]:
                print(f"  {reason['message']}")
        return 0
