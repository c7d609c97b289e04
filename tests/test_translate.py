"""translate / dumpxml / validate: domain CPUs resolved against captured hosts."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import pytest

from libvirt_arm_cpu.kb import load as kb_load
from libvirt_arm_cpu.formats.domain import Domain, cpu_from_element
from libvirt_arm_cpu.formats.profile import read_profile
from libvirt_arm_cpu.engine.translate import resolve
from libvirt_arm_cpu.engine.validate import CpuMismatch

from .conftest import assert_one_line_error
from .domains import (MAX73, N1_73, V1_73, custom_cpu, domain_xml, save_model, with_sysreg,
                      without_loader)

KB = kb_load.registers()


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A models directory with the baseline of max on 7.3 (alone), and a
    copy of that host whose QEMU takes SYSREG properties."""
    models = tmp_path / "models"
    monkeypatch.setenv("LIBVIRT_ARM_CPU_MODELS_DIR", str(models))
    monkeypatch.setenv("LIBVIRT_ARM_CPU_CONFIG", str(tmp_path / "none.conf"))
    name = save_model(models, MAX73)
    host = with_sysreg(MAX73, tmp_path / "max73-sysreg.xml", "host-a")
    return type("Env", (), {"tmp": tmp_path, "model": name, "host": str(host),
                            "plain_host": str(MAX73)})


def write(env, text: str, name: str = "g.xml"):
    path = env.tmp / name
    path.write_text(text)
    return str(path)


def c14n(data) -> str:
    return ET.canonicalize(data if isinstance(data, str) else data.decode(), strip_text=True)


