"""``diff``: what differs between two CPU models or host profiles, field by field."""

from __future__ import annotations

import argparse
import json

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.service import load_inputs
from libvirt_arm_cpu.errors import UsageError


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
