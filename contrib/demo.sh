#!/bin/sh
# The main job on bundled example data (nothing outside a temporary
# directory is written):
#   1. decode every ID register of an example host (QEMU's Neoverse N1 model);
#   2. host profiles captured on the arm64 KVM test bed: what differs between
#      a Neoverse-N1 and a Cortex-A72 host, the baseline of the same
#      Neoverse-N1 under Linux 6.12 and 7.3 (saved as a named model), and that
#      model compared with the Cortex-A72 host;
#   3. a libvirt domain asking for that model, translated for the 7.3 host.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
sh "$ROOT/contrib/setup.sh"
VENV=${LIBVIRT_ARM_CPU_VENV:-$ROOT/.venv}
LAC="$VENV/bin/libvirt-arm-cpu"
HOSTS="$ROOT/tests/data/hosts"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export LIBVIRT_ARM_CPU_MODELS_DIR="$WORK/models" LIBVIRT_ARM_CPU_CONFIG="$WORK/none.conf"
step() { printf '\n==== %s\n$ %s\n' "$1" "$2"; }

step "1. decode a host's ID registers" "libvirt-arm-cpu decode --file contrib/examples/qemu-neoverse-n1.regs"
"$LAC" decode --file "$ROOT/contrib/examples/qemu-neoverse-n1.regs"

step "2a. two hosts: only what differs" "libvirt-arm-cpu diff n1-linux7.3.xml a72-linux7.3.xml"
"$LAC" diff "$HOSTS/neoverse-n1-qemu7.2-linux7.3.xml" "$HOSTS/cortex-a72-qemu7.2-linux7.3.xml" \
    | head -20
echo "  ..."

step "2b. their baseline, saved by name" "libvirt-arm-cpu cpu-baseline n1-linux6.12.xml n1-linux7.3.xml --save"
"$LAC" cpu-baseline "$HOSTS/neoverse-n1-qemu7.2-linux6.12.xml" \
    "$HOSTS/neoverse-n1-qemu7.2-linux7.3.xml" --save -o "$WORK/model.xml"
MODEL=$(ls "$WORK/models" | sed 's/\.xml$//')
sed -n '1,12p' "$WORK/model.xml"; echo "  ..."

step "2c. can a Cortex-A72 host run it?" "libvirt-arm-cpu cpu-compare $MODEL a72-linux7.3.xml"
"$LAC" cpu-compare "$MODEL" "$HOSTS/cortex-a72-qemu7.2-linux7.3.xml" | head -6 || true

step "3. a domain asking for the model, translated for the 7.3 host" \
     "libvirt-arm-cpu translate contrib/examples/guest.xml --host n1-linux7.3.xml"
sed "s/MODEL/$MODEL/" "$ROOT/contrib/examples/guest.xml" > "$WORK/guest.xml"
"$LAC" translate "$WORK/guest.xml" --host "$HOSTS/neoverse-n1-qemu7.2-linux7.3.xml" \
    -o "$WORK/guest-arm.xml"
grep -v "arm:register " "$WORK/guest-arm.xml"
printf '  (the <arm:register> lines, the guest'"'"'s ID registers, left out)\n'
