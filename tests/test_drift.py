"""host --check: which saved and named CPU models a host no longer runs (and
newly runs) after an upgrade, on the captured profiles of the test bed: the
same emulated CPU under Linux 6.12 and 7.3, and QEMU's max CPU with and
without LPA2."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from libvirt_arm_cpu import drift
from libvirt_arm_cpu.formats.cpumodel import to_xml
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.model import CpuModel

from .conftest import assert_one_line_error
from .kvm_hosts import FIXTURES, Host, fixture_path, fixture_profile

MAX, MAX_NO_LPA2 = "max-qemu10.0-linux7.3", "max-lpa2-off-qemu10.0-linux7.3"
N1_612, N1_73 = "neoverse-n1-qemu7.2-linux6.12", "neoverse-n1-qemu7.2-linux7.3"


def _model(kb, name: str, label: str) -> CpuModel:
    return replace(CpuModel.from_profile(fixture_profile(name), kb, label), name=label)


def test_lpa2_off_loses_the_lpa2_model_and_says_which_fields(kb, catalog):
    models = {"max-lpa2": _model(kb, MAX, "max-lpa2"),
              "max-no-lpa2": _model(kb, MAX_NO_LPA2, "max-no-lpa2")}
    d = drift.check(fixture_profile(MAX), fixture_profile(MAX_NO_LPA2), models, kb, catalog)
    assert [c.name for c in d.lost] == ["max-lpa2"]
    assert [c.name for c in d.gained] == ["max-no-lpa2"]
    assert d.runnable == ["max-no-lpa2"] and d.not_runnable == ["max-lpa2"]
    assert d.exit_code == drift.EXIT_LOST
    reasons = d.lost[0].after.reasons
    assert {r.field for r in reasons if r.kind != "platform"} == {"TGRAN4_2", "TGRAN16_2",
                                                                  "TGRAN4", "TGRAN16"}
    # without LPA2 the guest's physical addresses stop at 48 bits, not 52
    assert [r.register for r in reasons if r.kind == "platform"] == ["IPA size"]
    assert "ID_AA64MMFR0_EL1.TGRAN4: 1 -> 0" in d.host_changes
    assert "platform ipa_bits: 52 -> 48" in d.host_changes
    assert not d.features_lost and not d.features_gained


def test_kernel_upgrade_keeps_the_fleet_model(kb, catalog):
    """6.12 -> 7.3 on a Neoverse-N1: the 6.12 host's exact CPU still runs,
    the 7.3 one did not before; the profile says what the kernel changed."""
    models = {"n1-6.12": _model(kb, N1_612, "n1-6.12"), "n1-7.3": _model(kb, N1_73, "n1-7.3")}
    d = drift.check(fixture_profile(N1_612), fixture_profile(N1_73), models, kb, catalog)
    assert not d.lost and [c.name for c in d.gained] == ["n1-7.3"]
    assert d.exit_code == drift.EXIT_NO_LOSS
    assert any(x.startswith("kernel: 6.12.") and "-> 7.3." in x for x in d.host_changes)
    assert "KVM_CAP_ARM_WRITABLE_IMP_ID_REGS: 0 -> 1" in d.host_changes
    assert any(x.startswith("now writable (") and "MIDR_EL1.PartNum" in x
               for x in d.host_changes)
    # nothing changed, nothing to say
    same = drift.check(fixture_profile(N1_73), fixture_profile(N1_73), models, kb, catalog)
    assert not same.lost and not same.gained and not same.host_changes


def test_check_two_profile_files(run, models_dir):
    r = run("host", "--check", "--previous", fixture_path(MAX), "--profile", fixture_path(MAX_NO_LPA2))
    assert r.code == 1, r.err
    lines = r.out.splitlines()
    assert lines[1] == "no longer runs 1 CPU model:"
    assert lines[2].startswith("  max-lpa2: ID_AA64MMFR0_EL1.TGRAN4_2: needs 3, host has 2")
    assert "newly runs 1 CPU model: max-no-lpa2" in lines
    assert any(re.fullmatch(r"runs \d+ of \d+ CPU models: (.*, )?max-no-lpa2(, .*)?", x)
               for x in lines)
    assert "--accept" not in r.out          # two files: nothing to accept
    r = run("host", "--check", "--previous", fixture_path(MAX_NO_LPA2), "--profile", fixture_path(MAX_NO_LPA2),
            "--json")
    assert r.code == 0
    data = json.loads(r.out)
    assert data["lost"] == [] and data["gained"] == [] and data["host_changes"] == []
    # the saved models (the named ones come with the package)
    assert "max-no-lpa2" in data["runnable"] and {"max-lpa2", "n1"} <= set(data["not_runnable"])
    r = run("host", "--check", "--previous", fixture_path(MAX), "--profile", fixture_path(MAX_NO_LPA2),
            "--json")
    data = json.loads(r.out)
    assert r.code == 1 and [x["model"] for x in data["lost"]] == ["max-lpa2"]
    assert data["lost"][0]["before"] == "identical" and data["lost"][0]["after"] == "incompatible"


def test_check_this_host_records_then_keeps_the_reference(run, models_dir, tmp_path,
                                                         monkeypatch):
    """The local flow without /dev/kvm: the cache is the probe's."""
    import libvirt_arm_cpu.cli.host as host_cli
    cache = tmp_path / "host.xml"
    cache.write_bytes((FIXTURES / f"{MAX}.xml").read_bytes())     # as probed before the upgrade
    now = {"profile": fixture_profile(MAX_NO_LPA2)}
    monkeypatch.setattr(host_cli, "cached_profile", lambda *a, **k: (now["profile"], True))
    reference = tmp_path / "host.xml.previous"
    r = run("host", "--check", "--cache", str(cache))
    assert r.code == 1 and "no longer runs 1 CPU model:" in r.out
    assert "no reference profile yet" not in r.out
    assert reference.exists() and read_profile(str(reference)).hostname == MAX
    # until accepted, the check keeps saying so
    r = run("host", "--check", "--cache", str(cache))
    assert r.code == 1 and "'libvirt-arm-cpu host --check --accept'" in r.out
    r = run("host", "--check", "--cache", str(cache), "--accept")
    assert r.code == 1 and "the current profile is now the reference" in r.out
    r = run("host", "--check", "--cache", str(cache))
    assert r.code == 0 and "no CPU model changed" in r.out
    # no reference and no cache: the first profile is the reference
    reference.unlink()
    cache.unlink()
    r = run("host", "--check", "--cache", str(cache))
    assert r.code == 0 and "no reference profile yet: this one is recorded" in r.out
    assert reference.exists()


