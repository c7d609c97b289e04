"""``cpu-baseline``: the most capable CPU model a pool of hosts can run."""

from __future__ import annotations

import argparse
import os
import sys

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu.engine.baseline import BaselineResult, baseline, largest_compatible, pools
from libvirt_arm_cpu.cli.base import Command, add_cache_arguments
from libvirt_arm_cpu.cpuinputs import baseline_inputs
from libvirt_arm_cpu.service import bulk, load_inputs, model_cache, model_features
from libvirt_arm_cpu.engine.consistency import Consistency
from libvirt_arm_cpu.formats.cpumodel import to_xml as model_to_xml
from libvirt_arm_cpu.model import CpuModel
from libvirt_arm_cpu.fileio import atomic_write

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (2 ms a start)
if TYPE_CHECKING:
    from typing import Any


def model_data(model: CpuModel, feats: list[str]) -> dict[str, Any]:
    return {"name": model.name, "hosts": list(model.hosts),
            "implementations": [f"{m:#010x}" for m in model.implementations],
            "imp_id_writable": model.imp_id_writable, "features": feats,
            "registers": {n: {"value": f"0x{v:016x}",
                              "writable": f"0x{model.writable.get(n, 0):016x}"}
                          for n, v in sorted(model.values.items())}}


def model_or_conflicts(result: BaselineResult, hosts: int) -> CpuModel | None:
    """The baseline's model, or None after printing why there is none."""
    if result.model is None:
        print(f"libvirt-arm-cpu: error: no CPU model runs on all {hosts} hosts: "
              f"{len(result.conflicts)} field(s) conflict", file=sys.stderr)
        for c in result.conflicts:
            print(f"  {c}", file=sys.stderr)
    return result.model


def report_consistency(c: Consistency | None, prog: str = "cpu-baseline") -> None:
    """The dependency repair's lowerings and unresolved rules, on stderr."""
    if c is None:
        return
    for low in c.lowered:
        print(f"{prog}: lowered {low}", file=sys.stderr)
    for u in c.unresolved:
        print(f"{prog}: warning: rule {u}", file=sys.stderr)


# the left-out hosts --exclude-incompatible names on stderr
_NAMED_LEFT_OUT = 10


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
exact values sit in an <arm:registers> element, so it can be read back.

As virsh cpu-baseline, a file may hold several <cpu> elements, and a domain
XML whose <cpu> names a saved model counts as that model.  A libvirt <cpu>
that lists hwcap names only (the host <cpu> of 'virsh capabilities' or
'virsh domcapabilities', libvirt's own models) has too little for a model:
it is refused, naming the file (probe that host with the helper instead)."""
    epilog = """\
examples:
  libvirt-arm-cpu cpu-baseline host-a.xml host-b.xml
  libvirt-arm-cpu cpu-baseline /srv/profiles/ --save       # reuse as: cpu-compare NAME
  libvirt-arm-cpu cpu-baseline a.xml b.xml --json
  libvirt-arm-cpu cpu-baseline a.xml b.xml --features --migratable   # virsh's options

saved models go to the models folder ([models] dir in /etc/libvirt-arm-cpu.conf,
or LIBVIRT_ARM_CPU_MODELS_DIR; default /var/lib/libvirt-arm-cpu/models).
The model is then made consistent with the feature-dependency rules
(xml/dependencies.xml: SVE2 needs SVE, ...) by lowering only, within what
every host accepts; each lowering and each rule that cannot be repaired is
named on stderr (and under "consistency" in --json).  Rules a host breaks
with its own values are not enforced.

--migratable is accepted for virsh's sake and changes nothing: every model is
migratable by construction (values every host's KVM accepts from userspace,
nothing host-specific is passed through).

exit codes: 0 a model; 1 no common model (every responsible field is listed)
or bad data; 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("profiles", nargs="+", metavar="PROFILE")
        parser.add_argument("--features", action="store_true",
                            help="list every feature (FEAT_* and AArch32 too), not just hwcaps")
        parser.add_argument("--migratable", action="store_true",
                            help="accepted (virsh's option): every model is migratable by "
                                 "construction")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument("--validate", action="store_true",
                            help="check each profile against its schema too (the reader's own "
                                 "checks always run; the schema costs ~30 ms a distinct "
                                 "profile)")
        parser.add_argument("--save", action="store_true",
                            help="also save the model under its name in the models folder")
        add_cache_arguments(parser)
        parser.add_argument("--output", "-o", metavar="FILE", help="write the XML to FILE")
        group = parser.add_mutually_exclusive_group()
        group.add_argument("--exclude-incompatible", action="store_true",
                           help="leave out the fewest hosts needed for a common model "
                                f"(the first {_NAMED_LEFT_OUT} named on stderr, all as "
                                f"left_out with --json)")
        group.add_argument("--pools", action="store_true",
                           help="split the hosts into compatible pools, largest first, and "
                                "list them (with --save, save each pool's model)")

    def run(self, args: argparse.Namespace) -> int:
        # a fleet read and combined without garbage collection (service.bulk)
        with bulk(len(args.profiles) > 1 or any(os.path.isdir(p) for p in args.profiles)):
            return self._run(args)

    def _run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        # as cli.hypervisor.read_baseline_inputs, through the profile cache
        inputs = load_inputs(args.profiles, kb, args.validate,
                             model_cache(kb, args.cache_dir, not args.no_cache),
                             other=baseline_inputs, profiles=False, jobs=None)
        models = [m for _, m, _ in inputs]
        labels = [label for label, _, _ in inputs]
        if args.pools:
            return self._pools(args, models, labels, kb)
        left_out: list[str] | None = None
        if args.exclude_incompatible:
            pool = largest_compatible(models, kb, kb_load.dependencies(), labels)
            kept = set(pool.indices)
            left_out = [labels[i] for i in range(len(labels)) if i not in kept]
            if left_out:
                # one line an operator reads; a fleet's thousands are in --json
                named = " ".join(left_out[:_NAMED_LEFT_OUT])
                more = len(left_out) - _NAMED_LEFT_OUT
                print(f"cpu-baseline: left out {len(left_out)} of {len(labels)} hosts: {named}"
                      + (f" and {more} more (--json lists them all)" if more > 0 else ""),
                      file=sys.stderr)
            result = pool.result
        else:
            result = baseline(models, kb, kb_load.dependencies(), labels)
        model = model_or_conflicts(result, len(inputs))
        if model is None:
            return 1
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
            if left_out is not None:
                out["left_out"] = left_out      # what stderr names, for scripts
            import json
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
            import json
            print(json.dumps(data, indent=2))
        else:
            for d in data:
                print(f"pool {d['pool']}: {d['model']}: {len(d['hosts'])} host(s): "
                      f"{' '.join(d['hosts'])}")
        return 0
