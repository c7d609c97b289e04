"""The ``libvirt-arm-cpu`` command: one subcommand per job.

Each subcommand is a small class (name, help, arguments, ``run``) in a module
under :mod:`libvirt_arm_cpu.cli`; :data:`COMMANDS` names them, a run imports
only the chosen one's module, and :func:`main` is the one place where errors
become a message and an exit code:

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

from libvirt_arm_cpu import __version__, methodcache
from libvirt_arm_cpu.deferred import defer
from libvirt_arm_cpu.cli.base import ArgumentParser, Command, CommandRef, HelpFormatter, UsageExit
from libvirt_arm_cpu.errors import EXIT_DATA, EXIT_USAGE, Error

__all__ = ["main", "run_main", "Command", "ArgumentParser"]

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (2 ms a run)
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

PROG = "libvirt-arm-cpu"


# Every command, in the order --help lists them: its name and help (the
# class's own, which tests/test_startup.py holds them to), and where its class
# is.  A run imports only the chosen command's module: each imports its share
# of the engine, the formats and the service layer (all of them: ~0.08 s, more
# than most commands' work).
COMMANDS: tuple[CommandRef, ...] = (
    CommandRef("decode", "decode ID register values into fields and features",
               "libvirt_arm_cpu.cli.decode", "DecodeCommand"),
    CommandRef("features", "list the known feature names (hwcaps, FEAT_*) and what each requires",
               "libvirt_arm_cpu.cli.features", "FeaturesCommand"),
    CommandRef("host", "show this host's profile (probed by the helper), decoded",
               "libvirt_arm_cpu.cli.host", "HostCommand"),
    CommandRef("cpu-baseline", "the most capable CPU model every given host can run",
               "libvirt_arm_cpu.cli.cpu_baseline", "BaselineCommand"),
    CommandRef("cpu-compare",
               "can a host run this CPU model? identical, superset or incompatible, and why",
               "libvirt_arm_cpu.cli.cpu_compare", "CompareCommand"),
    CommandRef("cpu-models",
               "list the named CPU models (neoverse-v1-v1...), and which a host can run",
               "libvirt_arm_cpu.cli.cpu_models", "CpuModelsCommand"),
    CommandRef("hypervisor-cpu-baseline",
               "the most capable CPU KVM can provide on every given host (as virsh "
               "hypervisor-cpu-baseline)",
               "libvirt_arm_cpu.cli.hypervisor", "HypervisorBaselineCommand"),
    CommandRef("hypervisor-cpu-compare",
               "compare a CPU with the CPU KVM provides on a host (as virsh "
               "hypervisor-cpu-compare)",
               "libvirt_arm_cpu.cli.hypervisor", "HypervisorCompareCommand"),
    CommandRef("migrate-check",
               "can a guest migrate from one host to another (and back) on stock QEMU?",
               "libvirt_arm_cpu.cli.migrate", "MigrateCheckCommand"),
    CommandRef("diff", "hosts side by side: only the ID register fields that differ",
               "libvirt_arm_cpu.cli.diff", "DiffCommand"),
    CommandRef("import", "make a host profile from a register dump (text or Firecracker JSON)",
               "libvirt_arm_cpu.cli.import_dump", "ImportCommand"),
    CommandRef("translate",
               "turn a domain's <cpu mode='custom'|'host-model'> into what aarch64 libvirt runs",
               "libvirt_arm_cpu.cli.domain", "TranslateCommand"),
    CommandRef("define", "translate a domain XML and define it in libvirt",
               "libvirt_arm_cpu.cli.domain", "DefineCommand"),
    CommandRef("validate", "can this host run a translated domain's CPU?",
               "libvirt_arm_cpu.cli.domain", "ValidateCommand"),
    CommandRef("dumpxml", "a translated domain's original XML, with its original <cpu>",
               "libvirt_arm_cpu.cli.domain", "DumpxmlCommand"),
    CommandRef("hook", "install or remove the libvirt QEMU hook that checks domain CPUs",
               "libvirt_arm_cpu.cli.hook", "HookCommand"),
    CommandRef("collect",
               "gather host profiles from many hosts (SSH or remote libvirt) into the inventory",
               "libvirt_arm_cpu.cli.collect", "CollectCommand"),
    CommandRef("inventory", "the hosts and models collected: current profiles and their history",
               "libvirt_arm_cpu.cli.inventory", "InventoryCommand"),
    CommandRef("export",
               "this host's runnable CPU models and features for Kubernetes (NFD) and OpenStack "
               "(placement traits); a Firecracker CPU template for a model",
               "libvirt_arm_cpu.cli.export", "ExportCommand"),
)


def commands() -> list[Command]:
    """Every command, each module imported (what a run does only for the
    chosen one)."""
    return [ref.load() for ref in COMMANDS]


def _fill(parser: argparse.ArgumentParser, cmd: Command) -> None:
    """Give a command's sub-parser its description, epilog and arguments."""
    parser.description = cmd.description or cmd.help
    parser.epilog = cmd.epilog
    cmd.add_arguments(parser)
    parser.set_defaults(handler=cmd)


class _LazySubParsers(argparse._SubParsersAction):
    """The COMMAND argument: a command given as a :class:`CommandRef` has a
    sub-parser with its name and help only (all the top-level --help and
    a mistyped name need) until it is chosen: then its module is imported
    and the sub-parser filled, before argparse reads the command's own
    arguments with it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refs: dict[str, CommandRef] = {}

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        ref = self.refs.pop(values[0], None) if values else None
        if ref is not None:
            _fill(self._name_parser_map[ref.name], ref.load())
        super().__call__(parser, namespace, values, option_string)


def build_parser(prog: str, description: str,
                 cmds: Sequence[Command | CommandRef]) -> ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description,
                            formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser,
                                action=_LazySubParsers)
    assert isinstance(sub, _LazySubParsers)
    for cmd in cmds:
        p = sub.add_parser(cmd.name, help=cmd.help,
                           formatter_class=HelpFormatter)
        if isinstance(cmd, CommandRef):
            sub.refs[cmd.name] = cmd
        else:
            _fill(p, cmd)
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


def run_main(prog: str, description: str, cmds: Sequence[Command | CommandRef],
             argv: Sequence[str] | None) -> int:
    """Parse, dispatch, and map errors to exit codes (shared with the helper)."""
    # a process's start is mostly imports (libvirt_arm_cpu/deferred.py,
    # libvirt_arm_cpu/methodcache.py)
    defer("inspect")
    methodcache.install()
    try:
        return _dispatch(prog, description, cmds, argv)
    finally:
        methodcache.save()


def _dispatch(prog: str, description: str, cmds: Sequence[Command | CommandRef],
              argv: Sequence[str] | None) -> int:
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
    return run_main(PROG, DESCRIPTION, COMMANDS, argv)


def console() -> None:
    """The installed command (setup.cfg's entry point, ``python -m
    libvirt_arm_cpu.cli``): :func:`main`, then exit.

    What is still alive then (the knowledge base, the value types, every
    module) is frozen out of the garbage collector first: the interpreter's
    teardown collects several times while it frees the modules, 7 ms of a
    70 ms cpu-baseline over a thousand hosts, and finds nothing (what the
    commands make holds no cycles).  Exit handlers and finalizers run as
    always."""
    status = main()
    import gc
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    console()
