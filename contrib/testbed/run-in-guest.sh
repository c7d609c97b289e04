#!/bin/sh
# Boot an arm64 guest with a real /dev/kvm and run a job in it; see README.md
# next to this file and --help.  Run prepare.sh once first.
#   run-in-guest.sh --kernel 6.12 --qemu 7.2 --cpu neoverse-n1 --script job.sh --out DIR
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
if [ -x /usr/bin/python3 ]; then PY=/usr/bin/python3; else PY=python3; fi
exec "$PY" "$HERE/run_in_guest.py" "$@"
