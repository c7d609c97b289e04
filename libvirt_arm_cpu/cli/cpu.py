"""``cpu-baseline``, ``cpu-compare`` and ``diff``: CPU models across hosts."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu.engine.baseline import baseline, largest_compatible, pools
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.service import load_input, load_inputs, model_features, resolve_cpu
from libvirt_arm_cpu.engine.compare import (IDENTICAL, INCOMPATIBLE, SUPERSET, compare, compare_features, compare_passthrough)
from libvirt_arm_cpu.engine.consistency import Consistency
from libvirt_arm_cpu.formats.cpumodel import to_xml as model_to_xml
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.errors import DataError, UsageError
from libvirt_arm_cpu.fileio import atomic_write, read_input
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE, cached_profile
from libvirt_arm_cpu.formats.hostcpu import from_xml as host_cpu_from_xml, looks_like_host_cpu

def model_data(model: CpuModel, feats: list[str]) -> dict[str, Any]:
    return {"name": model.name, "hosts": list(model.hosts),
            "implementations": [f"{m:#010x}" for m in model.implementations],
            "imp_id_writable": model.imp_id_writable, "features": feats,
            "registers": {n: {"value": f"0x{v:016x}",
                              "writable": f"0x{model.writable.get(n, 0):016x}"}
                          for n, v in sorted(model.values.items())}}


def report_consistency(c: Consistency | None, prog: str = "cpu-baseline") -> None:
    """The dependency repair's lowerings and unresolved rules, on stderr."""
    if c is None:
        return
    for low in c.lowered:
        print(f"{prog}: lowered {low}", file=sys.stderr)
    for u in c.unresolved:
        print(f"{prog}: warning: rule {u}", file=sys.stderr)


