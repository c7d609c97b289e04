"""``libvirt-arm-cpu-helper probe`` and ``try-apply``: asking KVM directly."""

from __future__ import annotations

import argparse
import json
import os
import sys

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.formats.dump import parse_dump
from libvirt_arm_cpu.errors import EXIT_MASKS_UNKNOWN, ParseError, UsageError
from libvirt_arm_cpu.fileio import read_input
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE
from libvirt_arm_cpu.host.kvm import VcpuFeatures
from libvirt_arm_cpu.host.probe import check_machine, open_kvm, probe_host
from libvirt_arm_cpu.formats.profile import from_xml, to_json, write_profile
from libvirt_arm_cpu.host.tryapply import try_apply

MASKS_UNKNOWN = ("this kernel has no KVM_CAP_ARM_SUPPORTED_REG_MASK_RANGES (capability 230, "
                 "Linux 6.7 and later): its writable ID register fields are unknown, so "
                 "guests here can only be given this host's exact CPU")


def _progress(args: argparse.Namespace):
    if getattr(args, "quiet", False):
        return None
    return lambda msg: print(f"probe: {msg}", file=sys.stderr)


class ProbeCommand(Command):
    name = "probe"
    help = "probe this host's KVM and write its host profile"
    description = """\
Probe this host: kernel and CPUs (every CPU's MIDR), KVM capabilities, a
scratch vCPU's ID registers (with PMU, SVE and pointer authentication enabled
where KVM offers them), the writable masks, and the QEMU emulator (version,
and whether `-cpu host` takes SYSREG_* properties).  The host profile is
written atomically, by default to the cache other commands read."""
    epilog = f"""\
examples:
  libvirt-arm-cpu-helper probe                        # refresh {DEFAULT_CACHE}
  libvirt-arm-cpu-helper probe --output host-a.xml
  libvirt-arm-cpu-helper probe --output - --json      # JSON on stdout, no file

exit codes: 0 written; 6 written, but this kernel cannot tell writable masks
(older than Linux 6.7); 3 not aarch64; 4 no /dev/kvm; 5 permission denied;
7 an ioctl failed; 8 timed out; 1/2 bad data/usage."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--output", "-o", default=DEFAULT_CACHE, metavar="FILE",
                            help=f"where to write the profile ('-': stdout; default "
                                 f"{DEFAULT_CACHE})")
        parser.add_argument("--json", action="store_true",
                            help="print the profile as JSON on stdout")
        parser.add_argument("--emulator", metavar="PATH",
                            help="QEMU binary (default: qemu-system-aarch64 on PATH)")
        parser.add_argument("--quiet", "-q", action="store_true", help="no progress messages")

    def run(self, args: argparse.Namespace) -> int:
        profile = probe_host(args.emulator, progress=_progress(args))
        if args.output != "-":
            os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        data = write_profile(profile, args.output)
        if args.json:
            print(json.dumps(to_json(profile), indent=2))
        elif args.output == "-":
            sys.stdout.write(data.decode())
        else:
            if not args.quiet:
                print(f"probe: wrote {args.output}", file=sys.stderr)
        if not profile.masks_known:
            print(f"libvirt-arm-cpu-helper: warning: {MASKS_UNKNOWN}", file=sys.stderr)
            return EXIT_MASKS_UNKNOWN
        return 0


class TryApplyCommand(Command):
    name = "try-apply"
    help = "ask this host's KVM whether it accepts a set of ID register values"
    description = """\
Write register values into a scratch vCPU exactly as QEMU would before a guest
starts (after KVM_ARM_VCPU_INIT, before the first run), read them back, and
report per register: unchanged, accepted, changed (KVM fixed it up), rejected
(with errno and the fields that differ from this host), or absent.

FILE is a host profile (XML) or a dump of NAME=VALUE lines; '-' reads stdin."""
    epilog = """\
examples:
  libvirt-arm-cpu-helper try-apply other-host.xml
  echo ID_AA64ISAR0_EL1=0x0000000010211120 | libvirt-arm-cpu-helper try-apply -

exit codes: 0 every value accepted; 1 some value rejected or changed;
3/4/5/7/8 as for probe."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("file", help="host profile or register dump ('-' for stdin)")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument("--features", metavar="LIST",
                            help="vCPU features: comma-separated pmu,sve,ptrauth or 'none' "
                                 "(default: all KVM offers, as the probe)")
        parser.add_argument("--enable-imp-id-regs", action="store_true", default=None,
                            help="enable KVM_CAP_ARM_WRITABLE_IMP_ID_REGS (default: when "
                                 "MIDR/REVIDR/AIDR are given and KVM offers it)")
        parser.add_argument("--run-first", action="store_true",
                            help="run the scratch vCPU once before writing (diagnostic: "
                                 "KVM then refuses changes with EBUSY)")

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        wanted = _read_values(args.file, kb)
        check_machine()
        with open_kvm() as kvm:
            features = _features(args.features, kvm)
            result = try_apply(kvm, kb, wanted, features, args.enable_imp_id_regs,
                               args.run_first)
        if args.json:
            print(json.dumps(result.as_dict(), indent=2))
        else:
            for v in result.verdicts:
                line = f"{v.register:<18} {v.status}"
                if v.errno:
                    line += f" ({v.errno})"
                if v.status == "changed":
                    line += f": read back {v.readback:#018x}"
                if v.fields:
                    line += ": " + "; ".join(v.fields)
                print(line)
            print("all values accepted" if result.ok else "some values were not accepted")
        return 0 if result.ok else 1


def _read_values(path: str, kb: registers.KnowledgeBase) -> dict[str, int]:
    data = read_input(path)
    if data.lstrip().startswith(b"<"):
        profile = from_xml(data, path)
        return {r.name: r.value for r in profile.registers
                if r.value is not None and kb.by_encoding(*r.encoding) is not None}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError(path, None, "not a text file (invalid UTF-8)") from None
    return {e.register.name: e.value.raw for e in parse_dump(text, kb, path)}


def _features(spec: str | None, kvm) -> VcpuFeatures:
    if spec is None:
        return kvm.default_features()
    names = set() if spec == "none" else {s.strip() for s in spec.split(",") if s.strip()}
    unknown = names - {"pmu", "sve", "ptrauth"}
    if unknown:
        raise UsageError(f"unknown vCPU feature '{sorted(unknown)[0]}' (use pmu, sve, ptrauth "
                         f"or none)")
    return VcpuFeatures(pmu="pmu" in names, sve="sve" in names, ptrauth="ptrauth" in names)
