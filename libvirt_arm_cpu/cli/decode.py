"""``libvirt-arm-cpu decode``: what a register value means, field by field."""

from __future__ import annotations

import argparse
import json

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.kb import registers
from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.formats.dump import read_dump
from libvirt_arm_cpu.errors import UsageError
from libvirt_arm_cpu.cli.report import decode_registers, render_text


class DecodeCommand(Command):
    name = "decode"
    help = "decode ID register values into fields and features"
    description = """\
Decode ID register values: every field with its bits, value and meaning
(the enum name Linux gives it), and the features (hwcaps, FEAT_*) it implies.

Register names are case-insensitive, the _EL1/_EL0 suffix is optional, and
S3_<op1>_C<n>_C<m>_<op2> names work too. Values: 0x..., 0b..., or decimal."""
    epilog = """\
examples:
  libvirt-arm-cpu decode ID_AA64ISAR0_EL1 0x0000100010211120
  libvirt-arm-cpu decode midr 0x414fd0c1
  libvirt-arm-cpu decode --file host.regs          # NAME=VALUE or NAME VALUE lines
  libvirt-arm-cpu decode --file - --json < host.regs

--json prints {"registers": [...], "features": [...]}; see README.md."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("register", nargs="?", help="register name, e.g. ID_AA64ISAR0_EL1")
        parser.add_argument("value", nargs="?", help="64-bit value, e.g. 0x0000100010211120")
        parser.add_argument("--file", "-f", metavar="FILE",
                            help="decode a dump of NAME=VALUE lines ('-' for stdin)")
        parser.add_argument("--json", action="store_true", help="print JSON for scripts")
        parser.add_argument("--nonzero", action="store_true",
                            help="list only fields whose value is not zero")

    def run(self, args: argparse.Namespace) -> int:
        kb = kb_load.registers()
        if args.file is not None:
            if args.register is not None:
                raise UsageError("give either --file or REGISTER VALUE, not both")
            values = [entry.value for entry in read_dump(args.file, kb)]
        else:
            if args.register is None or args.value is None:
                raise UsageError("give REGISTER VALUE, or --file FILE")
            reg = kb.register(args.register)
            values = [reg.decode(registers.parse_u64(args.value, f"value of {reg.name}"))]
        report = decode_registers(values, kb_load.features())
        if args.nonzero:
            for reg_report in report["registers"]:
                reg_report["fields"] = [f for f in reg_report["fields"] if f["value"]]
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(render_text(report), end="")
        return 0
