"""``hypervisor-cpu-compare`` and ``hypervisor-cpu-baseline``: virsh's
commands for the CPU a hypervisor presents, here KVM's on an aarch64 host
described by its profile; and the libvirt inputs that ``cpu-compare`` and
``cpu-baseline`` take as virsh does (a ``<cpu>``, several in one file, a
domain XML, ``virsh capabilities`` and ``virsh domcapabilities`` output).

The commands are thin: the same service and engine calls as
``libvirt_arm_cpu.api.baseline_hypervisor_cpu`` and
``compare_hypervisor_cpu`` (the block at the end of this module is the
API's own, word for word).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass

from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.engine.compare import (IDENTICAL, INCOMPATIBLE, SUPERSET, Comparison, compare_features)
from libvirt_arm_cpu.errors import (DataError, UsageError, path_label)
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.formats.cpumodel import to_xml as model_to_xml
from libvirt_arm_cpu.formats.domain import cpu_from_element
from libvirt_arm_cpu.formats.hostcpu import from_xml as host_cpu_from_xml
from libvirt_arm_cpu.formats.hostcpu import looks_like_host_cpu
from libvirt_arm_cpu.formats.kinds import (CPU_MODEL, HOST_PROFILE, REGISTER_DUMP, kind_of, wrong_kind)
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu.model import CpuModel, HostCpu, HostProfile
from libvirt_arm_cpu.service import (expand_paths, find_model, host_profile, input_label,
                                     load_input, model_features, resolve_model)
from libvirt_arm_cpu.xmlsafe import shown
from libvirt_arm_cpu.cpuinputs import (CpuInput, baseline_inputs, check_cpu_schema, check_hypervisor, compare_cpu_features, compare_document, cpu_input, libvirt_cpus, saved_model)

__all__ = ["HypervisorCompareCommand", "HypervisorBaselineCommand", "CpuArg", "read_cpu_arg",
           "read_baseline_inputs", "libvirt_host_cpu", "compare_with_host_cpu"]


# -- what cpu-compare and cpu-baseline take as virsh does ------------------------------

@dataclass(frozen=True)
class CpuArg:
    """cpu-compare's CPU: a CPU model (*model*), a host profile (*profile*:
    a host-passthrough guest of that host), or a libvirt <cpu> without ID
    register values (*item*)."""

    source: str
    model: CpuModel | None
    profile: HostProfile | None = None
    item: CpuInput | None = None


def read_cpu_arg(spec: str, kb: registers.KnowledgeBase, validate: bool = False) -> CpuArg:
    """A model file or a saved model's name, a host profile, or a libvirt
    <cpu>, domain XML, capabilities or domcapabilities file (its first CPU,
    as virsh).  *validate*: check the <cpu> against libvirt's schema."""
    if not (os.path.exists(spec) or spec == "-"):
        source, model = resolve_model(spec)
        return CpuArg(source, model)
    data = read_input(spec)
    kind = kind_of(data)
    if kind == REGISTER_DUMP:
        raise wrong_kind(spec, REGISTER_DUMP, f"{CPU_MODEL} or {HOST_PROFILE}")
    if kind == HOST_PROFILE:
        model, profile = load_input(data, spec, input_label(spec), kb, validate=validate)
        return CpuArg(spec, model, profile)
    root, cpus = libvirt_cpus(data, spec)
    if validate:
        check_cpu_schema(cpus[0], spec)
    item = cpu_input(cpus[0], spec, data if cpus[0] is root else None)
    return CpuArg(spec, item.model, None, None if item.model is not None else item)


def read_baseline_inputs(paths: list[str], kb: registers.KnowledgeBase, validate: bool = False
                         ) -> list[tuple[str, CpuModel, HostProfile | None]]:
    """cpu-baseline's inputs, each with a label: host profiles (a fleet's
    copies of one profile read once; the reader's checks, not the schema's,
    as service.load_inputs), CPU models, directories of profiles,
    several <cpu> in one file, and libvirt documents whose <cpu> names a
    saved model; a libvirt <cpu> with hwcap names only is refused, naming
    the file.  *validate*: each distinct profile against the schema too."""
    seen: dict[bytes, tuple[CpuModel, HostProfile]] = {}
    out: list[tuple[str, CpuModel, HostProfile | None]] = []
    for path in expand_paths(paths):
        out += baseline_inputs(read_input(path), path, input_label(path), kb, seen,
                               validate=validate)
    return out


def libvirt_host_cpu(data: bytes, path: str) -> HostCpu | None:
    """cpu-compare's PROFILE as a libvirt host CPU ('virsh capabilities', its
    host <cpu>, or the host-model CPU of 'virsh domcapabilities'); None when
    it is not one (a host profile)."""
    if b"urn:x-libvirt-arm-cpu" in data:
        return None
    if b"<domainCapabilities" in data[:600]:
        _, cpus = libvirt_cpus(data, path)
        cpu = cpu_from_element(cpus[0], path)
        return HostCpu("aarch64", cpu.model or "", (cpus[0].findtext("vendor") or "").strip(),
                       frozenset(f.name.lower() for f in cpu.features
                                 if f.policy in ("require", "force")))
    if looks_like_host_cpu(data):
        return host_cpu_from_xml(data, path)
    return None


