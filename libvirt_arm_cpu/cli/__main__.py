"""``python -m libvirt_arm_cpu.cli``: the ``libvirt-arm-cpu`` command."""

import sys

from libvirt_arm_cpu.cli.main import main

sys.exit(main())