def test_disable_lowers_the_feature_and_its_dependents(run, env):
    dom = write(env, domain_xml(cpu=custom_cpu(env.model, ("disable", "sve2"))))
    r = run("translate", dom, "--host", env.host, "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    props = data["properties"]
    assert props["SYSREG_ID_AA64ZFR0_EL1_SVEver"] == "0x0"
    # SVE2's dependents go too (rules from xml/dependencies.xml), each named
    assert {"SYSREG_ID_AA64ZFR0_EL1_AES", "SYSREG_ID_AA64ZFR0_EL1_SM4"} <= set(props)
    assert "lowered ID_AA64ZFR0_EL1.SM4 1 -> 0 (rule arch.mrs.SVE_SM4->SVE2)" in r.err
    # only fields that differ from the host's values
    host = {x.name: x.value for x in read_profile(env.host).registers}
    for prop, value in props.items():
        f = KB.field_by_qemu_property(prop)
        assert f.get(host[f.register]) != int(value, 16), prop
    assert data["qemu_cpu"].startswith("host,sve128=on,") and ",SYSREG_" in data["qemu_cpu"]
    r = run("translate", dom, "--host", env.host, "--qemu-args")
    assert r.out.strip() == f"-cpu {data['qemu_cpu']}"


def test_policies_follow_libvirt(env):
    catalog, book = kb_load.features(), kb_load.dependencies()
    host = read_profile(env.host)
    models = {}

    def find(name):
        from libvirt_arm_cpu.service import find_model
        return models.setdefault(name, find_model(name))

    def resolved(*feats):
        cpu = cpu_from_element(ET.fromstring(custom_cpu(env.model, *feats)), "g.xml")
        return resolve(cpu, host, KB, catalog, book, find)

    plain = resolved()
    assert plain.identical and plain.comparison.result == "identical"
    with pytest.raises(CpuMismatch, match="feature mte.*policy 'require', but the host CPU "
                                          "does not have it"):
        resolved(("require", "mte"))
    with pytest.raises(CpuMismatch, match="feature sve: policy 'forbid', but the host CPU has it"):
        resolved(("forbid", "sve"))
    opt = resolved(("optional", "mte"))
    assert opt.identical and "optional feature mte left out: the host CPU lacks it" in opt.notes
    kept = resolved(("optional", "sve2"))
    assert kept.identical
    low = resolved(("require", "SYSREG_ID_AA64ISAR0_EL1_TS", "0x1"))
    assert low.properties == [("SYSREG_ID_AA64ISAR0_EL1_TS", 1)]
    with pytest.raises(CpuMismatch, match="ID_AA64ISAR0_EL1.TS: needs 3, host has 2"):
        resolved(("require", "SYSREG_ID_AA64ISAR0_EL1_TS", "0x3"))
    # disabling sve switches the vCPU feature off: no SVE2 either
    with pytest.raises(CpuMismatch, match="feature sve2 .*policy 'require', but the host CPU "
                                          "does not have it"):
        resolved(("disable", "sve"), ("require", "sve2"))
    # a required feature the dependency repair would remove is an error
    with pytest.raises(CpuMismatch, match="feature sve2 is required, but the dependency rules"):
        resolved(("disable", "FEAT_SVE"), ("require", "sve2"))
    # disabling a feature another one needs, where the repair cannot remove
    # that one (VH is not writable): refused, naming the rule (was a warning)
    vhe = catalog.feature("FEAT_VHE")
    assert vhe.holds(plain.values, catalog) is True
    assert not book.rule("arch.mrs.VHE->AA64EL2+Debugv8p1+LSE").violated(plain.values)
    with pytest.raises(CpuMismatch, match=r"break a dependency rule that CPU model '.*' obeys, "
                                          r"and lowering fields on host .* cannot repair it: "
                                          r"arch.mrs.VHE->AA64EL2\+Debugv8p1\+LSE: FEAT_VHE "
                                          r"needs FEAT_LSE .*ID_AA64MMFR1_EL1.VH is not writable"):
        resolved(("disable", "FEAT_LSE"))


def test_host_model_is_the_hosts_own_cpu(run, env):
    dom = write(env, domain_xml(cpu="<cpu mode='host-model'/>"))
    r = run("translate", dom, "--host", env.plain_host)
    assert r.code == 0, r.err
    translated = Domain.parse(r.out.encode(), "out")
    t = translated.translation
    assert t.model == "host-model" and t.properties == []
    host = {x.name: x.value for x in read_profile(env.plain_host).registers}
    assert all((host[name] or 0) == value for name, value in t.values.items())
    assert translated.root.find("cpu").get("mode") == "host-passthrough"
    assert translated.cpu_arguments() == []       # identical: plain host-passthrough


def test_a_host_with_neither_method_refuses_unless_identical(run, env):
    bare = str(without_loader(MAX73, env.tmp / "bare.xml", "host-bare"))
    dom = write(env, domain_xml(cpu=custom_cpu(env.model, ("disable", "sve2"))))
    r = run("translate", dom, "--host", bare)
    assert_one_line_error(r, 1, "needs", "ID register change(s), but neither SYSREG_* in QEMU "
                                         "nor the loader installed")
    dom = write(env, domain_xml(cpu=custom_cpu(env.model)), "same.xml")
    r = run("translate", dom, "--host", bare)
    assert r.code == 0 and "<qemu:commandline" not in r.out and "host-passthrough" in r.out
    assert Domain.parse(r.out.encode(), "o").translation.method == "none"


def test_stock_qemu_gets_the_values_through_the_loader(run, env):
    """The captured hosts run Debian's QEMU (no SYSREG_*) and have the loader:
    auto picks it; the domain carries LD_PRELOAD and every register."""
    dom = write(env, domain_xml(cpu=custom_cpu(env.model, ("disable", "sve2"))))
    r = run("translate", dom, "--host", env.plain_host, "--json")
    assert r.code == 0, r.err
    data = json.loads(r.out)
    assert data["method"] == "loader" and data["properties"] == {} and data["qemu_cpu"] is None
    from libvirt_arm_cpu.engine.loader import LOADER_PATH, parse_values
    assert data["env"]["LD_PRELOAD"] == LOADER_PATH
    values = parse_values(data["env"]["LIBVIRT_ARM_CPU_ID_REGS"], KB)
    host = read_profile(env.plain_host).values()
    assert set(values) == {n for n in host if KB.register(n).kind != "affinity"}
    assert KB.field("ID_AA64ZFR0_EL1", "SVEver").get(values["ID_AA64ZFR0_EL1"]) == 0
    assert KB.field("ID_AA64ZFR0_EL1", "SVEver").get(host["ID_AA64ZFR0_EL1"]) > 0
    r = run("translate", dom, "--host", env.plain_host)
    out = Domain.parse(r.out.encode(), "out")
    assert out.cpu_arguments() == [] and out.loader_env() == data["env"]
    assert out.translation.method == "loader"
    r = run("translate", dom, "--host", env.plain_host, "--qemu-args")
    assert r.out.splitlines()[0] == f"LD_PRELOAD='{LOADER_PATH}'"
    # forcing sysreg on a host whose QEMU lacks it: one line, exit 1
    r = run("translate", dom, "--host", env.plain_host, "--method", "sysreg")
    assert_one_line_error(r, 1, "method sysreg", "does not take SYSREG_* properties",
                          "--method loader")
    # forcing the loader on a SYSREG host works too
    r = run("translate", dom, "--host", env.host, "--method", "loader", "--json")
    assert r.code == 0 and json.loads(r.out)["method"] == "loader", r.err
    bare = str(without_loader(MAX73, env.tmp / "bare.xml", "host-bare"))
    r = run("translate", dom, "--host", bare, "--method", "loader")
    assert_one_line_error(r, 1, "cannot run on host host-bare", "libvirt-arm-cpu-loader.so) is missing")


def test_dumpxml_gives_the_original_back(run, env):
    original = domain_xml(cpu=custom_cpu(env.model, ("disable", "sve2"), ("optional", "mte")),
                          extra="\n  <qemu:commandline xmlns:qemu='http://libvirt.org/schemas/"
                                "domain/qemu/1.0'><qemu:arg value='-msg'/><qemu:arg "
                                "value='timestamp=on'/></qemu:commandline>")
    dom = write(env, original)
    out = env.tmp / "arm.xml"
    assert run("translate", dom, "--host", env.host, "-o", str(out)).code == 0
    translated = out.read_text()
    assert "-cpu" in translated and "timestamp=on" in translated
    r = run("dumpxml", str(out))
    assert r.code == 0
    assert c14n(r.out) == c14n(original)
    # translating again starts from the original: the same result
    again = env.tmp / "again.xml"
    assert run("translate", str(out), "--host", env.host, "-o", str(again)).code == 0
    assert c14n(again.read_text()) == c14n(translated)
    # a domain never translated comes back byte for byte
    plain = write(env, domain_xml(cpu="<cpu mode='host-passthrough'/>"), "plain.xml")
    assert run("dumpxml", plain).out == open(plain).read()


def test_translated_domain_is_valid_for_libvirt(run, env):
    """The output passes libvirt's own domain schema (virt-xml-validate,
    from Debian's libvirt-clients) and ours for the metadata."""
    dom = write(env, domain_xml(cpu=custom_cpu(env.model, ("disable", "sve2"))))
    out = env.tmp / "arm.xml"
    assert run("translate", dom, "--host", env.host, "-o", str(out)).code == 0
    exe = shutil.which("virt-xml-validate")
    assert exe, "virt-xml-validate (libvirt-clients) is installed by the test set-up"
    proc = subprocess.run([exe, str(out), "domain"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import xmlschema
    from libvirt_arm_cpu.paths import schema_path
    meta = Domain.parse(out.read_bytes(), "arm.xml").root.find(
        "metadata/{urn:x-libvirt-arm-cpu:domain:1}cpu")
    xmlschema.XMLSchema(schema_path("domain-metadata.xsd")).validate(
        ET.tostring(meta, encoding="unicode"))


def test_validate_against_other_hosts(run, env):
    dom = write(env, domain_xml(cpu=custom_cpu(env.model, ("disable", "sve2"))))
    out = env.tmp / "arm.xml"
    assert run("translate", dom, "--host", env.host, "-o", str(out)).code == 0
    r = run("validate", str(out), "--host", env.host)
    assert r.code == 0 and "can run on host host-a (superset" in r.out
    other = with_sysreg(MAX73, env.tmp / "b.xml", "host-b")
    r = run("validate", str(out), "--host", str(other))
    assert r.code == 0 and "made for host 'host-a'" not in r.out      # same values: same args
    r = run("validate", str(out), "--host", str(V1_73), "--json")
    data = json.loads(r.out)
    assert r.code == 1 and data["result"] == "incompatible"
    # the MIDR differs too, which the loader could change there (capability 239
    # on 7.3); the fields KVM cannot lower are named
    assert data["reasons"] and all(x["register"] != "MIDR_EL1" for x in data["reasons"])
    r = run("validate", str(out), "--host", str(V1_73), "--json")
    sysreg_v1 = with_sysreg(without_loader(V1_73, env.tmp / "v1b.xml"), env.tmp / "v1s.xml")
    data = json.loads(run("validate", str(out), "--host", str(sysreg_v1), "--json").out)
    assert any(x["register"] == "MIDR_EL1" for x in data["reasons"])   # SYSREG_* cannot
    r = run("validate", str(out), "--host", str(N1_73))
    assert r.code == 1 and "ID_AA64PFR0_EL1.SVE" in r.out


@pytest.mark.parametrize("text, code, needle", [
    ("<domain><name>x</name><cpu>", 1, "g.xml:1: not well-formed XML"),
    ("<?xml version='1.0'?>\n<!DOCTYPE d [<!ENTITY a 'x'><!ENTITY b '&a;&a;&a;&a;'>]>"
     "<domain>&b;</domain>", 1, "g.xml:2: refused: a DOCTYPE"),
    ("<!DOCTYPE d SYSTEM 'http://example.invalid/x.dtd'><domain/>", 1, "refused: a DOCTYPE"),
    ("<domain type='kvm'><name>x</name></domain>", 2, "the domain has no <cpu>"),
    ("<cpu mode='custom'/>", 1, "root element is <cpu>, expected <domain>"),
    (domain_xml(cpu="<cpu mode='host-passthrough'/>"), 2, "<cpu mode='host-passthrough'> is not "
                                                         "translated"),
    (domain_xml(cpu=custom_cpu("pentium-pro")), 2, "unknown CPU model 'pentium-pro'"),
    # a model name is a name: never a path out of the models folder
    (domain_xml(cpu=custom_cpu("../../../etc/hostname")), 2, "is not a CPU model name"),
    (domain_xml(cpu=custom_cpu("/etc/hostname")), 2, "is not a CPU model name"),
    (domain_xml(cpu="<cpu><topology sockets='1' cores='2' threads='1'/></cpu>"), 2,
     "neither a mode nor a <model>"),
    (domain_xml(cpu="<cpu mode='custom'><model>MODEL</model><feature policy='require' "
                    "name='sha33'/></cpu>"), 2, "unknown feature 'sha33' (did you mean sha3?)"),
    (domain_xml(cpu="<cpu mode='custom'><model>MODEL</model><feature policy='require' "
                    "name='SYSREG_ID_AA64ISAR0_EL1_DPP' value='1'/></cpu>"), 2,
     "(did you mean SYSREG_ID_AA64ISAR0_EL1_DP?)"),
    (domain_xml(cpu="<cpu mode='custom'><model>MODEL</model><feature policy='require' "
                    "name='SYSREG_ID_AA64ISAR0_EL1_DP'/></cpu>"), 2, "needs a value attribute"),
    (domain_xml(cpu="<cpu mode='custom'><model>MODEL</model><feature policy='maybe' "
                    "name='sve'/></cpu>"), 1, "policy 'maybe' is not one of"),
])
def test_bad_domains_one_line_no_change(run, env, text, code, needle):
    dom = write(env, text.replace("MODEL", env.model))
    out = env.tmp / "out.xml"
    out.write_text("previous")
    r = run("translate", dom, "--host", env.host, "-o", str(out))
    assert_one_line_error(r, code, needle)
    assert out.read_text() == "previous"          # nothing half-written


def test_bad_host_profiles(run, env):
    dom = write(env, domain_xml(cpu=custom_cpu(env.model)))
    truncated = env.tmp / "trunc.xml"
    truncated.write_bytes(open(env.host, "rb").read()[:3000])
    assert_one_line_error(run("translate", dom, "--host", str(truncated)), 1,
                          "trunc.xml:", "not well-formed")
    newer = env.tmp / "newer.xml"
    newer.write_text(open(env.host).read().replace('version="1"', 'version="7"', 1))
    assert_one_line_error(run("translate", dom, "--host", str(newer)), 1,
                          "host profile format 7, written by a newer libvirt-arm-cpu")
    foreign = env.tmp / "foreign.xml"
    foreign.write_text(domain_xml())
    assert_one_line_error(run("translate", dom, "--host", str(foreign)), 1, "foreign.xml")


def test_metadata_of_a_newer_version_is_refused(run, env):
    dom = write(env, domain_xml(cpu=custom_cpu(env.model)))
    out = env.tmp / "arm.xml"
    assert run("translate", dom, "--host", env.host, "-o", str(out)).code == 0
    newer = env.tmp / "newer.xml"
    newer.write_text(re.sub(r'<arm:cpu version="\d+"', '<arm:cpu version="3"', out.read_text(),
                            count=1))
    assert_one_line_error(run("validate", str(newer), "--host", env.host), 1,
                          "format 3, written by a newer libvirt-arm-cpu")
    assert_one_line_error(run("dumpxml", str(newer)), 1, "upgrade libvirt-arm-cpu")


@pytest.mark.parametrize("edit, needle", [
    (lambda t: re.sub(r'(<arm:register name="ID_AA64ISAR0_EL1" value=")0x[0-9a-f]+',
                      r"\g<1>0x10000000000000000", t, count=1),
     "<register name='ID_AA64ISAR0_EL1'>: expected a name and a 64-bit value"),
    (lambda t: t.replace('<arm:register name="ID_AA64ISAR0_EL1"', '<arm:register', 1),
     "<register name=''>: expected a name and a 64-bit value"),
])
def test_metadata_values_must_be_64_bit_registers(run, env, edit, needle):
    """A value of 2**64 or more must not pass as its low 64 bits."""
    dom = write(env, domain_xml(cpu=custom_cpu(env.model)))
    out = env.tmp / "arm.xml"
    assert run("translate", dom, "--host", env.host, "-o", str(out)).code == 0
    bad = env.tmp / "bad.xml"
    bad.write_text(edit(out.read_text()))
    assert bad.read_text() != out.read_text()
    assert_one_line_error(run("validate", str(bad), "--host", env.host), 1, needle)
