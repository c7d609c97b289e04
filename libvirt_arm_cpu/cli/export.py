"""``export nfd|traits|firecracker``: what a scheduler needs to place guests
only where their CPU runs -- Kubernetes node labels (node-feature-discovery's
local feature file), OpenStack placement traits (a list, or Nova's provider
config file), and a Firecracker custom CPU template for one model."""

from __future__ import annotations

import argparse
import json
import sys

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu import drift
from libvirt_arm_cpu.cli.base import Command, or_give_a_profile
from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, compare
from libvirt_arm_cpu.errors import DataError, UsageError
from libvirt_arm_cpu.fileio import atomic_write
from libvirt_arm_cpu.formats import firecracker, nfd, traits
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.host.hostcache import DEFAULT_CACHE, cached_profile
from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.model import HostProfile
from libvirt_arm_cpu.service import resolve_model

NFD_FILE = "/etc/kubernetes/node-feature-discovery/features.d/libvirt-arm-cpu"
NOVA_DIR = "/etc/nova/provider_config"


class ExportCommand(Command):
    name = "export"
    help = "this host's runnable CPU models and features for Kubernetes (NFD) and OpenStack " \
           "(placement traits); a Firecracker CPU template for a model"
    description = f"""\
nfd: node-feature-discovery's local feature file: one label for each saved
  or named CPU model this host runs (--model-prefix, default
  {nfd.MODEL_PREFIX}NAME) and one for each Linux hwcap a
  host-passthrough guest here has ({nfd.FEATURE_PREFIX}NAME), all 'true'.
  Install it as {NFD_FILE} (written atomically: nfd-worker skips dot files);
  a KubeVirt VMI then asks for its CPU with a nodeSelector on the model's label.
traits: OpenStack placement traits, the same facts: CUSTOM_ARM_CPU_MODEL_NAME
  for each model; HW_CPU_AARCH64_* (os-traits) for the hwcaps it names,
  CUSTOM_ARM_CPU_HWCAP_NAME for the others.  --format provider-yaml writes
  Nova's provider config file (custom traits only, Nova's rule; put it in
  {NOVA_DIR}/, read when nova-compute starts), and a flavor asks for
  trait:CUSTOM_ARM_CPU_MODEL_NAME=required.
firecracker: a Firecracker custom CPU template (PUT /cpu-config) that gives a
  guest the CPU model MODEL: the fields the model may change, set to its
  values; with --profile, only if that host can run it (KVM's verdict).

Runnable is cpu-compare's verdict (identical or superset) against the host
profile (default: this host's cached profile, probed again when stale).
Regenerate after an upgrade, with 'host --check'."""
    epilog = """\
examples:
  libvirt-arm-cpu export nfd -o /etc/kubernetes/node-feature-discovery/features.d/libvirt-arm-cpu
  libvirt-arm-cpu export traits --profile tests/data/hosts/neoverse-n1-qemu7.2-linux7.3.xml
  libvirt-arm-cpu export traits --format provider-yaml -o /etc/nova/provider_config/arm-cpu.yaml
  libvirt-arm-cpu export firecracker my-model --profile host-b.xml -o my-model.json"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("target", choices=("nfd", "traits", "firecracker"),
                            help="what to write")
        parser.add_argument("model", nargs="?", metavar="MODEL",
                            help="firecracker: the CPU model (file or saved/named model)")
        parser.add_argument("--profile", metavar="FILE",
                            help=f"host profile (default: this host, {DEFAULT_CACHE}; "
                                 f"firecracker: none, no check)")
        parser.add_argument("-o", "--output", metavar="FILE", default="-",
                            help="write here, atomically (default: standard output)")
        parser.add_argument("--kvm-only", action="store_true",
                            help="nfd, traits: judge KVM alone, ignoring whether QEMU takes "
                                 "SYSREG_* (for engines other than QEMU)")
        parser.add_argument("--model-prefix", default=nfd.MODEL_PREFIX, metavar="PREFIX",
                            help=f"nfd: a model's label is PREFIX + its name (default "
                                 f"{nfd.MODEL_PREFIX})")
        parser.add_argument("--feature-prefix", default=nfd.FEATURE_PREFIX, metavar="PREFIX",
                            help=f"nfd: a feature's label is PREFIX + its hwcap name (default "
                                 f"{nfd.FEATURE_PREFIX})")
        parser.add_argument("--format", choices=("list", "json", "provider-yaml"),
                            default="list",
                            help="traits: one a line (for 'openstack resource provider trait "
                                 "set --trait ...'), JSON, or Nova's provider config file")
        parser.add_argument("--provider-uuid", default="$COMPUTE_NODE", metavar="UUID",
                            help="traits --format provider-yaml: the resource provider "
                                 "(default $COMPUTE_NODE: every compute node of the service)")

    def run(self, args: argparse.Namespace) -> int:
        if args.target == "firecracker":
            return self._firecracker(args)
        if args.model:
            raise UsageError(f"export {args.target} takes no MODEL (every saved and named "
                             f"model is judged)")
        host = self._host(args.profile)
        kb = kb_load.registers()
        models, problems = drift.catalog_models()
        for problem in problems:
            print(f"warning: CPU model not read: {problem}", file=sys.stderr)
        verdicts = drift.runnable(host, models, kb, check_qemu=not args.kvm_only)
        runs = [n for n, c in verdicts.items() if c.result != INCOMPATIBLE]
        features = drift.guest_features(host, kb_load.features())
        header = [f"libvirt-arm-cpu {__version__} export {args.target}: host {host.hostname}, "
                  f"Linux {host.kernel_release}, profile of {host.probed_at}",
                  f"runs {len(runs)} of {len(models)} saved and named CPU models"
                  + (" (KVM's verdict alone)" if args.kvm_only else "")]
        if args.target == "nfd":
            text, notes = nfd.feature_file(runs, features, header, args.model_prefix,
                                           args.feature_prefix)
            for note in notes:
                print(f"warning: {note}", file=sys.stderr)
        else:
            names = traits.traits(runs, features)
            if args.format == "provider-yaml":
                text = traits.provider_yaml(names, header, args.provider_uuid)
            elif args.format == "json":
                text = json.dumps({"host": host.hostname, "traits": names,
                                   "models": {n: traits.model_trait(n) for n in runs}},
                                  indent=2) + "\n"
            else:
                text = "".join(n + "\n" for n in names)
        atomic_write(args.output, text.encode())
        return 0

    def _host(self, path: str | None) -> HostProfile:
        if path:
            return read_profile(path)
        with or_give_a_profile("--profile FILE"):
            return cached_profile(DEFAULT_CACHE)[0]

    def _firecracker(self, args: argparse.Namespace) -> int:
        if not args.model:
            raise UsageError("export firecracker needs the CPU MODEL (a file, or a saved or "
                             "named model's name)")
        kb = kb_load.registers()
        source, model = resolve_model(args.model)
        if args.profile:
            host = read_profile(args.profile)
            c = compare(model, host, kb, check_qemu=False)
            if c.result == INCOMPATIBLE:
                raise DataError(f"host {host.hostname} ({args.profile}) cannot run CPU model "
                                f"{args.model}: {c.reasons[0]}"
                                + (f" (and {len(c.reasons) - 1} more)" if len(c.reasons) > 1
                                   else ""))
        text, notes = firecracker.dumps(model, kb)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        atomic_write(args.output, text.encode())
        return 0
