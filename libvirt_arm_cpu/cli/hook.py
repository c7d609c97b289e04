"""hook install / uninstall: put the QEMU hook where libvirtd runs it;
hook serve: run its resident checker."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys

from libvirt_arm_cpu.cli.base import Command
from libvirt_arm_cpu.errors import DataError, UsageError
from libvirt_arm_cpu.fileio import atomic_write
from libvirt_arm_cpu.paths import hook_script

HOOKS_DIR = "/etc/libvirt/hooks"
HOOK_NAME = "50-libvirt-arm-cpu"
DAEMONS = ("libvirtd", "virtqemud")


def daemons(proc: str = "/proc") -> list[tuple[int, str]]:
    """Running libvirt daemons that run QEMU hooks: (pid, name)."""
    out = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(os.path.join(proc, entry, "comm"), encoding="utf-8") as fh:
                comm = fh.read().strip()
        except OSError:
            continue
        if comm in DAEMONS:
            out.append((int(entry), comm))
    return sorted(out)


def reload_daemons() -> str:
    """SIGHUP every running libvirt daemon (it rescans hooks then)."""
    found = daemons()
    if not found:
        return ("no libvirtd or virqemud is running: the hook takes effect when one starts")
    for pid, _ in found:
        try:
            os.kill(pid, signal.SIGHUP)
        except OSError as e:
            raise DataError(f"cannot signal {pid}: {e.strerror}") from None
    names = ", ".join(f"{name} (pid {pid})" for pid, name in found)
    return (f"sent SIGHUP to {names}: libvirt only notices a new or removed hook on "
            f"SIGHUP or restart")


def render(template: str, config: str | None) -> str:
    """The hook with this interpreter and this package's location filled in."""
    package_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    package_dir = os.path.dirname(package_dir)
    # -S: no site module.  The hook imports only this package (PACKAGE_DIR)
    # and the standard library, and site's work (.pth files, an editable
    # install's finder) is what costs most of an interpreter's start-up
    text = re.sub(r"\A#![^\n]*", f"#!{sys.executable} -S", template, count=1)
    text = text.replace("PACKAGE_DIR = None", f"PACKAGE_DIR = {package_dir!r}", 1)
    if config:
        text = text.replace("CONFIG = None", f"CONFIG = {os.path.abspath(config)!r}", 1)
    return text


class HookCommand(Command):
    name = "hook"
    help = "install or remove the libvirt QEMU hook that checks domain CPUs"
    description = """\
install: copy the hook to <hooks-dir>/qemu.d/<name> (executable, with this
Python and this package's location) and send SIGHUP to libvirtd/virtqemud so
that they run it (libvirt only notices a new hook then).  uninstall: remove
it, and SIGHUP again.  The hook answers domains without libvirt-arm-cpu
metadata at once; see /etc/libvirt-arm-cpu.conf for its settings.

serve: run the resident checker in the foreground, for a service manager
(contrib/systemd/libvirt-arm-cpu-checker.service).  The hook answers a start
like one it allowed before from its memory; any other start it checks, and
that is mostly Python loading the engine (22 ms a start on bench/README.md's
machine).  With the checker running, the hook asks it instead (12 ms).
Optional: without it, or when it does not answer, the hook checks by itself.  It listens on the settings' [hook] checker
socket (default /run/libvirt-arm-cpu/checker.sock), answers only its own user
(run it as the user libvirtd runs hooks as: root), logs as the hook does, and
exits with status 75 when this package is upgraded under it, for the service
manager to start the new code."""
    epilog = f"""\
examples:
  libvirt-arm-cpu hook install
  libvirt-arm-cpu hook install --config /etc/libvirt-arm-cpu.conf
  libvirt-arm-cpu hook uninstall
  libvirt-arm-cpu hook serve

default: {HOOKS_DIR}/qemu.d/{HOOK_NAME}"""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("action", choices=("install", "uninstall", "serve"))
        parser.add_argument("--hooks-dir", default=HOOKS_DIR, metavar="DIR",
                            help=f"libvirt's hooks directory (default {HOOKS_DIR})")
        parser.add_argument("--name", default=HOOK_NAME,
                            help=f"file name in qemu.d (default {HOOK_NAME})")
        parser.add_argument("--config", metavar="FILE",
                            help="settings file the hook reads (default /etc/libvirt-arm-cpu.conf)")
        parser.add_argument("--no-reload", action="store_true",
                            help="do not signal libvirtd (restart it yourself)")
        parser.add_argument("--socket", metavar="PATH",
                            help="serve: listen here (default: the settings' [hook] checker)")

    def run(self, args: argparse.Namespace) -> int:
        if "/" in args.name or not args.name:
            raise UsageError(f"--name {args.name!r}: a file name, without '/'")
        if args.action == "serve":
            return serve(args.config, args.socket)
        target = os.path.join(args.hooks_dir, "qemu.d", args.name)
        if args.action == "install":
            src = hook_script()
            try:
                with open(src, encoding="utf-8") as fh:
                    template = fh.read()
            except OSError as e:
                raise DataError(f"{src}: cannot read the hook script: {e.strerror} "
                                f"(reinstall libvirt-arm-cpu)") from None
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                atomic_write(target, render(template, args.config).encode(), mode=0o755)
            except OSError as e:
                raise DataError(f"{target}: cannot write: {e.strerror}") from None
            print(f"hook installed: {target}")
        else:
            try:
                os.unlink(target)
            except FileNotFoundError:
                print(f"hook not installed: {target} does not exist")
                return 0
            except OSError as e:
                raise DataError(f"{target}: cannot remove: {e.strerror}") from None
            print(f"hook removed: {target}")
        if not args.no_reload:
            print(reload_daemons())
        return 0


def serve(config: str | None, socket_path: str | None) -> int:
    """The resident checker (libvirt_arm_cpu.host.resident), with the
    settings the hook reads from *config*."""
    from libvirt_arm_cpu import settings as settings_mod
    from libvirt_arm_cpu.hooklog import Log
    from libvirt_arm_cpu.host import resident
    conf = settings_mod.load(config)
    path = socket_path or conf.checker
    if not path:
        raise UsageError(f"{conf.path}: [hook] checker = none: name a socket with --socket")
    return resident.serve(path, Log(conf.log), conf)
