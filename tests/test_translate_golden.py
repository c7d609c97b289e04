"""translate's whole output, case by case, against golden files.

Each case is ``tests/data/translate/<case>-in.xml`` (a domain as a user
writes it) and ``<case>-out.xml`` (what ``translate`` prints for it on the
case's host, from the captured fixtures).  Model names are hashes of the
fixtures' values, so both files say ``@MODEL@`` where the case's model name
goes.  After a deliberate change (or re-captured fixtures), regenerate with

    LIBVIRT_ARM_CPU_REGEN_GOLDEN=1 .venv/bin/python -m pytest tests/test_translate_golden.py

and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .domains import MAX73, N1_612, N1_73, save_model, with_sysreg

GOLDEN = Path(__file__).resolve().parent / "data" / "translate"
REGEN = os.environ.get("LIBVIRT_ARM_CPU_REGEN_GOLDEN") == "1"

# case: (host profile, hosts the saved model is the baseline of, host with SYSREG QEMU)
CASES = {
    "custom-disable-sve2-sysreg": (MAX73, (MAX73,), True),
    "custom-disable-sve2-loader": (MAX73, (MAX73,), False),
    "custom-two-kernels-loader": (N1_73, (N1_612, N1_73), False),
    "custom-two-kernels-older-host": (N1_612, (N1_612, N1_73), False),
    "host-model": (N1_73, (), False),
    "custom-require-and-topology": (MAX73, (MAX73,), False),
}


def test_every_case_has_its_files():
    found = {p.name[:-len("-in.xml")] for p in GOLDEN.glob("*-in.xml")}
    assert found == set(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_translate_matches_the_golden_output(case, run, tmp_path, monkeypatch):
    host, pool, sysreg = CASES[case]
    models = tmp_path / "models"
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(models))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    name = save_model(models, *pool) if pool else "@MODEL@"
    profile = with_sysreg(host, tmp_path / "host.xml") if sysreg else host
    dom = tmp_path / "in.xml"
    dom.write_text((GOLDEN / f"{case}-in.xml").read_text().replace("@MODEL@", name))
    r = run("translate", str(dom), "--host", str(profile))
    assert r.code == 0, r.err
    got = r.out.replace(name, "@MODEL@")
    out = GOLDEN / f"{case}-out.xml"
    if REGEN:
        out.write_text(got)
    assert out.exists(), f"{out} is missing: run with LIBVIRT_ARM_CPU_REGEN_GOLDEN=1"
    assert got == out.read_text(), f"{case}: translate's output changed (regenerate and review)"