def compare_with_host_cpu(item: CpuInput, host: HostCpu, path: str) -> Comparison:
    """A libvirt <cpu> against a libvirt host CPU: both are feature names."""
    cpu = item.cpu
    assert cpu is not None
    if not item.host_cpu and cpu.mode in ("host-passthrough", "maximum"):
        return Comparison(IDENTICAL, [], [], "features",
                          [f"<cpu mode='{cpu.mode}'> is the CPU of the host it runs on"])
    saved = saved_model(cpu.model) if cpu.mode == "custom" and not item.host_cpu else None
    if saved is not None and not cpu.features:
        return compare_features(saved, host, kb_load.features())
    if saved is not None or (cpu.mode == "host-model" and not item.host_cpu):
        raise UsageError(f"{path_label(path)}: a <cpu mode='{cpu.mode}'>"
                         + (" with <feature> policies" if saved is not None else "")
                         + " is resolved against a host profile, not a libvirt host CPU: give "
                           "the host's profile")
    return compare_cpu_features(item, host, path)


# -- the commands ------------------------------------------------------------------

def add_hypervisor_arguments(parser: argparse.ArgumentParser) -> None:
    """virsh's --virttype, --emulator, --arch and --machine."""
    parser.add_argument("--virttype", metavar="TYPE",
                        help="virtualization type (/domain/@type): kvm, the default; qemu (TCG) "
                             "is refused, TCG guests get QEMU's own CPU models")
    parser.add_argument("--emulator", metavar="PATH",
                        help="path to emulator binary (/domain/devices/emulator): an aarch64 "
                             "QEMU, which must exist on this host (not checked with --host)")
    parser.add_argument("--arch", metavar="ARCH",
                        help="CPU architecture (/domain/os/type/@arch): aarch64, the default "
                             "and the only one answered")
    parser.add_argument("--machine", metavar="TYPE",
                        help="machine type (/domain/os/type/@machine): virt or virt-X.Y")


def check_hypervisor_arguments(args: argparse.Namespace, here: bool) -> None:
    if args.arch is not None and args.arch != "aarch64":
        raise UsageError(f"--arch {shown(args.arch)}: libvirt-arm-cpu answers for aarch64 only "
                         f"(virsh hypervisor-cpu-* answers for the others)")
    check_hypervisor(args.virttype, args.machine, args.emulator, here)


def _one_file(args: argparse.Namespace) -> str:
    if args.file and args.file_option:
        raise UsageError("give FILE once: as an argument or with --file")
    path: str | None = args.file or args.file_option
    if not path:
        raise UsageError("the CPU's FILE is required (see 'libvirt-arm-cpu "
                         "hypervisor-cpu-compare --help')")
    return path


class HypervisorCompareCommand(Command):
    name = "hypervisor-cpu-compare"
    help = "compare a CPU with the CPU KVM provides on a host (as virsh hypervisor-cpu-compare)"
    description = """\
Compare the CPU described in FILE with the CPU the hypervisor (KVM) provides
on the host: this host (its cached profile, re-probed when stale) or the
one --host PROFILE describes.  FILE is what virsh takes (a <cpu>, a domain
XML, 'virsh capabilities' or 'virsh domcapabilities' output: its first CPU)
or this project's CPU model (cpu-baseline) or host profile (a
host-passthrough guest of that host moving here).  A CPU model is judged
field by field; a <cpu mode='custom'> naming a saved model as translate
resolves it; host-passthrough is the host's own CPU; a libvirt <cpu> that
lists hwcap names only (a host CPU, libvirt's own models) at feature level,
and the answer says so."""
    epilog = """\
examples:
  libvirt-arm-cpu hypervisor-cpu-compare model.xml --host host-b.xml
  libvirt-arm-cpu hypervisor-cpu-compare guest.xml --virttype kvm --machine virt --error
  virsh capabilities > caps.xml; libvirt-arm-cpu hypervisor-cpu-compare caps.xml

exit codes (as virsh): 0 identical or superset; 1 incompatible (with --error:
as an error), or bad data; 2 bad usage (an --arch other than aarch64,
--virttype qemu, a machine type other than virt, a missing emulator)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", nargs="?", metavar="FILE",
                            help="file containing an XML CPU description")
        parser.add_argument("--file", dest="file_option", metavar="FILE",
                            help="the same, as virsh's option")
        add_hypervisor_arguments(parser)
        parser.add_argument("--host", metavar="PROFILE",
                            help=f"the host's profile (default: this host, {DEFAULT_CACHE})")
        parser.add_argument("--error", action="store_true",
                            help="report error if CPUs are incompatible")
        parser.add_argument("--validate", action="store_true",
                            help="validate the XML document against libvirt's schema")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        path = _one_file(args)
        check_hypervisor_arguments(args, here=args.host is None)
        kb = kb_load.registers()
        if args.host:
            host = host_profile(args.host)
        else:
            with or_give_a_profile("--host PROFILE"):
                host = host_profile(None)
        c = compare_document(read_input(path), path, host, kb, validate=args.validate)
        incompatible = c.result == INCOMPATIBLE
        if args.json:
            print(json.dumps({"host": host.hostname, **c.as_dict()}, indent=2))
            return 1 if incompatible else 0
        src = path_label(path)
        level = " (feature level)" if c.precision == "features" else ""
        if incompatible and args.error:
            raise DataError(f"the CPU described in {src} is incompatible with the CPU provided "
                            f"by hypervisor on host {host.hostname}{level}: {c.reasons[0]}"
                            + (f" (and {len(c.reasons) - 1} more)" if len(c.reasons) > 1
                               else ""))
        if c.result == IDENTICAL:
            print(f"CPU described in {src} is identical to the CPU provided by hypervisor on "
                  f"the host")
        elif c.result == SUPERSET:
            print(f"The CPU provided by hypervisor on the host is a superset of CPU described "
                  f"in {src}")
            for change in c.changes:
                print(f"  {'lowers ' if c.precision == 'registers' else ''}{change}")
        else:
            print(f"CPU described in {src} is incompatible with the CPU provided by hypervisor "
                  f"on the host")
            for r in c.reasons:
                print(f"  {r}")
        print(f"(the host: {host.hostname}, KVM as its profile describes it)")
        for note in c.notes:
            print(f"(note: {note})")
        if level:
            print(f"(compared at feature level only: {src} has no ID register values, only "
                  f"feature names, which show neither every field nor what the host's kernel "
                  f"lets change; a libvirt-arm-cpu model is exact)")
        return 1 if incompatible else 0


class HypervisorBaselineCommand(Command):
    name = "hypervisor-cpu-baseline"
    help = "the most capable CPU KVM can provide on every given host (as virsh " \
           "hypervisor-cpu-baseline)"
    description = """\
