#!/usr/bin/env python3
"""Capture the host-profile fixtures (tests/data/hosts/) from the test bed.

Boots every emulated host of contrib/testbed/hosts.txt (one at a time),
names the guest after the host (hostname <name>-qemu<qemu>-linux<kernel>),
runs `libvirt-arm-cpu-helper probe` in it, and writes the profile to
tests/data/hosts/<name>-qemu<qemu>-linux<kernel>.xml.  The kvm tests then
check that live probes still match these files: re-capture only on purpose
(a new kernel or QEMU in the test bed, a change in what the probe records),
and review the diff.

usage: contrib/testbed/capture-fixtures.py [NAME-FILTER...]
       (run contrib/testbed/prepare.sh first)
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from tests.kvm_hosts import FIXTURES, guest_job, hosts  # noqa: E402


def main(argv: list[str]) -> int:
    wanted = argv[1:]
    selected = [h for h in hosts() if not wanted or any(w in h.id for w in wanted)]
    if not selected:
        print(f"capture-fixtures: no host matches {' '.join(wanted)}", file=sys.stderr)
        return 2
    FIXTURES.mkdir(parents=True, exist_ok=True)
    failed = 0
    with tempfile.TemporaryDirectory(prefix="capture.") as tmp:
        for host in selected:
            job = Path(tmp) / f"{host.id}.sh"
            job.write_text(guest_job(scenarios=False, name=host.id))  # hostname = host.id
            out = Path(tmp) / host.id
            proc = subprocess.run(
                [str(ROOT / "contrib/testbed/run-in-guest.sh"), "--kernel", host.kernel,
                 "--qemu", host.qemu, "--cpu", host.cpu, "--script", str(job),
                 "--out", str(out), "--timeout", "240"], capture_output=True, text=True)
            rc_file = out / "files" / "probe.rc"
            if proc.returncode != 0 or not rc_file.exists() or rc_file.read_text() != "0\n":
                err = (out / "files" / "probe.stderr")
                why = err.read_text().strip() if err.exists() else proc.stderr.strip()
                print(f"capture-fixtures: {host.id}: failed: {why}", file=sys.stderr)
                failed += 1
                continue
            (FIXTURES / host.fixture.name).write_bytes((out / "files" / "host.xml").read_bytes())
            seconds = (out / "files" / "probe.seconds").read_text().split()
            timing = out / "files" / "probe-timing.json"
            kvm_part = ""
            if timing.exists() and timing.read_text().strip():
                t = json.loads(timing.read_text())
                kvm_part = (f" (KVM part: {min(t['default_ms']):.0f} ms, with the vCPU-feature-"
                            f"off variants {min(t['with_variants_ms']):.0f} ms)")
            print(f"{host.id}: boot {float((out / 'wall_s').read_text()):.1f} s, probe "
                  f"{float(seconds[1]) - float(seconds[0]):.1f} s{kvm_part} -> "
                  f"{host.fixture.name}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
