#!/usr/bin/env python3
"""Baseline and compare over many host profiles (issue 4's scale targets).

Generates N profiles as a fleet would have them: a few distinct CPUs
(variations of the test-bed fixtures of one kernel generation), every file
with its own host name, probe time and boot id.  Then times, in-process:

  * baseline over N profile files as cpu-baseline reads them: every file
    read, each distinct content parsed and schema-validated once, every
    other file's identity part checked;
  * compare of one model against each of the N profiles (reading them
    included).

usage: python bench/baseline_scale.py [N ...]     (default: 10 100 1000 10000)
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path
from dataclasses import replace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libvirt_arm_cpu.kb import load as kb_load  # noqa: E402
from libvirt_arm_cpu.engine.baseline import baseline  # noqa: E402
from libvirt_arm_cpu.engine.compare import compare_many  # noqa: E402
from libvirt_arm_cpu.service import load_inputs  # noqa: E402
from libvirt_arm_cpu.model import Fingerprint  # noqa: E402
from libvirt_arm_cpu.formats.profile import from_xml, read_profile, to_xml  # noqa: E402

FIXTURE = ROOT / "tests/data/hosts/neoverse-n1-qemu7.2-linux6.12.xml"


def fleet(n: int, directory: Path, distinct: int = 4) -> list[Path]:
    kb = kb_load.registers()
    base = read_profile(str(FIXTURE), validate_schema=False)
    rnd = random.Random(1)
    kinds = []
    isar0 = kb.register("ID_AA64ISAR0_EL1")
    for k in range(distinct):        # the same core with a few features fused off
        p = from_xml(to_xml(base))
        regs = []
        for r in p.registers:
            if r.name == "ID_AA64ISAR0_EL1" and k and r.value is not None:
                f = rnd.choice([f for f in isar0.fields if f.get(r.value)])
                r = replace(r, value=f.put(r.value, 0))
            regs.append(r)
        kinds.append(replace(p, registers=regs))
    paths = []
    for i in range(n):
        kind = kinds[i % distinct]
        p = replace(kind, hostname=f"host{i:05d}", fingerprint=Fingerprint(
            {**kind.fingerprint.components, "boot-id": f"{i:032x}"}))
        path = directory / f"host{i:05d}.xml"
        path.write_bytes(to_xml(p))
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    sizes = [int(a) for a in argv[1:]] or [10, 100, 1000, 10000]
    kb = kb_load.registers()
    for n in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            paths = fleet(n, Path(tmp))
            t0 = time.perf_counter()
            inputs = load_inputs([str(p) for p in paths], kb)     # what cpu-baseline reads
            t1 = time.perf_counter()
            result = baseline([m for _, m, _ in inputs], kb, kb_load.dependencies(), [label for label, _, _ in inputs])
            t2 = time.perf_counter()
            assert result.ok
            t3 = time.perf_counter()     # compare: reading the profiles again, included
            profiles = [p for _, _, p in load_inputs([str(p) for p in paths], kb)]
            verdicts = [c.result for c in compare_many(result.model, profiles, kb)]
            t4 = time.perf_counter()
            print(f"{n:6d} hosts: read {t1 - t0:5.2f} s + baseline {t2 - t1:5.3f} s = "
                  f"{t2 - t0:5.2f} s; compare one model with each (read included) "
                  f"{t4 - t3:5.2f} s ({len(set(verdicts))} "
                  f"distinct verdicts)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
