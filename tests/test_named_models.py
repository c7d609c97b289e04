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
        assert named.digest_of(m.values, m.vcpu_off, m.host_fields) == m.digest, m.versioned


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
    data = (XML / "models.xml").read_bytes().replace(b'format="2"', b'format="3"', 1)
    (tmp_path / "models.xml").write_bytes(data)
    with pytest.raises(ParseError, match="format 3, newer than the 2"):
        load.load_named(str(tmp_path / "models.xml"))


def test_core_values_are_the_data_but_for_what_a_kvm_guest_reads(models, shared_data):
    """Each core model's registers against its source file, field by field:
    every difference is one the version names (guest-view fields, the
    derived cache registers), nothing else."""
    kb = load.registers()
    for m in models.latest():
        if m.kind != named.CORE:
            continue
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


# -- architecture levels --------------------------------------------------------------

def _levels(models):
    return [m for m in models.latest() if m.kind == named.ARCHITECTURE]


def _meets(level, core_values: dict[str, int], kb) -> bool:
    """Does a core (its named model's values, from the data) have every
    field a level sets at least at the level's value?"""
    for name, value in level.values.items():
        reg = kb.register(name)
        have = core_values.get(name, 0)
        for f in reg.fields:
            if (name, f.name) in named.ARCH_OFF_FIELDS:
                continue
            if f.order(f.get(have)) < f.order(f.get(value)) and f.get(value) != 0:
                return False
    return True


def test_every_architecture_level_is_released_with_what_it_takes_from_the_host(models):
    levels = _levels(models)
    assert [m.name for m in levels][:3] == ["armv8.0-a", "armv8.1-a", "armv8.2-a"]
    assert {m.name for m in levels} >= {"armv8.4-a", "armv9.0-a", "armv9.4-a"}
    kb = load.registers()
    by = {m.name: m for m in levels}
    v82 = by["armv8.2-a"]
    # FP and AdvSIMD (FP16) and RAS: KVM never lets them change, so the host's,
    # each at least the level's: RAS >= 1 (FEAT_RAS; FEAT_RASv1p1 is Armv8.4's)
    assert {"FP", "AdvSIMD", "RAS"} <= set(v82.host_fields["ID_AA64PFR0_EL1"])
    assert kb.field("ID_AA64PFR0_EL1", "RAS").get(v82.values["ID_AA64PFR0_EL1"]) == 1
    assert kb.field("ID_AA64PFR0_EL1", "RAS").get(by["armv8.4-a"].values["ID_AA64PFR0_EL1"]) == 2
    assert any("FEAT_RASv1p1" in n for n in v82.notes)
    # what a level sets itself is fixed: LSE, RDM at their least, nothing above
    isar0 = v82.values["ID_AA64ISAR0_EL1"]
    assert kb.field("ID_AA64ISAR0_EL1", "ATOMIC").get(isar0) == 2
    assert kb.field("ID_AA64ISAR0_EL1", "DP").get(isar0) == 0
    assert "ID_AA64ISAR0_EL1" not in v82.host_fields
    # SVE: off (a vCPU feature) below the levels that have it
    assert "sve" in v82.vcpu_off and "sve" not in by["armv9.0-a"].vcpu_off
    assert "SVE" in by["armv9.0-a"].host_fields["ID_AA64PFR0_EL1"]
    # FEAT_I8MM (Armv8.6) is its AdvSIMD instructions in a level without SVE
    assert kb.field("ID_AA64ISAR1_EL1", "I8MM").get(by["armv8.6-a"].values["ID_AA64ISAR1_EL1"]) == 1
    # a KVM guest has no Secure state
    assert kb.field("ID_AA64PFR0_EL1", "SEL2").get(by["armv8.4-a"].values["ID_AA64PFR0_EL1"]) == 0
    # the meaning includes the host fields: a released version's digest says so
    assert named.digest_of(v82.values, v82.vcpu_off) != v82.digest