@pytest.mark.parametrize("argv, needle", [
    (["--check", "--profile", "x.xml"], "give both"),
    (["--accept"], "go with --check"),
    (["--check", "--all", "--previous", "a", "--profile", "b"], "--all"),
])
def test_check_bad_usage(run, argv, needle):
    assert_one_line_error(run("host", *argv), 2, needle)


def test_check_missing_reference_file(run, tmp_path):
    r = run("host", "--check", "--previous", str(tmp_path / "none.xml"), "--profile",
            fixture_path(MAX))
    assert_one_line_error(r, 2, "no such file")


def test_broken_model_is_a_warning_not_a_failure(run, models_dir):
    (models_dir / "broken.xml").write_text("<cpu>")
    r = run("host", "--check", "--previous", fixture_path(MAX), "--profile", fixture_path(MAX))
    assert r.code == 0 and "max-lpa2" in r.out.splitlines()[2]
    assert r.err.startswith("warning: CPU model not read: broken:")


@pytest.mark.kvm
def test_check_on_the_test_bed_after_a_kernel_upgrade(kb):
    """On the Linux 7.3 Neoverse-N1 host, with the 6.12 host's profile as the
    reference: the real probe, the real cache, the CLI as an operator runs
    it.  The models: the exact CPU of the 6.12 host and QEMU's max CPU.
    KVM's verdict alone (--kvm-only): the guest has no QEMU."""
    from .testbed import run_in_guest
    host = Host("neoverse-n1", "7.3", "7.2", "neoverse-n1")
    files = {"previous.xml": (FIXTURES / f"{N1_612}.xml").read_bytes(),
             "n1-6.12.xml": to_xml(_model(kb, N1_612, "n1-6.12"), []),
             "max.xml": to_xml(_model(kb, MAX, "max"), [])}
    script = f"""\
hostname {host.id}
mkdir -p /tmp/models /tmp/cache
cp /in/n1-6.12.xml /in/max.xml /tmp/models/
cp /in/previous.xml /tmp/cache/host.xml.previous
export LIBVIRT_ARM_CPU_MODELS_DIR=/tmp/models
python3 -m libvirt_arm_cpu.cli host --check --cache /tmp/cache/host.xml --json --kvm-only \\
    >/out/check.json 2>/out/check.stderr
echo $? > /out/check.rc
"""
    res = run_in_guest(kernel=host.kernel, qemu=host.qemu, cpu=host.cpu, script=script,
                       files=files, timeout=420)
    assert res.files.get("check.rc") == b"0\n", res.files.get("check.stderr", b"").decode()
    data = json.loads(res.files["check.json"])
    assert data["lost"] == [] and "n1-6.12" in data["runnable"]
    assert "max" in data["not_runnable"]
    assert data["previous"]["kernel"].startswith("6.12.")
    assert data["current"]["kernel"].startswith("7.3.")
