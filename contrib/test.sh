#!/bin/sh
# The whole test suite from a clean clone: set up, prepare the arm64 KVM
# test bed (downloads cached in /var/cache/libvirt-arm-cpu/testbed), start
# this machine's libvirtd (tests/libvirtd.py), then run pytest.  Extra
# arguments go to pytest (e.g. -k decode, -m "not kvm").
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
sh "$ROOT/contrib/setup.sh"
"$ROOT/contrib/testbed/prepare.sh"
sh "$ROOT/contrib/libvirt/start-libvirtd.sh"
# sshd for tests/test_collect.py, which starts its own on a free port (not the system's)
sh "$ROOT/contrib/apt-install-missing.sh" test openssh-server openssh-client
VENV=${LIBVIRT_ARM_CPU_VENV:-$ROOT/.venv}
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
