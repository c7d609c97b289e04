"""``import``: a host profile from a register dump taken elsewhere."""

from __future__ import annotations

import argparse
import os
import sys

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.errors import STDIN, DataError, UsageError, closest, path_label
from libvirt_arm_cpu.fileio import read_input

WRITABLE_KEYWORDS = ("none", "all-known")


def check_writable(value: str) -> None:
    """--writable takes a keyword or a profile FILE: a value that is neither
    an existing file nor a path, and is close to a keyword, is a mistyped
    keyword, not a file name.

    :raise UsageError: naming the keyword(s) it is close to."""
    if value in WRITABLE_KEYWORDS or os.path.exists(value) or value == "-":
        return
    if os.sep in value or value.endswith((".xml", ".json")):
        return          # meant as a file: reading it says it is missing
    near = closest(value, WRITABLE_KEYWORDS)
    if near is not None:
        raise UsageError(f"--writable '{value}': no such file, and not a keyword (did you mean "
                         f"{near}?); --writable takes {', '.join(WRITABLE_KEYWORDS)} or a host "
                         f"profile FILE")


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

        from libvirt_arm_cpu.formats.kinds import REGISTER_DUMP, kind_of, wrong_kind

        check_writable(args.writable)
        kb = kb_load.registers()
        data = read_input(args.dump)
        found = kind_of(data)
        if found is not None and found != REGISTER_DUMP:
            raise wrong_kind(args.dump, found, REGISTER_DUMP)
        values, kernel = parse_values(data, args.dump, kb)
        if not values:
            raise DataError(f"{path_label(args.dump)}: no ID register values found")
        if args.writable == "none":
            masks: dict[str, int | None] = {}
        elif args.writable == "all-known":
            masks = dict(all_known_masks(kb))
            print("libvirt-arm-cpu: warning: --writable all-known ASSUMES every field with a "
                  "kernel policy is writable on that host; probe it to know", file=sys.stderr)
        else:
            source = read_profile(args.writable)
            masks = {r.name: r.writable for r in source.registers}
        host = args.hostname or (STDIN if args.dump == "-" else
                                 os.path.splitext(os.path.basename(args.dump))[0])
        profile = import_profile(values, kb, args.dump, data, masks, host, kernel)
        out = write_profile(profile, args.output)
        if args.output == "-":
            sys.stdout.write(out.decode())
        missing = sum(1 for r in profile.registers
                      if r.value is None and kb.by_encoding(*r.encoding) is not None)
        print(f"import: {len(values)} registers from {path_label(args.dump)}"
              + (f"; {missing} known registers not in the dump are recorded absent"
                 if missing else ""), file=sys.stderr)
        return 0
