"""``libvirt-arm-cpu-helper``: the privileged side that talks to /dev/kvm.

``probe`` writes this host's profile; ``try-apply`` asks KVM whether it
accepts given register values.  Every run is bounded by ``--timeout``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from libvirt_arm_cpu.cli.main import Command, run_main
from libvirt_arm_cpu.errors import TimedOut

PROG = "libvirt-arm-cpu-helper"

DESCRIPTION = """\
Ask this host's KVM what it can present to a guest (runs as root or as a
member of the group owning /dev/kvm).

exit codes: 0 success, 1 bad data, 2 bad usage, 3 not aarch64, 4 no /dev/kvm,
5 permission denied, 6 profile written but writable masks unknown (kernel
older than 6.7), 7 an ioctl failed, 8 timed out

environment: LIBVIRT_ARM_CPU_HELPER_TIMEOUT  seconds a run may take (60)
"""


def commands() -> list[Command]:
    from libvirt_arm_cpu.cli.probe import ProbeCommand, TryApplyCommand

    return [ProbeCommand(), TryApplyCommand()]


def _timed_out(signum: int, frame: object) -> None:
    raise TimedOut("did not finish in time (LIBVIRT_ARM_CPU_HELPER_TIMEOUT); a KVM or QEMU "
                   "step is hanging")


def main(argv: Sequence[str] | None = None) -> int:
    import os

    try:
        timeout = int(os.environ.get("LIBVIRT_ARM_CPU_HELPER_TIMEOUT", "60"))
    except ValueError:
        timeout = 60
    signal.signal(signal.SIGALRM, _timed_out)
    signal.alarm(max(timeout, 1))
    try:
        return run_main(PROG, DESCRIPTION, commands(), argv)
    finally:
        signal.alarm(0)


if __name__ == "__main__":
    sys.exit(main())
