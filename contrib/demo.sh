#!/bin/sh
# The main job, on bundled data: host profiles captured on the arm64 KVM test
# bed (tests/data/hosts/) and an example domain (contrib/examples/guest.xml).
#   1. decode one ID register of a Neoverse-N1;
#   2. what differs between two hosts; why a host-passthrough guest of a
#      Neoverse-N1 cannot migrate between Linux 6.12 and 7.3; their baseline,
#      saved as a named model, that migrates both ways; that model against a
#      Cortex-A72 host;
#   3. a domain asking for the model without DotProd, translated for the 7.3
#      host: the loader's values, and what the guest reads.
# Every line shown after "$ " is the command the demo runs, as printed, from
# the repository root, so it can be copied.  It writes only to its folder,
# $LIBVIRT_ARM_CPU_DEMO_DIR (default /tmp/libvirt-arm-cpu-demo), and leaves
# it there for those commands; no root needed after set-up.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
sh "$ROOT/contrib/setup.sh"
VENV=${LIBVIRT_ARM_CPU_VENV:-$ROOT/.venv}
DEMO=${LIBVIRT_ARM_CPU_DEMO_DIR:-/tmp/libvirt-arm-cpu-demo}
N1_612=tests/data/hosts/neoverse-n1-qemu7.2-linux6.12.xml
N1_73=tests/data/hosts/neoverse-n1-qemu7.2-linux7.3.xml
A72_73=tests/data/hosts/cortex-a72-qemu7.2-linux7.3.xml
cd "$ROOT"
mkdir -p "$DEMO"
rm -rf "$DEMO/models" "$DEMO/model.xml" "$DEMO/guest.xml" "$DEMO/guest-arm.xml"
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT

step() { printf '\n==== %s\n' "$*"; }
# run MAX COMMAND: print "$ COMMAND", run it here exactly as printed, and show
# at most MAX lines of what it prints (stdout, then stderr), then a line
# saying how many were left out.  A non-zero exit status is shown too.
run() {
    max=$1
    shift
    printf '$ %s\n' "$*"
    rc=0
    eval "$*" >"$OUT" 2>&1 || rc=$?
    total=$(wc -l <"$OUT")
    head -n "$max" "$OUT"
    if [ "$total" -gt "$max" ]; then
        printf '  … %d more lines not shown (%d in all)\n' $((total - max)) "$total"
    fi
    if [ "$rc" != 0 ]; then
        printf '  (exit status %d)\n' "$rc"
    fi
}

# say TEXT...: a line of explanation, as a shell comment
say() { printf '# %s\n' "$*"; }

if [ "$VENV" = "$ROOT/.venv" ]; then BIN='$PWD/.venv/bin'; else BIN=$VENV/bin; fi
echo
say "Every \$ line runs as printed from $ROOT after these two; the demo's"
say "files stay in $DEMO for you to try them."
run 0 "export PATH=\"$BIN:\$PATH\""
run 0 "export LIBVIRT_ARM_CPU_MODELS_DIR=$DEMO/models LIBVIRT_ARM_CPU_CACHE_DIR=$DEMO/cache LIBVIRT_ARM_CPU_CONFIG=/dev/null"

step "1. one ID register of a Neoverse-N1, decoded"
say "its value from contrib/examples/qemu-neoverse-n1.regs; 'decode --file' decodes the whole dump"
ISAR0=$(sed -n 's/^ID_AA64ISAR0_EL1=//p' contrib/examples/qemu-neoverse-n1.regs)
run 30 "libvirt-arm-cpu decode ID_AA64ISAR0_EL1 $ISAR0"

step "2a. two hosts captured on the test bed: only the fields that differ"
run 8 "libvirt-arm-cpu diff $N1_73 $A72_73"

step "2b. a Neoverse-N1 under Linux 6.12 and 7.3: a host-passthrough guest migrates neither way"
run 6 "libvirt-arm-cpu migrate-check $N1_612 $N1_73 --both"

step "2c. their baseline, saved by name in the models folder, migrates both ways"
run 4 "libvirt-arm-cpu cpu-baseline $N1_612 $N1_73 --save -o $DEMO/model.xml"
MODEL=$(ls "$DEMO/models" | sed -n 's/\.xml$//p')
run 4 "libvirt-arm-cpu migrate-check $N1_612 $N1_73 --model $MODEL --both"

step "2d. can a Cortex-A72 host run that model?"
run 4 "libvirt-arm-cpu cpu-compare $MODEL $A72_73"

step "3. a domain asking for the model without DotProd, translated for the Linux 7.3 host"
run 0 "sed 's/MODEL/$MODEL/' contrib/examples/guest.xml > $DEMO/guest.xml"
run 10 "grep -A4 '<cpu ' $DEMO/guest.xml"
run 10 "libvirt-arm-cpu translate $DEMO/guest.xml --host $N1_73 -o $DEMO/guest-arm.xml"
say "The profile shows no QEMU with SYSREG_* properties there (stock QEMU has none) and the"
say "ID-register loader installed, so translate chose the loader: QEMU gets the guest's"
say "registers through <qemu:env>, and libvirt's <cpu> becomes host-passthrough."
WIDTH=100
run 10 "grep -E '<arm:cpu |<cpu |<qemu:env' $DEMO/guest-arm.xml | cut -c1-$WIDTH"
LINE=$(grep 'name="LIBVIRT_ARM_CPU_ID_REGS"' "$DEMO/guest-arm.xml")
REGS=$(printf '%s\n' "$LINE" | sed 's/.* value="\([^"]*\)".*/\1/')
printf '  … lines cut at %d characters: %d more of the LIBVIRT_ARM_CPU_ID_REGS line (%d registers)\n' \
    "$WIDTH" $((${#LINE} - WIDTH)) "$(printf '%s\n' "$REGS" | wc -w)"
run 5 "grep -o 'ID_AA64ISAR0_EL1@[^ ]*' $DEMO/guest-arm.xml"
GUEST=$(printf '%s\n' "$REGS" | tr ' ' '\n' | sed -n 's/^ID_AA64ISAR0_EL1@[^=]*=//p')
run 5 "libvirt-arm-cpu decode ID_AA64ISAR0_EL1 $GUEST | grep -w DP"
say "The guest reads ID_AA64ISAR0_EL1.DP = 0 (no asimddp, no FEAT_DotProd) although the"
say "host has DP = 1 (step 1): the loader writes these values into KVM before the vCPU first"
say "runs, and QEMU keeps and migrates them as its own."
