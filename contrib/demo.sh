#!/bin/sh
# The main job on bundled example data: set up, then decode every ID register
# of an example host (QEMU's Neoverse N1 model) into fields and features.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
sh "$ROOT/contrib/setup.sh"
VENV=${LIBVIRT_ARM_CPU_VENV:-$ROOT/.venv}
exec "$VENV/bin/libvirt-arm-cpu" decode --file "$ROOT/contrib/examples/qemu-neoverse-n1.regs"
