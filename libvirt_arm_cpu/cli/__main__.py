"""``python -m libvirt_arm_cpu.cli``: the ``libvirt-arm-cpu`` command."""

from libvirt_arm_cpu.cli.main import console

console()
