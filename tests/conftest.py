"""Shared fixtures: the knowledge base, the shared upstream data, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.cli import main as cli
from libvirt_arm_cpu.kb import features, registers

ROOT = Path(__file__).resolve().parent.parent
XML_DIR = ROOT / "xml"
EXAMPLES = ROOT / "contrib" / "examples"


def _shared_data() -> Path:
    """The upstream facts every developer and CI run has beside the checkout
    (../shared/data); for a clone of a local checkout (git clone . /tmp/x),
    beside the checkout it was cloned from."""
    if os.environ.get("LIBVIRT_ARM_CPU_SHARED_DATA"):
        return Path(os.environ["LIBVIRT_ARM_CPU_SHARED_DATA"])
    here = ROOT.parent / "shared" / "data"
    if here.exists():
        return here
    try:
        origin = subprocess.run(["git", "-C", str(ROOT), "config", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        origin = ""
    if origin and Path(origin).is_dir():
        return Path(origin).resolve().parent / "shared" / "data"
    return here


SHARED_DATA = _shared_data()


@pytest.fixture(scope="session")
def kb() -> registers.KnowledgeBase:
    return kb_load.registers()


@pytest.fixture(scope="session")
def catalog() -> features.FeatureCatalog:
    return kb_load.features()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    # Every developer checkout and CI run has it beside the project; without it
    # the generator cannot be checked, which is a failure, not a skip.
    assert (SHARED_DATA / "sysreg").exists(), (
        f"the shared upstream data is not at {SHARED_DATA}: set LIBVIRT_ARM_CPU_SHARED_DATA")
    return SHARED_DATA


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def run(capsys):
    """Run the CLI in-process: run("decode", "midr", "0x1") -> Result."""

    def _run(*argv: str) -> Result:
        code = cli.main(list(argv))
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return _run


def run_installed(prog: str, *argv: str, stdin: str | None = None) -> Result:
    """Run an installed console script, as a user would."""
    exe = Path(sys.executable).parent / prog
    proc = subprocess.run([str(exe), *argv], input=stdin, capture_output=True, text=True,
                          timeout=60)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(result: Result, code: int, *needles: str) -> None:
    """The bad-input contract: exit code, one line on stderr, no traceback."""
    assert result.code == code, (result.code, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert "Traceback" not in result.err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def models_dir(tmp_path, monkeypatch, kb):
    """A models folder (LIBVIRT_ARM_CPU_MODELS_DIR) with the exact CPU of three
    captured hosts, saved as max-lpa2 (max, Linux 7.3), max-no-lpa2 (its
    lpa2=off twin) and n1 (Neoverse-N1, Linux 6.12)."""
    from dataclasses import replace

    from libvirt_arm_cpu.formats.cpumodel import to_xml
    from libvirt_arm_cpu.model import CpuModel

    from .kvm_hosts import fixture_profile
    where = tmp_path / "models"
    where.mkdir()
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(where))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    for fixture, label in (("max-qemu10.0-linux7.3", "max-lpa2"),
                           ("max-lpa2-off-qemu10.0-linux7.3", "max-no-lpa2"),
                           ("neoverse-n1-qemu7.2-linux6.12", "n1")):
        model = replace(CpuModel.from_profile(fixture_profile(fixture), kb, label), name=label)
        (where / f"{label}.xml").write_bytes(to_xml(model, []))
    return where


@pytest.fixture(autouse=True, scope="session")
def _model_cache_dir(tmp_path_factory) -> None:
    """cpu-baseline's profile cache (formats/modelcache.py) in a folder of
    this run's, not under /var/cache: the tests write nothing outside their
    own folders (test_modelcache sets its own)."""
    os.environ["LIBVIRT_ARM_CPU_CACHE_DIR"] = str(tmp_path_factory.mktemp("modelcache"))
