"""What every subcommand is: a small class (name, help, arguments, ``run``),
and the argument parser whose usage errors are one line.  The commands
import this; :mod:`libvirt_arm_cpu.cli.main` imports the commands (no cycle)."""

from __future__ import annotations

import argparse

__all__ = ["Command", "ArgumentParser", "UsageExit"]


class UsageExit(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and goes through :func:`main`."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageExit(f"{self.prog}: {message} (see '{self.prog} --help')")


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
