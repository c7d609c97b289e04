"""The bundled example dumps are what contrib/make-example-dumps.py makes."""

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