Compute the CPU model every given host's KVM can present to a guest, as
cpu-baseline does, with virsh hypervisor-cpu-baseline's options.  The CPUs
are host profiles, CPU models, directories of profiles, or a file holding
several <cpu> elements (virsh's format) or a domain XML whose <cpu> names a
saved model; a libvirt <cpu> that lists hwcap names only (the host <cpu> of
'virsh capabilities', libvirt's own models) has too little for a model and
is refused."""
    epilog = """\
examples:
  libvirt-arm-cpu hypervisor-cpu-baseline host-a.xml host-b.xml --virttype kvm
  libvirt-arm-cpu hypervisor-cpu-baseline --file cpus.xml --features --migratable
  libvirt-arm-cpu hypervisor-cpu-baseline --model arm64-1ae591bf1d2c

--migratable is accepted and changes nothing: every model is migratable by
construction (values every host's KVM accepts, nothing host-specific).

exit codes: 0 a model; 1 no common model (every responsible field is listed)
or bad data; 2 bad usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("files", nargs="*", metavar="FILE",
                            help="host profiles, CPU models, directories of profiles, or files "
                                 "of XML CPU descriptions")
        parser.add_argument("--file", dest="more", action="append", default=[], metavar="FILE",
                            help="file containing XML CPU descriptions (virsh's option)")
        add_hypervisor_arguments(parser)
        parser.add_argument("--features", action="store_true",
                            help="list every feature (FEAT_* and AArch32 too), not just hwcaps")
        parser.add_argument("--migratable", action="store_true",
                            help="accepted: every model is migratable by construction")
        parser.add_argument("--model", metavar="NAME",
                            help="a saved CPU model alone (virsh's shortcut for a single CPU "
                                 "model and no additional features)")

    def run(self, args: argparse.Namespace) -> int:
        paths = [*args.files, *args.more]
        if args.model and paths:
            raise UsageError("--model and FILE exclude each other (as in virsh)")
        if not args.model and not paths:
            raise UsageError("give the CPUs: FILE..., --file FILE or --model NAME")
        check_hypervisor_arguments(args, here=True)
        kb = kb_load.registers()
        if args.model:
            inputs: list[tuple[str, CpuModel, HostProfile | None]] = [
                (args.model, find_model(args.model), None)]
            taken = [f"{r}.{f}" for r, fs in inputs[0][1].host_fields.items() for f in fs]
            if taken:
                raise UsageError(f"CPU model {args.model} takes {len(taken)} fields from the "
                                 f"host it runs on ({', '.join(taken[:3])}...), so it has no "
                                 f"baseline of its own: compare or translate it for a host")
        else:
            inputs = read_baseline_inputs(paths, kb)
        labels = [label for label, _, _ in inputs]
        # the baseline engine only here: cpu-compare imports this module too
        from libvirt_arm_cpu.cli.cpu_baseline import model_or_conflicts, report_consistency
        from libvirt_arm_cpu.engine.baseline import baseline
        result = baseline([m for _, m, _ in inputs], kb, kb_load.dependencies(), labels)
        model = model_or_conflicts(result, len(inputs))
        if model is None:
            return 1
        report_consistency(result.consistency, self.name)
        sys.stdout.write(model_to_xml(model, model_features(model, args.features)).decode())
        return 0
