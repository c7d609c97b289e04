"""What every subcommand is: a small class (name, help, arguments, ``run``),
a reference to one that imports it only when it runs, and the argument
parser whose usage errors are one line.  The commands import this;
:mod:`libvirt_arm_cpu.cli.main` imports the commands (no cycle)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from libvirt_arm_cpu.errors import NotArm64, UnknownName, closest

TYPE_CHECKING = False    # typing.TYPE_CHECKING without importing typing (2 ms a run)
if TYPE_CHECKING:
    from typing import Any

__all__ = ["Command", "CommandRef", "ArgumentParser", "UsageExit", "or_give_a_profile"]


class UsageExit(Exception):
    """A command line argparse refuses; :func:`~libvirt_arm_cpu.cli.main.run_main`
    prints ``PROG: error: MESSAGE`` (one line) and exits 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """argparse's (descriptions as written), measuring the terminal as
    shutil.get_terminal_size does but without importing shutil: argparse
    makes a formatter for every option it adds, and shutil's import (its
    compression modules) is 2 ms of each command's start."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         width if width is not None else _columns() - 2)


def _columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def add_cache_arguments(parser: argparse.ArgumentParser) -> None:
    """--cache-dir and --no-cache: the profile cache of the commands that read fleets."""
    parser.add_argument("--cache-dir", metavar="DIR",
                        help="keep what each host profile gives here, by file identity, "
                             "so an unchanged profile is not read again (default: "
                             "LIBVIRT_ARM_CPU_CACHE_DIR, else profiles/ beside the settings' "
                             "host profile, /var/cache/libvirt-arm-cpu/profiles; a directory "
                             "that cannot be written means no cache)")
    parser.add_argument("--no-cache", action="store_true",
                        help="read every profile, neither using nor writing the cache")


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and goes through :func:`main`,
    and a mistyped command or choice comes with the closest known one."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageExit(f"{message} (see '{self.prog} --help')")

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is None or value in action.choices:
            return
        choices = [str(c) for c in action.choices]
        if isinstance(action, argparse._SubParsersAction):
            err = UnknownName("command", str(value), choices)
            raise UsageExit(str(err) if err.suggestion else f"{err} (see '{self.prog} --help')")
        suggestion = closest(str(value), choices)
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        name = "/".join(action.option_strings) or action.metavar or action.dest
        raise UsageExit(f"argument {name}: invalid choice '{value}'{hint}; choose from "
                        f"{', '.join(choices)}")


@contextmanager
def or_give_a_profile(option: str) -> Iterator[None]:
    """Where a command falls back on this host's profile: on a machine that
    is not aarch64 the helper cannot make one, so the error also names the
    command's *option* that gives a profile instead ("--profile FILE")."""
    try:
        yield
    except NotArm64 as err:
        raise NotArm64(f"{err} (or give a host profile with {option})") from err


class Command:
    """A subcommand: subclasses set the class attributes and ``run``."""

    name = ""
    help = ""
    description = ""
    epilog = ""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        pass

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


class CommandRef:
    """A subcommand by its name and help, and where its class is: the
    parser lists it and recognises it without importing its module, which
    :meth:`load` imports when it is the command run."""

    __slots__ = ("name", "help", "module", "attr")

    def __init__(self, name: str, help: str, module: str, attr: str) -> None:
        self.name = name
        self.help = help
        self.module = module        # e.g. libvirt_arm_cpu.cli.decode
        self.attr = attr            # its Command subclass there

    def load(self) -> Command:
        import importlib
        cls: type[Command] = getattr(importlib.import_module(self.module), self.attr)
        return cls()

    def __repr__(self) -> str:
        return f"CommandRef({self.name!r}, {self.module}.{self.attr})"
