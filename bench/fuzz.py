#!/usr/bin/env python3
"""The long fuzzing run: every parser of untrusted input (tests/fuzz_targets.py)
on mutations of a real input and on random bytes, as the suite does with 150
inputs a target, but for as many as asked.  Any exception other than the
project's one-line errors is a defect: printed with the input that raised it.

usage: python bench/fuzz.py [-n INPUTS-PER-TARGET] [TARGET...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from libvirt_arm_cpu.errors import Error  # noqa: E402
from tests.fuzz_targets import SEEDS, TARGETS  # noqa: E402
from tests.test_hostile_input import _mutations  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=10_000)
    ap.add_argument("targets", nargs="*", default=sorted(TARGETS))
    args = ap.parse_args()
    failed = 0
    for name in args.targets:
        parse, seed = TARGETS[name], SEEDS[name]()
        counts = {"ok": 0, "refused": 0}
        t = time.perf_counter()

        @settings(max_examples=args.n, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.one_of(_mutations(seed), st.binary(max_size=4096)))
        def run(blob: bytes) -> None:
            try:
                parse(blob)
                counts["ok"] += 1
            except Error as e:
                assert "\n" not in str(e), repr(str(e))
                counts["refused"] += 1

        try:
            run()
            status = "clean"
        except Exception as e:          # hypothesis re-raises the shrunk failure
            status = f"DEFECT: {type(e).__name__}: {str(e)[:200]}"
            failed += 1
        dt = time.perf_counter() - t
        n = counts["ok"] + counts["refused"]
        print(f"{name:16s} {n:7d} inputs in {dt:6.1f} s ({n / dt:6.0f}/s): "
              f"{counts['ok']} read, {counts['refused']} refused in one line; {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