def test_each_level_runs_on_every_test_bed_core_whose_data_has_it(models):
    """Against the probes of emulated cores (Linux 6.12 and 7.3): a level
    runs on a core's host exactly when the core's data (its named model)
    has every field the level sets, at least at the level's value; and
    QEMU 10.0's max runs the levels it implements."""
    kb = load.registers()
    levels = _levels(models)
    seen_yes = seen_no = 0
    for path, core in _core_fixtures(models):
        host = read_profile(str(path))
        core_values = models.find(core).values
        for level in levels:
            c = compare(modelstore.from_named(level), host, kb, check_qemu=False)
            expected = _meets(level, core_values, kb)
            assert (c.result != INCOMPATIBLE) == expected, \
                (path.name, level.versioned, [str(r) for r in c.reasons][:3])
            seen_yes += expected
            seen_no += not expected
    assert seen_yes > 40 and seen_no > 100
    for fixture in ("max-qemu10.0-linux6.12", "max-qemu10.0-linux7.3"):
        host = read_profile(str(HOSTS / f"{fixture}.xml"))
        runs = [m.name for m in levels
                if compare(modelstore.from_named(m), host, kb, check_qemu=False).result
                != INCOMPATIBLE]
        assert runs == [f"armv8.{n}-a" for n in range(9)] + ["armv9.0-a", "armv9.1-a"], fixture


def test_the_data_says_which_cores_have_their_own_level(models, shared_data):
    """Each test-bed core runs the level its data names (isa_level of the
    hrw file), but for what the core's own ID register values lack."""
    kb = load.registers()
    by = {m.name: m for m in _levels(models)}
    lacking = {"a64fx": "armv8.2-a",            # QEMU's A64FX has no RAS (PFR0.RAS = 0)
               "neoverse-v1": "armv8.4-a"}      # TRM and QEMU: ISAR0.TLB = 0 (no TLBI range)
    checked = set()
    for path, core in _core_fixtures(models):
        hrw = shared_data / "cpus" / f"hrw-{core}.json"
        data = json.loads(hrw.read_text()) if hrw.exists() else {}
        isa = data.get("other", {}).get("isa_level") or ("v8.2" if core == "a64fx" else None)
        if isa is None:
            continue
        major, minor = isa[1:].split(".")
        level = by[f"armv{major}.{minor}-a"]
        host = read_profile(str(path))
        ok = compare(modelstore.from_named(level), host, kb, check_qemu=False).result \
            != INCOMPATIBLE
        assert ok == (lacking.get(core) != level.name), (path.name, level.name)
        checked.add(core)
    assert checked >= {"cortex-a57", "cortex-a72", "neoverse-n1", "cortex-a76", "cortex-a55",
                       "neoverse-n2", "cortex-a710", "neoverse-v1", "a64fx"}


