#!/bin/sh
# The whole test suite from a clean clone: set up, then run pytest.
# Extra arguments go to pytest (e.g. -k decode).
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
sh "$ROOT/contrib/setup.sh"
VENV=${LIBVIRT_ARM_CPU_VENV:-$ROOT/.venv}
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
