"""``libvirt-arm-cpu features``: the feature names we know and what each needs."""

from __future__ import annotations

import argparse
import json
from typing import Any

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import features
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.kb.features import Feature


def feature_data(feat: Feature, catalog: features.FeatureCatalog) -> dict[str, Any]:
    return {
        "name": feat.key,
        "kind": feat.kind,
        "requires": feat.requires(),
        "fields": [str(f) for f in feat.fields(catalog)],
        "checkable": feat.condition is not None,
        "llvm": feat.llvm,
    }


class FeaturesCommand(Command):
    name = "features"
    help = "list the known feature names (hwcaps, FEAT_*) and what each requires"
    description = """\
List the feature names libvirt-arm-cpu knows, and the ID register fields each
one requires:

  hwcap          the names /proc/cpuinfo prints (aes, atomics, sve2, ...)
  aarch32-hwcap  the same for 32-bit tasks, written aarch32:NAME
  feat           Arm's FEAT_* names (FEAT_DotProd, ...); FEAT_ is optional"""
    epilog = """\
examples:
  libvirt-arm-cpu features
  libvirt-arm-cpu features --kind hwcap
  libvirt-arm-cpu features atomics
  libvirt-arm-cpu features FEAT_LSE --json"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("name", nargs="?", help="show one feature")
        parser.add_argument("--kind", choices=("hwcap", "aarch32-hwcap", "feat"),
                            help="list only this kind")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")

    def run(self, args: argparse.Namespace) -> int:
        catalog = kb_load.features()
        if args.name:
            feat = catalog.feature(args.name)
            data = feature_data(feat, catalog)
            if args.json:
                print(json.dumps(data, indent=2))
                return 0
            print(f"{data['name']} ({data['kind']})")
            print(f"  requires: {data['requires']}")
            if data["fields"]:
                print(f"  fields:   {', '.join(data['fields'])}")
            if data["llvm"]:
                print(f"  compiler: -march=...+{data['llvm']}")
            return 0
        selected = [f for f in catalog if args.kind is None or f.kind == args.kind]
        if args.json:
            print(json.dumps([feature_data(f, catalog) for f in selected], indent=2))
            return 0
        width = max(len(f.key) for f in selected) if selected else 0
        for f in selected:
            print(f"{f.key:<{width}}  {f.requires()}")
        return 0