class BaselineCommand(Command):
    name = "cpu-baseline"
    help = "the most capable CPU model every given host can run"
    description = """\
Compute the most capable CPU model that every host can present to a guest,
following the rule KVM applies to each ID register field (lower-safe fields
take the lowest value, ...), with fields a host's kernel cannot change kept
as that host has them.  Inputs are host profiles (from the helper), saved
models, or directories of profiles; '-' reads stdin.  Prints a libvirt
<cpu mode='custom' match='exact'> whose features are hwcap names and whose
exact values sit in an <arm:registers> element, so it can be read back."""
    epilog = """\
examples:
  libvirt-arm-cpu cpu-baseline host-a.xml host-b.xml
  libvirt-arm-cpu cpu-baseline /srv/profiles/ --save       # reuse as: cpu-compare NAME
  libvirt-arm-cpu cpu-baseline a.xml b.xml --json

saved models go to the models folder ([models] dir in /etc/libvirt-arm-cpu.conf,
or LIBVIRT_ARM_CPU_MODELS_DIR; default /var/lib/libvirt-arm-cpu/models).
The model is then made consistent with the feature-dependency rules
(xml/dependencies.xml: SVE2 needs SVE, ...) by lowering only, within what
every host accepts; each lowering and each rule that cannot be repaired is
named on stderr (and under "consistency" in --json).  Rules a host breaks
with its own values are not enforced.

exit codes: 0 a model; 1 no common model (every responsible field is listed)
or bad data; 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="+", metavar="PROFILE")
        parser.add_argument("--features", action="store_true",
                            help="list every feature (FEAT_* and AArch32 too), not just hwcaps")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument("--save", action="store_true",
                            help="also save the model under its name in the models folder")
        parser.add_argument("--output", "-o", metavar="FILE", help="write the XML to FILE")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--exclude-incompatible", action="store_true",
                           help="leave out the fewest hosts needed for a common model "
                                "(named on stderr)")
        group.add_argument("--pools", action="store_true",
                           help="split the hosts into compatible pools, largest first, and "
                                "list them (with --save, save each pool's model)")

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        inputs = load_inputs(args.profiles, kb)
        models = [m for _, m, _ in inputs]
        labels = [label for label, _, _ in inputs]
        if args.pools:
            return self._pools(args, models, labels, kb)
        if args.exclude_incompatible:
            pool = largest_compatible(models, kb, kb_load.dependencies(), labels)
            left_out = [labels[i] for i in range(len(labels)) if i not in set(pool.indices)]
            if left_out:
                print(f"cpu-baseline: left out {len(left_out)} of {len(labels)} hosts: "
                      f"{' '.join(left_out)}", file=sys.stderr)
            result = pool.result
        else:
            result = baseline(models, kb, kb_load.dependencies(), labels)
        if not result.ok:
            print(f"libvirt-arm-cpu: error: no CPU model runs on all {len(inputs)} hosts: "
                  f"{len(result.conflicts)} field(s) conflict", file=sys.stderr)
            for c in result.conflicts:
                print(f"  {c}", file=sys.stderr)
            return 1
        model = result.model
        assert model is not None
        report_consistency(result.consistency)
        feats = model_features(model, args.features)
        data = model_to_xml(model, feats)
        if args.save:
            modelstore.save(model, feats, data)
            print(f"cpu-baseline: saved as {model.name}", file=sys.stderr)
        if args.output:
            atomic_write(args.output, data)
        if args.json:
            out = model_data(model, feats)
            if result.consistency is not None:
                out["consistency"] = result.consistency.as_dict()
            print(json.dumps(out, indent=2))
        elif not args.output:
            sys.stdout.write(data.decode())
        return 0


    def _pools(self, args: argparse.Namespace, models: list[CpuModel], labels: list[str],
               kb: registers.KnowledgeBase) -> int:
        found = pools(models, kb, kb_load.dependencies(), labels)
        data: list[dict[str, Any]] = []
        for n, pool in enumerate(found, start=1):
            model = pool.result.model
            assert model is not None
            hosts = [labels[i] for i in pool.indices]
            if args.save:
                modelstore.save(model, model_features(model, args.features))
            data.append({"pool": n, "model": model.name, "hosts": hosts})
        if args.json:
            print(json.dumps(data, indent=2))
        else:
            for d in data:
                print(f"pool {d['pool']}: {d['model']}: {len(d['hosts'])} host(s): "
                      f"{' '.join(d['hosts'])}")
        return 0


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
        data = read_input(args.profile) if args.profile else b""
        if args.profile and looks_like_host_cpu(data) and b"urn:x-libvirt-arm-cpu" not in data:
            c = compare_features(model, host_cpu_from_xml(data, args.profile), kb_load.features())
        else:
            if args.profile:
                _, host = load_input(data, args.profile, args.profile, kb)
                if host is None:
                    raise UsageError(f"{args.profile} is a CPU model, not a host profile")
            else:
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
            print(f"(compared at feature level only: {args.profile} is a libvirt host CPU "
                  f"description, which shows hwcaps but not every field nor what the host's "
                  f"kernel lets change; a host profile is exact)")
        return 1 if c.result == INCOMPATIBLE else 0


class DiffCommand(Command):
    name = "diff"
    help = "hosts side by side: only the ID register fields that differ"
    description = """\
