"""``migrate-check``: can a guest move between two hosts, each way, and why not."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.engine.compare import (INCOMPATIBLE, Comparison, compare, compare_passthrough, migration_reasons)
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.errors import UsageError, path_label
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.model import HostProfile
from libvirt_arm_cpu.service import input_label, load_input, resolve_model


@dataclass(frozen=True)
class Direction:
    """One way of a migration between two hosts, and compare's verdict on it."""

    source: str
    dest: str
    verdict: Comparison

    @property
    def migrates(self) -> bool:
        return self.verdict.result != INCOMPATIBLE

    def as_dict(self) -> dict:
        return {"from": self.source, "to": self.dest, "migrates": self.migrates,
                **self.verdict.as_dict()}


def check_direction(source: HostProfile, dest: HostProfile, kb: registers.KnowledgeBase,
                    model: CpuModel | None) -> Comparison:
    """One direction.  Without *model*, a host-passthrough guest of *source*
    (QEMU writes the source's values into the destination's KVM); with it, a
    guest of that model (the loader or SYSREG_* gives it on both hosts, and
    the migration stream still carries every register the source's KVM
    lists)."""
    if model is None:
        return compare_passthrough(source, dest, kb)
    on_source = compare(model, source, kb)
    on_dest = compare(model, dest, kb)
    reasons = [dataclasses.replace(r, message=f"on the source: {r.message}")
               for r in on_source.reasons]
    stream, notes = migration_reasons(source, dest, kb, model.firmware, model.reg_list,
                                      model.vcpu_off)
    reasons += stream + on_dest.reasons
    notes += [n for n in on_source.notes + on_dest.notes if n not in notes]
    return Comparison(INCOMPATIBLE if reasons else on_dest.result, reasons, on_dest.changes,
                      notes=notes)


def _profile(path: str, kb: registers.KnowledgeBase) -> tuple[str, HostProfile]:
    label = input_label(path)
    _, profile = load_input(read_input(path), path, label, kb)
    if profile is None:
        raise UsageError(f"{path_label(path)} is a CPU model, not a host profile (give the "
                         f"model with --model)")
    return label, profile


class MigrateCheckCommand(Command):
    name = "migrate-check"
    help = "can a guest migrate from one host to another (and back) on stock QEMU?"
    description = """\
Say whether a guest can live-migrate (or be saved and restored) from host SRC
to host DST, and back from DST to SRC, with each responsible field.  SRC and
DST are host profiles.  Without --model the guest is a host-passthrough guest
of its host: the destination's QEMU writes the source's ID register values
into its KVM before the guest runs again, and the destination's kernel takes
exactly the changes its rules allow (so a guest moves from a lower host to a
higher one, not back) with MIDR/REVIDR/AIDR unchanged (QEMU never enables
KVM capability 239).  With --model the guest runs that CPU model on both
hosts (the loader or SYSREG_* properties give it); it migrates where the
model runs on both and the destination's kernel lists every ID register the
source's does.  Either way the host's firmware pseudo-registers (Spectre
mitigation levels, PSCI version, hypercall services) travel with the guest
and must be ones the destination's KVM honours."""
    epilog = """\
examples:
  libvirt-arm-cpu migrate-check host-a.xml host-b.xml
  libvirt-arm-cpu migrate-check host-a.xml host-b.xml --model arm64-1ae591bf1d2c
  libvirt-arm-cpu migrate-check host-a.xml host-b.xml --both --json

exit codes: 0 the guest migrates from SRC to DST (with --both: both ways);
1 it does not, or bad data; 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("source", metavar="SRC", help="the source host's profile")
        parser.add_argument("dest", metavar="DST", help="the destination host's profile")
        parser.add_argument("--model", metavar="MODEL",
                            help="the guest's CPU model (file or saved name); default: a "
                                 "host-passthrough guest")
        parser.add_argument("--both", action="store_true",
                            help="succeed only if the guest can also come back")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        a_label, a = _profile(args.source, kb)
        b_label, b = _profile(args.dest, kb)
        model = resolve_model(args.model)[1] if args.model else None
        guest = f"CPU model {model.name}" if model else "host-passthrough"
        dirs = [Direction(a_label, b_label, check_direction(a, b, kb, model)),
                Direction(b_label, a_label, check_direction(b, a, kb, model))]
        ok = dirs[0].migrates and (dirs[1].migrates or not args.both)
        if args.json:
            print(json.dumps({"guest": guest, "directions": [d.as_dict() for d in dirs]},
                             indent=2))
            return 0 if ok else 1
        for d in dirs:
            if d.migrates:
                what = (", ".join(d.verdict.changes[:6]) +
                        (f" (and {len(d.verdict.changes) - 6} more)"
                         if len(d.verdict.changes) > 6 else "")) or "the same values"
                print(f"{d.source} -> {d.dest}: migrates ({guest} guest; {d.dest} takes "
                      f"{what})")
            else:
                print(f"{d.source} -> {d.dest}: refused ({guest} guest): "
                      f"{len(d.verdict.reasons)} reason(s)")
                for r in d.verdict.reasons:
                    print(f"  {r}")
            for n in d.verdict.notes:
                print(f"  note: {n}")
        return 0 if ok else 1
