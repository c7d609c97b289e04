"""``libvirt-arm-cpu-helper``: the privileged side that talks to /dev/kvm.

It gets its subcommands (``probe``, ``try-apply``) with the host-probe work
(issue 3); for now it only answers ``--help`` and ``--version``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from .cli import Command, run_main

PROG = "libvirt-arm-cpu-helper"

DESCRIPTION = """\
Ask this host's KVM what it can present to a guest (runs as root or as a
member of the group owning /dev/kvm).

exit codes: 0 success, 1 bad data, 2 bad usage
"""


def commands() -> list[Command]:
    return []


def main(argv: Sequence[str] | None = None) -> int:
    return run_main(PROG, DESCRIPTION, commands(), argv)


if __name__ == "__main__":
    sys.exit(main())