Show the ID register fields that differ between host profiles (or models),
one row per field, each host's value with its meaning."""
    epilog = """\
examples:
  libvirt-arm-cpu diff host-a.xml host-b.xml host-c.xml
  libvirt-arm-cpu diff /srv/profiles/ --json"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="+", metavar="PROFILE")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        inputs = load_inputs(args.profiles, kb)
        if len(inputs) < 2:
            raise UsageError("diff needs at least two profiles")
        labels = [label for label, _, _ in inputs]
        rows = []
        names = sorted({n for _, m, _ in inputs for n in m.values},
                       key=lambda n: kb.register(n).encoding)
        for name in names:
            reg = kb.register(name)
            vals = [m.values.get(name, 0) for _, m, _ in inputs]
            if len(set(vals)) == 1:
                continue
            for f in reg.fields or ():
                fv = [f.get(v) for v in vals]
                if len(set(fv)) > 1:
                    rows.append((f"{name}.{f.name}",
                                 [(str(v) if f.width <= 4 else f"{v:#x}")
                                  + (f" ({f.meaning(v)})" if f.meaning(v) else "")
                                  for v in fv]))
            if not reg.fields:
                rows.append((name, [f"{v:#x}" for v in vals]))
        if args.json:
            print(json.dumps({"hosts": labels, "fields": {k: v for k, v in rows}}, indent=2))
            return 0
        if not rows:
            print(f"no differences between {len(labels)} hosts")
            return 0
        widths = [max(len(r[0]) for r in rows)] + [
            max(len(labels[i]), *(len(r[1][i]) for r in rows)) for i in range(len(labels))]
        print("  ".join(t.ljust(w) for t, w in zip(["field", *labels], widths)).rstrip())
        for key, shown in rows:
            print("  ".join(t.ljust(w) for t, w in zip([key, *shown], widths)).rstrip())
        return 0


class ImportCommand(Command):
    name = "import"
    help = "make a host profile from a register dump (text or Firecracker JSON)"
    description = """\
Turn a register dump into a host profile, so hosts without the helper can
take part in cpu-baseline and cpu-compare.  DUMP is a text dump (NAME=VALUE
or NAME VALUE lines, '#' comments) or Firecracker cpu-template-helper JSON
(template dump or fingerprint dump).  A dump has no writable masks:

  --writable none      nothing may change on that host (the default, and safe)
  --writable FILE      reuse the masks of a probed profile (same kernel)
  --writable all-known every field with a kernel policy: an ASSUMPTION"""
    epilog = """\
examples:
  libvirt-arm-cpu import host-c.regs -o host-c.xml
  libvirt-arm-cpu import fc-fingerprint.json --writable host-a.xml -o host-c.xml"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("dump", metavar="DUMP", help="dump file ('-' for stdin)")
        parser.add_argument("--output", "-o", required=True, metavar="PROFILE",
                            help="profile to write ('-' for stdout)")
        parser.add_argument("--writable", default="none", metavar="none|FILE|all-known",
                            help="writable masks to assume (default: none)")
        parser.add_argument("--hostname", help="host name to record (default: the dump's "
                                               "file name)")

    def run(self, args: argparse.Namespace) -> int:
        from libvirt_arm_cpu.formats.importer import all_known_masks, import_profile, parse_values
        from libvirt_arm_cpu.formats.profile import read_profile, write_profile

        kb = kb_load.registers()
        data = read_input(args.dump)
        values, kernel = parse_values(data, args.dump, kb)
        if not values:
            raise DataError(f"{args.dump}: no ID register values found")
        if args.writable == "none":
            masks: dict[str, int | None] = {}
        elif args.writable == "all-known":
            masks = dict(all_known_masks(kb))
            print("libvirt-arm-cpu: warning: --writable all-known ASSUMES every field with a "
                  "kernel policy is writable on that host; probe it to know", file=sys.stderr)
        else:
            source = read_profile(args.writable)
            masks = {r.name: r.writable for r in source.registers}
        host = args.hostname or ("stdin" if args.dump == "-" else
                                 os.path.splitext(os.path.basename(args.dump))[0])
        profile = import_profile(values, kb, args.dump, data, masks, host, kernel)
        out = write_profile(profile, args.output)
        if args.output == "-":
            sys.stdout.write(out.decode())
        missing = sum(1 for r in profile.registers
                      if r.value is None and kb.by_encoding(*r.encoding) is not None)
        print(f"import: {len(values)} registers from {args.dump}"
              + (f"; {missing} known registers not in the dump are recorded absent"
                 if missing else ""), file=sys.stderr)
        return 0
