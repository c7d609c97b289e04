"""The code stays clean: ruff (pyflakes, pycodestyle, bugbear; the rules in
pyproject.toml) over the package, the tests, bench/ and contrib/, and mypy
over the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = Path(sys.executable).parent / "ruff"
    assert ruff.exists(), "ruff is installed by the set-up (setup.cfg [test])"
    p = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr


def test_mypy_is_clean():
    """The package's type hints hold (pyproject.toml [tool.mypy])."""
    mypy = Path(sys.executable).parent / "mypy"
    assert mypy.exists(), "mypy is installed by the set-up (setup.cfg [test])"
    p = subprocess.run([str(mypy), "--no-incremental"], cwd=ROOT, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_api_and_the_service_layer_do_not_sit_on_the_cli():
    """Imports point down: the CLI's commands, the API and the hook sit on
    libvirt_arm_cpu.service; nothing under them imports a command."""
    code = ("import sys, libvirt_arm_cpu.api, libvirt_arm_cpu.service, libvirt_arm_cpu.hook\n"
            "bad = sorted(m for m in sys.modules if m.startswith('libvirt_arm_cpu.commands')\n"
            "             or m == 'libvirt_arm_cpu.cli.main')\n"
            "print(' '.join(bad))\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "", p.stdout
