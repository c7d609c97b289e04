"""The ``libvirt-arm-cpu`` command: one subcommand per job.

Each subcommand is a small class (name, help, arguments, ``run``) in its own
module under :mod:`libvirt_arm_cpu.commands`; :func:`main` registers them and
is the one place where errors become a message and an exit code:

    0  success
    1  the data is wrong (unknown register in a file, value out of range...)
    2  the command line is wrong (unknown option or name, not a number...)

Nothing reaches the user as a traceback; ``LIBVIRT_ARM_CPU_DEBUG=1`` shows one.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Sequence

from libvirt_arm_cpu import __version__
from libvirt_arm_cpu.cli.base import ArgumentParser, Command, UsageExit
from libvirt_arm_cpu.errors import EXIT_DATA, EXIT_USAGE, Error

__all__ = ["main", "run_main", "Command", "ArgumentParser"]

PROG = "libvirt-arm-cpu"


def commands() -> list[Command]:
    from libvirt_arm_cpu.cli.decode import DecodeCommand
    from libvirt_arm_cpu.cli.export import ExportCommand
    from libvirt_arm_cpu.cli.features import FeaturesCommand
    from libvirt_arm_cpu.cli.cpu_baseline import BaselineCommand
    from libvirt_arm_cpu.cli.cpu_compare import CompareCommand
    from libvirt_arm_cpu.cli.cpu_models import CpuModelsCommand
    from libvirt_arm_cpu.cli.diff import DiffCommand
    from libvirt_arm_cpu.cli.import_dump import ImportCommand
    from libvirt_arm_cpu.cli.domain import DefineCommand, DumpxmlCommand, TranslateCommand, ValidateCommand
    from libvirt_arm_cpu.cli.hook import HookCommand
    from libvirt_arm_cpu.cli.host import HostCommand
    from libvirt_arm_cpu.cli.hypervisor import HypervisorBaselineCommand, HypervisorCompareCommand
    from libvirt_arm_cpu.cli.migrate import MigrateCheckCommand
    from libvirt_arm_cpu.cli.collect import CollectCommand
    from libvirt_arm_cpu.cli.inventory import InventoryCommand

    return [DecodeCommand(), FeaturesCommand(), HostCommand(), BaselineCommand(),
            CompareCommand(), CpuModelsCommand(), HypervisorBaselineCommand(), HypervisorCompareCommand(),
            MigrateCheckCommand(), DiffCommand(), ImportCommand(), TranslateCommand(),
            DefineCommand(), ValidateCommand(), DumpxmlCommand(), HookCommand(),
            CollectCommand(), InventoryCommand(), ExportCommand()]


def build_parser(prog: str, description: str, cmds: Sequence[Command]) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for cmd in cmds:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help,
                           epilog=cmd.epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_arguments(p)
        p.set_defaults(handler=cmd)
    return parser


# ElementTree's "{urn:...}name": a message shows the name (formats.kinds.element_name
# and plain_names do it where the message is made; this catches the rest)
_CLARK_ELEMENT = re.compile(r"<\{([^{}\s]+)\}([A-Za-z_][\w.-]*)")
_CLARK = re.compile(r"\{[^{}\s]*:[^{}\s]*\}(?=[A-Za-z_])")


def _one_line(message: str) -> str:
    """*message* as the one line an error is: no Clark-notation names, no
    line breaks."""
    message = _CLARK_ELEMENT.sub(r"<\2 xmlns='\1'", message)
    return " ".join(_CLARK.sub("", message).splitlines())


def run_main(prog: str, description: str, cmds: Sequence[Command],
             argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and map errors to exit codes (shared with the helper)."""
    parser = build_parser(prog, description, cmds)
    try:
        args = parser.parse_args(argv)
        if getattr(args, "handler", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return args.handler.run(args)
    except UsageExit as err:
        print(f"{prog}: error: {_one_line(err.message)}", file=sys.stderr)
        return EXIT_USAGE
    except Error as err:
        if os.environ.get("LIBVIRT_ARM_CPU_DEBUG"):
            raise
        print(f"{prog}: error: {_one_line(str(err))}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # `... | head`: the reader has gone; say nothing more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_DATA
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130


DESCRIPTION = """\
Migratable CPU models for ARM64 KVM hosts.

Decode ID register values and feature names, describe this host, compute
baselines and compare CPUs across hosts, translate libvirt domain CPUs into
what aarch64 KVM runs, and check them before every start and migration
(through the libvirt hook).

exit codes: 0 success, 1 bad data or an incompatible CPU, 2 bad usage,
3-8 the host could not be probed (see libvirt-arm-cpu-helper --help)
"""


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, DESCRIPTION, commands(), argv)


if __name__ == "__main__":
    sys.exit(main())