def test_a_level_translates_to_the_hosts_values_where_it_takes_them(models, tmp_path, capsys):
    """translate gives a level's host fields the host's values (FP16 on N1)
    and its own elsewhere (no DotProd): concrete values in the domain, which
    validate then checks exactly, here and on another host."""
    from libvirt_arm_cpu.engine.compare import on_host
    from .domains import N1_73, V1_73, custom_cpu, domain_xml, with_sysreg
    kb = load.registers()
    host = read_profile(str(N1_73))
    have = host.values()
    level = modelstore.from_named(models.find("armv8.2-a"))
    concrete = on_host(level, host, kb)
    assert concrete.host_fields == {}
    fp, dp = kb.field("ID_AA64PFR0_EL1", "FP"), kb.field("ID_AA64ISAR0_EL1", "DP")
    assert fp.get(concrete.values["ID_AA64PFR0_EL1"]) == fp.get(have["ID_AA64PFR0_EL1"]) == 1
    assert dp.get(have["ID_AA64ISAR0_EL1"]) == 1 and dp.get(concrete.values["ID_AA64ISAR0_EL1"]) == 0
    # the CLI: translate for N1 (with a SYSREG-capable QEMU), validate there
    n1 = with_sysreg(N1_73, tmp_path / "n1.xml")
    dom = tmp_path / "guest.xml"
    dom.write_text(domain_xml(cpu=custom_cpu("armv8.2-a", topology=False)))
    out = tmp_path / "translated.xml"
    assert main(["translate", str(dom), "--host", str(n1), "-o", str(out)]) == 0, \
        capsys.readouterr().err
    text = out.read_text()
    assert "SYSREG_ID_AA64ISAR0_EL1_DP=0x0" in text and "SYSREG_ID_AA64PFR0_EL1_FP" not in text
    assert main(["validate", str(out), "--host", str(n1), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] in ("superset", "identical")
    # a V1 host has the level's features too, but not N1's values where the
    # level took N1's: the translated domain is refused there, naming them
    v1 = with_sysreg(V1_73, tmp_path / "v1.xml")
    assert main(["validate", str(out), "--host", str(v1)]) == 1
    assert "ID_AA64MMFR2_EL1.EVT: needs 0, host has 2" in capsys.readouterr().out
    # on a host with less than the level, compare names what it lacks
    a72 = read_profile(str(HOSTS / "cortex-a72-qemu7.2-linux7.3.xml"))
    c = compare(level, a72, kb, check_qemu=False)
    assert c.result == INCOMPATIBLE and any(r.field == "ATOMIC" for r in c.reasons)


def test_level_without_a_host_is_refused_where_values_must_be_exact(tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(tmp_path))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    level = modelstore.find("armv8.2-a")
    with pytest.raises(UsageError, match="takes fields from the host"):
        to_xml(level, [])
    assert main(["hypervisor-cpu-baseline", "--model", "armv8.2-a"]) == 2
    assert "has no baseline of its own" in capsys.readouterr().err
    # Firecracker: the host fields are left to the host (x), the rest set
    out = tmp_path / "fc.json"
    assert main(["export", "firecracker", "armv8.2-a", "-o", str(out)]) == 0
    assert "takes from its host are kept" in capsys.readouterr().err
    mods = json.loads(out.read_text())["reg_modifiers"]
    kb = load.registers()
    pfr0 = next(m["bitmap"] for m in mods if int(m["addr"], 16) == kb.register(
        "ID_AA64PFR0_EL1").kvm_id)
    fp = kb.field("ID_AA64PFR0_EL1", "FP")
    assert set(pfr0[2:][63 - fp.msb:64 - fp.lsb]) == {"x"}


def test_cpu_models_lists_levels_and_judges_them_on_a_host(capsys):
    assert main(["cpu-models"]) == 0
    out = capsys.readouterr().out
    assert "armv8.2-a-v1" in out and "architecture" in out
    host = str(HOSTS / "neoverse-n1-qemu7.2-linux7.3.xml")
    assert main(["cpu-models", "--host", host, "--kvm-only", "armv8.2-a", "armv8.3-a"]) == 0
    out = capsys.readouterr().out
    assert "armv8.2-a-v1  yes" in out
    assert "armv8.3-a-v1  no" in out and "ID_AA64ISAR1_EL1.JSCVT: needs 1, host has 0" in out


def test_a_named_model_gives_the_guest_the_hosts_platform_and_records_it(tmp_path, capsys):
    """A named model fixes no SVE vector lengths (nor the rest of what a
    guest has beyond its ID registers): translating it records the host's,
    so a guest is not moved to a host with fewer; sveNNN policies work on
    them as on a baseline's."""
    from .domains import MAX73, custom_cpu, domain_xml, with_sysreg
    big = with_sysreg(MAX73, tmp_path / "max.xml")
    small = with_sysreg(HOSTS / "max-sve256-qemu10.0-linux7.3.xml", tmp_path / "sve256.xml")
    dom = tmp_path / "guest.xml"
    dom.write_text(domain_xml(cpu=custom_cpu("armv9.0-a", topology=False)))
    out = tmp_path / "translated.xml"
    assert main(["translate", str(dom), "--host", str(big), "-o", str(out)]) == 0, \
        capsys.readouterr().err
    assert 'name="sve2048"' in out.read_text()
    assert main(["validate", str(out), "--host", str(big)]) == 0
    assert main(["validate", str(out), "--host", str(small)]) == 1
    assert "SVE" in capsys.readouterr().out
    dom.write_text(domain_xml(cpu=custom_cpu("armv9.0-a", ("disable", "sve512"),
                                             topology=False)))
    assert main(["translate", str(dom), "--host", str(big), "-o", str(out)]) == 0
    import xml.etree.ElementTree as ET
    required = {f.get("name") for f in ET.parse(out).getroot().findall("cpu/feature")
                if f.get("policy") == "require"}
    assert "sve384" in required and "sve512" not in required
