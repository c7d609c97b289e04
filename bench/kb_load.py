#!/usr/bin/env python3
"""How long loading the knowledge base takes (it is on the libvirt hook's path).

Measures, median of N runs:
  * in-process: parsing registers.xml / features.xml / implementers.xml into
    objects (caches cleared between runs);
  * whole process: `python -c "<import + load>"` minus `python -c pass`,
    i.e. what a hook invocation pays on top of interpreter start-up.

usage: python bench/kb_load.py [-n RUNS]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time


def in_process(runs: int) -> dict[str, float]:
    from libvirt_arm_cpu.kb import load as kb_load

    out = {}
    for name, fn in (("registers.xml", lambda: kb_load.registers()),
                     ("features.xml (+registers)", lambda: kb_load.features()),
                     ("implementers.xml", lambda: kb_load.implementers())):
        times = []
        for _ in range(runs):
            kb_load.registers.cache_clear()
            kb_load.features.cache_clear()
            kb_load.implementers.cache_clear()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e3
    return out


def whole_process(runs: int) -> dict[str, float]:
    snippets = {
        "python -c pass": "pass",
        "import registers + load": "from libvirt_arm_cpu.kb import load; load.registers()",
        "import features + load": "from libvirt_arm_cpu.kb import load; load.features()",
    }
    out = {}
    for name, code in snippets.items():
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - t)
        out[name] = statistics.median(times) * 1e3
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--runs", type=int, default=30)
    args = parser.parse_args()
    for name, ms in in_process(args.runs).items():
        print(f"in-process  {name:<28} {ms:6.1f} ms")
    whole = whole_process(args.runs)
    base = whole["python -c pass"]
    for name, ms in whole.items():
        extra = "" if name == "python -c pass" else f"  (+{ms - base:.1f} ms over bare python)"
        print(f"process     {name:<28} {ms:6.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
