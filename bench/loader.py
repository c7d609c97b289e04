#!/usr/bin/env python3
"""What the ID-register loader costs QEMU, measured on the arm64 KVM test bed.

One boot of an emulated Neoverse-N1 host (Linux 7.3, the libvirt image with
QEMU 10.0 and bookworm's 7.2).  Inside it, for each QEMU and vCPU count,
RUNS pairs of second-level guests (the ID-register payload, started until
it has printed its registers), alternating without and with the loader
(writing a model two fields lower than the host):

  * start-up: QEMU start to 'IDREGS END' on the serial port, median of the
    pairs (/proc/uptime, 10 ms steps, and the wrapper polls every 0.1 s:
    differences below that are noise);
  * per vCPU: the loader's own clock for reading, writing and reading back
    every register after each KVM_ARM_VCPU_INIT (its debug line "N registers
    checked, M written, in T us"), median over every vCPU of every run.

Everything runs under TCG on this x86 machine: absolute times are those of
an emulated host, far slower than a real one; the ratio is the point.

usage: python bench/loader.py [-n RUNS] [--smp 1,4]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libvirt_arm_cpu.kb import load as kb_load  # noqa: E402
from libvirt_arm_cpu.model import CpuModel  # noqa: E402
from libvirt_arm_cpu.formats.profile import read_profile  # noqa: E402
from libvirt_arm_cpu.engine.validate import loader_environment  # noqa: E402
from tests.kvm_hosts import FIXTURES  # noqa: E402
from tests.testbed import run_in_guest  # noqa: E402

LOADER = "/usr/lib/aarch64-linux-gnu/qemu/libvirt-arm-cpu-loader.so"
QEMUS = "7.2:/opt/qemu-7.2/qemu-system-aarch64 10.0:/usr/bin/qemu-system-aarch64"

JOB = r"""
set -u
for q in %(qemus)s; do
  v=${q%%%%:*} bin=${q#*:}
  for smp in %(smp)s; do
    i=0
    while [ $i -lt %(runs)d ]; do
      for mode in plain loader; do
        if [ $mode = loader ]; then
          export LD_PRELOAD=%(loader)s LIBVIRT_ARM_CPU_LOADER_DEBUG=1
          export LIBVIRT_ARM_CPU_ID_REGS="$(cat /in/model.env)"
        else
          unset LD_PRELOAD LIBVIRT_ARM_CPU_LOADER_DEBUG LIBVIRT_ARM_CPU_ID_REGS
        fi
        read -r t0 _ < /proc/uptime
        testbed-run-idregs "$bin" /tmp/run.txt -smp $smp; rc=$?
        read -r t1 _ < /proc/uptime
        unset LD_PRELOAD
        echo "start $v $smp $mode $rc $t0 $t1"
        grep -h 'registers checked' /tmp/run.txt.stderr | sed "s/^/vcpu $v $smp /"
      done
      i=$((i + 1))
    done
  done
done
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", "--runs", type=int, default=5)
    ap.add_argument("--smp", default="1,4", help="vCPU counts (default 1,4)")
    args = ap.parse_args()
    kb = kb_load.registers()
    profile = read_profile(str(FIXTURES / "neoverse-n1-qemu7.2-linux7.3.xml"))
    values = dict(CpuModel.from_profile(profile, kb).values)
    for field in ("DP", "RDM"):
        f = kb.field("ID_AA64ISAR0_EL1", field)
        values["ID_AA64ISAR0_EL1"] = f.put(values["ID_AA64ISAR0_EL1"], 0)
    env = loader_environment(values, profile, kb)["LIBVIRT_ARM_CPU_ID_REGS"]
    smp = " ".join(args.smp.split(","))
    t = time.perf_counter()
    res = run_in_guest(kernel="7.3", qemu="7.2", cpu="neoverse-n1", image="libvirt",
                       inner_qemu=("7.2",), files={"model.env": env.encode()},
                       script=JOB % {"qemus": QEMUS, "smp": smp, "runs": args.runs,
                                     "loader": LOADER},
                       timeout=300 + 60 * args.runs * len(smp.split()))
    wall = time.perf_counter() - t
    starts: dict[tuple[str, str, str], list[float]] = {}
    vcpu: dict[tuple[str, str], list[float]] = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if parts[:1] == ["start"]:
            _, v, n, mode, rc, t0, t1 = parts
            if rc != "0":
                print(f"failed run: {line}", file=sys.stderr)
                return 1
            starts.setdefault((v, n, mode), []).append((float(t1) - float(t0)) * 1000)
        elif parts[:1] == ["vcpu"]:
            m = re.search(r"in (\d+) us", line)
            if m:
                vcpu.setdefault((parts[1], parts[2]), []).append(float(m.group(1)))
    if not starts:
        print(f"no runs: {res.stdout[-2000:]}{res.stderr[-2000:]}", file=sys.stderr)
        return 1
    print(f"model: {len(env.split())} registers "
          f"(2 fields lowered); {args.runs} pairs each; test-bed boot {wall:.0f} s")
    print(f"{'QEMU':6} {'vCPUs':>5} {'without':>10} {'with loader':>12} {'ratio':>6} "
          f"{'loader per vCPU INIT':>21}")
    for v in ("7.2", "10.0"):
        for n in smp.split():
            plain = statistics.median(starts[(v, n, "plain")])
            loaded = statistics.median(starts[(v, n, "loader")])
            per = vcpu.get((v, n), [])
            print(f"{v:6} {n:>5} {plain:8.0f} ms {loaded:10.0f} ms {loaded / plain:6.2f} "
                  f"{statistics.median(per) if per else float('nan'):14.0f} us "
                  f"({len(per)} INITs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
