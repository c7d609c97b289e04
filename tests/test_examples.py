"""The bundled example dumps are what contrib/make-example-dumps.py makes, and the
README's main job (contrib/demo.sh) runs on them."""

from __future__ import annotations

import subprocess
import sys

from .conftest import EXAMPLES, ROOT


def test_examples_are_not_stale(shared_data, tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "contrib" / "make-example-dumps.py"),
                           str(shared_data / "cpus"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.regs")}
    committed = {p.name: p.read_text() for p in EXAMPLES.glob("*.regs")}
    assert fresh == committed
    assert "qemu-neoverse-n1.regs" in committed


def test_the_readme_main_job_runs():
    """`sh contrib/demo.sh`, the README's first command (set-up is already
    done here, so it only checks and goes on)."""
    p = subprocess.run(["sh", str(ROOT / "contrib" / "demo.sh")], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    for needle in ("DP      [47:44] = 1  (IMP)", "MIDR_EL1.PartNum", "cpu-baseline: saved as arm64-",
                   "is incompatible with host CPU", '<cpu mode="host-passthrough" check="none">',
                   "optional feature sve left out: the host CPU lacks it"):
        assert needle in p.stdout + p.stderr, needle
