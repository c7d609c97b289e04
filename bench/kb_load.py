#!/usr/bin/env python3
"""How long loading the knowledge base takes (it is on the libvirt hook's path).

Measures, median of N runs:
  * in-process: registers.xml / features.xml / dependencies.xml /
    implementers.xml into objects, from the XML and from the compiled copy
    (kb/compiled.py; caches cleared between runs);
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
    """The three files every fleet command reads, from the XML (the cache
    off) and from their compiled copy (kb/compiled.py, in a scratch cache)."""
    import os
    import tempfile

    from libvirt_arm_cpu.kb import load as kb_load

    def forget() -> None:
        for f in (kb_load.registers, kb_load.features, kb_load.dependencies,
                  kb_load.implementers, kb_load._copy):
            f.cache_clear()

    out = {}
    with tempfile.TemporaryDirectory(prefix="lac-bench-kb.") as scratch:
        for source, cache in (("XML", "none"), ("compiled copy", scratch)):
            os.environ["LIBVIRT_ARM_CPU_CACHE_DIR"] = cache
            forget()
            kb_load.dependencies()          # (the copy written, for the next rows)
            for name, fn in (("registers.xml", lambda: kb_load.registers()),
                             ("features.xml (+registers)", lambda: kb_load.features()),
                             ("all three (+dependencies.xml)", lambda: kb_load.dependencies()),
                             ("implementers.xml", lambda: kb_load.implementers())):
                times = []
                for _ in range(runs):
                    forget()
                    t = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t)
                out[f"{name}, {source}"] = statistics.median(times) * 1e3
    del os.environ["LIBVIRT_ARM_CPU_CACHE_DIR"]
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
        print(f"in-process  {name:<44} {ms:6.1f} ms")
    whole = whole_process(args.runs)
    base = whole["python -c pass"]
    for name, ms in whole.items():
        extra = "" if name == "python -c pass" else f"  (+{ms - base:.1f} ms over bare python)"
        print(f"process     {name:<44} {ms:6.1f} ms{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
