"""Named, versioned CPU models (xml/models.xml): generated from ../shared/data,
released versions that never change, faithful to their core's data and to
the test bed's probes of that core, found by name, listed by cpu-models."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from libvirt_arm_cpu import modelstore
from libvirt_arm_cpu.cli.main import main
from libvirt_arm_cpu.engine.compare import INCOMPATIBLE, compare
from libvirt_arm_cpu.errors import ParseError, UsageError
from libvirt_arm_cpu.formats.cpumodel import to_xml
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.kb import load, named

ROOT = Path(__file__).resolve().parent.parent
XML = ROOT / "xml"
HOSTS = ROOT / "tests" / "data" / "hosts"


@pytest.fixture(scope="module")
def models() -> named.NamedModels:
    return load.load_named(str(XML / "models.xml"))


def test_committed_file_is_not_stale_and_matches_its_schema(shared_data):
    fresh = named.generate(shared_data, XML)
    assert fresh == (XML / "models.xml").read_bytes(), \
        "xml/models.xml is stale: python -m libvirt_arm_cpu.kb.named --data ../shared/data"
    named.validate(fresh, XML / "schemas" / "models.xsd")


def test_every_released_version_keeps_its_digest(models):
    """A version's values are its meaning: the digest in the file (made when
    it was released) must still be the digest of its values.  Changing a
    released version fails here; change the data and regenerate instead,
    which adds a version."""
    for m in models.models:
        assert named.digest_of(m.values, m.vcpu_off) == m.digest, m.versioned


def test_changed_data_adds_a_version_and_keeps_the_old(models):
    v1 = models.find("neoverse-n1-v1")
    regs = [dataclasses.replace(r, value=r.value & ~0xf0) if r.register == "ID_AA64ISAR0_EL1"
            else r for r in v1.registers]
    src = models.source(v1.source)
    changed = named.Source(src.id, src.origin, src.file, "0" * 64)
    found = [("neoverse-n1", named.CORE, v1.title, v1.source, regs, [], ())]
    merged = named.merge(models, found, [changed])
    versions = merged.versions("neoverse-n1")
    assert [m.version for m in versions] == [1, 2]
    assert versions[0] == v1 and versions[1].values != v1.values
    assert versions[1].source == f"{src.id}-00000000"      # v1 still cites its file
    assert merged.find("neoverse-n1") == versions[1]
    # the same data again: nothing new
    again = named.merge(models, [("neoverse-n1", named.CORE, v1.title, v1.source,
                                  list(v1.registers), [], ())], [src])
    assert again.versions("neoverse-n1") == [v1]


def test_newer_models_file_is_refused(tmp_path):
    data = (XML / "models.xml").read_bytes().replace(b'format="1"', b'format="2"', 1)
    (tmp_path / "models.xml").write_bytes(data)
    with pytest.raises(ParseError, match="format 2, newer than the 1"):
        load.load_named(str(tmp_path / "models.xml"))


def test_core_values_are_the_data_but_for_what_a_kvm_guest_reads(models, shared_data):
    """Each core model's registers against its source file, field by field:
    every difference is one the version names (guest-view fields, the
    derived cache registers), nothing else."""
    kb = load.registers()
    for m in models.latest():
        src = models.source(m.source)
        data = json.loads((shared_data / src.file).read_text())
        assert src.sha256, m.versioned
        given = {k: int(v, 16) for k, v in data["regs"].items()}
        for r in m.registers:
            if r.register not in given or r.origin == "derived":
                # not in the file (0), or CLIDR_EL1 as KVM makes it from CTR_EL0
                assert r.origin in ("absent", "derived", "guest-view"), (m.versioned, r)
                continue
            changed = set(r.fields.split())
            for f in kb.register(r.register).fields:
                if f.get(r.value) != f.get(given[r.register]):
                    assert f.name in changed or "(all:" in r.fields, \
                        f"{m.versioned}: {r.register}.{f.name} differs from {src.file} " \
                        f"without being named a guest-view field"
        if data.get("ctr"):
            assert m.values["CTR_EL0"] & 0xffff == int(data["ctr"], 16) & 0xffff
        assert "MIDR_EL1" not in m.values       # a guest keeps its host's identity


# The test bed's probes that differ from the silicon in ways a named model
# cannot follow: (fixture, register.field) -> why.
TESTBED_ARTIFACTS = {
    # the emulated cores of QEMU 10.0 use QEMU's IMPLEMENTATION DEFINED PAuth
    # algorithm (API/GPI); the cores themselves use QARMA5 (APA/GPA, the data)
    **{(fx, f"ID_AA64ISAR1_EL1.{fld}"): "TCG's PAuth algorithm, not the core's"
       for fx in ("cortex-a710-qemu10.0-linux6.12", "neoverse-n2-qemu10.0-linux6.12",
                  "neoverse-v1-qemu10.0-linux6.12", "neoverse-v1-qemu10.0-linux7.3")
       for fld in ("APA", "API", "GPA", "GPI")},
    # Linux before 6.16 shows ID_AA64MMFR2_EL1.NV to every guest and does not
    # let it change; 7.3 hides it: no one value runs on both kernels
    ("neoverse-n2-qemu10.0-linux6.12", "ID_AA64MMFR2_EL1.NV"): "6.12 shows NV",
    ("neoverse-v1-qemu10.0-linux6.12", "ID_AA64MMFR2_EL1.NV"): "6.12 shows NV",
}


def _core_fixtures(models):
    names = models.names()
    return [(p, p.name.split("-qemu")[0]) for p in sorted(HOSTS.glob("*.xml"))
            if p.name.split("-qemu")[0] in names]


def test_each_core_model_runs_on_its_own_core_on_every_kernel(models):
    """Against the probes of emulated cores (Linux 6.12 and 7.3): compare says
    the core's model runs, but for the listed test-bed artifacts (and each
    listed artifact still happens, so the list stays true)."""
    kb = load.registers()
    fixtures = _core_fixtures(models)
    assert {core for _, core in fixtures} >= {"neoverse-n1", "neoverse-v1", "cortex-a72",
                                              "a64fx"}
    seen = set()
    for path, core in fixtures:
        c = compare(modelstore.from_named(models.find(core)), read_profile(str(path)), kb,
                    check_qemu=False)
        for r in c.reasons:
            key = (path.stem, f"{r.register}.{r.field}")
            assert key in TESTBED_ARTIFACTS, f"{core} on {path.name}: {r}"
            seen.add(key)
        if not c.reasons:
            assert c.result != INCOMPATIBLE
    assert seen == set(TESTBED_ARTIFACTS)


def test_find_resolves_named_models_after_saved_ones(tmp_path, monkeypatch, models):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    m = modelstore.find("neoverse-v1")
    assert m.name == "neoverse-v1-v1" and m.values == models.find("neoverse-v1-v1").values
    assert modelstore.find("neoverse-v1-v1").values == m.values
    kb = load.registers()
    assert all(m.writable[r] == kb.register(r).field_mask for r in m.values)
    with pytest.raises(UsageError, match="has no version 7 .*it has v1"):
        modelstore.find("neoverse-v1-v7")
    with pytest.raises(UsageError, match="did you mean neoverse-v1"):
        modelstore.find("neovers-v1")
    assert "neoverse-v1" in modelstore.catalog() and "neoverse-v1-v1" in modelstore.catalog()
    # a saved model of the same name wins
    saved = dataclasses.replace(modelstore.find("cortex-a72"), name="neoverse-v1")
    (tmp_path / "neoverse-v1.xml").write_bytes(to_xml(saved, []))
    assert modelstore.find("neoverse-v1").values == saved.values
    assert modelstore.catalog()[0] == "neoverse-v1"


def test_cpu_models_lists_and_judges_a_host(capsys):
    assert main(["cpu-models"]) == 0
    out = capsys.readouterr().out
    assert "neoverse-v1-v1" in out and "cortex-a72-v1" in out
    host = str(HOSTS / "neoverse-n1-qemu7.2-linux7.3.xml")
    assert main(["cpu-models", "--host", host, "neoverse-n1", "neoverse-v1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "1 of 2 named CPU models run on neoverse-n1-qemu7.2-linux7.3"
    assert "neoverse-n1-v1  yes  superset" in out
    assert "ID_AA64PFR0_EL1.SVE: needs 1, host has 0" in out
    assert main(["cpu-models", "--host", host, "--json", "neoverse-v1-v1"]) == 0
    row = json.loads(capsys.readouterr().out)["models"][0]
    assert row["name"] == "neoverse-v1-v1" and row["usable"] is False
    assert row["source"]["file"] == "cpus/qemu-neoverse-v1.json"
    assert any(r["register"] == "ID_AA64PFR0_EL1" and r["field"] == "SVE"
               for r in row["reasons"])


@pytest.mark.parametrize("argv, message", [
    (["cpu-models", "neovers-v1"], "unknown named CPU model 'neovers-v1' (did you mean "
                                   "neoverse-v1?)"),
    (["cpu-models", "neoverse-v1-v9"], "has no version 9"),
])
def test_cpu_models_bad_names(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
